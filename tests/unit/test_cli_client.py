"""The C client of the warm CLI server (pycontain/cli/client.c), against a
fake server of the test's own: the frames it sends (argv, environment, cwd,
umask, stdio fds), what it does with each answer (X, N, nothing), signals it
forwards, the socket name it computes (equal to the launcher's), and the
shell line of bin/pycontain that finds it. No root, no real server; skipped
without a C compiler."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pycontain.cli import server
from tests.as_nobody import as_nobody
from tests.launcher import LAUNCHER

CC = server.client_compiler()
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler ($CC or cc)")


@pytest.fixture(scope="module")
def client() -> Iterator[str]:
    """client.c, built as the server builds it."""
    assert CC is not None
    d = tempfile.mkdtemp(prefix="pcc-", dir="/tmp")
    out = os.path.join(d, "client")
    try:
        for cmd in server.client_build_commands(CC, out):
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                break
        else:
            pytest.fail(f"client.c does not build: {subprocess.run(cmd, capture_output=True, text=True).stderr}")
        yield out
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Fake:
    """A fake CLI server on the socket the client computes for a fake
    interpreter (a script that records how it was exec'd: the fallback)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.sockdir = os.path.join(base, "cli")
        os.mkdir(self.sockdir, 0o700)
        self.python = os.path.join(base, "python")
        self.fallback_log = os.path.join(base, "fallback")
        with open(self.python, "w") as f:
            f.write(f'#!/bin/sh\nprintf "%s\\n" "$@" > {self.fallback_log}\nexit 42\n')
        os.chmod(self.python, 0o755)
        self.launcher = os.path.join(base, "launcher")
        Path(self.launcher).write_text("# a launcher\n")
        self.path = os.path.join(self.sockdir, server.socket_name(self.python, os.stat(self.launcher)))
        self.env = {"PATH": "/usr/bin:/bin", "PYCONTAIN_CLI_SERVER_DIR": self.sockdir, "ODD": "a=b\nc"}
        self.listener: socket.socket | None = None

    def listen(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.listener.settimeout(20)

    def fallback(self) -> list[str] | None:
        try:
            with open(self.fallback_log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return None


@pytest.fixture
def fake() -> Iterator[Fake]:
    base = tempfile.mkdtemp(prefix="pcf-", dir="/tmp")  # a short path: sockets need < 108 bytes
    f = Fake(base)
    try:
        yield f
    finally:
        if f.listener is not None:
            f.listener.close()
        shutil.rmtree(base, ignore_errors=True)


def serve_one(fake: Fake, handler: Callable[[socket.socket, bytes, bytes, list[int]], None]) -> threading.Thread:
    """Accept one connection, read its R frame (with fds), hand them to ``handler``."""
    fake.listen()
    assert fake.listener is not None
    listener = fake.listener
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                kind, body, fds = server.recv_frame_with_fds(conn)
                try:
                    handler(conn, kind, body, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
        except BaseException as e:  # reported by the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t


def run_client(client: str, fake: Fake, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("capture_output", True)
    return subprocess.run([client, fake.python, fake.launcher, *args], env=fake.env, timeout=30,
                          **kw)  # type: ignore[call-overload]


def finish(t: threading.Thread) -> None:
    t.join(20)
    assert not t.is_alive()
    assert not t.errors, t.errors  # type: ignore[attr-defined]


@needs_cc
def test_the_run_request_carries_argv_env_cwd_umask_and_stdio(client: str, fake: Fake, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def handler(conn: socket.socket, kind: bytes, body: bytes, fds: list[int]) -> None:
        seen["kind"] = kind
        seen["request"] = server.Request(body)
        seen["peer"] = server._peer_uid(conn)[0]
        seen["cwd"] = os.readlink(f"/proc/self/fd/{fds[0]}")
        seen["cwd_flags"] = int(Path(f"/proc/self/fdinfo/{fds[0]}").read_text().split("flags:")[1].split()[0], 8)
        seen["stdio"] = [os.fstat(fd).st_ino for fd in fds[1:]]
        conn.sendall(server.encode_frame(b"X", b"7"))

    t = serve_one(fake, handler)
    (tmp_path / "in").write_text("x")
    old = os.umask(0o027)
    try:
        with open(tmp_path / "in") as fin, open(tmp_path / "out", "w") as fout:
            r = run_client(client, fake, "run", "--rm", "sp ace", "\u00e9", "", cwd=str(tmp_path),
                           stdin=fin, stdout=fout, stderr=subprocess.DEVNULL, capture_output=False)
    finally:
        os.umask(old)
    finish(t)
    assert r.returncode == 7
    req = seen["request"]
    assert isinstance(req, server.Request)
    assert seen["kind"] == b"R"
    assert req.pid == seen["peer"]  # its own pid (the shell line execs it: the command's pid)
    assert req.umask == 0o027
    assert req.stdio == (0, 1, 2)
    assert req.argv == ["run", "--rm", "sp ace", "\u00e9", ""]
    assert req.env == {k.encode(): v.encode() for k, v in fake.env.items()}
    assert seen["cwd"] == str(tmp_path)
    assert seen["cwd_flags"] & os.O_PATH
    assert seen["stdio"] == [os.stat(tmp_path / "in").st_ino, os.stat(tmp_path / "out").st_ino,
                             os.stat(os.devnull).st_ino]


@needs_cc
def test_closed_stdio_is_left_out(client: str, fake: Fake) -> None:
    seen: list[tuple[int, ...]] = []

    def handler(conn: socket.socket, kind: bytes, body: bytes, fds: list[int]) -> None:
        seen.append(server.Request(body).stdio)
        assert len(fds) == 1 + len(seen[0])
        conn.sendall(server.encode_frame(b"X", b"0"))

    t = serve_one(fake, handler)
    # stdin closed in the client (not /dev/null): `0<&-`
    r = subprocess.run(["/bin/sh", "-c", 'exec "$@" 0<&-', "sh", client, fake.python, fake.launcher, "x"],
                       env=fake.env, capture_output=True, timeout=30)
    finish(t)
    assert r.returncode == 0 and seen == [(1, 2)]


@needs_cc
@pytest.mark.parametrize(("answer", "code"), [(b"0", 0), (b"3", 3), (b"255", 255), (b"-15", -15), (b"-9", -9),
                                              (b"-28", 128 + 28)])  # SIGWINCH does not kill: 128+N
def test_the_exit_status_is_the_workers(client: str, fake: Fake, answer: bytes, code: int) -> None:
    t = serve_one(fake, lambda conn, kind, body, fds: conn.sendall(server.encode_frame(b"X", answer)))
    r = run_client(client, fake, "x")
    finish(t)
    assert r.returncode == code
    assert fake.fallback() is None


@needs_cc
def test_a_refusal_runs_the_python_launcher_with_the_same_arguments(client: str, fake: Fake) -> None:
    def handler(conn: socket.socket, kind: bytes, body: bytes, fds: list[int]) -> None:
        conn.sendall(server.encode_frame(b"N", b"restart stale"))

    t = serve_one(fake, handler)
    r = run_client(client, fake, "run", "a b", "")
    finish(t)
    assert r.returncode == 42  # the fake interpreter's
    assert fake.fallback() == ["-I", "-S", fake.launcher, "run", "a b", ""]


@needs_cc
def test_no_server_runs_the_python_launcher(client: str, fake: Fake) -> None:
    # no socket file
    r = run_client(client, fake, "ps")
    assert (r.returncode, fake.fallback()) == (42, ["-I", "-S", fake.launcher, "ps"])
    os.unlink(fake.fallback_log)
    # a socket file nobody listens on
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(fake.path)
    dead.close()
    r = run_client(client, fake, "ps")
    assert (r.returncode, fake.fallback()) == (42, ["-I", "-S", fake.launcher, "ps"])
    os.unlink(fake.fallback_log)
    # the server turned off: the client does not even look
    os.unlink(fake.path)
    fake.listen()
    r = subprocess.run([client, fake.python, fake.launcher, "ps"], env=dict(fake.env, PYCONTAIN_CLI_SERVER=" Off "),
                       capture_output=True, timeout=30)
    assert (r.returncode, fake.fallback()) == (42, ["-I", "-S", fake.launcher, "ps"])
    # an interpreter that does not exist: the shell line's message and status
    r = subprocess.run([client, "/nonexistent/python", fake.launcher, "ps"], env=fake.env,
                       capture_output=True, timeout=30)
    assert r.returncode == 127 and b"cannot run /nonexistent/python" in r.stderr


@needs_cc
def test_a_server_that_goes_away_after_the_request_is_lost_not_retried(client: str, fake: Fake) -> None:
    # The command may have run: never run it a second time in-process.
    t = serve_one(fake, lambda conn, kind, body, fds: None)  # closes without an answer
    r = run_client(client, fake, "run", "x")
    finish(t)
    assert r.returncode == 1 and b"lost the CLI server" in r.stderr
    assert fake.fallback() is None


@needs_cc
def test_signals_are_forwarded_as_k_frames(client: str, fake: Fake) -> None:
    got: list[bytes] = []
    ready = threading.Event()

    def handler(conn: socket.socket, kind: bytes, body: bytes, fds: list[int]) -> None:
        ready.set()
        while len(got) < 3:
            frame = server.read_frame(conn)
            assert frame is not None and frame[0] == b"K"
            got.append(frame[1])
        conn.sendall(server.encode_frame(b"X", b"-2"))  # the worker died of the SIGINT

    t = serve_one(fake, handler)
    p = subprocess.Popen([client, fake.python, fake.launcher, "x"], env=fake.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert ready.wait(20)
        for sig in (signal.SIGWINCH, signal.SIGTERM, signal.SIGINT):
            os.kill(p.pid, sig)
            time.sleep(0.05)  # one at a time: the same signal pending twice is delivered once
        assert p.wait(timeout=20) == -signal.SIGINT
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        assert p.stderr is not None
        p.stderr.close()
    finish(t)
    assert got == [b"%d" % signal.SIGWINCH, b"%d" % signal.SIGTERM, b"%d" % signal.SIGINT]


@needs_cc
def test_signals_the_caller_ignored_stay_ignored(client: str, fake: Fake) -> None:
    # `nohup pycontain run ...`: SIGHUP ignored; the client must not hand it on.
    got: list[bytes] = []
    ready = threading.Event()

    def handler(conn: socket.socket, kind: bytes, body: bytes, fds: list[int]) -> None:
        ready.set()
        frame = server.read_frame(conn)
        assert frame is not None
        got.append(frame[1])
        conn.sendall(server.encode_frame(b"X", b"0"))

    t = serve_one(fake, handler)
    p = subprocess.Popen([client, fake.python, fake.launcher, "x"], env=fake.env,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        assert ready.wait(20)
        os.kill(p.pid, signal.SIGHUP)
        time.sleep(0.1)
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    finish(t)
    assert got == [b"%d" % signal.SIGTERM]


@needs_cc
def test_the_socket_name_is_the_launchers(client: str, tmp_path: Path) -> None:
    """The C computation of the socket path (interpreter as sys.executable
    will be, launcher's stat, directory rule) against the launcher's own, run
    by the interpreter spelled as the shell line may spell it."""
    venv_bin = os.path.dirname(sys.executable)
    name = os.path.basename(sys.executable)
    probe = ("import sys; ns = {'__name__': 'probe', '__file__': sys.argv[1]}; "
             "exec(compile(open(sys.argv[1]).read(), sys.argv[1], 'exec'), ns); "
             "print(ns['cli_server_socket'](ns['cli_server_dir']()))")
    cases = [  # (interpreter as passed, cwd, PATH)
        (sys.executable, "/", None),
        (os.path.relpath(sys.executable, "/"), "/", None),
        ("./" + os.path.relpath(sys.executable, "/"), "/", None),
        (venv_bin + "//./" + name, "/", None),
        (os.path.join(venv_bin, "..", os.path.basename(venv_bin), name), "/", None),
        ("/" + sys.executable, "/", None),  # "//" stays, by POSIX's leave
        ("../" + os.path.relpath(sys.executable, "/"), "/tmp", None),
        (os.path.relpath(venv_bin, "/") + "/../" + os.path.basename(venv_bin) + "/" + name, "/", None),
        (name, "/", f"{venv_bin}:/usr/bin:/bin"),
        (name, "/", f"{venv_bin}/./:/usr/bin:/bin"),
    ]
    for env in ({"PYCONTAIN_CLI_SERVER_DIR": str(tmp_path)}, {}, {"PYCONTAIN_CLI_SERVER": "1"}):
        for python, cwd, path in cases:
            e = dict(env, PATH=path or os.environ.get("PATH", "/usr/bin:/bin"))
            want = subprocess.run([python, "-I", "-S", "-c", probe, str(LAUNCHER)], env=e, cwd=cwd,
                                  capture_output=True, text=True, check=True).stdout
            got = subprocess.run([client, "--print-socket", python, str(LAUNCHER)], env=e, cwd=cwd,
                                 capture_output=True, text=True)
            assert (got.returncode, got.stdout) == (0, want), (python, cwd, env)
    # and the server module's rule
    want = os.path.join(str(tmp_path), server.socket_name(sys.executable, os.stat(LAUNCHER)))
    got = subprocess.run([client, "--print-socket", sys.executable, str(LAUNCHER)], capture_output=True,
                         text=True, env={"PYCONTAIN_CLI_SERVER_DIR": str(tmp_path)})
    assert got.stdout == want + "\n"
    for off in ("0", "no", " FALSE ", "off"):
        r = subprocess.run([client, "--print-socket", sys.executable, str(LAUNCHER)],
                           env={"PYCONTAIN_CLI_SERVER": off}, capture_output=True)
        assert r.returncode == 1 and r.stdout == b""


def test_the_shell_line_looks_for_the_servers_client_name() -> None:
    text = LAUNCHER.read_text()
    assert f"c=$d/{server.CLIENT_NAME} " in text


def _shell(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", str(LAUNCHER), *args], env=env, capture_output=True, text=True, timeout=30)


def test_the_shell_line_runs_only_a_client_of_ours(tmp_path: Path) -> None:
    """bin/pycontain's shell line, with a stand-in client (a script that
    prints its arguments): run when it is a file of ours in a directory of
    ours, with the interpreter and the launcher first; not otherwise."""
    d = tmp_path / "cli"
    d.mkdir(mode=0o700)
    fake = d / server.CLIENT_NAME
    fake.write_text('#!/bin/sh\necho "client $*"\n')
    fake.chmod(0o700)
    py = tmp_path / "py"
    py.write_text('#!/bin/sh\necho "python $*"\n')
    py.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYCONTAIN_PYTHON": str(py), "PYCONTAIN_CLI_SERVER_DIR": str(d)}
    assert _shell(env, "run", "a b").stdout == f"client {py} {LAUNCHER} run a b\n"
    # `server ...` and a server turned off (or set to anything but 1) go to Python
    assert _shell(env, "server", "status").stdout == f"python -I -S {LAUNCHER} server status\n"
    for value in ("0", "off", "yes"):
        assert _shell(dict(env, PYCONTAIN_CLI_SERVER=value), "ps").stdout == f"python -I -S {LAUNCHER} ps\n"
    assert _shell(dict(env, PYCONTAIN_CLI_SERVER="1"), "ps").stdout.startswith("client ")
    # not executable, a symlink, a directory that is a symlink: Python
    fake.chmod(0o600)
    assert _shell(env, "ps").stdout.startswith("python ")
    fake.chmod(0o700)
    link_dir = tmp_path / "link"
    link_dir.symlink_to(d)
    assert _shell(dict(env, PYCONTAIN_CLI_SERVER_DIR=str(link_dir)), "ps").stdout.startswith("python ")
    real = tmp_path / "real-client"
    fake.rename(real)
    fake.symlink_to(real)
    assert _shell(env, "ps").stdout.startswith("python ")
    fake.unlink()
    real.rename(fake)
    if os.geteuid() == 0:
        # another user's file, another user's directory
        os.chown(fake, 65534, 65534)
        assert _shell(env, "ps").stdout.startswith("python ")
        os.chown(fake, 0, 0)
        os.chown(d, 65534, 65534)
        assert _shell(env, "ps").stdout.startswith("python ")
        os.chown(d, 0, 0)
        assert _shell(env, "ps").stdout.startswith("client ")
    # no directory at all: Python
    env.pop("PYCONTAIN_CLI_SERVER_DIR")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "nowhere")
    # (root: /run/pycontain/cli, whose client, if any, finds no server for this interpreter)
    assert _shell(env, "ps").stdout == f"python -I -S {LAUNCHER} ps\n"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@needs_cc
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another uid")
def test_a_server_of_another_uid_gets_nothing(client: str, fake: Fake) -> None:
    # Our fds and environment are for a server of our own uid only.
    os.chmod(fake.base, 0o711)  # (mkdtemp's 0700 would keep that uid out altogether)
    os.chown(fake.sockdir, 65534, 65534)
    def listen(w: int) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(fake.path)
        os.chmod(fake.path, 0o777)
        s.listen(1)
        s.settimeout(20)
        os.write(w, b"ready\n")
        conn, _ = s.accept()
        conn.settimeout(20)
        os.write(w, b"got %d bytes" % len(conn.recv(1 << 16)))

    with as_nobody(listen) as f:
        assert f.readline() == b"ready\n"
        result = run_client(client, fake, "run", "x")
        told = f.read()
    assert told == b"got 0 bytes"  # not a byte of the request
    assert (result.returncode, fake.fallback()) == (42, ["-I", "-S", fake.launcher, "run", "x"])
