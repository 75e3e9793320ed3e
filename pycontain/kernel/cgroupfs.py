"""Where the cgroup filesystems are, and which mode the host runs.

Detection follows DESIGN.md §4: cgroup2 mounted at the root of the cgroup
tree is "v2"; v1 hierarchies (possibly with a cgroup2 at ``unified/``, as
systemd's hybrid mode does) are "hybrid" when a cgroup2 mount exists and
"v1" otherwise. Hybrid hosts are served by the v1 backend: the cgroup2
mount there has no useful controllers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pycontain.kernel.proc import MountInfo, mountinfo, read_text

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class KernelController:
    """One row of /proc/cgroups: a controller the kernel was built with."""

    name: str
    hierarchy: int  # 0: not bound to a v1 hierarchy (free for v2, or unused)
    num_cgroups: int
    enabled: bool


@dataclass(frozen=True)
class CgroupLayout:
    """The host's cgroup mounts as this process sees them."""

    mode: str  # "v1", "v2", "hybrid" or "none"
    #: v1 controller -> mount point (co-mounted controllers share one)
    v1_mounts: dict[str, str] = field(default_factory=dict)
    #: where cgroup2 is mounted, if anywhere
    v2_mount: str | None = None
    #: every controller the kernel knows, from /proc/cgroups
    kernel_controllers: dict[str, KernelController] = field(default_factory=dict)

    def v2_controllers(self) -> list[str]:
        """Controllers usable on the cgroup2 mount (its cgroup.controllers)."""
        if not self.v2_mount:
            return []
        try:
            with open(f"{self.v2_mount}/cgroup.controllers") as f:
                return f.read().split()
        except OSError:
            return []


_V1_NON_CONTROLLER_OPTIONS = frozenset(
    {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "clone_children",
     "xattr", "noprefix", "cpuset_v2_mode", "favordynmods", "all", "none"}
)


def parse_proc_cgroups(text: str) -> dict[str, KernelController]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, hier, num, enabled = line.split()[:4]
        out[name] = KernelController(name, int(hier), int(num), enabled == "1")
    return out


def layout_from(mounts: list[MountInfo], proc_cgroups: str) -> CgroupLayout:
    """Pure part of :func:`layout`, testable on recorded mountinfo text."""
    known = parse_proc_cgroups(proc_cgroups)
    v1: dict[str, str] = {}
    v2_mount = None
    for m in mounts:
        if m.fstype == "cgroup2":
            # Prefer the mount at the root of the tree when there are several.
            if v2_mount is None or m.mount_point == CGROUP_ROOT:
                v2_mount = m.mount_point
        elif m.fstype == "cgroup":
            for opt in m.super_options:
                if opt.startswith("name="):
                    v1.setdefault(opt, m.mount_point)
                elif opt in known or (not known and opt not in _V1_NON_CONTROLLER_OPTIONS):
                    # Options like clone_children or xattr are not controllers.
                    v1.setdefault(opt, m.mount_point)
    real_v1 = {k: v for k, v in v1.items() if not k.startswith("name=")}
    if v2_mount == CGROUP_ROOT and not real_v1:
        mode = "v2"
    elif real_v1:
        mode = "hybrid" if v2_mount else "v1"
    elif v2_mount:
        mode = "v2"
    else:
        mode = "none"
    return CgroupLayout(mode, v1, v2_mount, known)


def layout() -> CgroupLayout:
    """Read this process's view of the cgroup mounts."""
    try:
        with open("/proc/cgroups") as f:
            text = f.read()
    except OSError:
        text = ""
    return layout_from(mountinfo(fstypes=("cgroup", "cgroup2")), text)  # only these lines are parsed


# -- file access for the cgroup backends -------------------------------------------
#
# The backends (pycontain.backends.cgroup_v1/_v2) decide *what* to write; the
# functions below are the only code that opens cgroup files. Errors come back
# typed (pycontain.errors), naming the file and the value.

import errno as _errno  # noqa: E402  (kept next to the code that uses it)
import os  # noqa: E402
import stat as _stat  # noqa: E402

