"""Sandbox posture (after gVisor's sandbox-posture test): what a container is
confined by, listed from outside (``c.posture()``) and from inside
(``c.posture(inside=True)``, ``pycontain doctor`` run in the container),
compared with the expected profile. The comparison is calibrated: a
weakened container must differ from the profile."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

import pycontain
from pycontain.container import Container
from pycontain.kernel import proc, syscalls
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS

OWN = {"mnt", "uts", "ipc", "pid", "net", "cgroup"}
SHARED = {"user", "time"}  # no user namespace by default, as Docker
LIMITS = {"memory": 64 << 20, "cpus": 0.5, "pids": 50, "cpuset": [0]}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Mount points a default container may have: its root, the kernel
#: filesystems set up for it, the masked and read-only paths (Docker's
#: lists; only those that exist on this kernel show up) and /etc files.
ALLOWED_MOUNTS = {
    "/", "/proc", "/dev", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
    "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/etc/hosts", "/etc/hostname",
    "/etc/resolv.conf",
    # masked
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
    "/proc/interrupts",
    # read-only
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}
REQUIRED_MOUNTS = {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/sys/fs/cgroup"}
READ_ONLY = ("/sys", "/sys/fs/cgroup", "/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq")


def profile_differences(p: dict[str, Any], *, nonroot: bool = False) -> list[str]:
    """How posture ``p`` (outside or inside form) differs from the default profile."""
    out = []
    docker = set(DOCKER_DEFAULT_CAPS)
    caps = {k: set(v) for k, v in p["capabilities"].items()}
    want_eff = set() if nonroot else docker
    for key, want in (("effective", want_eff), ("permitted", want_eff), ("bounding", docker),
                      ("inheritable", set()), ("ambient", set())):
        if caps.get(key) != want:
            out.append(f"capabilities.{key}: {sorted(caps.get(key, set()) ^ want)} differ")
    if p["seccomp"] != "filter":
        out.append(f"seccomp {p['seccomp']}")
    if p["no_new_privs"] is not True:
        out.append("no_new_privs off")
    points = {m[0] for m in p["mounts"]}
    cgroup_dirs = {m for m in points if m.startswith("/sys/fs/cgroup/")}
    if points - ALLOWED_MOUNTS - cgroup_dirs:
        out.append(f"unexpected mounts {sorted(points - ALLOWED_MOUNTS - cgroup_dirs)}")
    if REQUIRED_MOUNTS - points:
        out.append(f"missing mounts {sorted(REQUIRED_MOUNTS - points)}")
    for point, _fstype, options in p["mounts"]:
        ro = "ro" in options.split(",")
        if (point in READ_ONLY or point in cgroup_dirs) and not ro:
            out.append(f"{point} is writable")
        if point == "/proc" and not {"nosuid", "nodev", "noexec"} <= set(options.split(",")):
            out.append(f"/proc options {options}")
    return out


@pytest.mark.parametrize("user", [None, "1000:1000"])
def test_posture_outside_and_inside_match_the_profile(user):
    with Container(command=["sleep", "60"], user=user, memory="64M", cpus=0.5, pids=50, cpuset="0") as c:
        outside = c.posture()
        inside = c.posture(inside=True)
        assert c.pid is not None
        pid1_ns = {k: v.inode for k, v in proc.namespace_ids(c.pid).items()}
    mine = {k: v.inode for k, v in proc.namespace_ids(os.getpid()).items()}
    # namespaces: outside's verdict, and the ids the container sees itself
    assert {k for k, v in outside["namespaces"].items() if v == "own"} == OWN, outside["namespaces"]
    for kind, inode in inside["namespaces"].items():
        assert inode == pid1_ns[kind], kind
        assert (inode != mine[kind]) == (kind in OWN), kind
    # capabilities, seccomp, no_new_privs, mounts
    assert profile_differences(inside, nonroot=user is not None) == []
    if user is None:  # PID 1 (outside's view) is root; a USER applies to the workload only
        assert profile_differences({**outside, "mounts": inside["mounts"]}) == []
    # limits: as configured, the same seen from inside (its cgroup namespace) and outside
    assert inside["limits"] == LIMITS, inside["limits"]
    assert outside["limits"] == LIMITS, outside["limits"]


def test_posture_comparison_can_fail():
    # Calibration: a weakened container is not the default profile, and the
    # comparison says how.
    held = syscalls.cap_names(syscalls.capget()[1])
    with Container(command=["sleep", "60"], cap_add=held, seccomp="unconfined") as c:
        diffs = profile_differences(c.posture(inside=True))
    text = "\n".join(diffs)
    assert "capabilities.effective" in text and "capabilities.bounding" in text and "seccomp disabled" in text, diffs
    with Container(command=["sleep", "60"], volumes={REPO: "/mnt/repo"}) as c:
        diffs = profile_differences(c.posture(inside=True))
    assert diffs == ["unexpected mounts ['/mnt/repo']"], diffs
    with Container(command=["sleep", "60"]) as c:
        inside = c.posture(inside=True)
    assert inside["limits"] == {"memory": None, "cpus": None, "pids": None, "cpuset": inside["limits"]["cpuset"]}
    assert inside["limits"]["cpuset"] == sorted(os.sched_getaffinity(0))


def test_doctor_inside_a_container_reports_confinement():
    r = pycontain.run([sys.executable, "-m", "pycontain", "doctor", "--json"], env={"PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    checks = {(c["area"], c["item"]): c for c in report["checks"]}
    root = checks[("privileges", "root")]
    assert root["status"] != "ok" and "CAP_SYS_ADMIN" in root["detail"], root
    for kind in ("mnt", "pid", "net", "user"):
        assert checks[("namespaces", kind)]["status"] == "missing", checks[("namespaces", kind)]
    seccomp = checks[("security", "seccomp")]
    assert "already filtered" in seccomp["detail"], seccomp
    # Calibration: on the host, the same doctor says root is fully capable.
    host = pycontain.doctor(probe=False).to_dict()
    assert next(c for c in host["checks"] if c["item"] == "root")["status"] == "ok"
