"""Containers on the real kernel: lifecycle, isolation defaults seen from
inside, exit status, OOM, and bad input. Image: "host" (copy-on-write)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import pycontain
from pycontain.container import Container, get
from pycontain.errors import AlreadyExists, InvalidArgument, PycontainError, Timeout
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS
from pycontain.kernel.syscalls import cap_mask
from pycontain.statedir import read_json


def sh(script: str, **kw: object) -> pycontain.container.RunResult:
    return pycontain.run(["sh", "-c", script], **kw)


def test_run_captures_stdout_stderr_and_exit_code() -> None:
    r = sh("echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert not r.oom_killed
    assert {"t_s", "cpu_s", "mem_bytes"} <= set(r.stats.columns)


def test_follow_output_live() -> None:
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    sh("echo one; sleep 0.6; echo two", on_stdout=lambda s: seen.append((time.monotonic() - t0, s)))
    text = "".join(s for _, s in seen)
    assert text == "one\ntwo\n"
    first = next(t for t, s in seen if "one" in s)
    assert first < 0.5, "the first line must arrive before the container ends"


def test_signal_exit_status_is_128_plus_n() -> None:
    assert sh("kill -TERM $$").returncode == 128 + signal.SIGTERM


def test_namespaces_are_new() -> None:
    r = sh("for k in pid mnt uts ipc net cgroup; do echo $k $(stat -L -c %i /proc/self/ns/$k); done")
    inside = dict(line.split() for line in r.stdout.splitlines())
    for kind, inode in inside.items():
        assert int(inode) != os.stat(f"/proc/self/ns/{kind}").st_ino, kind


def test_only_loopback_and_it_is_up() -> None:
    r = sh("cat /proc/net/dev; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags")
    ifaces = [ln.split(":")[0].strip() for ln in r.stdout.splitlines()[2:] if ":" in ln]
    assert ifaces == ["lo"]
    assert int(r.stdout.split()[-1], 16) & 1  # IFF_UP


def test_pid_namespace_and_fresh_proc() -> None:
    r = sh("echo $$; ls -d /proc/[0-9]* | wc -l; cat /proc/1/status | grep PPid")
    lines = r.stdout.splitlines()
    assert int(lines[0]) == 2  # PID 1 is the init, the command its child
    assert int(lines[1]) <= 4  # init, sh, ls (and wc): nothing of the host
    assert lines[2].split() == ["PPid:", "0"]


def test_old_root_is_gone_and_mounts_are_few() -> None:
    r = sh("cat /proc/self/mountinfo; echo; cat /proc/self/cgroup")
    info, _, cgroup = r.stdout.partition("\n\n")
    lines = [ln.split() for ln in info.splitlines()]
    points = [f[4] for f in lines]
    assert points[0] == "/"
    assert not {"/work", "/old_root", "/.pivot", "/run", "/tmp"} & set(points)
    # The container sees only its own cgroups (cgroup namespace), read-only.
    for f in lines:
        if f[4].startswith("/sys/fs/cgroup/"):
            assert "ro" in f[5].split(","), f
    assert all(line.endswith(":/") for line in cgroup.split())


def test_minimal_dev() -> None:
    r = sh("ls /dev | tr '\\n' ' '")
    assert set(r.stdout.split()) <= {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx",
                                     "shm", "mqueue", "fd", "stdin", "stdout", "stderr", "console"}
    assert "sda" not in r.stdout and "vda" not in r.stdout and "kmsg" not in r.stdout


def test_sys_and_cgroupfs_read_only() -> None:
    r = sh("touch /sys/x; echo 1 > /sys/fs/cgroup/x; echo done")
    assert (r.stdout + r.stderr).count("Read-only file system") == 2


def test_masked_and_read_only_paths() -> None:
    # This kernel has no /proc/kcore or /proc/sysrq-trigger; test the masked
    # and read-only paths it does have.
    assert os.path.exists("/proc/keys") and os.path.exists("/proc/timer_list")
    r = sh("cat /proc/keys | wc -c; cat /proc/timer_list | wc -c; ls /proc/acpi | wc -l; "
           "echo 1 > /proc/sys/kernel/domainname; echo x")
    assert r.stdout.split()[:3] == ["0", "0", "0"]
    assert "Read-only file system" in r.stderr


def test_capabilities_nnp_seccomp() -> None:
    r = sh("grep -E '^(CapInh|CapEff|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status")
    st = dict(line.split(":") for line in r.stdout.splitlines())
    assert int(st["CapEff"], 16) == cap_mask(DOCKER_DEFAULT_CAPS)
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert st["NoNewPrivs"].strip() == "1" and st["Seccomp"].strip() == "2"


def test_dangerous_syscalls_refused() -> None:
    r = sh("mount -t tmpfs x /mnt 2>&1; unshare -U true 2>&1; echo end")
    assert "permission denied" in r.stdout.lower() or "not permitted" in r.stdout.lower()
    assert r.stdout.lower().count("not permitted") + r.stdout.lower().count("permission denied") >= 2


def test_inherited_fds_closed() -> None:
    leak = os.open("/etc/hostname", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(leak, True)
    try:
        r = sh("ls /proc/self/fd | tr '\\n' ' '")
    finally:
        os.close(leak)
    assert set(r.stdout.split()) <= {"0", "1", "2", "3"}  # 3: ls's own directory fd


def test_pid1_reaps_orphans() -> None:
    script = "sh -c 'sleep 0.2 & exit 0'; sleep 0.8; grep -l zombie /proc/[0-9]*/status 2>/dev/null | wc -l; " \
             "cat /proc/[0-9]*/stat | awk '{print $3}' | grep -c Z || true"
    r = sh(script)
    assert r.stdout.split()[-1] == "0"


def test_oom_reported_faithfully() -> None:
    r = pycontain.run(["python3", "-c", "b = bytearray(256 << 20); print(len(b))"], memory="32M")
    assert r.oom_killed
    assert r.returncode == 137


def test_lifecycle_exec_pause_resume_stop() -> None:
    with Container(command=["sleep", "60"], name="lifecycle") as c:
        assert c.status == "running" and c.pid
        assert c.exec(["sh", "-c", "test $(cat /proc/1/comm) != sleep && exit 7"]) == 7
        c.pause()
        assert c.status == "paused"
        c.resume()
        assert c.status == "running"
        assert c.call(os.getpid) != c.pid
        code = c.stop(timeout=5)
        assert code == 128 + signal.SIGTERM
        assert c.status == "exited"
        with pytest.raises(InvalidArgument):
            c.exec(["true"])


def test_call_returns_values_and_remote_errors() -> None:
    with Container(command=["sleep", "30"]) as c:
        assert c.call(sum, [1, 2, 3]) == 6
        with pytest.raises(ZeroDivisionError) as info:
            c.call(lambda: 1 / 0)
        assert "ZeroDivisionError" in str(info.value.__cause__ or info.value) or info.value


def test_wait_timeout_and_kill() -> None:
    with Container(command=["sleep", "30"]) as c:
        with pytest.raises(Timeout):
            c.wait(timeout=0.2)
        c.kill("KILL")
        assert c.wait(5) == 137
        with pytest.raises(InvalidArgument):
            c.kill("SIGNOPE")


def test_duplicate_name_and_bad_input_leave_nothing() -> None:
    c = Container(command=["true"], name="dup")
    try:
        with pytest.raises(AlreadyExists):
            Container(command=["true"], name="dup")
    finally:
        c.remove()
    for bad in ({"name": "../x"}, {"env": {"A=B": "1"}}, {"command": []}, {"volumes": ["/tmp:/proc"]},
                {"memory": "32bm"}):
        with pytest.raises(InvalidArgument):
            Container(**bad)
    assert pycontain.containers().empty


def test_failed_start_leaves_nothing() -> None:
    c = Container(command=["true"], volumes={"/tmp": "/mnt/x"}, workdir="/nonexistent/dir")
    try:
        c.start()
        c.wait(5)
    except PycontainError:
        pass
    finally:
        c.remove(force=True)


def test_containers_seen_from_another_process() -> None:
    with Container(command=["sleep", "30"], name="visible"):
        code = textwrap.dedent("""
            import pycontain
            df = pycontain.containers()
            row = df[df.name == "visible"].iloc[0]
            print(row.status, row.orphan)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ,
                             check=True).stdout
        assert out.split() == ["running", "False"]


