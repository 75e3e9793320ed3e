"""The warm CLI server (pycontain/cli/server.py) and its client (bin/pycontain),
driven as a user would: the launcher of this working tree run as a command,
a server started by it in a private socket directory, real containers.

Each test starts its own server and stops it (the fixture checks that the
server process is gone), so nothing outlives the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycontain.cli import server as cli_server
from tests.as_nobody import as_nobody

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "bin" / "pycontain"
SERVER_SOURCE = Path(cli_server.__file__)


def command(*args: str) -> list[str]:
    # The launcher's Python part, as its shell line runs it: this interpreter
    # (the project's venv), -I -S.
    return [sys.executable, "-I", "-S", str(LAUNCHER), *args]


def shell_command(*args: str) -> list[str]:
    # The whole launcher, shell line first (with PYCONTAIN_PYTHON: see Cli.env):
    # the C client when the server has built it, else the Python part.
    return [str(LAUNCHER), *args]


def via(kind: str, *args: str) -> list[str]:
    return command(*args) if kind == "python" else shell_command(*args)


class Cli:
    """The command line with a private socket directory, state dir and store."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.sockdir = os.path.join(base, "cli")
        # PYCONTAIN_PYTHON: the shell line's interpreter is this one (bin/ has no python3 beside it)
        self.env = dict(os.environ, PYCONTAIN_CLI_SERVER="1", PYCONTAIN_CLI_SERVER_DIR=self.sockdir,
                        PYCONTAIN_PYTHON=sys.executable)
        self.pids: set[int] = set()

    def run(self, *args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        return subprocess.run(command(*args), text=True, timeout=60, env=env or self.env,
                              **kw)  # type: ignore[call-overload]

    def shell(self, *args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
        """The command through the launcher's shell line (the C client, once built)."""
        kw.setdefault("capture_output", True)
        return subprocess.run(shell_command(*args), text=True, timeout=60, env=env or self.env,
                              **kw)  # type: ignore[call-overload]

    def wait_built(self, pid: int) -> str:
        """The server's C client once it is no longer building: ready, or none (why)."""
        _wait_for(lambda: dict(self.servers()).get(pid, {}).get("client") != "building", timeout=60,
                  what="the C client's build")
        return dict(self.servers())[pid]["client"]

    def wait_client(self, pid: int) -> str:
        """The server's C client, once ready: its path."""
        assert self.wait_built(pid) == "ready", self.servers()
        path = os.path.join(self.sockdir, cli_server.CLIENT_NAME)
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
        return path

    def python_client_ran(self) -> bool:
        """Whether the Python client ran (it leaves its compiled self in the socket directory)."""
        return any(n.startswith("client-") for n in os.listdir(self.sockdir))

    def in_process(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(*args, env=dict(self.env, PYCONTAIN_CLI_SERVER="0"))

    def servers(self) -> list[tuple[int, dict[str, str]]]:
        out = []
        for path in cli_server.server_sockets(self.sockdir):
            answer = cli_server.ask(path, b"S", timeout=2)
            if answer is not None:
                fields = dict(line.split(" ", 1) for line in answer[1].splitlines() if " " in line)
                out.append((answer[0], fields))
        return out

    def wait_server(self, other_than: int | None = None, timeout: float = 15) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.servers() if s[0] != other_than]
            if found:
                self.pids.add(found[0][0])
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no CLI server answered in {self.sockdir} within {timeout} s")

    def start(self) -> int:
        """A server, started the way users get one: a first command runs
        in-process and leaves a server behind."""
        r = self.run("--version")
        assert r.returncode == 0, r.stderr
        return self.wait_server()[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def _processes_running(argv: list[str]) -> list[int]:
    """Pids of processes whose command line is exactly ``argv``."""
    want = [a.encode() for a in argv]
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:-1] == want:
                    pids.append(int(name))
        except OSError:
            continue
    return pids


def _wait_for(predicate, timeout: float = 10, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _fd_kinds(pid: int) -> list[str]:
    """What the fds of ``pid`` are (a socket, a pipe, a path), sorted."""
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds.append(target.split(":[")[0] if ":[" in target else target)
    return sorted(kinds)


def _cgroups_named(name: str) -> list[str]:
    found = []
    for ctrl in os.listdir("/sys/fs/cgroup"):
        parent = f"/sys/fs/cgroup/{ctrl}/pycontain/containers"
        try:
            found += [f"{parent}/{d}" for d in os.listdir(parent) if d.startswith(name + "-")]
        except OSError:
            continue
    return found


@pytest.fixture
def cli() -> Iterator[Cli]:
    # A short path: a unix socket's path must fit in 108 bytes.
    base = tempfile.mkdtemp(prefix="pcs-", dir="/tmp")
    c = Cli(base)
    try:
        yield c
    finally:
        subprocess.run(command("server", "stop"), env=c.env, capture_output=True, timeout=30)
        left = [pid for pid in c.pids if not _wait_gone(pid)]
        for pid in left:  # only our own servers, by pid
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"CLI servers {left} did not stop"


def test_first_run_starts_a_server_that_serves_the_next(cli: Cli) -> None:
    assert cli.servers() == []
    r = cli.run("run", "--rm", "host", "sh", "-c", "echo first; exit 3")
    assert (r.returncode, r.stdout) == (3, "first\n"), r.stderr
    pid, status = cli.wait_server()
    assert status["served"] == "0"
    st = os.lstat(cli.sockdir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    _wait_for(lambda: dict(cli.servers())[pid]["spare"] == "ready", what="a spare worker")
    cli.wait_built(pid)  # its builder's pidfd gone
    fds_before = _fd_kinds(pid)
    r = cli.run("run", "--rm", "host", "sh", "-c", "echo second; exit 4")
    assert (r.returncode, r.stdout, r.stderr) == (4, "second\n", "")
    after = dict(cli.servers())[pid]
    assert after["served"] == "1"  # it ran in the server, not in-process
    assert after["by_spare"] == "1"  # in the worker forked ahead
    # and the next spare is ready soon after
    _wait_for(lambda: dict(cli.servers())[pid]["spare"] == "ready", timeout=5, what="the next spare")
    r = cli.run("run", "--rm", "host", "sh", "-c", "echo third")
    assert (r.returncode, r.stdout) == (0, "third\n")
    assert dict(cli.servers())[pid]["by_spare"] == "2"
    # the server kept none of the client's fds (pipes, cwd, connection)
    _wait_for(lambda: _fd_kinds(pid) == fds_before, timeout=5,
              what=f"the server's fds: {fds_before} before, {_fd_kinds(pid)} now")
    assert not [k for k in fds_before if k.startswith("pipe") or os.path.isdir(k)]
    assert cli.run("ps", "-a", "-q").stdout == ""


def test_exit_codes_and_signal_deaths(cli: Cli) -> None:
    cli.start()
    assert cli.run("run", "--rm", "host", "true").returncode == 0
    assert cli.run("run", "--rm", "host", "sh", "-c", "exit 7").returncode == 7
    assert cli.run("run", "--rm", "host", "sh", "-c", "kill -KILL $$").returncode == 128 + 9
    r = cli.run("run", "--rm", "--memory", "32bm", "host", "true")  # a usage error: 2, a clear message
    assert r.returncode == 2 and "memory" in r.stderr and "Traceback" not in r.stderr
    assert cli.run("no-such-command").returncode == 2
    assert dict(cli.servers()) and all(int(s["served"]) >= 5 for _, s in cli.servers())


def test_stdio_are_the_clients_own_fds(cli: Cli, tmp_path: Path) -> None:
    cli.start()
    # pipes
    r = cli.run("run", "--rm", "host", "sh", "-c", "cat; echo out; echo err >&2", input="from stdin\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "from stdin\nout\n", "err\n")
    # files, and a stdin that is a file
    (tmp_path / "in").write_text("file input\n")
    with open(tmp_path / "in") as fin, open(tmp_path / "out", "w") as fout, open(tmp_path / "err", "w") as ferr:
        r = cli.run("run", "--rm", "host", "sh", "-c", "cat; echo to-out; echo to-err >&2",
                    stdin=fin, stdout=fout, stderr=ferr, capture_output=False)
    assert r.returncode == 0
    assert (tmp_path / "out").read_text() == "file input\nto-out\n"
    assert (tmp_path / "err").read_text() == "to-err\n"
    # the CLI's own messages (the worker's sys.stdout/stderr) go there too
    r = cli.run("--version")
    assert r.stdout.startswith("pycontain ") and r.returncode == 0
    # a closed stdin
    r = cli.run("run", "--rm", "host", "sh", "-c", "echo ok", stdin=subprocess.DEVNULL)
    assert r.stdout == "ok\n"


def test_env_cwd_and_umask_are_the_clients(cli: Cli, tmp_path: Path) -> None:
    cli.start()
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "vol").mkdir()
    # A relative state dir: found through the client's environment and cwd.
    env = dict(cli.env, PYCONTAIN_STATE_DIR="relstate")
    r = cli.run("run", "-d", "--name", "envcwd", "host", "sleep", "30", env=env, cwd=str(work))
    assert (r.returncode, r.stdout) == (0, "envcwd\n"), r.stderr
    try:
        assert (work / "relstate").is_dir()
        assert cli.run("ps", "-q", env=env, cwd=str(work)).stdout == "envcwd\n"
    finally:
        assert cli.run("rm", "-f", "envcwd", env=env, cwd=str(work)).returncode == 0
    # The umask reaches the container (its processes inherit the worker's).
    script = "umask; touch /vol/f"

    def run_umask(mask: int) -> str:
        old = os.umask(mask)
        try:
            r = cli.run("run", "--rm", "-v", f"{tmp_path / 'vol'}:/vol", "host", "sh", "-c", script)
        finally:
            os.umask(old)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert run_umask(0o077) == "0077"
    assert stat.S_IMODE(os.stat(tmp_path / "vol" / "f").st_mode) == 0o600
    os.unlink(tmp_path / "vol" / "f")
    assert run_umask(0o002) == "0002"
    assert stat.S_IMODE(os.stat(tmp_path / "vol" / "f").st_mode) == 0o664


def test_a_terminal_passes_through(cli: Cli) -> None:
    pid = cli.start()
    master, slave = os.openpty()
    try:
        p = subprocess.Popen(command("run", "--rm", "host", "sh", "-c", "test -t 0 && echo tty; read x; echo got-$x"),
                             env=cli.env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        out = b""
        deadline = time.monotonic() + 20
        while b"tty" not in out and time.monotonic() < deadline:
            out += os.read(master, 1024)
        os.kill(p.pid, signal.SIGWINCH)  # forwarded, ignored: the command goes on
        os.write(master, b"hello\n")
        while b"got-hello" not in out and time.monotonic() < deadline:
            out += os.read(master, 1024)
        assert p.wait(timeout=20) == 0
        assert b"tty" in out and b"got-hello" in out, out
        assert dict(cli.servers())[pid]["served"] == "1"
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_commands_at_once(cli: Cli) -> None:
    pid = cli.start()
    procs = [subprocess.Popen(command("run", "--rm", "host", "sh", "-c", f"sleep 0.3; echo {i}; exit {i}"),
                              env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    assert results == [(i, f"{i}\n".encode(), b"") for i in range(4)]
    assert dict(cli.servers())[pid]["served"] == "4"


def test_big_environment_and_odd_arguments(cli: Cli) -> None:
    pid = cli.start()
    env = dict(cli.env, **{f"BIG{i}": "x" * 100_000 for i in range(4)})  # more than a socket's buffer
    odd = "sp ace\ttab \u00e9 $HOME 'q' \"dq\""
    r = cli.run("run", "--rm", "-e", f"V={odd}", "host", "sh", "-c", 'printf "%s|%s" "$V" "$1"', "sh", odd, env=env)
    assert (r.returncode, r.stdout) == (0, f"{odd}|{odd}"), r.stderr
    assert dict(cli.servers())[pid]["served"] == "1"


def test_detach_name_and_rm(cli: Cli) -> None:
    cli.start()
    r = cli.run("run", "-d", "--name", "srvweb", "host", "sh", "-c", "echo started; exec sleep 30")
    assert (r.returncode, r.stdout) == (0, "srvweb\n"), r.stderr
    try:
        ps = cli.run("ps").stdout
        assert "srvweb" in ps and "running" in ps
        # Nothing of the server (its lock, its socket, other clients' fds)
        # lives on in the detached container's processes.
        procs = []
        for cgroup in _cgroups_named("srvweb"):
            with open(f"{cgroup}/cgroup.procs") as f:
                procs += [int(p) for p in f.read().split()]
        assert procs, _cgroups_named("srvweb")
        for pid in procs:
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert not [t for t in targets if cli.base in t or t.startswith("socket:")], (pid, targets)
        # the detached container outlives the worker that made it
        assert cli.in_process("ps", "-q").stdout == "srvweb\n"
        _wait_for(lambda: cli.run("logs", "srvweb").stdout == "started\n", what="the log")
        assert cli.run("run", "--name", "srvweb", "host", "true").returncode != 0  # the name is taken
    finally:
        assert cli.run("rm", "-f", "srvweb").returncode == 0
    assert cli.run("ps", "-a", "-q").stdout == ""
    # --name without --rm: the record stays for ps -a
    assert cli.run("run", "--name", "kept", "host", "true").returncode == 0
    assert cli.run("ps", "-a", "-q").stdout == "kept\n"
    assert cli.run("rm", "kept").returncode == 0


@pytest.mark.parametrize("client", ["python", "c"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_client_stops_the_container(cli: Cli, sig: int, client: str) -> None:
    pid = cli.start()
    if client == "c":
        client_path = cli.wait_client(pid)
    token = f"{3000 + int(sig)}.{25 if client == 'python' else 26}"  # a unique sleep argument: the container
    name = f"sig{int(sig)}{client}"
    p = subprocess.Popen(via(client, "run", "--name", name, "host", "sleep", token), env=cli.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: bool(_processes_running(["sleep", token])), what="the container's process")
        if client == "c":
            assert os.readlink(f"/proc/{p.pid}/exe") == client_path
        assert _cgroups_named(name), "the container has no cgroup"
        os.kill(p.pid, sig)
        p.wait(timeout=15)
        if sig == signal.SIGINT:
            # the in-process CLI's Ctrl-C: SIGTERM to the container, its status
            assert p.returncode == 128 + signal.SIGTERM
        else:
            assert p.returncode == -sig
        _wait_for(lambda: not _processes_running(["sleep", token]), what="the container to die")
        # what the dead worker left (cgroup, state) is collected
        _wait_for(lambda: not _cgroups_named(name), what="the cgroup to be removed")
        if sig == signal.SIGINT:
            assert cli.in_process("ps", "-a", "-q").stdout == f"{name}\n"  # exited, kept (no --rm)
        else:
            _wait_for(lambda: cli.in_process("ps", "-a", "-q").stdout == "", what="the state to be collected")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
        cli.in_process("rm", "-f", name)


def test_changed_source_makes_the_server_refuse_and_the_client_fall_back(cli: Cli) -> None:
    pid = cli.start()
    st = os.stat(SERVER_SOURCE)
    os.utime(SERVER_SOURCE, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        r = cli.run("run", "--rm", "host", "sh", "-c", "echo fallback; exit 6")
        assert (r.returncode, r.stdout, r.stderr) == (6, "fallback\n", "")
        assert _wait_gone(pid), "the stale server did not exit"
        # the fallback started a fresh server, which serves the next command
        new_pid, status = cli.wait_server(other_than=pid)
        assert status["served"] == "0"
        assert cli.run("run", "--rm", "host", "true").returncode == 0
        assert dict(cli.servers())[new_pid]["served"] == "1"
    finally:
        os.utime(SERVER_SOURCE, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_stale_socket_falls_back_and_is_replaced(cli: Cli) -> None:
    # Find the socket's name: start a server, stop it, leave a dead socket file there.
    cli.start()
    [path] = cli_server.server_sockets(cli.sockdir)
    assert cli.run("server", "stop").returncode == 0
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # a socket file nobody listens on: connect() is refused
    r = cli.run("run", "--rm", "host", "sh", "-c", "echo ok")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    pid, status = cli.wait_server()
    assert status["served"] == "0"
    assert cli.run("run", "--rm", "host", "true").returncode == 0
    assert dict(cli.servers())[pid]["served"] == "1"


def test_another_uid_is_refused(cli: Cli) -> None:
    cli.start()
    [path] = cli_server.server_sockets(cli.sockdir)
    # Let uid 65534 reach the socket at all (the 0700 directory is the first
    # wall); the server's SO_PEERCRED check must be the second.
    os.chmod(cli.base, 0o711)
    os.chmod(cli.sockdir, 0o711)
    os.chmod(path, 0o777)

    def connect(w: int) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(path)
        # The refusal comes before the server reads anything of ours.
        os.write(w, repr(cli_server.read_frame(s)).encode())

    try:
        with as_nobody(connect) as f:
            answer = f.read().decode()
    finally:
        os.chmod(cli.sockdir, 0o700)
        os.chmod(cli.base, 0o700)
    assert answer.startswith("(b'N'") and "uid 65534" in answer, answer


def test_a_client_in_another_mount_namespace_runs_in_process(cli: Cli) -> None:
    pid = cli.start()
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1)")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", *command(
        "run", "--rm", "host", "sh", "-c", "echo mine; exit 5")], capture_output=True, text=True, env=cli.env,
        timeout=60)
    assert (r.returncode, r.stdout) == (5, "mine\n"), r.stderr
    assert dict(cli.servers())[pid]["served"] == "0"  # refused: it ran in-process, in its own namespace
    # and it started no server of its own to fight this one for the socket
    time.sleep(1)
    [path] = cli_server.server_sockets(cli.sockdir)
    for other in _processes_running(command("server", "serve", "--socket", path)):
        # The server, its spare worker, and that worker's spare container child.
        chain = [other]
        while chain[-1] > 1 and pid not in chain and len(chain) < 4:
            with open(f"/proc/{chain[-1]}/stat") as f:
                chain.append(int(f.read().rsplit(")", 1)[1].split()[1]))
        assert pid in chain, f"a second server {other} (ancestors {chain[1:]})"


def test_sigterm_stops_the_server_after_its_running_commands(cli: Cli) -> None:
    pid = cli.start()
    [path] = cli_server.server_sockets(cli.sockdir)
    p = subprocess.Popen(command("run", "--rm", "host", "sh", "-c", "sleep 1; echo done; exit 3"), env=cli.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: dict(cli.servers()).get(pid, {}).get("running") == "1", what="the command to start")
        os.kill(pid, signal.SIGTERM)
        _wait_for(lambda: not os.path.exists(path), timeout=5, what="the socket to go")
        out, err = p.communicate(timeout=20)
        assert (p.returncode, out) == (3, b"done\n"), err
        assert _wait_gone(pid), "the server did not exit"
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_idle_server_exits_and_removes_its_socket(cli: Cli) -> None:
    cli.env["PYCONTAIN_CLI_SERVER_IDLE"] = "0.5"
    pid = cli.start()
    assert _wait_gone(pid, timeout=10), "the idle server did not exit"
    assert cli_server.server_sockets(cli.sockdir) == []


def test_opt_out_starts_no_server(cli: Cli) -> None:
    r = cli.in_process("run", "--rm", "host", "true")
    assert r.returncode == 0
    time.sleep(0.5)
    assert cli.servers() == [] and not os.path.exists(cli.sockdir)


# -- the C client (pycontain/cli/client.c) through the launcher's shell line --


def test_the_c_client_runs_commands_as_the_python_one_does(cli: Cli, tmp_path: Path) -> None:
    pid = cli.start()
    client_path = cli.wait_client(pid)
    # exit codes, a container's signal death, a usage error
    assert cli.shell("run", "--rm", "host", "true").returncode == 0
    assert cli.shell("run", "--rm", "host", "sh", "-c", "exit 7").returncode == 7
    assert cli.shell("run", "--rm", "host", "sh", "-c", "kill -KILL $$").returncode == 128 + 9
    r = cli.shell("run", "--rm", "--memory", "32bm", "host", "true")
    assert r.returncode == 2 and "memory" in r.stderr and "Traceback" not in r.stderr
    # stdio: pipes, files, a closed stdin
    r = cli.shell("run", "--rm", "host", "sh", "-c", "cat; echo out; echo err >&2", input="from stdin\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "from stdin\nout\n", "err\n")
    (tmp_path / "in").write_text("file input\n")
    with open(tmp_path / "in") as fin, open(tmp_path / "out", "w") as fout:
        r = cli.shell("run", "--rm", "host", "sh", "-c", "cat; echo to-out", stdin=fin, stdout=fout,
                      stderr=subprocess.PIPE, capture_output=False)
    assert r.returncode == 0 and (tmp_path / "out").read_text() == "file input\nto-out\n"
    r = subprocess.run(["/bin/sh", "-c", 'exec "$@" 0<&-', "sh", *shell_command(
        "run", "--rm", "host", "sh", "-c", "test -e /proc/self/fd/0 || echo no-stdin")],
        env=cli.env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "no-stdin\n"), r.stderr
    # environment, cwd (a relative state dir), umask, odd arguments
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "vol").mkdir()
    odd = "sp ace\ttab \u00e9 $HOME 'q' \"dq\""
    env = dict(cli.env, PYCONTAIN_STATE_DIR="relstate", **{f"BIG{i}": "x" * 100_000 for i in range(4)})
    old = os.umask(0o077)
    try:
        r = cli.shell("run", "--rm", "-e", f"V={odd}", "-v", f"{tmp_path / 'vol'}:/vol", "host", "sh", "-c",
                      'umask; touch /vol/f; printf "%s|%s" "$V" "$1"', "sh", odd, env=env, cwd=str(work))
    finally:
        os.umask(old)
    assert (r.returncode, r.stdout) == (0, f"0077\n{odd}|{odd}"), r.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "vol" / "f").st_mode) == 0o600
    assert (work / "relstate").is_dir()
    # It was the C client: the command's process is that binary, and the
    # Python client never ran (it would have left its compiled self here).
    p = subprocess.Popen(shell_command("run", "--rm", "host", "sleep", "1.3017"), env=cli.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: bool(_processes_running(["sleep", "1.3017"])), what="the container's process")
        assert os.readlink(f"/proc/{p.pid}/exe") == client_path
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not cli.python_client_ran()
    assert int(dict(cli.servers())[pid]["served"]) == 9  # every one of them


def test_the_c_client_falls_back_on_the_python_launcher(cli: Cli) -> None:
    # (A stale server's refusal: the C client's side is tests/unit/test_cli_client.py's
    # fake server; bumping a source's mtime here would make every server of this
    # tree stale, other people's too.)
    pid = cli.start()
    cli.wait_client(pid)
    assert cli.shell("run", "--rm", "host", "true").returncode == 0
    assert dict(cli.servers())[pid]["served"] == "1"
    # a refusal ("keep": another mount namespace): in-process, no second server
    if shutil.which("unshare"):
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", *shell_command(
            "run", "--rm", "host", "sh", "-c", "echo mine; exit 5")], capture_output=True, text=True,
            env=cli.env, timeout=60)
        assert (r.returncode, r.stdout) == (5, "mine\n"), r.stderr
        assert dict(cli.servers())[pid]["served"] == "1"
        time.sleep(0.5)
        assert [p for p, _ in cli.servers()] == [pid]
    # no server at all (its client still there): in-process, and a server starts
    assert cli.run("server", "stop").returncode == 0
    assert _wait_gone(pid)
    r = cli.shell("run", "--rm", "host", "sh", "-c", "echo alone; exit 4")
    assert (r.returncode, r.stdout, r.stderr) == (4, "alone\n", "")
    new_pid, status = cli.wait_server(other_than=pid)
    # which finds the client built: ready at once, and it serves
    assert status["client"] == "ready"
    assert cli.shell("run", "--rm", "host", "true").returncode == 0
    assert dict(cli.servers())[new_pid]["served"] == "1"


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "false"])
def test_without_a_working_compiler_the_python_client_serves(cli: Cli, cc: str) -> None:
    cli.env["CC"] = cc  # the server gets the environment of the command that starts it
    pid = cli.start()
    status = cli.wait_built(pid)
    assert status == ("none (no C compiler: $CC or cc)" if cc.startswith("/") else "none (the build failed)")
    assert not [n for n in os.listdir(cli.sockdir) if n.startswith("pycontain-client")]  # nor half a build
    r = cli.shell("run", "--rm", "host", "sh", "-c", "echo py; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "py\n", "")
    assert dict(cli.servers())[pid]["served"] == "1"
    assert cli.python_client_ran()


def test_stopping_the_server_mid_build_leaves_nothing(cli: Cli) -> None:
    # a compiler that takes its time: the server stops, the build goes with it
    slow = os.path.join(cli.base, "slowcc")
    with open(slow, "w") as f:
        f.write("#!/bin/sh\nexec sleep 30\n")
    os.chmod(slow, 0o755)
    cli.env["CC"] = slow
    pid = cli.start()
    assert dict(cli.servers())[pid]["client"] == "building"
    _wait_for(lambda: bool(_processes_running(["sleep", "30"])), what="the slow compiler")
    builders = _processes_running(["sleep", "30"])
    assert cli.run("server", "stop").returncode == 0
    assert _wait_gone(pid)
    for b in builders:
        assert _wait_gone(b, timeout=5), "the compiler outlived the server"
    assert not [n for n in os.listdir(cli.sockdir) if n.startswith("pycontain-client")]
