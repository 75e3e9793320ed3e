"""enter_rootfs on the real kernel, observed from inside the container.

Each isolation claim is checked from inside (busybox sh), and paired with a
calibration run where the defence is missing, so the probe is shown to see
the difference.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil

import pytest

from pycontain.backends.rootfs import DEVICES, RootfsPlan
from pycontain.errors import InvalidArgument, KernelError
from pycontain.kernel import constants as C
from pycontain.kernel import syscalls
from tests.integration.containment import WEAKENED, make_busybox_rootfs, run_script


@pytest.fixture
def root(tmp_path):
    return make_busybox_rootfs(str(tmp_path / "rootfs"))


def test_old_root_is_gone_and_proc_is_fresh(root, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("host")
    script = (f"test -e {marker} && echo MARKER-VISIBLE; "
              "echo ROOTLINK=$(readlink /proc/1/root); "
              "test -x /proc/1/root/bin/busybox && echo OWN-BUSYBOX; "
              "echo PIDS=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '); "
              "echo COMM1=$(cat /proc/1/comm); "
              "cat /proc/self/mountinfo")
    run = run_script(root, script)
    assert run.returncode == 0, run.output
    assert "MARKER-VISIBLE" not in run.output
    assert "ROOTLINK=/" in run.output and "OWN-BUSYBOX" in run.output
    # Our pid namespace: PID 1 is the shell (busybox), and few processes exist.
    pids = re.search(r"PIDS=(.*)", run.output).group(1).split()
    assert "1" in pids and len(pids) <= 8, pids
    assert "COMM1=sh" in run.output or "COMM1=busybox" in run.output
    mounts = [ln.split(" - ")[0].split()[4] for ln in run.output.splitlines() if " - " in ln]
    # No mount of the host: every mount point is one enter_rootfs made.
    allowed = re.compile(r"^/$|^/proc(/|$)|^/dev(/|$)|^/sys(/|$)")
    assert mounts and all(allowed.match(m) for m in mounts), mounts
    host_mounts = {ln.split()[4] for ln in open("/proc/self/mountinfo")}
    assert not ({"/boot", "/run", "/home", str(tmp_path)} & host_mounts & set(mounts))

    # Calibration: the same probe in a mount namespace without enter_rootfs sees the host.
    calib = run_script(root, script.replace("cat /proc/self/mountinfo", "true"), WEAKENED, enter=False,
                       new={"mnt"})
    assert "MARKER-VISIBLE" in calib.output
    assert len(re.search(r"PIDS=(.*)", calib.output).group(1).split()) > 10


def test_dev_is_minimal(root):
    run = run_script(root, "ls -A /dev; echo ---; ls -A /dev/pts; readlink /dev/ptmx; "
                           "echo x > /dev/null && echo NULL-OK; head -c 4 /dev/zero | wc -c; "
                           "head -c 8 /dev/urandom | wc -c; echo y > /dev/full || echo FULL-ENOSPC")
    assert run.returncode == 0, run.output
    listing = run.output.split("---")[0].split()
    expected = set(DEVICES) | {"pts", "shm", "mqueue", "ptmx", "fd", "stdin", "stdout", "stderr"}
    assert set(listing) == expected, listing
    assert "pts/ptmx" in run.output and "NULL-OK" in run.output and "FULL-ENOSPC" in run.output
    assert "\n4\n" in run.output and "\n8\n" in run.output


def test_device_nodes_made_inside_cannot_be_used(root):
    # Docker keeps CAP_MKNOD; mknod of a block device is refused by seccomp,
    # and a char node made anywhere writable is on a nodev mount.
    script = ("mknod /tmp/blk b 7 0 2>&1 && echo BLK-MADE; "
              "mknod /tmp/null c 1 3 && echo CHR-MADE; "
              "echo x > /tmp/null && echo CHR-OPENED; "
              "mknod /dev/shm/null c 1 3 && (echo x > /dev/shm/null && echo SHM-OPENED); true")
    run = run_script(root, script)
    assert "BLK-MADE" not in run.output and "Operation not permitted" in run.output
    assert "CHR-MADE" in run.output
    assert "CHR-OPENED" not in run.output and "SHM-OPENED" not in run.output
    # Calibration: without seccomp and without nodev, both work.
    calib = run_script(root, script, WEAKENED, plan={"nodev": False})
    assert "BLK-MADE" in calib.output and "CHR-OPENED" in calib.output


@pytest.mark.v1  # the v1 hybrid layout: one directory per controller
def test_sys_and_cgroup_are_read_only(root):
    script = ("touch /sys/x 2>&1; echo 1 > /sys/kernel/uevent_helper 2>&1; "
              "echo ---; ls /sys/fs/cgroup; echo ---; "
              "echo x > /sys/fs/cgroup/cpu/release_agent 2>&1 || echo RA-REFUSED; "
              "mkdir /sys/fs/cgroup/memory/evil 2>&1 || echo MKDIR-REFUSED; "
              "mount -o remount,rw /sys/fs/cgroup/cpu 2>&1 || echo REMOUNT-REFUSED; "
              "mount -t cgroup -o rdma cgroup /mnt 2>&1 || echo MOUNT-REFUSED")
    run = run_script(root, script)
    first, cg, rest = run.output.split("---")
    assert first.count("Read-only file system") == 2, first
    assert "memory" in cg.split() and "cpu" in cg.split()
    assert "RA-REFUSED" in rest and "MKDIR-REFUSED" in rest and "Read-only file system" in rest
    assert "REMOUNT-REFUSED" in rest and "MOUNT-REFUSED" in rest
    # Calibration: with every capability and no filter, the read-only bind
    # could be made writable again (only in this container's mount namespace;
    # nothing is written to the host's cgroups).
    calib = run_script(root, "mount -o remount,bind,rw /sys/fs/cgroup/memory && echo REMOUNTED", WEAKENED)
    assert "REMOUNTED" in calib.output, calib.output


def test_cgroup_namespace_view(root):
    script = "cat /proc/self/cgroup; echo ---; grep ' /sys/fs/cgroup/' /proc/self/mountinfo"
    run = run_script(root, script, plan={"cgroup": "namespace"},
                     new={"mnt", "pid", "uts", "ipc", "net", "cgroup"})
    assert run.returncode == 0, run.output
    cgroups, mounts = run.output.split("---")
    # In its cgroup namespace the container sees itself at the root of every hierarchy.
    assert all(ln.endswith(":/") for ln in cgroups.split()), cgroups
    lines = [ln for ln in mounts.splitlines() if ln.strip()]
    assert lines and all(" ro," in ln for ln in lines), lines
    assert all(ln.split()[3] == "/" for ln in lines), lines


def test_masked_paths_read_empty(root):
    script = ("for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do "
              "test -e $p && echo $p=$(head -c 64 $p | wc -c); done; "
              "ls -A /proc/acpi /sys/firmware 2>&1 | grep -v : | grep . && echo DIR-NOT-EMPTY; "
              "touch /proc/acpi/x 2>&1; true")
    run = run_script(root, script)
    sizes = dict(re.findall(r"(/proc/\w+)=(\d+)", run.output))
    assert sizes and all(v == "0" for v in sizes.values()), run.output
    assert "DIR-NOT-EMPTY" not in run.output
    assert "Read-only file system" in run.output
    calib = run_script(root, script, plan={"masked_paths": ()})
    calib_sizes = dict(re.findall(r"(/proc/\w+)=(\d+)", calib.output))
    assert any(v != "0" for v in calib_sizes.values()), calib.output


def test_read_only_paths(root):
    script = ("echo evil > /proc/sys/kernel/hostname 2>&1 && echo WROTE; cat /proc/sys/kernel/hostname; "
              "echo 1 > /proc/sys/vm/drop_caches 2>&1 && echo DROPPED; true")
    run = run_script(root, script, WEAKENED)  # even with every capability
    assert "WROTE" not in run.output and "DROPPED" not in run.output
    assert "Read-only file system" in run.output
    # Calibration: without the read-only paths, the (UTS-namespaced) hostname write works.
    calib = run_script(root, "echo evil > /proc/sys/kernel/hostname && cat /proc/sys/kernel/hostname",
                       plan={"readonly_paths": ()}, config=WEAKENED)
    assert "evil" in calib.output


def test_read_only_rootfs_keeps_rw_volumes(root, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    script = "touch /x 2>&1; touch /data/y && echo VOL-RW; touch /dev/shm/z && echo SHM-RW"
    run = run_script(root, script, plan={"read_only": True, "volumes": [(str(vol), "/data", False)]})
    assert "Read-only file system" in run.output and "VOL-RW" in run.output and "SHM-RW" in run.output
    assert (vol / "y").exists() and not os.path.exists(os.path.join(root, "x"))
    calib = run_script(root, "touch /x && echo ROOT-RW")
    assert "ROOT-RW" in calib.output


def test_read_only_volume_is_recursive(root, tmp_path):
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    run = run_script(root, "touch /data/a 2>&1; touch /data/sub/b 2>&1; cat /data/marker",
                     plan={"volumes": [(str(vol), "/data", True)]})
    assert run.output.count("Read-only file system") == 2, run.output
    assert not (vol / "a").exists()


def test_volume_through_symlink_stays_inside(root, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("from-volume")
    os.symlink("/etc", os.path.join(root, "evil"))  # absolute: would be the host's /etc
    os.symlink("../../../../../../../tmp", os.path.join(root, "evil2"))  # relative escape
    target_name = f"pycontain-test-{os.getpid()}"
    # Calibration: a naive host-side join leaves the root for both.
    for link in ("evil", "evil2"):
        naive = os.path.realpath(os.path.join(root, link, target_name))
        assert not naive.startswith(root + "/"), naive
    run = run_script(root, f"cat /etc/{target_name}/marker; cat /tmp/{target_name}/marker",
                     plan={"volumes": [(str(src), f"/evil/{target_name}", True),
                                       (str(src), f"/evil2/{target_name}", True)]})
    assert run.output.count("from-volume") == 2, run.output
    assert not os.path.exists(f"/etc/{target_name}") and not os.path.exists(f"/tmp/{target_name}")
    assert os.path.isdir(os.path.join(root, "etc", target_name))
    assert os.path.isdir(os.path.join(root, "tmp", target_name))


def test_volume_through_symlink_into_proc_is_refused(root, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("/proc", os.path.join(root, "data"))
    with pytest.raises(InvalidArgument, match="resolves into /proc"):
        run_script(root, "true", plan={"volumes": [(str(src), "/data/kernel", False)]})
    assert os.listdir(os.path.join(root, "proc")) == []  # nothing created on the way
    os.symlink("../dev/", os.path.join(root, "data2"))
    with pytest.raises(InvalidArgument, match="resolves into /dev"):
        run_script(root, "true", plan={"volumes": [(str(src), "/data2", False)]})
    os.symlink("/nowhere/at/all", os.path.join(root, "dangling"))
    os.makedirs(os.path.join(root, "nowhere"))
    with pytest.raises(InvalidArgument, match="dangling"):
        run_script(root, "true", plan={"volumes": [(str(src), "/dangling", False)]})
    shutil.rmtree(os.path.join(root, "nowhere"))


@pytest.mark.parametrize("kernel_dir", ["proc", "sys", "dev"])
def test_image_with_kernel_dir_symlink_is_refused(root, tmp_path, kernel_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(os.path.join(root, kernel_dir), ignore_errors=True)
    os.symlink(str(outside), os.path.join(root, kernel_dir))
    with pytest.raises(InvalidArgument, match="symlink"):
        run_script(root, "true")
    assert os.listdir(outside) == []  # nothing was mounted or created through it
    # Calibration: the same image with a real directory works.
    os.unlink(os.path.join(root, kernel_dir))
    os.mkdir(os.path.join(root, kernel_dir))
    assert run_script(root, "true").returncode == 0


def test_files_shadow_without_writing_the_image(root):
    with open(os.path.join(root, "etc", "hosts"), "w") as f:
        f.write("image\n")
    run = run_script(root, "cat /etc/hosts; ls -A /dev | grep pycontain; cat /etc/hostname",
                     plan={"files": {"/etc/hosts": "127.0.0.1 box\n", "/etc/hostname": "box\n"}})
    assert "127.0.0.1 box" in run.output and "image" not in run.output and "pycontain" not in run.output
    assert open(os.path.join(root, "etc", "hosts")).read() == "image\n"


def test_mount_rootfs_callable(root, tmp_path):
    # A storage driver hands over a callable that mounts the root (here an
    # overlay of the busybox tree): writes go to the upper dir only.
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()

    def mount_overlay(path: str) -> None:
        from pycontain.kernel import syscalls

        syscalls.mount("overlay", path, "overlay", 0, f"lowerdir={root},upperdir={upper},workdir={work}")

    run = run_script(str(merged), "echo hi > /written; ls /bin/busybox", plan={"mount_rootfs": mount_overlay})
    assert run.returncode == 0, run.output
    assert (upper / "written").exists() and not os.path.exists(os.path.join(root, "written"))


def test_plan_validation(root):
    bad = [
        {"volumes": [("/tmp", "relative", False)]},
        {"volumes": [("/tmp", "/proc/x", False)]},
        {"volumes": [("/tmp", "/dev", False)]},
        {"volumes": [("/tmp", "/sys/fs/cgroup", False)]},
        {"volumes": [("/tmp", "/", False)]},
        {"volumes": [("/tmp", "/a,b", False)]},
        {"volumes": [("/tmp", "/a:b", False)]},
        {"volumes": [("/tmp", "/a/../b", False)]},
        {"volumes": [("/does/not/exist", "/a", False)]},
        {"volumes": [("/tmp", "/a", "yes")]},
        {"volumes": [("/tmp", "/a", False), ("/etc", "/a/", False)]},
        {"cgroup": "host"},
        {"masked_paths": ("/etc/passwd",)},
        {"files": {"/proc/x": "a"}},
    ]
    for kw in bad:
        with pytest.raises(InvalidArgument):
            RootfsPlan(root, **kw)
    with pytest.raises(InvalidArgument):
        RootfsPlan("relative/root")
    assert posixpath.isabs(RootfsPlan(root).rootfs)


def test_dev_swapped_for_a_symlink_mid_setup_touches_nothing_outside(root):
    # Another container sharing the rootfs swaps /dev for a symlink to "/" right
    # after our tmpfs went on it (the race of CVE-2021-30465). Path strings would
    # now lead to the host's / (we have not pivoted yet); enter_rootfs resolves
    # inside the root and notices /dev is no longer its tmpfs.
    import pycontain.backends.rootfs as R

    marker = f"/pycontain-race-{os.getpid()}"
    test_pid = os.getpid()

    def swap_after_dev_mount() -> None:
        original = R._mount

        def racing(source, target, fstype, flags=0, data=None, what=None):
            original(source, target, fstype, flags, data, what)
            if what == "/dev":
                # The "other container": a process in another mount namespace
                # (the test's), where rootfs/dev is no mount point and can be renamed.
                ns = os.open(f"/proc/{test_pid}/ns/mnt", os.O_RDONLY)
                pid = os.fork()
                if pid == 0:
                    try:
                        syscalls.setns(ns, C.CLONE_NEWNS)
                        os.rename(os.path.join(root, "dev"), os.path.join(root, "dev.real"))
                        os.symlink("/", os.path.join(root, "dev"))
                    finally:
                        os._exit(0)
                os.waitpid(pid, 0)
                os.close(ns)

        R._mount = racing
        R.DEVICES = (marker.lstrip("/"),)  # would be created as /<marker> on the host by a path-based setup

    # Calibration: resolved as a host path string, the swapped /dev is the host's /.
    os.makedirs(os.path.join(root, "dev"), exist_ok=True)
    os.rename(os.path.join(root, "dev"), os.path.join(root, "dev.tmp"))
    os.symlink("/", os.path.join(root, "dev"))
    assert os.path.realpath(os.path.join(root, "dev", "null")) == "/null"
    os.unlink(os.path.join(root, "dev"))
    os.rename(os.path.join(root, "dev.tmp"), os.path.join(root, "dev"))

    with pytest.raises(KernelError, match="not the filesystem just mounted"):
        run_script(root, "true", before=swap_after_dev_mount)
    assert not os.path.exists(marker) and not os.path.exists(os.path.join(root, marker.lstrip("/")))
    os.unlink(os.path.join(root, "dev"))  # the planted link to "/" goes before tmp_path cleanup


def test_rootfs_in_a_user_namespace(root):
    # The same setup as root of a new user namespace (bind-mounted device
    # nodes, proc/sysfs/mqueue owned by the new namespaces).
    run = run_script(root, "cat /proc/self/uid_map; ls /dev | wc -l; grep CapEff /proc/self/status; "
                           "touch /sys/x 2>&1; ls /proc | grep -c -E '^[0-9]+$'",
                     new={"user", "mnt", "pid", "uts", "ipc", "net"}, id_map="0 0 4294967295")
    assert run.returncode == 0, run.output
    assert "4294967295" in run.output and "Read-only file system" in run.output
    assert "\n14\n" in run.output  # DEVICES + pts shm mqueue ptmx fd stdin stdout stderr
    assert "a80425fb" in run.output


def test_cgroup_namespace_inside_a_user_namespace(root):
    # v1 hierarchies cannot be mounted from a user namespace: auto mode shows cgroup2 only.
    run = run_script(root, "ls /sys/fs/cgroup | tr '\\n' ' '; echo; grep -c ' /sys/fs/cgroup/' /proc/self/mountinfo",
                     new={"user", "mnt", "pid", "uts", "ipc", "net", "cgroup"}, id_map="0 0 4294967295")
    assert run.returncode == 0, run.output
    assert run.output.split("\n")[0].split() == ["unified"], run.output
