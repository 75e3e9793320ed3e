"""Proof that the VM harness (tests/vm) really gives these tests a pure cgroup v2 kernel.

These run only where /sys/fs/cgroup is a cgroup2 mount (``./dev test-v2``).
They touch the kernel directly, not pycontain's Cgroup API, so a broken
harness is told apart from a broken API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.v2

ROOT = "/sys/fs/cgroup"
PARENT = f"{ROOT}/pycontain"
WANTED = {"memory", "cpu", "io", "pids", "cpuset"}
MiB = 1 << 20


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(path: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in _read(path).splitlines())}


def _run_in(cgroup: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` as a process that joins ``cgroup`` before it execs."""
    join_then_exec = 'echo $$ > "$1/cgroup.procs" && exec "$2" -c "$3"'
    return subprocess.run(
        ["/bin/sh", "-c", join_then_exec, "sh", cgroup, sys.executable, code],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture
def cgroup() -> Iterator[str]:
    """A fresh child cgroup under /sys/fs/cgroup/pycontain with the wanted controllers."""
    os.makedirs(PARENT, exist_ok=True)
    enable = " ".join(f"+{c}" for c in sorted(WANTED))
    _write(f"{ROOT}/cgroup.subtree_control", enable)
    _write(f"{PARENT}/cgroup.subtree_control", enable)
    path = f"{PARENT}/vmcheck-{os.getpid()}"
    os.mkdir(path)
    try:
        yield path
    finally:
        # A just-killed member may take a moment to leave the cgroup.
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_sys_fs_cgroup_is_the_only_hierarchy_and_it_is_cgroup2() -> None:
    mounts = [line.split(" - ") for line in _read("/proc/self/mountinfo").splitlines()]
    fstypes = {left.split()[4]: right.split()[0] for left, right in mounts}
    assert fstypes["/sys/fs/cgroup"] == "cgroup2"
    assert "cgroup" not in {right.split()[0] for _left, right in mounts}, "a v1 hierarchy is mounted"
    # One line, "0::<path>": this process belongs to no v1 hierarchy at all.
    lines = _read("/proc/self/cgroup").splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::"), lines


def test_root_offers_the_controllers_pycontain_needs() -> None:
    offered = set(_read(f"{ROOT}/cgroup.controllers").split())
    assert offered >= WANTED, f"missing: {sorted(WANTED - offered)}"


def test_child_cgroup_gets_the_controllers_and_memory_max_is_enforced(cgroup: str) -> None:
    assert set(_read(f"{cgroup}/cgroup.controllers").split()) >= WANTED
    _write(f"{cgroup}/memory.max", str(64 * MiB))
    assert _read(f"{cgroup}/memory.max").strip() == str(64 * MiB)

    small = _run_in(cgroup, f"b = b'x' * {8 * MiB}")
    assert small.returncode == 0, small.stderr
    assert _keyed(f"{cgroup}/memory.events")["oom_kill"] == 0

    # Touching 256 MiB in a 64 MiB cgroup (no swap in the VM): the OOM killer must act.
    big = _run_in(cgroup, f"b = b'x' * {256 * MiB}")
    assert big.returncode == -9, (big.returncode, big.stderr)
    assert _keyed(f"{cgroup}/memory.events")["oom_kill"] >= 1
    assert int(_read(f"{cgroup}/memory.peak")) <= 64 * MiB


def test_pids_max_is_enforced(cgroup: str) -> None:
    _write(f"{cgroup}/pids.max", "1")
    res = _run_in(cgroup, "import os\ntry:\n    os.fork()\nexcept BlockingIOError:\n    raise SystemExit(42)")
    assert res.returncode == 42, (res.returncode, res.stderr)
    assert _keyed(f"{cgroup}/pids.events")["max"] >= 1
