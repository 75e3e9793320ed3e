"""doctor's judgements, on recorded host facts (no root, no real probes)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from typing import Any

import pytest

import pycontain
from pycontain.doctor import STATUSES, HostFacts, Report, assess
from pycontain.errors import NotFound, Unsupported
from pycontain.kernel import cgroupfs
from pycontain.kernel.constants import CAP_NUMBERS, NAMESPACE_KINDS
from pycontain.kernel.probe import ProbeChild

doctor_module = importlib.import_module("pycontain.doctor")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL_CAPS = (1 << 41) - 1
V1_ON_THIS_VM = ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "freezer", "devices")


def ns_results(**override: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {k: {"ok": True, "in_kernel": True} for k in NAMESPACE_KINDS}
    res.update(override)
    return res


def hybrid_facts(**kw: Any) -> HostFacts:
    """The lab VM as doctor sees it: root, v1 hybrid, cgroup2 at unified/ with hugetlb."""
    mounts = {c: f"/sys/fs/cgroup/{c}" for c in V1_ON_THIS_VM}
    facts = HostFacts(
        euid=0,
        kernel="6.18.44",
        cap_eff=ALL_CAPS,
        seccomp_mode=0,
        seccomp_filters=0,
        no_new_privs=False,
        userns_sysctls={"max_user_namespaces": 96365, "unprivileged_userns_clone": None,
                        "apparmor_restrict_unprivileged_userns": None},
        filesystems=frozenset({"overlay", "btrfs", "tmpfs", "cgroup", "cgroup2"}),
        btrfs_module=True,
        mkfs_btrfs="/usr/sbin/mkfs.btrfs",
        seccomp_kernel=True,
        seccomp_actions=("kill_process", "errno", "allow"),
        libseccomp="libseccomp.so.2",
        pyseccomp=True,
        pyroute2="0.9.7",
        cgroup_mode="hybrid",
        v1_mounts=dict(mounts),
        v2_mount="/sys/fs/cgroup/unified",
        v2_controllers=("hugetlb",),
        kernel_controllers={
            "cpuset": (3, True), "cpu": (1, True), "cpuacct": (2, True), "blkio": (7, True),
            "memory": (4, True), "devices": (5, True), "freezer": (6, True), "net_cls": (0, True),
            "perf_event": (0, True), "net_prio": (0, True), "hugetlb": (0, True), "pids": (8, True),
        },
        cgroup_writable={**{m: True for m in mounts.values()}, "/sys/fs/cgroup/unified": True},
        probe={"namespaces": ns_results(), "overlay": {"ok": True, "userns": False}},
        store={"root": "/var/lib/pycontain", "exists": True, "fstype": "ext4",
               "drivers": {"btrfs": "the store /var/lib/pycontain is on ext4, not btrfs", "overlay": None,
                           "copy": None}},
    )
    for key, value in kw.items():
        setattr(facts, key, value)
    return facts


def v2_facts(**kw: Any) -> HostFacts:
    facts = hybrid_facts(
        cgroup_mode="v2",
        v1_mounts={},
        v2_mount="/sys/fs/cgroup",
        v2_controllers=("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"),
        kernel_controllers={c: (0, True) for c in ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices",
                                                    "freezer", "net_cls", "perf_event", "net_prio",
                                                    "hugetlb", "pids", "rdma", "misc")},
        cgroup_writable={"/sys/fs/cgroup": True},
    )
    for key, value in kw.items():
        setattr(facts, key, value)
    return facts


def nonroot_facts() -> HostFacts:
    in_userns = {k: {"ok": False, "in_kernel": True, "errno": 1, "error": "unshare failed",
                     "in_userns": True} for k in NAMESPACE_KINDS if k != "user"}
    return hybrid_facts(
        euid=65534,
        cap_eff=0,
        cgroup_writable={m: False for m in hybrid_facts().cgroup_writable},
        probe={"namespaces": ns_results(**in_userns), "overlay": {"ok": True, "userns": True}},
    )


# -- the lab VM -------------------------------------------------------------------------


def test_hybrid_host_rows() -> None:
    r = assess(hybrid_facts())
    assert r.cgroup_mode == "hybrid"
    assert r["cgroup mode"].status == "ok" and r["cgroup mode"].detail.startswith("hybrid")
    for c in V1_ON_THIS_VM:
        assert r.ok(c, area="cgroups"), r[c]
        assert r.controllers[c].usable and r.controllers[c].mounted_at == f"/sys/fs/cgroup/{c}"
    for c in ("net_cls", "net_prio"):
        row = r[c]
        assert row.status == "limited"
        assert row.detail == "present in the kernel, not mounted"
        assert "pycontain mounts it" in row.hint
        info = r.controllers[c]
        assert info.in_kernel and info.mounted_at is None and not info.on_v2 and not info.usable
    # hugetlb lives on the hybrid cgroup2 mount, where the v1 backend uses it.
    hugetlb = r["hugetlb"]
    assert hugetlb.status == "ok" and "cgroup2 mount at /sys/fs/cgroup/unified" in hugetlb.detail
    assert r.controllers["hugetlb"].on_v2 and r.controllers["hugetlb"].usable
    for kind in NAMESPACE_KINDS:
        assert r.ok(kind, area="namespaces")
    for item in ("root", "user namespaces", "overlayfs", "storage driver", "btrfs", "seccomp", "pyroute2"):
        assert r.ok(item), r[item]
    # perf_event is known (controllers) but not a row: pycontain does not drive it.
    assert "perf_event" in r.controllers
    with pytest.raises(NotFound):
        r.check("perf_event")


def test_hybrid_controller_on_cgroup2_that_the_backend_does_not_use() -> None:
    facts = hybrid_facts()
    facts.v1_mounts = {k: v for k, v in facts.v1_mounts.items() if k != "pids"}
    facts.kernel_controllers = {**facts.kernel_controllers, "pids": (0, True)}
    facts.v2_controllers = ("hugetlb", "pids")
    r = assess(facts)
    assert r["pids"].status == "limited" and "does not use" in r["pids"].detail
    assert not r.controllers["pids"].usable


def test_controller_mounted_in_another_namespace() -> None:
    facts = hybrid_facts()
    facts.kernel_controllers = {**facts.kernel_controllers, "net_cls": (10, True)}
    row = assess(facts)["net_cls"]
    assert row.status == "limited"
    assert row.detail.startswith("present in the kernel, not mounted here")
    assert "another mount namespace" in row.detail


def test_every_row_is_well_formed() -> None:
    for facts in (hybrid_facts(), v2_facts(), nonroot_facts(), hybrid_facts(probe={"error": "boom"})):
        r = assess(facts)
        for c in r:
            assert c.status in STATUSES
            assert c.detail
            if not c.ok:
                assert c.hint, f"{c.item} is {c.status} without a hint"
        items = [(c.area, c.item) for c in r]
        assert len(items) == len(set(items))


# -- other hosts ------------------------------------------------------------------------


def test_v2_host_uses_v2_names_and_core_features() -> None:
    r = assess(v2_facts())
    assert r["cgroup mode"].detail.startswith("v2")
    assert r.ok("io") and r.ok("memory") and r.ok("hugetlb")
    with pytest.raises(NotFound):
        r.check("blkio")
    assert r.ok("freezer") and "cgroup.freeze" in r["freezer"].detail
    assert r.ok("devices") and "BPF" in r["devices"].detail
    assert r.ok("cpuacct")
    assert r["net_cls"].status == "missing" and r["net_prio"].status == "missing"


def test_v2_read_only_tree() -> None:
    r = assess(v2_facts(cgroup_writable={"/sys/fs/cgroup": False}))
    assert r["memory"].status == "limited"
    assert "read-only" in r["memory"].hint  # root, but a read-only /sys/fs/cgroup
    assert r["freezer"].status == "limited"


def test_no_cgroup_filesystem() -> None:
    r = assess(hybrid_facts(cgroup_mode="none", v1_mounts={}, v2_mount=None, v2_controllers=(),
                            cgroup_writable={}))
    assert r["cgroup mode"].status == "missing"
    assert "mount" in r["cgroup mode"].hint
    assert r["memory"].status == "limited"


def test_non_root_host() -> None:
    r = assess(nonroot_facts())
    assert r["root"].status == "limited"
    assert "uid 65534" in r["root"].detail
    assert r.ok("user")
    for kind in NAMESPACE_KINDS:
        if kind != "user":
            assert r[kind].status == "limited"
            assert "user namespace" in r[kind].detail
    assert r["memory"].status == "limited" and "not writable" in r["memory"].detail
    assert "run as root" in r["memory"].hint
    assert "only root can mount" in r["net_cls"].hint
    assert r.ok("overlayfs") and "user namespace" in r["overlayfs"].detail


def test_unprivileged_container_without_cap_sys_admin() -> None:
    no_admin = ALL_CAPS & ~(1 << CAP_NUMBERS["CAP_SYS_ADMIN"])
    denied = {k: {"ok": False, "in_kernel": True, "errno": 1, "error": "unshare failed", "in_userns": False}
              for k in NAMESPACE_KINDS}
    r = assess(hybrid_facts(cap_eff=no_admin, seccomp_mode=2, seccomp_filters=1,
                            probe={"namespaces": denied,
                                   "overlay": {"ok": False, "step": "unshare", "errno": 1,
                                               "error": "Operation not permitted"}}))
    assert r["root"].status == "limited"
    assert all(r[k].status == "missing" for k in NAMESPACE_KINDS)
    assert "seccomp" in r["net"].hint or "CAP_SYS_ADMIN" in r["net"].hint
    assert r["overlayfs"].status == "missing" and "copy driver" in r["overlayfs"].hint
    assert "already filtered" in r["seccomp"].detail


def test_kernel_without_time_namespace() -> None:
    r = assess(hybrid_facts(probe={"namespaces": ns_results(time={"ok": False, "in_kernel": False,
                                                                  "errno": 2, "error": "no such file"}),
                                   "overlay": {"ok": True}}))
    assert r["time"].status == "missing"
    assert "CONFIG_TIME_NS" in r["time"].hint


@pytest.mark.parametrize(
    "sysctls, status, words",
    [
        ({"max_user_namespaces": 0}, "missing", "max_user_namespaces"),
        ({"max_user_namespaces": 100, "unprivileged_userns_clone": 0}, "limited", "unprivileged_userns_clone=1"),
        ({"max_user_namespaces": 100, "apparmor_restrict_unprivileged_userns": 1}, "limited", "AppArmor"),
        ({"max_user_namespaces": 100, "unprivileged_userns_clone": 1}, "ok", ""),
        ({}, "unknown", "/proc"),
    ],
)
def test_user_namespace_sysctls(sysctls: dict[str, int], status: str, words: str) -> None:
    r = assess(hybrid_facts(userns_sysctls=sysctls))
    row = r["user namespaces"]
    assert row.status == status
    assert words in row.hint


def test_probe_failure_reports_unknown_and_never_raises() -> None:
    r = assess(hybrid_facts(probe={"error": "probe did not finish within 5 s"}))
    for kind in NAMESPACE_KINDS:
        assert r[kind].status == "unknown"
        assert "did not finish" in r[kind].detail
    assert r["overlayfs"].status == "unknown"


def test_overlay_missing_from_kernel() -> None:
    r = assess(hybrid_facts(probe={"namespaces": ns_results(),
                                   "overlay": {"ok": False, "step": "mount overlay", "errno": 19,
                                               "error": "No such device"}}))
    assert r["overlayfs"].status == "missing"
    assert "modprobe overlay" in r["overlayfs"].hint


def test_storage_security_network_gaps() -> None:
    r = assess(hybrid_facts(mkfs_btrfs=None, libseccomp=None, pyseccomp=False, pyroute2=None))
    assert r["btrfs"].status == "limited" and "btrfs-progs" in r["btrfs"].hint
    assert r["seccomp"].status == "limited"
    assert "libseccomp2" in r["seccomp"].hint and "pip install pyseccomp" in r["seccomp"].hint
    assert r["pyroute2"].status == "missing" and "pip install pyroute2" in r["pyroute2"].hint
    r = assess(hybrid_facts(filesystems=frozenset({"tmpfs"}), btrfs_module=False, seccomp_kernel=False))
    assert r["btrfs"].status == "missing"
    assert r["seccomp"].status == "missing" and "CONFIG_SECCOMP_FILTER" in r["seccomp"].hint


# -- the report object ------------------------------------------------------------------------


def test_report_text_is_aligned_with_hints() -> None:
    r = assess(hybrid_facts())
    text = str(r)
    lines = text.splitlines()
    assert lines[0].startswith("pycontain doctor: Linux 6.18.44, cgroup hybrid, root")
    header = next(ln for ln in lines if ln.startswith("AREA"))
    detail_col = header.index("DETAIL")
    status_col = header.index("STATUS")
    rows = [ln for ln in lines[lines.index(header) + 1 :] if not ln.lstrip().startswith("hint:")]
    assert len(rows) == len(r)
    for ln, c in zip(rows, r):
        assert ln[status_col:].startswith(c.status)
        assert ln[detail_col:] == c.detail
    hints = [ln for ln in lines if ln.lstrip().startswith("hint:")]
    assert len(hints) == len(r.problems())
    assert all(h.index("hint:") == detail_col for h in hints)
    assert repr(r) == text


def test_report_html_escapes() -> None:
    facts = hybrid_facts(kernel="<script>", pyroute2=None)
    html = assess(facts)._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<tr>") == len(assess(facts)) + 1


def test_report_dict_is_json() -> None:
    r = assess(hybrid_facts())
    d = json.loads(json.dumps(r.to_dict()))
    assert d["cgroup_mode"] == "hybrid" and d["root"] is True
    assert d["controllers"]["net_cls"]["mounted_at"] is None
    assert len(d["checks"]) == len(r)
    assert sum(d["summary"].values()) == len(r)


def test_report_frame() -> None:
    pd = pytest.importorskip("pandas")
    r = assess(hybrid_facts())
    frame = r.frame
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["area", "item", "status", "detail", "hint"]
    assert len(frame) == len(r)
    assert frame.set_index("item").loc["net_cls", "status"] == "limited"
    frame.loc[0, "status"] = "changed"  # a copy: the report stays as it was
    assert r.frame.loc[0, "status"] != "changed"
    cf = r.controllers_frame()
    assert {"name", "in_kernel", "mounted_at", "on_v2", "usable"} <= set(cf.columns)


def test_lookup_unknown_item() -> None:
    r = assess(hybrid_facts())
    with pytest.raises(NotFound) as err:
        r.ok("warp drive")
    assert isinstance(err.value, LookupError)
    assert "overlayfs" in str(err.value)


# -- entry points ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["import pycontain", "import pycontain.doctor",
                                   "from pycontain.doctor import Report"])
def test_module_and_function_are_both_callable(first: str) -> None:
    # `import pycontain.doctor` binds the module as pycontain.doctor, shadowing
    # the lazily exported function: the module must be callable like it.
    code = (f"{first}\nimport pycontain\n"
            "r = pycontain.doctor(probe=False)\n"
            "from pycontain import doctor\n"
            "assert type(doctor(probe=False)).__name__ == 'Report'\n"
            "print(type(r).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Report"
    assert isinstance(doctor_module(probe=False), Report)


def test_gather_without_probe_never_raises() -> None:
    facts = HostFacts.gather(run_probe=False)
    assert facts.euid == os.geteuid()
    assert "skipped" in facts.probe["error"]
    r = assess(facts)
    assert r["mnt"].status == "unknown"


def test_gather_survives_unreadable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: Any, **_k: Any) -> Any:
        raise PermissionError(13, "denied")

    monkeypatch.setattr(cgroupfs, "layout", broken)
    monkeypatch.setattr(doctor_module.proc, "status", broken)
    r = assess(HostFacts.gather(run_probe=False))
    assert r["cgroup mode"].status == "missing"
    assert r.cgroup_mode == "none"


def test_cgroup_version_without_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroupfs, "layout", lambda: cgroupfs.CgroupLayout("none"))
    with pytest.raises(Unsupported) as err:
        pycontain.cgroup_version()
    assert err.value.hint and "mount" in err.value.hint


def test_cgroup_version_matches_layout() -> None:
    mode = cgroupfs.layout().mode
    if mode == "none":
        pytest.skip("no cgroup filesystem here")
    assert pycontain.cgroup_version() == mode


def test_probe_child_failures_are_reported(tmp_path: Any) -> None:
    missing = ProbeChild.start(executable=str(tmp_path / "no-such-python")).result()
    assert "cannot start" in missing["error"]

    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    result = ProbeChild.start(executable=str(slow)).result(timeout=0.3)
    assert "did not finish" in result["error"]

    # A descendant that keeps the probe's stdout open must not hang doctor.
    holder = tmp_path / "holding-python"
    pidfile = tmp_path / "holder.pid"
    holder.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\nexec sleep 30\n")
    holder.chmod(holder.stat().st_mode | stat.S_IXUSR)
    t0 = time.monotonic()
    try:
        result = ProbeChild.start(executable=str(holder)).result(timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert "did not finish" in result["error"]
    finally:
        for _ in range(50):
            if pidfile.exists() and pidfile.read_text().strip():
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
                break
            time.sleep(0.05)

    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\necho 'Traceback: boom' >&2\nexit 3\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    result = ProbeChild.start(executable=str(failing)).result()
    assert "status 3" in result["error"] and "boom" in result["error"]


def test_probe_child_runs_with_this_interpreter() -> None:
    # Real child, no privileges needed: unprivileged hosts still answer (limited/missing).
    result = ProbeChild.start(executable=sys.executable).result(timeout=20)
    assert "error" not in result, result
    assert set(result["namespaces"]) == set(NAMESPACE_KINDS)
    assert "ok" in result["overlay"]


# -- the image store and its driver -------------------------------------------------------------


@pytest.mark.parametrize(
    "store, explicit, status, words",
    [
        ({"root": "/s", "exists": True, "fstype": "ext4",
          "drivers": {"btrfs": "the store /s is on ext4, not btrfs", "overlay": None, "copy": None}},
         None, "ok", "overlay for the store /s on ext4; not usable: btrfs"),
        ({"root": "/s", "exists": True, "fstype": "btrfs", "drivers": {"btrfs": None, "overlay": None, "copy": None}},
         None, "ok", "btrfs for the store"),
        ({"root": "/s", "exists": True, "fstype": "overlay",
          "drivers": {"btrfs": "not btrfs", "overlay": "the store is on overlay", "copy": None}},
         None, "limited", "copy for the store"),
        ({"root": "/s", "exists": True, "fstype": "ext4",
          "drivers": {"btrfs": "the store /s is on ext4, not btrfs", "overlay": None, "copy": None}},
         "btrfs", "missing", "PYCONTAIN_STORAGE_DRIVER=btrfs cannot work here"),
        ({"root": "/s", "exists": True, "fstype": "ext4", "drivers": {"btrfs": "x", "overlay": None, "copy": None}},
         "copy", "ok", "chosen by PYCONTAIN_STORAGE_DRIVER"),
        ({"root": "/s", "exists": False, "fstype": "ext4"}, None, "ok", "not created yet"),
        ({"root": "/s", "exists": False, "fstype": "overlay"}, None, "limited", "copy driver"),
        ({"error": "PermissionError: denied"}, None, "unknown", "denied"),
    ],
)
def test_storage_driver_row(store: dict[str, Any], explicit: str | None, status: str, words: str) -> None:
    row = assess(hybrid_facts(store=store, storage_driver=explicit))["storage driver"]
    assert row.status == status, row
    assert words in row.detail
    if status != "ok":
        assert row.hint


def test_store_facts_create_no_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    root = tmp_path / "store"
    monkeypatch.setenv("PYCONTAIN_STORE", str(root))
    facts = HostFacts.gather(run_probe=False)
    assert facts.store["root"] == str(root) and facts.store["exists"] is False
    assert facts.store["fstype"]  # the filesystem of the nearest existing parent
    assert not root.exists()
    root.mkdir()
    facts = HostFacts.gather(run_probe=False)
    assert facts.store["drivers"]["copy"] is None
