"""doctor on a pure cgroup v2 kernel (runs in the VM harness: ./dev test-v2)."""

from __future__ import annotations

import pytest

import pycontain
from pycontain.kernel.constants import NAMESPACE_KINDS

pytestmark = pytest.mark.v2

ROOT = "/sys/fs/cgroup"


def test_doctor_on_v2() -> None:
    with open("/proc/self/mountinfo") as f:
        fstype_at_root = {ln.split()[4]: ln.partition(" - ")[2].split()[0] for ln in f}[ROOT]
    assert fstype_at_root == "cgroup2"
    assert pycontain.cgroup_version() == "v2"

    report = pycontain.doctor(timeout=60)  # TCG: everything is 10-20x slower
    print(report)
    assert report.cgroup_mode == "v2"
    assert report["cgroup mode"].detail.startswith("v2")

    with open(f"{ROOT}/cgroup.controllers") as f:
        enabled = set(f.read().split())
    for name in ("memory", "cpu", "io", "pids", "cpuset"):
        if name in enabled:
            assert report.ok(name, area="cgroups"), report[name]
            assert report.controllers["blkio" if name == "io" else name].on_v2
        else:
            assert not report.ok(name, area="cgroups")
    # v2 does these in the core, without a controller of their own.
    assert report.ok("freezer") and report.ok("devices") and report.ok("cpuacct")
    assert report["net_cls"].status == "missing" and report["net_prio"].status == "missing"
    for kind in NAMESPACE_KINDS:
        assert report.ok(kind, area="namespaces"), report[kind]
    assert report.ok("overlayfs"), report["overlayfs"]