from pycontain.errors import NotFound, PycontainError, kernel_error  # noqa: E402
from pycontain.kernel import constants as _C  # noqa: E402
from pycontain.kernel import syscalls as _sys  # noqa: E402


def read(path: str) -> str:
    """The whole text of a cgroup (or /sys) file; typed error on failure."""
    return read_text(path)


def read_fast(path: str) -> bytes | None:
    """One ``read(2)`` of a small cgroup file, or None if it cannot be read.

    For stats samplers: no exceptions on the hot path, no text decoding.
    Cgroup stat files fit in one read (the kernel fills a seq_file page).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 16384)
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: str, value: str | int, *, field: str | None = None) -> None:
    """Write ``value`` to a cgroup file with one ``write(2)``, as the kernel wants.

    The kernel parses each write as a whole; splitting it (as buffered I/O
    may) can make it refuse the value, so this uses os.write on a raw fd.
    """
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise kernel_error("open", e.errno or _errno.EIO, path=path) from None
    try:
        os.write(fd, data)
    except OSError as e:
        detail = f"writing {str(value)!r}" + (f" for {field}" if field else "")
        hint = None
        if e.errno == _errno.EINVAL:
            hint = "the kernel refused this value for this file; check its range and format"
        elif e.errno == _errno.EBUSY:
            hint = "the cgroup is in use (a limit below current usage, or processes inside)"
        raise kernel_error("write", e.errno or _errno.EIO, path=path, detail=detail, hint=hint) from None
    finally:
        os.close(fd)


def make_dir(path: str) -> bool:
    """mkdir a cgroup; True if we created it, False if it already existed."""
    try:
        os.mkdir(path, 0o755)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise kernel_error("mkdir", e.errno or _errno.EIO, path=path) from None


def remove_dir(path: str) -> bool:
    """rmdir a cgroup; True if removed, False if it was already gone."""
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        raise kernel_error("rmdir", e.errno or _errno.EIO, path=path,
                           hint="a cgroup can only be removed once it has no processes and no children"
                           if e.errno == _errno.EBUSY else None) from None


def make_dir_in_parents(path: str, make_parents: Callable[[str], None], attempts: int = 5) -> bool:
    """``make_parents(path)`` then mkdir ``path``; True if we created it.

    Another process (or thread) removing the last cgroup of a nested parent
    prunes that parent (:func:`remove_empty_parents`); if it does so while
    we make the parents or between our two steps, a read of the dying
    parent fails with ENODEV, or mkdir with ENOENT, and the parents are
    made again. Once our cgroup exists, its parents cannot be removed.
    """
    try:
        # The parents exist almost always: try without looking at them first.
        return make_dir(path)
    except PycontainError as e:
        if e.errno != _errno.ENOENT:
            raise
    for attempt in range(attempts):
        try:
            make_parents(path)
            return make_dir(path)
        except PycontainError as e:
            if e.errno not in (_errno.ENOENT, _errno.ENODEV) or attempt == attempts - 1:
                raise
    return False  # pragma: no cover - the loop returns or raises


def parse_value(raw: bytes | None) -> float:
    """A cgroup file holding one number: int, ``max`` -> inf, missing or junk -> nan."""
    if raw is None:
        return float("nan")
    try:
        return int(raw)
    except ValueError:
        return float("inf") if raw.strip() == b"max" else float("nan")


def parse_keyed(raw: bytes | None) -> dict[bytes, int]:
    """A flat keyed cgroup file (``memory.stat``, ``memory.events``): key -> int."""
    out: dict[bytes, int] = {}
    if raw:
        for line in raw.splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    out[parts[0]] = int(parts[1])
                except ValueError:
                    pass
    return out


def remove_empty_parents(path: str, keep: str) -> None:
    """rmdir the ancestors of ``path`` below ``keep`` (which stays) while they are empty.

    A cgroup made under a nested parent (``pycontain/containers/NAME``) leaves
    no empty ``containers`` behind when it is the last one. An ancestor that
    still has children (EBUSY) ends the walk; one already gone (another
    remover got there first) does not.
    """
    parent = os.path.dirname(path)
    while parent.startswith(keep.rstrip("/") + "/"):
        try:
            os.rmdir(parent)
        except FileNotFoundError:
            pass
        except OSError:
            return
        parent = os.path.dirname(parent)


def exists(path: str) -> bool:
    return os.path.isdir(path)


def children(path: str) -> list[str]:
    """Names of the child cgroups of ``path`` (empty if it is gone)."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def procs(path: str) -> list[int]:
    """The pids in ``path/cgroup.procs`` (empty if the cgroup is gone)."""
    raw = read_fast(path + "/cgroup.procs")
    if raw is None:
        return []
    return [int(x) for x in raw.split()]