def test_a_killed_pid1_not_yet_reaped_is_exited() -> None:
    # SIGKILL leaves no exit file, and until its parent reaps it PID 1 is a
    # zombie that still holds its pid: containers() must call it exited.
    c = Container(command=["sleep", "30"])
    try:
        c.start()
        with open(f"/proc/{c.pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        if parent != os.getpid():
            os.kill(parent, signal.SIGSTOP)  # our zygote: it cannot reap meanwhile
        try:
            os.kill(c.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not open(f"/proc/{c.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            st = get(c.name)
            assert (st["status"], st["exit_code"]) == ("exited", 128 + signal.SIGKILL)
            row = pycontain.containers().set_index("name").loc[c.name]
            assert row.status == "exited"
        finally:
            if parent != os.getpid():
                os.kill(parent, signal.SIGCONT)
        assert c.wait(10) == 128 + signal.SIGKILL
    finally:
        c.remove(force=True)


def test_exit_status_seen_from_another_process() -> None:
    """The creator does not rewrite the state at exit when PID 1 wrote the
    ``exit`` file; other processes read it from there (and 137 when PID 1
    was killed, which the creator records)."""
    code = textwrap.dedent("""
        import sys, pycontain
        from pycontain.container import get
        st = get(sys.argv[1])
        print(st["status"], st["exit_code"], pycontain.Container.open(sys.argv[1]).returncode)
    """)

    def seen(name: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, env=os.environ,
                              check=True).stdout.split()

    with Container(command=["sh", "-c", "exit 3"], name="exits-3") as c:
        assert c.wait(timeout=30) == 3
        assert seen("exits-3") == ["exited", "3", "3"]
    with Container(command=["sleep", "30"], name="killed") as c:
        c.kill(signal.SIGKILL)
        assert c.wait(timeout=30) == 137
        assert seen("killed") == ["exited", "137", "137"]


def test_dies_with_its_creator() -> None:
    code = textwrap.dedent("""
        import sys, pycontain
        c = pycontain.Container(command=["sleep", "60"], name="child-of-doomed")
        c.start()
        print(c.pid, flush=True)
        sys.stdin.read()
    """)
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, env=os.environ) as p:
        assert p.stdout is not None
        line = p.stdout.readline()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    pid = int(line)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    # Its zygote collects what it left once the creator is gone (it did not
    # close the zygote); cleanup_orphans() finds whatever is still there.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not pycontain.containers().empty:
        time.sleep(0.05)
    pycontain.container.cleanup_orphans()
    assert pycontain.containers().empty


def _report_inside(path: str) -> int:
    import socket

    with open(path, "w") as f:
        f.write(f"{os.getpid()} {socket.gethostname()} {'_SET_AT_RUN_TIME' in globals()}")
    return 5


def test_start_python_from_a_zygote_runs_inside_without_the_callers_memory() -> None:
    from pycontain.engine import Zygote

    globals()["_SET_AT_RUN_TIME"] = 1  # only in this process's memory
    out = f"/tmp/pycontain-test-{os.getpid()}.txt"
    try:
        with Zygote() as z:
            c = Container(volumes=["/tmp:/mnt/host-tmp"], name="py-zygote")
            try:
                c.start_python(_report_inside, ("/mnt/host-tmp/" + os.path.basename(out),), zygote=z)
                assert c.wait(10) == 5
            finally:
                c.remove(force=True)
        with open(out) as f:
            pid, host, seen = f.read().split()
        # PID 2: the container's init is PID 1. The function ran in a fork of
        # the zygote, which imported this module afresh: what the caller set
        # at run time is not there (a fork of the caller would see it).
        assert (pid, host, seen) == ("2", "py-zygote", "False")
    finally:
        del globals()["_SET_AT_RUN_TIME"]
        if os.path.exists(out):
            os.unlink(out)


def test_status_and_remove_survive_the_zygote_going_away(monkeypatch: pytest.MonkeyPatch) -> None:
    # At interpreter exit a zygote may close before the containers it forked
    # are removed: its children die with it (PR_SET_PDEATHSIG), and their
    # statuses go with it; status, wait and remove still work.
    from pycontain.engine import Zygote

    z = Zygote()
    monkeypatch.setattr(pycontain.container, "_fork_source", lambda: z)
    c = Container(command=["sleep", "30"], name="orphaned-by-zygote")
    try:
        c.start()
        assert c.status == "running"
        z.close()
        assert c.wait(10) == 128 + signal.SIGKILL
        assert c.status == "exited"
    finally:
        c.remove(force=True)
        z.close()
    assert pycontain.containers().empty


def test_remove_keeps_the_standing_parent_cgroup() -> None:
    from pycontain.cgroup import Cgroup

    c = Container(command=["true"])
    c.start()
    c.wait(timeout=30)
    assert c.cgroup is not None
    dirs = [p.rsplit("/", 1)[0] for p in c.cgroup.procs_files]
    c.remove()
    for d in dirs:
        assert not os.path.exists(d)
        assert os.path.basename(os.path.dirname(d)) == "containers" and os.path.isdir(os.path.dirname(d))
    # Other nested parents still go with their last cgroup.
    cg = Cgroup("pruned-child", parent="pycontain/prune-test")
    parents = [os.path.dirname(p.rsplit("/", 1)[0]) for p in cg.procs_files]
    cg.remove()
    assert not any(os.path.exists(p) for p in parents)


def test_root_overlay_is_volatile() -> None:
    # No sync of the host's filesystem when the container's last process
    # exits (see storage_overlay); the writable layer is thrown away anyway.
    r = sh("awk '$5 == \"/\" {print}' /proc/self/mountinfo")
    root = r.stdout.strip().splitlines()[-1]
    fstype, _source, options = root.split(" - ")[1].split()
    assert fstype == "overlay"
    # (Newer kernels show the option as fsync=volatile.)
    assert {"volatile", "fsync=volatile"} & set(options.split(",")), options


def test_wait_learns_the_exit_from_pid1_and_the_zygote_keeps_no_status() -> None:
    # wait() reads PID 1's exit file once its pidfd says it is gone; the
    # zygote's own word on it is dropped when it comes, never kept.
    zygote = pycontain.container._fork_source()
    if zygote is None:
        pytest.skip("containers fork from the caller here")
    for code in (0, 3, 5):
        with Container(command=["sh", "-c", f"exit {code}"]) as c:
            assert c.wait(timeout=30) == code
    with Container(command=["true"]) as c:  # its start reads what the zygote sent meanwhile
        assert c.wait(timeout=30) == 0
    assert zygote._statuses == {}
    assert len(zygote._forgotten) <= 1


def test_remove_deletes_what_it_expects_without_a_tree_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    # The writable layer's and the state's directories hold known entries
    # (overlay's volatile marker too): removed one syscall each.
    import shutil

    c = Container(command=["true"])
    c.start()
    assert c.wait(timeout=30) == 0
    walked: list[str] = []
    real = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: (walked.append(str(path)), real(path, *a, **k)))
    c.remove()
    monkeypatch.undo()
    assert walked == []
    assert not c._state_path.exists() and not c._layers_path().exists()


def test_start_makes_only_the_files_it_needs() -> None:
    # Every create costs 0.1-1 ms on this host's ext4: the start writes its
    # state in place (same inode, no temporary file) and mounts the root over
    # the layer's own directory (no mount-point directory).
    c = Container(command=["sleep", "30"])
    try:
        state = c._state_path / "state.json"
        ino = state.stat().st_ino
        assert sorted(os.listdir(c._state_path)) == ["state.json"]
        c.start()
        deadline = time.monotonic() + 10
        while read_json(state)["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_json(state)["pid"] == c.pid
        assert state.stat().st_ino == ino
        assert sorted(os.listdir(c._state_path)) == ["exit", "state.json"]
        assert sorted(os.listdir(c._layers_path())) == ["rootfs.json", "upper", "work"]
        # The root is that directory, seen from inside: the container's own
        # writes land in upper/.
        assert c.exec(["sh", "-c", "echo hi > /made-here"]) == 0
        assert (c._layers_path() / "upper" / "made-here").read_text() == "hi\n"
    finally:
        c.remove(force=True)


def _spares() -> list[str]:
    from pycontain.statedir import containers_dir

    return sorted(n for n in os.listdir(containers_dir()) if n.startswith(".spare-"))


def test_a_removed_containers_state_directory_serves_the_next_one() -> None:
    # No inode made or freed for the state of the next container
    # (container._StateSpares): its directory and files are the last one's.
    with Container(command=["true"]) as c:
        assert c.wait(timeout=30) == 0
        first = (c._state_path / "state.json").stat().st_ino
    assert len(_spares()) == 1
    assert pycontain.containers().empty  # a spare is no container
    c2 = Container(command=["sh", "-c", "exit 3"], name="second")
    try:
        assert _spares() == []
        assert (c2._state_path / "state.json").stat().st_ino == first
        assert (c2._exit_path.read_bytes(), get("second")["status"]) == (b"", "created")
        c2.start()
        assert c2.wait(timeout=30) == 3
        st = get("second")
        assert (st["name"], st["status"], st["exit_code"]) == ("second", "exited", 3)
        assert list(pycontain.containers()["name"]) == ["second"]
    finally:
        c2.remove()
    assert len(_spares()) == 1


def test_a_spare_never_takes_a_name_in_use() -> None:
    with Container(command=["true"]) as c:
        c.wait(timeout=30)
    assert len(_spares()) == 1
    with Container(command=["true"], name="taken"):
        pass  # (it took the spare)
    with Container(command=["true"]) as c:  # makes one again
        c.wait(timeout=30)
    keep = Container(command=["true"], name="busy")
    try:
        assert _spares() == []
        with Container(command=["true"]) as c:
            c.wait(timeout=30)
        assert len(_spares()) == 1
        with pytest.raises(AlreadyExists):
            Container(command=["true"], name="busy")
        assert len(_spares()) == 1  # still there for the next one
        assert get("busy")["status"] == "created"
    finally:
        keep.remove()


def test_spares_go_at_exit_or_with_their_dead_process() -> None:
    from pycontain.container_gc import collect

    code = ("import os, sys, pycontain\n"
            "pycontain.run(['true'])\n"
            "if sys.argv[1] == 'crash': os._exit(0)  # no atexit: the spare stays behind\n")
    subprocess.run([sys.executable, "-c", code, "exit"], env=os.environ, check=True, timeout=60)
    assert _spares() == []
    subprocess.run([sys.executable, "-c", code, "crash"], env=os.environ, check=True, timeout=60)
    [left] = _spares()
    assert pycontain.containers().empty
    assert left in collect().containers
    assert _spares() == []


def test_a_logged_containers_directory_is_not_kept() -> None:
    c = Container(command=["sh", "-c", "echo hi"])
    c.start(log=True)
    assert c.wait(timeout=30) == 0
    assert c.logs() == "hi\n"
    c.remove()
    assert _spares() == []


def test_a_process_prunes_the_standing_parent_as_it_exits() -> None:
    # Kept while a process runs containers (see the test above); gone, when
    # empty, once the process exits: nothing of pycontain's stays below pycontain/.
    with Container(command=["true"]) as c:
        assert c.wait(timeout=30) == 0
        assert c.cgroup is not None
        parents = [os.path.dirname(p.rsplit("/", 1)[0]) for p in c.cgroup.procs_files]
    assert all(os.path.isdir(p) for p in parents)  # this process still runs (it keeps them)
    code = "import pycontain; assert pycontain.run(['true']).returncode == 0"
    subprocess.run([sys.executable, "-c", code], env=os.environ, check=True, timeout=60)
    assert [p for p in parents if os.path.isdir(p)] == []
