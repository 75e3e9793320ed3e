"""The container child's cheaper paths give the same answers as the general ones."""

from __future__ import annotations

from pycontain.kernel import proc

_MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "40 31 0:37 / /sys/fs/cgroup/sys\\040temd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    "50 22 0:40 / /mnt/x\\040-\\040cgroup rw - ext4 /dev/sdb rw\n"
)


def test_mountinfo_of_some_types_is_the_filtered_full_parse() -> None:
    full = proc.parse_mountinfo(_MOUNTINFO)
    want = [m for m in full if m.fstype in ("cgroup", "cgroup2")]
    got = proc.parse_mountinfo(proc._of_types(_MOUNTINFO, ("cgroup", "cgroup2")))
    assert got == want
    assert [m.mount_point for m in got] == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/sys temd", "/sys/fs/cgroup/unified"]


def test_mountinfo_reads_this_process() -> None:
    every = proc.mountinfo("self")
    assert proc.mountinfo("self", fstypes=("proc",)) == [m for m in every if m.fstype == "proc"]


def test_is_mount_root_says_what_mount_ids_say() -> None:
    import os

    from pycontain.kernel import syscalls

    for path in ("/", "/proc", "/proc/self", "/etc"):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            answer = syscalls.is_mount_root(fd)
        finally:
            os.close(fd)
        if answer is None:  # a kernel before 5.8 does not say
            continue
        want = path == "/" or proc.mount_id(path) != proc.mount_id(os.path.dirname(path))
        assert answer is want, path


def test_confinement_mask_follows_its_caps() -> None:
    import dataclasses
    import pickle

    from pycontain.backends import hardening
    from pycontain.kernel import syscalls
    from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS

    c = hardening.Confinement(DOCKER_DEFAULT_CAPS, None, "/", None)
    assert c.cap_mask == syscalls.cap_mask(DOCKER_DEFAULT_CAPS)
    assert dataclasses.replace(c, caps=("CAP_CHOWN",)).cap_mask == 1
    assert dataclasses.replace(c, workdir="/tmp").cap_mask == c.cap_mask
    assert pickle.loads(pickle.dumps(c)).cap_mask == c.cap_mask


def test_the_caller_s_cgroup_list_is_checked_against_the_mounts() -> None:
    from pycontain.backends import rootfs

    now = rootfs.host_cgroup_mounts()
    assert rootfs._still_mounted(now)
    if now:
        assert not rootfs._still_mounted(now[:-1])  # one more there than listed
        assert not rootfs._still_mounted((now[0]._replace(dev=now[0].dev + 1000), *now[1:]))
        gone = rootfs.CgroupMount("/sys/fs/cgroup/pycontain-none", "cgroup", "/", ("rw",), now[0].dev)
        assert not rootfs._still_mounted((*now, gone))
    assert not rootfs._still_mounted((rootfs.CgroupMount("/sys/fs/cgroup/a/b", "cgroup", "/", (), 0),))