def join(procs_files: list[str] | tuple[str, ...]) -> None:
    """Move the calling process into each cgroup whose ``cgroup.procs`` is given.

    Writing ``0`` means "the writer" (cgroups(7)), so a freshly forked child
    can place itself before exec without knowing its pid.
    """
    for path in procs_files:
        write(path, "0")


def _parse_cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def online_cpus() -> set[int]:
    """The CPUs the kernel has online (/sys/devices/system/cpu/online)."""
    try:
        return _parse_cpu_list(read("/sys/devices/system/cpu/online"))
    except OSError:
        return set(range(os.cpu_count() or 1))


def online_mems() -> set[int]:
    """The NUMA memory nodes online (node 0 on machines without NUMA)."""
    try:
        return _parse_cpu_list(read("/sys/devices/system/node/online"))
    except OSError:
        return {0}


def device_number(path: str) -> tuple[str, int, int]:
    """(``"b"`` or ``"c"``, major, minor) of a device node such as /dev/loop0."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound("no such device node", field="device", value=path) from None
    except OSError as e:
        raise kernel_error("stat", e.errno or _errno.EIO, path=path) from None
    if _stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif _stat.S_ISCHR(st.st_mode):
        kind = "c"
    else:
        from pycontain.errors import InvalidArgument

        raise InvalidArgument("not a device node", field="device", value=path,
                              hint="give a block or character device such as /dev/loop0, or 'MAJ:MIN'")
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev)


def block_device_name(major: int, minor: int) -> str | None:
    """The kernel name of block device MAJ:MIN (``loop0``), from /sys/dev/block."""
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
    except OSError:
        return None


def mount_v1_hierarchy(controller: str, target: str) -> bool:
    """Mount a cgroup v1 hierarchy for ``controller`` at ``target`` (created if missing).

    Returns True if this call created the directory ``target`` (so the caller
    knows to remove it after unmounting). The kernel binds a controller to at
    most one v1 hierarchy; mounting it again with the same options returns the
    existing hierarchy (cgroups(7)).
    """
    created = make_dir(target)
    try:
        _sys.mount("cgroup", target, "cgroup", _C.MS_NOSUID | _C.MS_NODEV | _C.MS_NOEXEC | _C.MS_RELATIME,
                   controller)
    except BaseException:
        if created:
            try:
                os.rmdir(target)
            except OSError:
                pass
        raise
    return created


def unmount_hierarchy(target: str, *, remove_dir_too: bool) -> None:
    """Unmount what :func:`mount_v1_hierarchy` mounted and drop its directory."""
    _sys.umount2(target)
    if remove_dir_too:
        try:
            os.rmdir(target)
        except OSError:
            pass


def is_mount_point(path: str) -> bool:
    """True if ``path`` is a mount point in this mount namespace."""
    real = os.path.realpath(path)
    return any(m.mount_point == real for m in mountinfo())


def descendants(path: str) -> list[str]:
    """Every cgroup below ``path``, deepest first (the order rmdir needs)."""
    out: list[str] = []
    for name in children(path):
        sub = f"{path}/{name}"
        out.extend(descendants(sub))
        out.append(sub)
    return out


def remove_tree(path: str, timeout: float = 10.0) -> None:
    """rmdir ``path`` and the (empty) cgroups below it, children first.

    A task that was just killed may hold its cgroup for a moment after it is
    gone from cgroup.procs, so EBUSY is retried until ``timeout`` seconds.
    """
    import time

    deadline = time.monotonic() + timeout
    for d in [*descendants(path), path]:
        while True:
            try:
                remove_dir(d)
                break
            except OSError as e:
                if e.errno != _errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
