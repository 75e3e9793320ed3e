"""The cgroup vocabulary: limit parsing, names, devices, translations. No root needed."""

from __future__ import annotations

import pytest

import pycontain
from pycontain.backends import cgroup_limits as L
from pycontain.backends.cgroup_v1 import V1Group
from pycontain.backends.cgroup_v2 import V2Group
from pycontain.errors import InvalidArgument, Unsupported
from pycontain.kernel import cgroupfs
from pycontain.kernel.cgroupfs import CgroupLayout, KernelController


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to create or write a cgroup."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError(f"touched the kernel: {a}")

    monkeypatch.setattr(cgroupfs, "make_dir", boom)
    monkeypatch.setattr(cgroupfs, "write", boom)
    monkeypatch.setattr(cgroupfs, "mount_v1_hierarchy", boom)
    monkeypatch.setattr(cgroupfs, "online_cpus", lambda: {0, 1})


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"memory": "32bm"}, "memory"),
        ({"memory": "1e9"}, "memory"),
        ({"memory": "nan"}, "memory"),
        ({"memory": True}, "memory"),
        ({"memory": -5}, "memory"),
        ({"cpus": 0}, "cpus"),
        ({"cpus": "nan"}, "cpus"),
        ({"cpus": True}, "cpus"),
        ({"cpus": -5}, "cpus"),
        ({"cpus": 3}, "cpus"),  # more than the (faked) 2 online CPUs
        ({"cpuset": "0-99"}, "cpuset"),
        ({"cpuset": "3-1"}, "cpuset"),
        ({"pids": True}, "pids"),
        ({"pids": -5}, "pids"),
        ({"pids": "1e9"}, "pids"),
        ({"pids": 0}, "pids"),
        ({"cpu_weight": 0}, "cpu_weight"),
        ({"io_weight": True}, "io_weight"),
        ({"devices": ["frobnicate"]}, "devices"),
        ({"devices": "deny a"}, "devices"),
        ({"net_classid": -5}, "net_classid"),
        ({"net_prio": {"eth0": "nan"}}, "net_prio['eth0']"),
        ({"io_max": {"7:0": {"rbps": "1e9"}}}, "io_max['7:0']['rbps']"),
        ({"io_max": {"7:0": {"xbps": 1}}}, "io_max"),
        ({"hugetlb": {"2MB": "32bm"}}, "hugetlb['2MB']"),
    ],
)
def test_bad_input_is_rejected_before_any_cgroup_exists(no_kernel: None, kw: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        pycontain.Cgroup("x", **kw)
    err = info.value
    assert err.field == field
    assert field.split("[")[0] in str(err)
    value = next(iter(kw.values()))
    if not isinstance(value, (dict, list)):
        assert repr(value) in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "a\0b", "x" * 201, 5, None, "cgroup.procs", "tasks",
                                  "memory.max", "-x", "a b"])
