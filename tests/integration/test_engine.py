"""The engine's single-threaded child, on the real kernel (root)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from pycontain.engine import ChildSpec, start
from pycontain.errors import AlreadyExists, InvalidArgument, KernelError, PycontainError
from pycontain.kernel import nsfs

ALL_KINDS = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time")


def run_capture(**kw: object) -> tuple[int, str]:
    r, w = os.pipe()
    try:
        child = start(ChildSpec(stdout=w, **kw))  # type: ignore[arg-type]
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    return child.wait(), out


def ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (ln.partition(":") for ln in f)}


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


# -- exec, stdio, env, cwd ------------------------------------------------------------


def test_exec_and_returncodes() -> None:
    assert start(ChildSpec(argv=["true"])).wait() == 0
    assert start(ChildSpec(argv=["false"])).wait() == 1
    assert start(ChildSpec(argv=["sh", "-c", "exit 7"])).wait() == 7
    assert start(ChildSpec(argv=["sh", "-c", "kill -TERM $$"])).wait() == -signal.SIGTERM


def test_stdout_capture() -> None:
    code, out = run_capture(argv=["echo", "hello world"])
    assert (code, out) == (0, "hello world\n")


def test_env_and_cwd(tmp_path: object) -> None:
    code, out = run_capture(argv=["sh", "-c", 'echo "$FOO"; pwd; echo "${HOME-unset}"'],
                            env={"FOO": "bar baz", "PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))
    assert code == 0
    assert out.splitlines() == ["bar baz", str(tmp_path), "unset"]


def test_path_lookup_uses_the_child_env() -> None:
    with pytest.raises(KernelError) as info:
        start(ChildSpec(argv=["true"], env={"PATH": "/nonexistent"}))
    assert info.value.op == "execve"


def test_fds_closed_except_pass_fds() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    for fd in (r1, w1, r2, w2):
        os.set_inheritable(fd, True)  # would leak through exec without the engine's sweep
    try:
        child = start(ChildSpec(argv=["sleep", "10"], pass_fds=[r2]))
        try:
            fds = {int(x) for x in os.listdir(f"/proc/{child.pid}/fd")}
        finally:
            child.kill()
            child.wait()
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
    assert fds == {0, 1, 2, r2}


def test_signals_reset_in_child() -> None:
    child = start(ChildSpec(argv=["sleep", "10"]))
    try:
        st = proc_status(child.pid)
    finally:
        child.kill()
        child.wait()
    # Python ignores SIGPIPE/SIGXFSZ; the workload must start with nothing ignored or blocked.
    assert int(st["SigIgn"], 16) == 0
    assert int(st["SigBlk"], 16) == 0


# -- namespaces -----------------------------------------------------------------------


def test_new_namespaces_really_differ() -> None:
    child = start(ChildSpec(argv=["sleep", "10"], new=set(ALL_KINDS)))
    try:
        for kind in ALL_KINDS:
            assert ns_inode(child.pid, kind) != ns_inode("self", kind), kind
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL


def test_only_asked_namespaces_are_new() -> None:
    child = start(ChildSpec(argv=["sleep", "10"], new={"uts", "ipc"}))
    try:
        for kind in ALL_KINDS:
            same = ns_inode(child.pid, kind) == ns_inode("self", kind)
            assert same == (kind not in ("uts", "ipc")), kind
    finally:
        child.kill()
        child.wait()


def test_persist_then_join_netns(_private_state: str) -> None:
    path = os.path.join(_private_state, "netns", "x")
    assert start(ChildSpec(argv=["true"], new={"net"}, persist={"net": path})).wait() == 0
    try:
        inode = os.stat(path).st_ino
        assert inode != ns_inode("self", "net")
        child = start(ChildSpec(argv=["sleep", "10"], join=[("net", path)]))
        try:
            assert ns_inode(child.pid, "net") == inode
        finally:
            child.kill()
            child.wait()
        # and joining through /proc/PID/ns works the same
        other = start(ChildSpec(argv=["sleep", "10"], new={"net"}))
        try:
            joiner = start(ChildSpec(argv=["sleep", "10"], join=[("net", f"/proc/{other.pid}/ns/net")]))
            assert ns_inode(joiner.pid, "net") == ns_inode(other.pid, "net")
            joiner.kill()
            joiner.wait()
        finally:
            other.kill()
            other.wait()
    finally:
        assert nsfs.unbind_namespace(path)
    assert not os.path.exists(path)
    assert not nsfs.unbind_namespace(path)  # idempotent


def test_hostname_inside() -> None:
    code, out = run_capture(argv=["hostname"], new={"uts"}, hostname="box-1")
    assert (code, out) == (0, "box-1\n")
    assert os.uname().nodename != "box-1"


def test_pid_namespace_workload_is_pid1() -> None:
    code, out = run_capture(argv=["sh", "-c", "echo $$"], new={"pid"})
    assert (code, out) == (0, "1\n")


def test_pid_namespace_workload_is_our_child_no_relay() -> None:
    # The forking thread switches its children's pid namespace, forks, and
    # switches back: the workload is PID 1 inside and our own child outside.
    child = start(ChildSpec(argv=["sleep", "10"], new={"pid", "mnt"}))
    try:
        assert child.pid == child.relay_pid
        status = proc_status(child.pid)
        assert status["NSpid"].split() == [str(child.pid), "1"]
        parent = int(status["PPid"])  # we, or the zygote that forked it -- not a relay
        assert parent == os.getpid() or proc_status(parent)["PPid"] == str(os.getpid())
        assert proc_status(parent)["NSpid"].split() == [str(parent)]
        with open(f"/proc/{child.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"sleep"
        # and this thread's children go into our own pid namespace again
        assert os.readlink("/proc/thread-self/ns/pid_for_children") == os.readlink("/proc/self/ns/pid")
    finally:
        child.kill()
        assert child.wait() == -signal.SIGKILL


def test_pid_namespace_from_a_busy_multithreaded_caller() -> None:
    # unshare(CLONE_NEWPID) is per thread: other threads forking meanwhile stay in our namespace.
    import threading

    stop = threading.Event()
    seen: list[str] = []

    def other() -> None:
        while not stop.is_set():
            c = start(ChildSpec(argv=["sh", "-c", "echo $$ > /dev/null"]))
            try:
                seen.append(os.readlink(f"/proc/{c.pid}/ns/pid"))
            except FileNotFoundError:  # it exited first
                seen.append("gone")
            finally:
                c.wait()

    t = threading.Thread(target=other)
    t.start()
    try:
        for _ in range(20):
            code, out = run_capture(argv=["sh", "-c", "echo $$"], new={"pid"})
            assert (code, out) == (0, "1\n")
    finally:
        stop.set()
        t.join()
    own = os.readlink("/proc/self/ns/pid")
    assert seen and all(s in (own, "gone") for s in seen)


def test_pid_namespace_with_user_namespace_uses_a_relay() -> None:
    # The new user namespace must own the pid namespace, so the child makes
    # both and forks the workload: a relay passes its status on.
    child = start(ChildSpec(argv=["sleep", "10"], new={"user", "pid", "mnt"}, uid_map="0 100000 65536",
                            gid_map="0 100000 65536"))
    try:
        assert child.pid != child.relay_pid
        assert proc_status(child.pid)["NSpid"].split() == [str(child.pid), "1"]
    finally:
        child.kill()
        assert child.wait() == -signal.SIGKILL  # the relay re-raises the workload's signal


def test_pid_namespace_exit_code_relayed() -> None:
    assert start(ChildSpec(argv=["sh", "-c", "exit 3"], new={"pid"})).wait() == 3


def test_user_namespace_maps() -> None:
    r, w = os.pipe()
    child = start(ChildSpec(argv=["sh", "-c", "id -u; id -g; exec sleep 10"], stdout=w, new={"user", "uts"},
                            uid_map="0 100000 65536", gid_map="0 100000 65536", hostname="inside"))
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            first = f.readline().decode().strip(), f.readline().decode().strip()
            assert first == ("0", "0")
            uids = proc_status(child.pid)["Uid"].split()
            gids = proc_status(child.pid)["Gid"].split()
            assert uids == ["100000"] * 4
            assert gids == ["100000"] * 4
            assert ns_inode(child.pid, "user") != ns_inode("self", "user")
    finally:
        child.kill()
        child.wait()


# -- cgroups --------------------------------------------------------------------------


@pytest.fixture
def pids_cgroup() -> Iterator[str]:
    base = "/sys/fs/cgroup/pids"
    if not os.path.isdir(base):
        pytest.skip("no v1 pids hierarchy on this host")
    parent = os.path.join(base, "pycontain")
    made_parent = not os.path.isdir(parent)
    if made_parent:
        os.mkdir(parent)
    path = os.path.join(parent, "engine-test-" + uuid.uuid4().hex[:8])
    os.mkdir(path)
    try:
        yield path
    finally:
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if made_parent:
            try:
                os.rmdir(parent)
            except OSError:
                pass  # someone else's cgroups live there now


def test_cgroup_procs_joined_before_exec(pids_cgroup: str) -> None:
    rel = pids_cgroup[len("/sys/fs/cgroup/pids"):]
    code, out = run_capture(argv=["cat", "/proc/self/cgroup"], cgroup_procs=[pids_cgroup + "/cgroup.procs"])
    assert code == 0
    lines = [ln for ln in out.splitlines() if ":pids:" in ln]
    assert lines == [f"{lines[0].split(':')[0]}:pids:{rel}"]
    # the caller was not moved
    with open("/proc/self/cgroup") as f:
        assert rel not in f.read()


@pytest.mark.parametrize("user", [False, True])
def test_cgroup_procs_with_pid_namespace(pids_cgroup: str, user: bool) -> None:
    extra = {"new": {"pid", "cgroup", "user"}, "uid_map": "0 100000 65536", "gid_map": "0 100000 65536"} \
        if user else {"new": {"pid", "cgroup"}}
    r, w = os.pipe()
    # shell builtins only: no child process may sit in the cgroup when we count
    script = "while read -r line; do echo $line; done </proc/self/cgroup; echo end; exec sleep 10"
    child = start(ChildSpec(argv=["sh", "-c", script], stdout=w,
                            cgroup_procs=[pids_cgroup + "/cgroup.procs"], **extra))  # type: ignore[arg-type]
    os.close(w)
    try:
        with os.fdopen(r) as f:
            inside = list(iter(f.readline, "end\n"))
        with open(pids_cgroup + "/cgroup.procs") as f:
            members = {int(x) for x in f.read().split()}
        # Only the workload is in the cgroup (the relay is not counted in pids.current) ...
        assert members == {child.pid}
        with open(pids_cgroup + "/pids.current") as f:
            assert int(f.read()) == 1
        # ... and its cgroup namespace is rooted there.
        assert any(ln.rstrip().endswith(":pids:/") for ln in inside), inside
    finally:
        child.kill()
        child.wait()


def test_bad_cgroup_path_fails_cleanly() -> None:
    with pytest.raises(KernelError) as info:
        start(ChildSpec(argv=["true"], cgroup_procs=["/sys/fs/cgroup/pids/pycontain/no-such-group/cgroup.procs"]))
    assert info.value.path.endswith("no-such-group/cgroup.procs")


# -- target ---------------------------------------------------------------------------


def _double(x: int) -> int:
    return x * 2


def test_target_returns_values() -> None:
    assert start(ChildSpec(target=_double, args=(21,))).result() == 42
    big = start(ChildSpec(target=lambda n: b"x" * n, kwargs={"n": 5 << 20}))
    assert big.wait() == 0  # wait() drains the pipe: no deadlock on a large result
    assert len(big.result()) == 5 << 20


def test_target_sees_namespaces() -> None:
    def inside() -> tuple[int, str]:
        return os.getpid(), os.uname().nodename

    assert start(ChildSpec(target=inside, new={"pid", "uts"}, hostname="py")).result() == (1, "py")


class Boom(Exception):
    pass


def _raise() -> None:
    raise Boom("remote failure")


def test_target_exception_reraised_with_remote_traceback() -> None:
    child = start(ChildSpec(target=_raise))
    with pytest.raises(Boom, match="remote failure") as info:
        child.result()
    assert any("_raise" in note for note in getattr(info.value, "__notes__", []))
    assert child.returncode == 1


# -- failures leave nothing behind ----------------------------------------------------


def test_join_nonexistent_path_raises_typed() -> None:
    with pytest.raises(KernelError) as info:
        start(ChildSpec(argv=["true"], join=[("net", "/nonexistent/ns")]))
    assert info.value.path == "/nonexistent/ns"
    assert info.value.errno == 2


def test_join_wrong_kind_raises_typed() -> None:
    with pytest.raises(KernelError) as info:
        start(ChildSpec(argv=["true"], join=[("net", "/proc/self/ns/uts")]))
    assert info.value.op == "setns net"


def test_invalid_hostname_rejected_before_fork() -> None:
    with pytest.raises(InvalidArgument):
        start(ChildSpec(argv=["true"], hostname="x" * 65, new={"uts"}))
    with pytest.raises(InvalidArgument):
        ChildSpec(argv=["true"], hostname="box")


def test_bad_map_fails_cleanly(_private_state: str) -> None:
    path = os.path.join(_private_state, "userns")
    # outside range beyond what exists is refused by the kernel (EINVAL for overlapping ranges)
    with pytest.raises(KernelError) as info:
        start(ChildSpec(argv=["true"], new={"user", "net"}, uid_map="0 100000 10\n5 200000 10",
                        persist={"net": path}))
    assert "uid_map" in (info.value.op or "")
    assert not os.path.exists(path)


def test_persist_failure_unbinds_earlier(_private_state: str) -> None:
    taken = os.path.join(_private_state, "taken")
    with open(taken, "w"):
        pass
    first = os.path.join(_private_state, "a-net")
    with pytest.raises(AlreadyExists):
        start(ChildSpec(argv=["true"], new={"net", "uts"}, persist={"net": first, "uts": taken}))
    assert not os.path.exists(first)
    assert os.path.exists(taken)


def test_exec_failure_in_pid_namespace() -> None:
    with pytest.raises(KernelError) as info:
        start(ChildSpec(argv=["/nonexistent/prog"], new={"pid"}))
    assert info.value.op == "execve"


def test_preexec_error_reaches_caller() -> None:
    def bad() -> None:
        raise InvalidArgument("nope", field="x", value=1)

    with pytest.raises(InvalidArgument, match="nope"):
        start(ChildSpec(argv=["true"], preexec=bad))


# -- lifetime -------------------------------------------------------------------------


def test_wait_timeout() -> None:
    from pycontain.errors import Timeout

    child = start(ChildSpec(argv=["sleep", "10"]))
    try:
        with pytest.raises(Timeout):
            child.wait(timeout=0.05)
        assert child.poll() is None
    finally:
        child.kill()
    assert child.wait(timeout=5) == -signal.SIGKILL


_INTERMEDIATE = textwrap.dedent(
    """
    import sys, time
    from pycontain.engine import ChildSpec, start
    new = set(sys.argv[1:])
    c = start(ChildSpec(argv=["sleep", "100"], new=new))
    print(c.pid, c.relay_pid, flush=True)
    time.sleep(100)
    """
)


@pytest.mark.parametrize("new", [[], ["pid", "uts"]])
def test_pdeathsig_child_dies_with_creator(new: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _INTERMEDIATE, *new], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the intermediate did not start its child"
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert all(os.path.exists(f"/proc/{p}") for p in pids)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    for p in pids:
        assert wait_gone(p), f"pid {p} outlived its creator"


def test_many_starts_with_busy_threads() -> None:
    stop = threading.Event()

    def spin(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 500 == 0:
                print(f"thread {i} at {n}", flush=True)  # holds stdout's lock often

    def watchdog(_sig: int, _frame: object) -> None:
        raise AssertionError("start() or wait() hung with busy threads")

    threads = [threading.Thread(target=spin, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    old = signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(120)  # interrupts a hung read/waitpid in this (main) thread
    try:
        for i in range(200):
            new = {"uts", "ipc"} if i % 2 else set()
            child = start(ChildSpec(argv=["true"], new=new))
            assert child.wait() == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        stop.set()
        for t in threads:
            t.join()


def test_setup_error_is_a_pycontain_error_with_fields() -> None:
    with pytest.raises(PycontainError) as info:
        start(ChildSpec(argv=["true"], new={"uts"}, cwd="/nonexistent-dir"))
    assert info.value.op == "chdir"
    assert info.value.path == "/nonexistent-dir"


_TRAP = ["sh", "-c", 'trap "exit 5" TERM; echo ready; while :; do sleep 0.05; done']


@pytest.mark.parametrize("via_relay", [False, True])
def test_signals_reach_pid1_workload(via_relay: bool) -> None:
    r, w = os.pipe()
    child = start(ChildSpec(argv=_TRAP, new={"pid"}, stdout=w))
    os.close(w)
    with os.fdopen(r) as f:
        assert f.readline() == "ready\n"  # the trap is set
        if via_relay:
            os.kill(child.relay_pid, signal.SIGTERM)  # the relay forwards it
        else:
            child.terminate()
        assert child.wait(timeout=10) == 5


def _gc_state() -> tuple[bool, int]:
    import gc

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    for _ in range(1000):
        Cycle()
    return gc.isenabled(), gc.collect()


def test_target_runs_with_gc_enabled() -> None:
    enabled, _ = start(ChildSpec(target=_gc_state)).result()
    assert enabled


def test_concurrent_starts_from_threads() -> None:
    errors: list[BaseException] = []
    outputs: dict[int, str] = {}

    def worker(n: int) -> None:
        try:
            for i in range(15):
                code, out = run_capture(argv=["echo", f"{n}-{i}"], new={"uts"} if i % 3 == 0 else set())
                assert code == 0
                outputs[n * 100 + i] = out
        except BaseException as e:  # noqa: B036 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a start() hung"
    assert not errors, errors
    assert outputs == {n * 100 + i: f"{n}-{i}\n" for n in range(4) for i in range(15)}


def test_dropped_children_are_reaped_later() -> None:
    import gc

    child = start(ChildSpec(argv=["true"]))
    pid = child.pid
    del child
    gc.collect()
    time.sleep(0.2)
    start(ChildSpec(argv=["true"])).wait()  # reaps the dropped one (if its status is in)
    from pycontain.engine import process

    deadline = time.monotonic() + 5
    while process._ORPHANS and time.monotonic() < deadline:
        time.sleep(0.05)
        process._reap_orphans()
    assert not process._ORPHANS
    assert not os.path.exists(f"/proc/{pid}")  # gone, not a zombie


def test_affinity_applies_before_exec() -> None:
    cpu = min(os.sched_getaffinity(0))
    code, out = run_capture(argv=["grep", "Cpus_allowed_list", "/proc/self/status"], affinity={cpu})
    assert code == 0 and out.split() == ["Cpus_allowed_list:", str(cpu)]
    with pytest.raises(KernelError) as info:
        start(ChildSpec(argv=["true"], affinity={4095}))
    assert info.value.op == "sched_setaffinity"


def test_cwd_through_a_leaked_fd_is_refused(tmp_path: object) -> None:
    # runc's CVE-2024-21626: a workdir of /proc/self/fd/N must not reach a
    # directory fd of the caller; the engine closes fds before chdir.
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(KernelError) as info:
            start(ChildSpec(argv=["pwd"], cwd=f"/proc/self/fd/{fd}"))
        assert info.value.op == "chdir"
        # passed on purpose, it is the caller's choice
        code, out = run_capture(argv=["pwd"], cwd=f"/proc/self/fd/{fd}", pass_fds=[fd])
        assert (code, out) == (0, f"{tmp_path}\n")
    finally:
        os.close(fd)


def test_closed_fds_are_invalid_arguments() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(InvalidArgument) as info:
        start(ChildSpec(argv=["true"], stdout=w))
    assert info.value.field == "stdout" and info.value.value == w
    with pytest.raises(InvalidArgument) as info:
        start(ChildSpec(argv=["true"], pass_fds=[r]))
    assert info.value.field == "pass_fds"


def test_a_new_net_namespace_has_its_loopback_up() -> None:
    # As with Docker, podman and bwrap --unshare-net; the same whether the
    # child is forked at once or (through a zygote) was made ahead.
    out_r, out_w = os.pipe()
    child = start(ChildSpec(argv=["ip", "-o", "link", "show"], new={"net"}, stdout=out_w))
    os.close(out_w)
    with os.fdopen(out_r) as f:
        links = f.read().splitlines()
    assert child.wait() == 0
    assert len(links) == 1 and ": lo: <LOOPBACK,UP,LOWER_UP>" in links[0], links
