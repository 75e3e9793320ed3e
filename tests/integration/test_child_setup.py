"""The container child's setup, seen from inside as a whole: every mount the
isolation needs, with its flags, and the capability sets. Guards the child's
faster paths (pycontain.backends.rootfs, .capabilities, kernel.syscalls):
none of them may drop a mount or a flag."""

from __future__ import annotations

import os

import pycontain
from pycontain.backends.rootfs import MASKED_PATHS, READONLY_PATHS
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS
from pycontain.kernel.proc import parse_mountinfo
from pycontain.kernel.syscalls import cap_mask


def _inside(script: str) -> str:
    r = pycontain.run(["sh", "-c", script])
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_every_mount_of_the_setup_with_its_flags() -> None:
    mounts = {m.mount_point: m for m in parse_mountinfo(_inside("cat /proc/self/mountinfo"))}

    def opts(point: str) -> set[str]:
        return set(mounts[point].options)

    locked = {"ro", "nosuid", "nodev", "noexec"}
    assert "nodev" in opts("/")
    assert mounts["/proc"].fstype == "proc" and {"nosuid", "nodev", "noexec"} <= opts("/proc")
    for p in ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"):
        assert locked <= opts(p), p
    assert mounts["/proc/acpi"].fstype == "tmpfs" and "ro" in opts("/proc/acpi")
    for p in ("/proc/keys", "/proc/timer_list"):  # /dev/null over them
        assert mounts[p].root == "/null", p  # the host's node, bound
    assert mounts["/sys"].fstype == "sysfs" and "ro" in opts("/sys")
    assert mounts["/sys/firmware"].fstype == "tmpfs" and "ro" in opts("/sys/firmware")
    cgroup = [m for p, m in mounts.items() if p.startswith("/sys/fs/cgroup")]
    assert cgroup and all(locked <= set(m.options) for m in cgroup)
    assert {"cgroup", "cgroup2"} & {m.fstype for m in cgroup}
    assert mounts["/dev"].fstype == "tmpfs" and {"nosuid", "nodev"} <= opts("/dev")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        assert f"/dev/{name}" in mounts, name
    assert mounts["/dev/pts"].fstype == "devpts" and mounts["/dev/shm"].fstype == "tmpfs"
    assert mounts["/dev/mqueue"].fstype == "mqueue"
    assert mounts["/etc/hosts"].mount_point == "/etc/hosts"
    # Docker's lists: whatever this kernel has is covered inside
    for p in MASKED_PATHS + READONLY_PATHS:
        if os.path.lexists(p):
            assert p in mounts, p
    # pivot_root + detach: no mount of the host's tree is left
    assert all(p in ("/", "/etc/hosts") or p.split("/")[1] in ("proc", "sys", "dev") for p in mounts), sorted(mounts)


def test_capability_sets_are_docker_s_and_nothing_is_inherited() -> None:
    st = dict(line.split(":\t", 1) for line in _inside("cat /proc/self/status").splitlines() if ":\t" in line)
    want = cap_mask(DOCKER_DEFAULT_CAPS)
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(st[key], 16) == want, key
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert st["NoNewPrivs"].strip() == "1" and st["Seccomp"].strip() == "2"


def _cgroup_points_inside(tmp_path, host_cgroups) -> list[str]:
    from tests.integration.containment import make_busybox_rootfs, run_script

    root = make_busybox_rootfs(str(tmp_path / "rootfs"))
    run = run_script(root, "cat /proc/self/mountinfo", plan={"host_cgroups": host_cgroups})
    assert run.returncode == 0, run.output
    return sorted(m.mount_point for m in parse_mountinfo(run.output) if m.fstype in ("cgroup", "cgroup2"))


def test_a_stale_cgroup_list_from_the_caller_is_not_used(tmp_path) -> None:
    # The caller's list saves the child reading mountinfo; a hierarchy
    # mounted (or gone) since must not be missed (or mounted afresh).
    from pycontain.backends.rootfs import host_cgroup_mounts

    now = host_cgroup_mounts()
    if len(now) < 2:
        import pytest

        pytest.skip("needs a host with several cgroup hierarchies (v1)")
    want = _cgroup_points_inside(tmp_path / "a", None)
    assert len(want) == len(now)
    assert _cgroup_points_inside(tmp_path / "b", now) == want
    assert _cgroup_points_inside(tmp_path / "c", now[:-1]) == want  # one mounted since
    moved = (now[0]._replace(dev=now[0].dev + 1000), *now[1:])  # another filesystem there now
    assert _cgroup_points_inside(tmp_path / "d", moved) == want