def test_bad_names(no_kernel: None, name: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        pycontain.Cgroup(name)  # type: ignore[arg-type]
    assert info.value.field == "name"


def test_bad_parent_and_version(no_kernel: None) -> None:
    with pytest.raises(InvalidArgument):
        pycontain.Cgroup("x", parent="/abs")
    with pytest.raises(InvalidArgument):
        pycontain.Cgroup("x", parent="a/../b")
    with pytest.raises(InvalidArgument):
        pycontain.Cgroup("x", version="v3")


def test_unknown_limit() -> None:
    with pytest.raises(InvalidArgument, match="unknown cgroup limit"):
        L.parse_limits(memroy="1G")


def test_parse_limits_values() -> None:
    lim = L.parse_limits(memory="64M", cpus="0.5", pids=32, cpuset="0", cpu_weight=200,
                         io_max={"7:0": {"rbps": "1M", "wiops": "max"}}, net_classid="10:10",
                         net_prio={"eth0": 5}, hugetlb={"2MB": "4M"}, available_cpus={0, 1})
    assert lim.memory == 64 * 2**20
    assert lim.cpus == 0.5
    assert lim.pids == 32
    assert lim.cpuset == frozenset({0})
    assert lim.io_max == {(7, 0): {"rbps": 2**20, "wiops": L.UNLIMITED}}
    assert lim.net_classid == 0x100010
    assert lim.net_prio == {"eth0": 5}
    assert lim.hugetlb == {"2MB": 4 * 2**20}
    assert set(lim.given()) == {"memory", "cpus", "pids", "cpuset", "cpu_weight", "io_max", "net_classid",
                                "net_prio", "hugetlb"}
    assert L.parse_limits(memory="max").memory == L.UNLIMITED
    assert L.parse_limits(memory=None).given() == []


def test_quota_below_kernel_minimum() -> None:
    with pytest.raises(InvalidArgument, match="1 ms"):
        L.parse_limits(cpus=0.01, cpu_period_us=10_000)


def test_devices() -> None:
    pol = L.parse_devices(["deny a", "allow c 1:3 rwm", "allow c *:* m", "allow b 7:* r"])
    assert not pol.default_allow
    assert [r.v1_text() for r in pol.exceptions] == ["c 1:3 rwm", "c *:* m", "b 7:* r"]
    pol = L.parse_devices(["deny /dev/null"])
    assert pol.default_allow and pol.exceptions == (L.DeviceRule(False, "c", 1, 3, "rwm"),)
    pol = L.parse_devices(["deny /dev/null w"])
    assert pol.exceptions[0].access == "w"
    assert L.parse_devices([]).default_allow
    # Mixed lists cannot be represented by a default plus exceptions.
    for bad in (["deny /dev/null", "allow /dev/zero"], ["deny a", "deny c 1:3"], ["allow c 1:3", "deny a"],
                ["deny c 1:3 rwx"], ["deny c 1:3 rr"], ["deny /nonexistent"], ["deny /etc/passwd"]):
        with pytest.raises((InvalidArgument, pycontain.NotFound)):
            L.parse_devices(bad)


def test_shares_weight_conversion() -> None:
    # runc's ConvertCPUSharesToCgroupV2Value: 2 -> 1, 262144 -> 10000, 1024 -> 39.
    assert L.shares_to_weight(2) == 1
    assert L.shares_to_weight(262144) == 10000
    assert L.shares_to_weight(1024) == 39
    for w in (1, 39, 100, 300, 5000, 10000):
        assert L.shares_to_weight(L.weight_to_shares(w)) == w
    assert L.weight_to_shares(1) == 2 and L.weight_to_shares(10000) == 262144


def test_hugetlb_size_names() -> None:
    assert L.hugetlb_size_name("2MB") == "2MB"
    assert L.hugetlb_size_name("2M") == "2MB"
    assert L.hugetlb_size_name("1G") == "1GB"
    assert L.hugetlb_size_name("64KB") == "64KB"


def _layout(mode: str) -> CgroupLayout:
    ctrls = {c: KernelController(c, 1, 1, True) for c in ("cpu", "memory", "pids", "net_cls", "net_prio")}
    if mode == "v2":
        return CgroupLayout("v2", {}, "/nonexistent-cgroup2", ctrls)
    v1 = {c: f"/sys/fs/cgroup/{c}" for c in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                                             "blkio", "pids")}
    return CgroupLayout("hybrid", v1, "/nonexistent-unified", ctrls)


def test_v2_refuses_net_controllers() -> None:
    for kw in ({"net_classid": 1}, {"net_prio": {"lo": 1}}):
        with pytest.raises(Unsupported, match="only in cgroup v1") as info:
            V2Group.plan(_layout("v2"), "pycontain", "x", L.parse_limits(**kw))
        assert info.value.field in kw


def test_v1_plan_places_under_parent() -> None:
    g = V1Group.plan(_layout("hybrid"), "pycontain", "job", L.parse_limits(memory="1G"))
    assert g.dirs["memory"] == "/sys/fs/cgroup/memory/pycontain/job"
    assert "/sys/fs/cgroup/cpu/pycontain/job/cgroup.procs" in g.procs_files()
    # hugetlb on a hybrid host without it on the unified mount: a clear Unsupported.
    with pytest.raises(Unsupported, match="hugetlb"):
        V1Group.plan(_layout("hybrid"), "pycontain", "job", L.parse_limits(hugetlb={"2MB": "2M"}))


def test_stats_parsers_on_fake_files(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path)) / "cg"
    d.mkdir()
    (d / "memory.current").write_text("4096\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n")
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
                                "nr_periods 10\nnr_throttled 4\nthrottled_usec 250000\n")
    (d / "cpu.max").write_text("50000 100000\n")
    (d / "pids.current").write_text("3\n")
    (d / "pids.max").write_text("32\n")
    (d / "io.stat").write_text("7:0 rbytes=100 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n"
                               "8:0 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n")
    (d / "cpu.pressure").write_text("some avg10=1.50 avg60=0.00 avg300=0.00 total=2000000\n"
                                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    s = V2Group(str(d)).stats()
    assert s["mem_bytes"] == 4096 and s["mem_peak_bytes"] == 8192 and s["mem_limit_bytes"] == float("inf")
    assert s["oom_events"] == 2 and s["oom_kill_events"] == 1 and s["mem_max_events"] == 7
    assert s["cpu_s"] == 1.5 and s["cpu_user_s"] == 1.0 and s["cpu_system_s"] == 0.5
    assert s["cpu_throttled_periods"] == 4 and s["cpu_throttled_s"] == 0.25 and s["cpu_limit_cpus"] == 0.5
    assert s["pids"] == 3 and s["pids_limit"] == 32
    assert s["io_read_bytes"] == 101 and s["io_write_bytes"] == 22
    assert s["cpu_pressure_some_avg10_pct"] == 1.5 and s["cpu_pressure_some_total_s"] == 2.0
    assert "memory_pressure_some_avg10_pct" not in s  # file missing here
