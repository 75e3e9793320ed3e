"""Resource abuse from inside a container: a fork bomb, a memory bomb, a CPU
spin, descriptor exhaustion and filling the writable layer. Each bomb is
bounded (it stops by itself at a size that is safe for the host), so its
calibration run *without* the limit can show that the limit, and nothing
else, is what stopped it."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import time

import pytest

import pycontain
from pycontain.container import Container


def _host_mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


def _fork_bomb(limit: int) -> int:
    """Fork up to ``limit`` sleeping children (each forks nothing); exit status = forks that failed (max 250)."""
    import signal

    kids, failed = [], 0
    for _ in range(limit):
        try:
            pid = os.fork()
        except OSError as e:
            assert e.errno == errno.EAGAIN, e
            failed += 1
            continue
        if pid == 0:
            signal.pause()
            os._exit(0)
        kids.append(pid)
    os.write(1, f"forked {len(kids)} failed {failed}\n".encode())  # fd 1: sys.stdout may be pytest's capture
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return min(failed, 250)


def _run_python(fn, args, **options) -> tuple[int, str, Container]:  # type: ignore[no-untyped-def]
    c = Container(**options)
    r, w = os.pipe()
    try:
        c.start_python(fn, args, stdout=w, stderr=w)
        os.close(w)
        w = -1
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        code = c.wait(120)
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)
    return code, out.decode(errors="replace"), c


def test_fork_bomb_stops_at_the_pids_limit():
    code, out, c = _run_python(_fork_bomb, (300,), pids=64)
    try:
        usage = c.usage()
    finally:
        c.remove()
    forked = int(out.split()[1])
    # init + the workload + its children stay within 64 tasks; the rest failed with EAGAIN
    assert forked <= 62 and code == min(300 - forked, 250), (forked, code, out)
    assert usage["pids_limit"] == 64
    # the host can still fork after it (the bomb was confined to its cgroup)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    # Calibration: the same bounded bomb without the limit forks all 300.
    code, out, c = _run_python(_fork_bomb, (300,))
    c.remove()
    assert code == 0 and int(out.split()[1]) == 300, out


def _allocate(mib: int) -> int:
    chunks = []
    for _ in range(mib):
        b = bytearray(1 << 20)
        b[::4096] = b"x" * len(b[::4096])  # touch every page
        chunks.append(b)
    return 0


def test_memory_bomb_is_oom_killed_and_reported():
    before = _host_mem_available()
    code, _out, c = _run_python(_allocate, (512,), memory="64M")
    try:
        usage = c.usage()
        assert c.oom_killed
    finally:
        c.remove()
    assert code == 137 and usage["oom_kill_events"] >= 1 and usage["mem_peak_bytes"] <= 64 << 20, usage
    # the host is unaffected: its available memory did not drop by the bomb's size
    assert _host_mem_available() > before - (256 << 20)
    # run() reports it the same way
    r = pycontain.run(["python3", "-c", "b = bytearray(512 << 20); b[::4096] = b'x' * len(b[::4096])"],
                      memory="64M")
    assert r.oom_killed and r.returncode == 137 and r.usage["oom_kill_events"] >= 1
    # Calibration: without the limit the same (bounded) bomb completes.
    code, _out, c = _run_python(_allocate, (128,))
    try:
        assert code == 0 and not c.oom_killed
    finally:
        c.remove()


def _spin(seconds: float) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return 0


def _latency_while(c: Container, seconds: float) -> float:
    """Worst oversleep of 10 ms naps in this (host) process while ``c`` runs."""
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        time.sleep(0.01)
        worst = max(worst, time.monotonic() - t0 - 0.01)
    return worst


def test_cpu_spin_is_throttled_and_the_host_stays_responsive():
    c = Container(cpus=0.05)
    c.start_python(_spin, (2.0,))
    try:
        worst = _latency_while(c, 1.5)
        assert c.wait(30) == 0
        usage = c.usage()
    finally:
        c.remove()
    assert usage["cpu_throttled_periods"] > 0 and usage["cpu_s"] < 0.05 * 2.0 * 3 + 0.1, usage
    assert worst < 0.5, worst  # this 2-core machine is shared and busy: only gross stalls fail
    # Calibration: without the quota the spin is never throttled and uses far more CPU.
    c = Container()
    c.start_python(_spin, (1.0,))
    try:
        assert c.wait(30) == 0
        free = c.usage()
    finally:
        c.remove()
    assert free["cpu_throttled_periods"] == 0 and free["cpu_s"] > usage["cpu_s"], (free, usage)


def _exhaust_fds() -> int:
    fds = []
    try:
        while True:
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        os.write(1, f"opened {len(fds)} errno {e.errno}\n".encode())
    for fd in fds:
        os.close(fd)
    return 0


def test_fd_exhaustion_stays_inside():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    host_fds = len(os.listdir("/proc/self/fd"))
    code, out, c = _run_python(_exhaust_fds, ())
    c.remove()
    assert code == 0, out
    opened, err = int(out.split()[1]), int(out.split()[3])
    # EMFILE: the per-process limit (inherited from the caller), not ENFILE (the host's table)
    assert err == errno.EMFILE and opened <= soft, out
    assert len(os.listdir("/proc/self/fd")) <= host_fds + 1
    # and the host can still open files
    os.close(os.open("/dev/null", os.O_RDONLY))


def test_writable_layer_has_a_size_limit():
    script = "dd if=/dev/zero of=/big bs=1M count=64 2>&1; echo rc=$?"
    r = pycontain.run(["sh", "-c", script], storage_size="16M")
    assert "No space left on device" in r.stdout and r.usage.get("storage_full") is True, (r.stdout, r.usage)
    # Calibration: without the limit the same write succeeds.
    r = pycontain.run(["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=32 2>&1; echo rc=$?"])
    assert "rc=0" in r.stdout and not r.usage.get("storage_full"), r.stdout


def test_size_limited_layer_keeps_diff_and_commit_after_exit(tmp_path):
    from tests.integration.containment import make_busybox_rootfs

    img = pycontain.Image.from_rootfs(make_busybox_rootfs(str(tmp_path / "rootfs")), tag="busybox:sized")
    with Container(image=img, command=["sh", "-c", "echo kept > /root/note; rm /bin/vi; "
                                                   "head -c 40000000 /dev/zero > /root/big; true"],
                   storage_size="8M") as c:
        assert c.wait(30) == 0
        usage = c.usage()
        assert usage["storage_full"] and usage["storage_limit_bytes"] == 8 << 20, usage
        assert usage["storage_bytes"] <= 8 << 20
        diff = c.diff().set_index("path")
        assert diff.loc["/root/note", "change"] == "A" and diff.loc["/bin/vi", "change"] == "D"
        assert diff.loc["/root/big", "size"] <= 8 << 20
        # another process (Container.open) sees the same layer
        code = ("import sys, pycontain; c = pycontain.Container.open(sys.argv[1]); "
                "print(sorted(c.diff()['path'])); print(c.usage()['storage_full'])")
        out = subprocess.run([sys.executable, "-c", code, c.name], capture_output=True, text=True, check=True,
                             env=os.environ).stdout.splitlines()
        assert "/root/note" in out[0] and out[1] == "True", out
        new = c.commit(tag="busybox:sized-commit")
    r = pycontain.run(["sh", "-c", "cat /root/note; test -e /bin/vi || echo gone"], image=new)
    assert r.stdout == "kept\ngone\n"
    with pytest.raises(pycontain.errors.InvalidArgument):
        Container(storage_size="1k")
