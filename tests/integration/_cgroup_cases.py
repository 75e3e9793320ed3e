"""Cgroup tests that must pass on both cgroup versions.

Not collected on its own (no ``test_`` prefix): ``test_cgroup_v1.py`` and
``test_cgroup_v2.py`` import these functions under their own markers, so
the same checks run on this v1 host and in the cgroup v2 VM.

Every test measures an effect of a limit (a kill, CPU time, an errno,
throughput); reading back a file we wrote would prove nothing. Timing
checks compare CPU time from the cgroup's own accounting with wall time
measured by the workload, so a slow machine (or the TCG VM) changes both
together; they retry once when the machine is noisy.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import pycontain
from pycontain import AlreadyExists, InvalidArgument, KernelError, NotFound, PermissionDenied
from pycontain.cgroup import Cgroup, cgroups

MiB = 1 << 20


def new_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def retry_once(check: Callable[[], tuple[bool, str]]) -> None:
    """Run a timing check; on a miss try once more (the machine is shared and noisy)."""
    ok, why = check()
    if not ok:
        ok, why2 = check()
        why = f"{why}; retry: {why2}"
    assert ok, why


# -- workloads (run in the child by cg.call/cg.spawn; module-level so they pickle by reference) ----


def allocate(n: int) -> int:
    data = b"\x01" * n  # bytes * n writes every page: really uses n bytes
    return len(data)


def spin(seconds: float) -> float:
    """Burn CPU for ``seconds`` of wall time; return the wall time spent."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        pass
    return time.monotonic() - t0


def spin_until(deadline: float, marker: str | None = None) -> None:
    if marker:
        open(marker, "w").close()  # tells the test that start-up is over
    while time.monotonic() < deadline:
        pass


def measure_cores(cgs: list[Cgroup], markers: list[str], seconds: float) -> list[float]:
    """Cores each cgroup used over ``seconds``, once all markers exist: the
    cgroups' own CPU counters against the test's wall clock, so start-up
    (slow in the VM) is left out."""
    wait_for(lambda: all(os.path.exists(m) for m in markers), timeout=300)
    time.sleep(0.2)
    t0 = time.monotonic()
    c0 = [cg.stats_dict()["cpu_s"] for cg in cgs]
    time.sleep(seconds)
    c1 = [cg.stats_dict()["cpu_s"] for cg in cgs]
    t1 = time.monotonic()
    return [(b - a) / (t1 - t0) for a, b in zip(c0, c1)]


def fork_until_failure(limit: int) -> tuple[int, int | None]:
    kids = []
    err = None
    try:
        for _ in range(limit):
            try:
                pid = os.fork()
            except OSError as e:
                err = e.errno
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            kids.append(pid)
    finally:
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return len(kids), err


def open_devices(paths: list[str]) -> dict[str, int]:
    out = {}
    for path in paths:
        try:
            with open(path, "rb"):
                out[path] = 0
        except OSError as e:
            out[path] = e.errno or -1
    return out


