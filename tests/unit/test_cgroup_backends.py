"""What each backend writes for the shared vocabulary (a recording fake; no root).

These pin the per-version translations (DESIGN.md §4); that the kernel then
enforces them is proven in tests/integration/test_cgroup_v1.py / _v2.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pycontain.backends import cgroup_limits as L
from pycontain.backends.cgroup_v1 import V1Group
from pycontain.backends.cgroup_v2 import V2Group
from pycontain.errors import Unsupported
from pycontain.kernel import cgroupfs


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    log: list[tuple[str, str]] = []

    def record(path: str, value: object, *, field: str | None = None) -> None:
        log.append((path.rsplit("/", 1)[1], str(value)))
        Path(path).write_text(f"{value}\n")

    monkeypatch.setattr(cgroupfs, "write", record)
    return log


def _v1(tmp_path: Path, files: dict[str, str]) -> V1Group:
    dirs = {}
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"):
        d = tmp_path / ctrl
        d.mkdir()
        dirs[ctrl] = str(d)
    for name, text in files.items():
        ctrl = name.split(".")[0]
        (tmp_path / ctrl / name).write_text(text)
    return V1Group(dirs, name="x", parent="pycontain")


def test_v1_memory_and_swap_order(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    g = _v1(tmp_path, {"memory.memsw.limit_in_bytes": "9223372036854771712\n",
                       "memory.limit_in_bytes": "9223372036854771712\n"})
    g.apply(L.parse_limits(memory="64M", memory_swap="16M"))
    # memsw (memory+swap) is lifted first, so it is never below the memory limit.
    assert writes == [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", str(64 << 20)),
                      ("memory.memsw.limit_in_bytes", str(80 << 20))]
    writes.clear()
    g.apply(L.parse_limits(memory="128M"))  # swap allowance is kept on top of the new limit
    assert writes[-1] == ("memory.memsw.limit_in_bytes", str(144 << 20))


def test_v1_cpu(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    g = _v1(tmp_path, {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n", "cpu.shares": "1024\n"})
    g.apply(L.parse_limits(cpus=1.5, cpu_weight=100))
    assert ("cpu.cfs_quota_us", "150000") in writes
    assert ("cpu.shares", str(L.weight_to_shares(100))) in writes


def test_v1_devices_io_pids(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    g = _v1(tmp_path, {})
    g.apply(L.parse_limits(devices=["deny a", "allow c 1:3 rw"], io_max={"7:0": {"rbps": "1M", "wiops": "max"}},
                           pids=32))
    assert ("devices.deny", "a") in writes
    assert ("devices.allow", "c 1:3 rw") in writes
    assert ("blkio.throttle.read_bps_device", f"7:0 {1 << 20}") in writes
    assert ("blkio.throttle.write_iops_device", "7:0 0") in writes  # 0 = no limit on v1
    assert ("pids.max", "32") in writes


def test_v1_update_needs_controller(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    g = _v1(tmp_path, {})
    with pytest.raises(Unsupported, match="net_cls"):
        g.apply(L.parse_limits(net_classid=1))
    with pytest.raises(Unsupported, match="hugetlb"):
        g.apply(L.parse_limits(hugetlb={"2MB": "2M"}))


def test_v2_files(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    for name, text in {"cpu.max": "max 100000\n", "memory.swap.max": "max\n", "io.weight": "default 100\n",
                       "hugetlb.2MB.max": "max\n", "cgroup.controllers": ""}.items():
        (tmp_path / name).write_text(text)
    g = V2Group(str(tmp_path))
    g.apply(L.parse_limits(memory="64M", memory_swap=0, cpus=0.5, cpu_weight=300, cpuset=[0, 1], pids="max",
                           io_weight=200, io_max={"7:0": {"rbps": "1M", "wiops": "max"}}, hugetlb={"2MB": "4M"}))
    assert writes == [
        ("memory.max", str(64 << 20)),
        ("memory.swap.max", "0"),  # v2: swap alone
        ("cpu.max", "50000 100000"),
        ("cpu.weight", "300"),
        ("cpuset.cpus", "0-1"),
        ("pids.max", "max"),
        ("io.weight", "default 200"),
        ("io.max", f"7:0 rbps={1 << 20} wiops=max"),
        ("hugetlb.2MB.max", str(4 << 20)),
    ]
    writes.clear()
    g.apply(L.parse_limits(cpus="max"))
    assert writes == [("cpu.max", "max 100000")]