def direct_read(device: str, nbytes: int, chunk: int = 256 * 1024) -> float:
    """Read ``nbytes`` with O_DIRECT (no page cache); return the seconds it took."""
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, chunk)  # page aligned, as O_DIRECT requires
    try:
        t0 = time.monotonic()
        done = 0
        while done < nbytes:
            n = os.preadv(fd, [buf], done)
            if n <= 0:
                break
            done += n
        return time.monotonic() - t0
    finally:
        buf.close()
        os.close(fd)


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path: object) -> Iterator[str]:
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    backing = os.path.join(str(tmp_path), "disk.img")
    with open(backing, "wb") as f:
        f.truncate(32 * MiB)
    proc = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(backing)
        pytest.skip(f"no loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
        # The detach is asynchronous; the leak checker looks at /sys/block.
        wait_for(lambda: not os.path.exists(f"/sys/block/{os.path.basename(dev)}/loop/backing_file"), 10)
        os.unlink(backing)


# -- memory ------------------------------------------------------------------------------------------


def test_memory_oom_kill() -> None:
    with Cgroup(new_name(), memory="64M") as cg:
        child = cg.spawn(allocate, 256 * MiB)  # 4x the limit
        assert child.wait(timeout=120) == -signal.SIGKILL
        s = cg.stats()
        assert s["oom_kill_events"] >= 1
        assert s["oom_events"] >= 1
        assert s["mem_limit_bytes"] == 64 * MiB
        assert 32 * MiB < s["mem_peak_bytes"] <= 64 * MiB + 4096


def test_memory_update_live() -> None:
    with Cgroup(new_name(), memory="64M") as cg:
        assert cg.spawn(allocate, 96 * MiB).wait(timeout=120) == -signal.SIGKILL
        cg.update(memory="256M")
        assert cg.call(allocate, 96 * MiB, timeout=120) == 96 * MiB
        assert cg.stats()["mem_limit_bytes"] == 256 * MiB
        cg.update(memory="max")
        assert cg.stats()["mem_limit_bytes"] == float("inf")


# -- cpu ------------------------------------------------------------------------------------------------


def cores_available(tmp: str, seconds: float = 1.0) -> float:
    """How many cores an unlimited spinner gets right now (1.0 on an idle machine)."""
    marker = os.path.join(tmp, f"control-{uuid.uuid4().hex[:6]}")
    with Cgroup(new_name()) as cg:
        child = cg.spawn(spin_until, time.monotonic() + 600, marker)
        try:
            return measure_cores([cg], [marker], seconds)[0]
        finally:
            cg.kill()
            child.wait()


def test_cpu_quota_half_a_core(tmp_path: object) -> None:
    # On the shared 2-core host other jobs can starve the child below its
    # quota; that is noise, not a failure of the quota. Such attempts are
    # recognised by a control spinner that cannot get a whole core either,
    # and repeated.
    results = []
    for attempt in range(4):
        marker = os.path.join(str(tmp_path), f"quota-{attempt}")
        with Cgroup(new_name(), cpus=0.5) as cg:
            child = cg.spawn(spin_until, time.monotonic() + 600, marker)
            used = measure_cores([cg], [marker], 2.0)[0]
            s = cg.stats_dict()
            cg.kill()
            child.wait()
        assert used <= 0.55, f"used {used:.3f} cores with a 0.5 quota"  # never above, noise or not
        if abs(used - 0.5) <= 0.05:
            assert s["cpu_throttled_periods"] > 0 and s["cpu_throttled_s"] > 0
            return
        control = cores_available(str(tmp_path))
        results.append(f"used {used:.3f} cores (an unlimited spinner got {control:.2f})")
        assert control < 0.9, "the quota child was slowed below its quota on an idle machine: " + results[-1]
        time.sleep(1.0)
    pytest.skip("the host is too busy to measure a CPU quota: " + "; ".join(results))


def test_cpu_weights_split_a_contended_cpu(tmp_path: object) -> None:
    cpu = str(min(os.sched_getaffinity(0)))

    def check() -> tuple[bool, str]:
        markers = [os.path.join(str(tmp_path), f"w-{uuid.uuid4().hex[:6]}") for _ in range(2)]
        with Cgroup(new_name(), cpuset=cpu, cpu_weight=100) as low, \
                Cgroup(new_name(), cpuset=cpu, cpu_weight=300) as high:
            end = time.monotonic() + 600
            a = low.spawn(spin_until, end, markers[0])
            b = high.spawn(spin_until, end, markers[1])
            lo, hi = measure_cores([low, high], markers, 2.0)
            for cg, child in ((low, a), (high, b)):
                cg.kill()
                child.wait()
        ratio = hi / max(lo, 1e-9)
        return abs(ratio - 3.0) <= 0.45, f"high/low CPU ratio {ratio:.2f} (want 3 +- 15%), {hi:.2f}/{lo:.2f} cores"

    retry_once(check)


def test_cpuset_is_the_affinity() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    for cpu in (cpus[0], cpus[-1]):
        with Cgroup(new_name(), cpuset=str(cpu)) as cg:
            assert cg.call(os.sched_getaffinity, 0) == {cpu}
            child = cg.run(["sh", "-c", "exec sleep 30"])
            try:
                wait_for(lambda pid=child.pid, cg=cg: pid in cg.pids())  # type: ignore[misc]
                assert os.sched_getaffinity(child.pid) == {cpu}
            finally:
                child.kill()
                child.wait()


# -- pids -------------------------------------------------------------------------------------------------


def test_pids_limit_fork_fails_with_eagain() -> None:
    with Cgroup(new_name(), pids=4) as cg:
        forked, err = cg.call(fork_until_failure, 10, timeout=120)
        assert err == errno.EAGAIN
        assert forked == 3  # the caller itself is the 4th
        s = cg.stats()
        assert s["pids_limit"] == 4


# -- freezer ----------------------------------------------------------------------------------------------


def test_freeze_stops_progress_and_thaw_resumes() -> None:
    with Cgroup(new_name()) as cg:
        child = cg.spawn(spin, 120.0)
        wait_for(lambda: cg.stats_dict()["cpu_s"] > 0.05)
        cg.freeze()
        assert cg.frozen
        a = cg.stats_dict()["cpu_s"]
        time.sleep(0.5)
        b = cg.stats_dict()["cpu_s"]
        assert b - a < 0.01, f"a frozen child used {b - a:.3f} s of CPU"
        cg.thaw()
        assert not cg.frozen
        wait_for(lambda: cg.stats_dict()["cpu_s"] - b > 0.05)  # runs again
        cg.kill()
        assert child.wait(timeout=30) == -signal.SIGKILL


# -- devices ----------------------------------------------------------------------------------------------


def test_devices_deny_dev_null() -> None:
    with Cgroup(new_name(), devices=["deny /dev/null"]) as cg:
        got = cg.call(open_devices, ["/dev/null", "/dev/zero"], timeout=120)
        assert got == {"/dev/null": errno.EPERM, "/dev/zero": 0}
    # Without the rule the same child opens both: the rule made the difference.
    with Cgroup(new_name()) as cg:
        assert cg.call(open_devices, ["/dev/null", "/dev/zero"], timeout=120) == {"/dev/null": 0, "/dev/zero": 0}


def test_devices_allow_list() -> None:
    with Cgroup(new_name(), devices=["deny a", "allow c 1:5 rwm", "allow c 1:3 r"]) as cg:
        got = cg.call(open_devices, ["/dev/zero", "/dev/null", "/dev/full"], timeout=120)
        assert got == {"/dev/zero": 0, "/dev/null": 0, "/dev/full": errno.EPERM}
        # Access bits count too: /dev/null is allowed for reading only.
        child = cg.run(["sh", "-c", "echo x > /dev/null 2>/dev/zero"], wait=True, timeout=120)
        assert child.returncode != 0


# -- io -----------------------------------------------------------------------------------------------------


def test_io_read_throttle_on_a_loop_device(loop_device: str) -> None:
    rate = 4 * MiB
    nbytes = 8 * MiB

    def check() -> tuple[bool, str]:
        with Cgroup(new_name(), io_max={loop_device: {"rbps": rate}}) as cg:
            took = cg.call(direct_read, loop_device, nbytes, timeout=120)
            s = cg.stats_dict()
        got = nbytes / took
        ok = abs(got - rate) <= 0.2 * rate and s["io_read_bytes"] >= nbytes
        return ok, f"{got / MiB:.2f} MiB/s with a {rate / MiB:.0f} MiB/s limit; io_read_bytes={s['io_read_bytes']}"

    retry_once(check)
    # Unthrottled, the same read is much faster: the limit made the difference.
    with Cgroup(new_name()) as cg:
        took = cg.call(direct_read, loop_device, nbytes, timeout=120)
    assert nbytes / took > 2 * rate


# -- lifecycle ------------------------------------------------------------------------------------------------


def test_remove_kills_everything_and_is_idempotent() -> None:
    cg = Cgroup(new_name())
    child = cg.run(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    wait_for(lambda: len(cg.pids()) == 3)
    paths = cg.paths
    cg.remove()
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert not cg.exists()
    assert not any(os.path.exists(p) for p in paths)
    cg.remove()  # idempotent
    with pytest.raises(NotFound):
        cg.freeze()


def test_remove_takes_cgroups_made_inside() -> None:
    # A workload may make cgroups below its own (systemd, a nested runtime):
    # remove() kills their processes and removes them, children first.
    cg = Cgroup(new_name())
    nested = [os.path.join(p, "inner") for p in cg.paths]
    for d in nested:
        os.mkdir(d)
        for f in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset children start empty
            if os.path.exists(f"{d}/{f}"):
                with open(f"{os.path.dirname(d)}/{f}") as src, open(f"{d}/{f}", "w") as dst:
                    dst.write(src.read())
    proc = subprocess.Popen(["sleep", "60"])
    try:
        for d in nested:
            with open(f"{d}/cgroup.procs", "w") as f:
                f.write(str(proc.pid))
        assert cg.pids() == []  # not in ours directly, but inside it
    finally:
        cg.remove()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not any(os.path.exists(d) for d in nested) and not cg.exists()


def test_kill_leaves_the_cgroup() -> None:
    with Cgroup(new_name()) as cg:
        children = [cg.run(["sleep", "60"]) for _ in range(3)]
        wait_for(lambda: len(cg.pids()) == 3)
        cg.kill()
        assert cg.pids() == []
        assert [c.wait(timeout=30) for c in children] == [-signal.SIGKILL] * 3
        assert cg.exists()
        assert cg.call(pow, 2, 10) == 1024  # still usable


def test_add_moves_a_process_and_run_never_moves_the_caller() -> None:
    me = pycontain.kernel.proc.proc_cgroup("self")
    with Cgroup(new_name()) as cg:
        proc = subprocess.Popen(["sleep", "60"])
        try:
            with pytest.raises(InvalidArgument):
                cg.add(True)  # type: ignore[arg-type]
            cg.add(proc.pid)
            assert cg.pids() == [proc.pid]
            cg.run(["true"], wait=True)
            assert pycontain.kernel.proc.proc_cgroup("self") == me
            assert os.getpid() not in cg.pids()
        finally:
            cg.remove()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL


def test_duplicate_name() -> None:
    name = new_name()
    with Cgroup(name, memory="64M") as cg:
        with pytest.raises(AlreadyExists) as info:
            Cgroup(name, memory="128M")
        assert info.value.value == name
        assert cg.exists()
        assert cg.stats()["mem_limit_bytes"] == 64 * MiB  # the first one is untouched


def test_failure_half_way_leaves_nothing() -> None:
    name = new_name()
    # No block device has these numbers (the largest major and minor): the
    # kernel refuses the throttle after the cgroup directories exist; they
    # must be gone again.
    with pytest.raises(KernelError):
        Cgroup(name, memory="64M", io_max={"4095:1048575": {"rbps": "1M"}})
    assert name not in list(cgroups()["name"])


def test_current_is_read_only() -> None:
    cur = Cgroup.current()
    assert cur.readonly
    s = cur.stats()
    assert s["mem_bytes"] > 0 or s["cpu_s"] > 0
    assert os.getpid() in cur.pids()
    for op in (lambda: cur.update(memory="1G"), cur.freeze, cur.thaw, cur.kill, cur.remove,
               lambda: cur.add(os.getpid()), lambda: cur.run(["true"]), lambda: cur.call(abs, 1)):
        with pytest.raises(PermissionDenied):
            op()


def test_limits_read_back_in_the_same_words() -> None:
    cpu = str(min(os.sched_getaffinity(0)))
    with Cgroup(new_name(), memory="64M", cpus=0.5, cpu_weight=300, cpuset=cpu, pids=12) as cg:
        lim = cg.limits()
        assert lim["memory"] == 64 * MiB
        assert lim["cpus"] == 0.5 and lim["cpu_period_us"] == 100_000
        assert lim["cpu_weight"] == 300  # v1: through cpu.shares and back
        assert lim["cpuset"] == cpu
        assert lim["pids"] == 12
        cg.update(memory="max", cpus="max", pids="max")
        lim = cg.limits()
        assert lim["memory"] is None and lim["cpus"] is None and lim["pids"] is None


def test_view_of_an_existing_cgroup() -> None:
    with Cgroup(new_name(), pids=7) as cg:
        v = Cgroup.view(cg.name)
        assert v.readonly and v.stats()["pids_limit"] == 7
        with pytest.raises(PermissionDenied):
            v.kill()
    with pytest.raises(NotFound):
        Cgroup.view(cg.name)


def test_cgroups_listing() -> None:
    with Cgroup(new_name(), memory="64M") as a, Cgroup(new_name(), cpus=1) as b:
        child = b.run(["sleep", "60"])
        wait_for(lambda: len(b.pids()) == 1)
        df = cgroups()
        assert {"name", "processes", "mem_bytes", "cpu_s"} <= set(df.columns)
        rows = df.set_index("name")
        assert rows.loc[a.name, "processes"] == 0
        assert rows.loc[b.name, "processes"] == 1
        assert rows.loc[a.name, "mem_limit_bytes"] == 64 * MiB
        assert rows.loc[b.name, "cpu_limit_cpus"] == 1.0
        child.kill()
        child.wait()


def test_stats_units_and_speed() -> None:
    with Cgroup(new_name(), memory="64M", cpus=1, pids=10) as cg:
        cg.call(allocate, 8 * MiB)
        s = cg.stats()
        for key in ("mem_bytes", "mem_peak_bytes", "mem_limit_bytes", "oom_events", "oom_kill_events",
                    "cpu_user_s", "cpu_system_s", "cpu_s", "cpu_throttled_periods", "cpu_throttled_s",
                    "pids", "pids_limit", "io_read_bytes", "io_write_bytes"):
            assert key in s.index
        assert s["mem_peak_bytes"] >= 8 * MiB
        assert s["cpu_s"] > 0
        assert s["pids_limit"] == 10
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            cg.stats()
            times.append(time.perf_counter() - t0)
        times.sort()
        # The issue asks < 1 ms (median) on this host; the VM is 10-20x slower.
        budget = 0.02 if os.environ.get("PYCONTAIN_IN_VM") else 0.001
        assert times[len(times) // 2] < budget, f"median stats() {times[len(times) // 2] * 1e3:.2f} ms"


def test_bad_input_before_any_cgroup() -> None:
    before = set(cgroups()["name"])
    for kw in ({"memory": "32bm"}, {"memory": "1e9"}, {"memory": "nan"}, {"memory": True}, {"memory": -5},
               {"cpuset": "0-99"}, {"cpuset": "3-1"}, {"cpus": 0}, {"pids": -5}):
        with pytest.raises(InvalidArgument) as info:
            Cgroup(new_name(), **kw)
        field, value = next(iter(kw.items()))
        assert info.value.field == field and info.value.value == value
    assert set(cgroups()["name"]) == before


# -- hugetlb ------------------------------------------------------------------------------------------------

MAP_HUGETLB = 0x40000  # <asm-generic/mman.h>; Python's mmap module lacks it


def touch_huge_pages(n: int) -> int:
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
    try:
        for i in range(0, n, 2 * MiB):
            m[i] = 1  # the fault charges one huge page to the cgroup
    finally:
        m.close()
    return n


@pytest.fixture
def huge_pages() -> Iterator[None]:
    """Four 2 MiB huge pages in the pool for the test, the old pool size after."""
    path = "/proc/sys/vm/nr_hugepages"
    if not os.path.exists("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        pytest.skip("no 2 MiB huge pages on this machine")
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write(str(int(old) + 4))
    try:
        with open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") as f:
            if int(f.read()) < 4:
                pytest.skip("could not reserve 4 huge pages (memory fragmented)")
        yield
    finally:
        with open(path, "w") as f:
            f.write(old)


def test_hugetlb_limit(huge_pages: None) -> None:
    with Cgroup(new_name(), hugetlb={"2MB": "2M"}) as cg:
        # The second huge page is over the limit: the fault kills with SIGBUS.
        assert cg.spawn(touch_huge_pages, 4 * MiB).wait(timeout=120) == -signal.SIGBUS
    with Cgroup(new_name(), hugetlb={"2MB": "8M"}) as cg:
        assert cg.call(touch_huge_pages, 4 * MiB, timeout=120) == 4 * MiB
