"""Turn a directory (or a storage driver's mount) into the container's ``/``.

:func:`enter_rootfs` runs in the container's single-threaded child, after it
unshared a mount namespace (and forked into its pid namespace), and before
capabilities are dropped (the mounts need CAP_SYS_ADMIN). In order
(DESIGN.md §3, after runc/crun/bubblewrap):

1. ``/`` becomes recursively private, so nothing below propagates to the host.
2. The root filesystem: ``plan.mount_rootfs(path)`` (a storage driver's overlay)
   or a bind of the prepared directory onto itself (pivot_root(2) needs a
   mount point); ``nodev`` by default.
3. Volumes (bind mounts), destinations resolved *inside* the rootfs with
   openat2(RESOLVE_IN_ROOT): a symlink in the image cannot point a mount
   outside the container (CVE-2021-30465); /proc, /sys, /dev are refused.
4. A fresh ``/proc`` (nosuid,nodev,noexec); a minimal ``/dev`` (tmpfs with
   bind mounts of the host's null zero full random urandom tty, devpts
   ``newinstance`` with ``/dev/ptmx`` -> ``pts/ptmx``, ``/dev/shm``,
   ``/dev/mqueue``, the fd/stdin/stdout/stderr symlinks); ``/sys``
   read-only; ``/sys/fs/cgroup`` read-only (see :class:`RootfsPlan.cgroup`).
5. Docker's masked paths (``/dev/null`` over files, an empty read-only tmpfs
   over directories) and read-only paths.
6. ``pivot_root(".", ".")``, then ``umount2(".", MNT_DETACH)`` of the old root
   stacked on top, ``chdir("/")``: the host's tree is gone, not hidden
   (a chroot could be escaped).
7. With ``read_only``, the root mount becomes read-only.

Why the device nodes are bind mounts on a ``nodev`` tmpfs: they work in a
user namespace too (where mknod is refused), and every node a container
creates itself (it keeps CAP_MKNOD, as in Docker) is unusable, because every
writable mount it sees is ``nodev``.

Example (in the child)::

    enter_rootfs(RootfsPlan("/var/lib/pycontain/c1/rootfs",
                            volumes=[BindMount("/data", "/data", read_only=True)]))
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pycontain.errors import InvalidArgument, KernelError, PycontainError, kernel_error
from pycontain.kernel import constants as C
from pycontain.kernel import proc, syscalls

__all__ = [
    "BindMount",
    "RootfsPlan",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "DEVICES",
    "FORBIDDEN_DESTINATIONS",
    "enter_rootfs",
    "check_volume",
]

#: Docker's default masked paths (moby oci/defaults.go): unreadable inside.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
#: Docker's default read-only paths.
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
#: The device nodes of the minimal /dev (bind mounts of the host's nodes).
DEVICES: tuple[str, ...] = ("null", "zero", "full", "random", "urandom", "tty")
#: Volume destinations that would cover (and undo) the kernel filesystems set up here.
FORBIDDEN_DESTINATIONS: tuple[str, ...] = ("/proc", "/sys", "/dev")

_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
              ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
_NOSUID_NODEV_NOEXEC = C.MS_NOSUID | C.MS_NODEV | C.MS_NOEXEC
_ATTR_LOCKDOWN = (syscalls.MOUNT_ATTR_RDONLY | syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
                  | syscalls.MOUNT_ATTR_NOEXEC)
_CGROUP_MODES = ("auto", "namespace", "own", "empty")


# -- the plan -----------------------------------------------------------------------


def _clean_abs(value: Any, fieldname: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise InvalidArgument("expected a non-empty path string", field=fieldname, value=value)
    if "\0" in value:
        raise InvalidArgument("a path cannot contain NUL", field=fieldname, value=value)
    if not value.startswith("/"):
        raise InvalidArgument("the path must be absolute", field=fieldname, value=value,
                              hint="relative paths are ambiguous inside a container; start with /")
    # "," and ":" separate mount options and volume specs (src:dst:ro); a path
    # with them would mean something else to the next tool (runc, podman).
    for ch in (",", ":"):
        if ch in value:
            raise InvalidArgument(f"a path with {ch!r} is not accepted", field=fieldname, value=value)
    parts = value.split("/")
    if ".." in parts:
        raise InvalidArgument("'..' is not accepted in a mount path", field=fieldname, value=value)
    return posixpath.normpath(value).replace("//", "/")


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


@dataclass(frozen=True)
class BindMount:
    """A host path bound into the container: ``source`` (host, absolute, must
    exist) at ``destination`` (inside, absolute, not under /proc /sys /dev),
    read-only if ``read_only`` (recursively: submounts too)."""

    source: str
    destination: str
    read_only: bool = False

    def __post_init__(self) -> None:
        src = _clean_abs(self.source, "volumes.source")
        dst = _clean_abs(self.destination, "volumes.destination")
        if dst == "/":
            raise InvalidArgument("a volume cannot cover /", field="volumes.destination", value=self.destination,
                                  hint="give a directory inside the container, e.g. /data")
        for bad in FORBIDDEN_DESTINATIONS:
            if _is_under(dst, bad):
                raise InvalidArgument("volume destination is reserved for the container's kernel filesystems",
                                      field="volumes.destination", value=self.destination,
                                      hint=f"{bad} is set up by pycontain; choose another place")
        if not isinstance(self.read_only, bool):
            raise InvalidArgument("read_only is True or False", field="volumes.read_only", value=self.read_only)
        object.__setattr__(self, "source", src)
        object.__setattr__(self, "destination", dst)


def check_volume(volume: Any) -> BindMount:
    """A :class:`BindMount` from a BindMount, a ``(source, destination[, read_only])``
    tuple, or an object with ``source``, ``destination`` and ``read_only``.

    Raises:
        InvalidArgument: any bad part; a missing source.
    """
    if isinstance(volume, BindMount):
        vol = volume
    elif isinstance(volume, tuple) and len(volume) in (2, 3):
        vol = BindMount(*volume)
    elif hasattr(volume, "source") and hasattr(volume, "destination"):
        vol = BindMount(volume.source, volume.destination, bool(getattr(volume, "read_only", False)))
    else:
        raise InvalidArgument("a volume is (source, destination[, read_only]) or a BindMount",
                              field="volumes", value=volume)
    if not os.path.exists(vol.source):
        raise InvalidArgument("volume source does not exist", field="volumes.source", value=vol.source)
    return vol


@dataclass(frozen=True)
class RootfsPlan:
    """How :func:`enter_rootfs` builds the container's filesystem tree.

    Fields:
        rootfs: absolute host path of the root directory (or where
            ``mount_rootfs`` mounts it).
        mount_rootfs: called as ``mount_rootfs(rootfs)`` in the child to
            mount the root filesystem (a storage driver's overlay); None
            binds ``rootfs`` onto itself.
        read_only: make ``/`` read-only at the end (volumes keep their mode).
        volumes: :class:`BindMount` (or tuples), mounted in order.
        masked_paths / readonly_paths: Docker's defaults.
        cgroup: what ``/sys/fs/cgroup`` shows, always read-only:
            ``"namespace"``: fresh cgroup mounts, which a cgroup namespace
            roots at the container's own cgroups (needs "cgroup" in the
            child's new namespaces); ``"own"``: a tmpfs with read-only bind
            mounts of the child's own cgroup directories, at the host's
            layout (runc's way on v1 without cgroupns); ``"empty"``: an empty
            tmpfs; ``"auto"``: "namespace" if the child is in a cgroup
            namespace of its own, else "own".
        nodev: mount the rootfs and volumes ``nodev``: device nodes in the
            image or made by the container cannot be opened.
        files: container path -> text, bound over (or created at) that path
            from the container's private /dev tmpfs, e.g. ``/etc/hosts``;
            the image's file is shadowed, never written.
        host_cgroups: :func:`host_cgroup_mounts` read by the caller; the
            child checks they are still mounted so (else reads mountinfo).
            None: the child reads mountinfo.
    """

    rootfs: str
    mount_rootfs: Callable[[str], None] | None = None
    read_only: bool = False
    volumes: tuple[Any, ...] = ()
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    cgroup: str = "auto"
    nodev: bool = True
    files: Mapping[str, str] = field(default_factory=dict)
    host_cgroups: tuple[CgroupMount, ...] | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        root = self.rootfs
        if isinstance(root, os.PathLike):
            root = os.fspath(root)
        if not isinstance(root, str) or not root.startswith("/") or "\0" in root:
            raise InvalidArgument("rootfs is an absolute directory path", field="rootfs", value=self.rootfs)
        put(self, "rootfs", posixpath.normpath(root))
        if self.mount_rootfs is not None and not callable(self.mount_rootfs):
            raise InvalidArgument("mount_rootfs must be callable", field="mount_rootfs", value=self.mount_rootfs)
        if self.mount_rootfs is None and not os.path.isdir(root):
            raise InvalidArgument("rootfs is not a directory", field="rootfs", value=self.rootfs)
        if isinstance(self.volumes, (str, bytes)):
            raise InvalidArgument("volumes is a list", field="volumes", value=self.volumes)
        vols = tuple(check_volume(v) for v in self.volumes)
        dests = [v.destination for v in vols]
        if len(set(dests)) != len(dests):
            raise InvalidArgument("two volumes share a destination", field="volumes.destination", value=dests)
        put(self, "volumes", vols)
        for name, default in (("masked_paths", MASKED_PATHS), ("readonly_paths", READONLY_PATHS)):
            paths = getattr(self, name)
            if paths is default:
                continue  # Docker's lists, checked by the tests: not again in every container's setup
            if isinstance(paths, str):
                raise InvalidArgument(f"{name} is a list of paths", field=name, value=paths)
            clean = tuple(_clean_abs(p, name) for p in paths)
            for p in clean:
                if not (_is_under(p, "/proc") or _is_under(p, "/sys")):
                    raise InvalidArgument("masked and read-only paths live under /proc or /sys", field=name, value=p)
            put(self, name, clean)
        if self.cgroup not in _CGROUP_MODES:
            raise InvalidArgument("unknown /sys/fs/cgroup mode", field="cgroup", value=self.cgroup,
                                  hint="one of " + ", ".join(_CGROUP_MODES))
        if not isinstance(self.files, Mapping):
            raise InvalidArgument("files maps container paths to text", field="files", value=self.files)
        files = {}
        for dest, text in self.files.items():
            dest = _clean_abs(dest, "files")
            if dest == "/" or any(_is_under(dest, bad) for bad in FORBIDDEN_DESTINATIONS):
                raise InvalidArgument("file destination is reserved", field="files", value=dest)
            if not isinstance(text, str):
                raise InvalidArgument("file content is text", field=f"files[{dest}]", value=text)
            files[dest] = text
        put(self, "files", files)
        if self.host_cgroups is not None and not (isinstance(self.host_cgroups, tuple) and all(
                isinstance(m, CgroupMount) for m in self.host_cgroups)):
            raise InvalidArgument("host_cgroups comes from host_cgroup_mounts()", field="host_cgroups",
                                  value=self.host_cgroups)
        for name in ("read_only", "nodev"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"{name} is True or False", field=name, value=getattr(self, name))


# -- helpers ---------------------------------------------------------------------------


def _mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None,
           what: str | None = None) -> None:
    try:
        syscalls.mount(source, target, fstype, flags, data)
    except PycontainError as e:
        # Name the container path, not the /proc/self/fd/N we mounted through.
        raise kernel_error("mount", e.errno or errno.EIO, path=what or target,
                           detail=f"{fstype or 'bind'} from {source}") from None


def _open_in_root(root_fd: int, rel: str, flags: int = 0) -> int:
    return syscalls.openat2(root_fd, rel, os.O_PATH | flags,
                            syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS)


def _kernel_dir(root_fd: int, name: str) -> int:
    """An O_PATH fd of the image's /proc, /sys or /dev (created if missing).

    An image whose /proc is a symlink (or a file) is refused: mounting through
    it would put the kernel filesystem wherever the image points.
    """
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
    resolve = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS
    try:
        # Usually a directory: one call. A symlink or a file fails here
        # (ENOTDIR/ELOOP) and is looked at below, for the message.
        return syscalls.openat2(root_fd, name, flags, resolve)
    except PycontainError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise
    try:
        st = os.lstat(name, dir_fd=root_fd)
    except FileNotFoundError:
        try:
            os.mkdir(name, 0o755, dir_fd=root_fd)
        except OSError as e:
            raise kernel_error("mkdir", e.errno or errno.EIO, path="/" + name,
                               hint="the rootfs lacks this directory and cannot be written") from None
    else:
        if stat.S_ISLNK(st.st_mode):
            raise InvalidArgument(f"the image's /{name} is a symlink; refusing to mount through it",
                                  field="rootfs", value="/" + name,
                                  hint="a container image must have a real directory there (CVE-2019-19921 style)")
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"the image's /{name} is not a directory", field="rootfs", value="/" + name)
    return syscalls.openat2(root_fd, name, flags, resolve)


def _within(root: str, target: str) -> str | None:
    """``target`` (a path from the host root) as a path inside ``root``, or None if outside."""
    if target == root:
        return "/"
    if target.startswith(root.rstrip("/") + "/"):
        return target[len(root.rstrip("/")):]
    return None


def _volume_target(root_fd: int, root: str, vol: BindMount, source_is_dir: bool) -> int:
    return _mount_target(root_fd, root, vol.destination, source_is_dir)


def _mount_target(root_fd: int, root: str, destination: str, source_is_dir: bool) -> int:
    """Resolve (creating what is missing) ``destination`` inside the rootfs.

    Symlinks in the image are followed *as if the rootfs were /*: a link to
    /etc lands on the container's /etc, never the host's. Returns an O_PATH fd.
    """
    try:
        # Usually there already: nothing to create, so only where it lands matters.
        fd = _open_in_root(root_fd, destination.lstrip("/"))
    except PycontainError as e:
        if e.errno != errno.ENOENT:
            raise
    else:
        return _checked_target(root, fd, destination, source_is_dir)
    parts = [p for p in destination.split("/") if p]
    for i in range(len(parts)):
        sub = "/".join(parts[: i + 1])
        try:
            fd = _open_in_root(root_fd, sub)
        except PycontainError as e:
            if e.errno != errno.ENOENT:
                raise
        else:
            # Check every step before anything is created: a symlink to /proc
            # must not make us mkdir in the image's /proc.
            try:
                _check_landing(root, fd, destination)
            finally:
                os.close(fd)
            continue
        parent = _open_in_root(root_fd, "/".join(parts[:i]) or ".", os.O_DIRECTORY)
        try:
            if i == len(parts) - 1 and not source_is_dir:
                os.close(os.open(parts[i], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=parent))
            else:
                os.mkdir(parts[i], 0o755, dir_fd=parent)
        except FileExistsError:
            raise InvalidArgument("volume destination goes through a dangling symlink", field="volumes.destination",
                                  value=destination, hint="fix or remove the symlink in the image") from None
        except OSError as e:
            raise kernel_error("mkdir", e.errno or errno.EIO, path=destination) from None
        finally:
            os.close(parent)
    return _checked_target(root, _open_in_root(root_fd, "/".join(parts)), destination, source_is_dir)


def _checked_target(root: str, fd: int, destination: str, source_is_dir: bool) -> int:
    """``fd`` (the resolved ``destination``) if it is a place to mount on; closed and refused if not."""
    try:
        landed = _check_landing(root, fd, destination)
        if landed == "/":
            raise InvalidArgument("volume destination resolves to the container's /",
                                  field="volumes.destination", value=destination)
        if stat.S_ISDIR(os.fstat(fd).st_mode) != source_is_dir:
            raise InvalidArgument("volume source and destination differ in kind (file vs directory)",
                                  field="volumes.destination", value=destination)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_landing(root: str, fd: int, destination: str) -> str:
    """Where ``fd`` is, inside the root; refuse outside and reserved places."""
    landed = _within(root, proc.fd_target(fd))
    if landed is None:
        raise InvalidArgument("volume destination resolves outside the container's root",
                              field="volumes.destination", value=destination)
    for bad in FORBIDDEN_DESTINATIONS:
        if _is_under(landed, bad):
            raise InvalidArgument(f"volume destination resolves into {bad} (through a symlink)",
                                  field="volumes.destination", value=destination,
                                  hint=f"{bad} is reserved for the container's kernel filesystems")
    return landed


def _mount_volume(root_fd: int, root: str, vol: BindMount, nodev: bool) -> None:
    source_is_dir = os.path.isdir(vol.source)
    fd = _volume_target(root_fd, root, vol, source_is_dir)
    try:
        _mount(vol.source, proc.fd_path(fd), None, C.MS_BIND | C.MS_REC, what=vol.destination)
    finally:
        os.close(fd)
    attrs = (syscalls.MOUNT_ATTR_RDONLY if vol.read_only else 0) | (syscalls.MOUNT_ATTR_NODEV if nodev else 0)
    if attrs:
        # Reopen: the path now leads to the new mount's root. Recursive, so
        # a read-only volume has no writable submount (old-API binds had).
        fd = _open_in_root(root_fd, vol.destination.lstrip("/"))
        try:
            syscalls.mount_setattr(fd, attrs, recursive=True)
        finally:
            os.close(fd)


class _Root:
    """The new root and trusted handles on its kernel filesystems.

    After the rootfs is in place, the only names an outsider could still
    change are the image's own entries (``dev``, ``proc``, ``sys``, volume
    paths), e.g. another container sharing this directory swapping ``dev``
    for a symlink to ``/`` (the race of CVE-2021-30465). So each kernel
    filesystem is reached once, by openat2(RESOLVE_IN_ROOT) from the root's
    fd, checked to be the filesystem just mounted there, and kept open as an
    anchor; everything below it (procfs, sysfs, and tmpfs mounts that exist
    only in our private mount namespace) is addressed as
    ``/proc/self/fd/<anchor>/...`` (:meth:`p`), which no one else can
    redirect, or, as the target of the very next system call, relative to
    the anchor made the working directory (:meth:`here`: fchdir(2) to the
    anchor's fd; the same directory, without a walk through /proc each time).
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.anchors: dict[str, int] = {}
        self.bases: dict[str, str] = {}  # name -> /proc/self/fd/<anchor>
        self.dev = os.fstat(fd).st_dev
        self.cwd: str | None = None  # the anchor that is the working directory

    def anchor(self, name: str) -> None:
        fd = _open_in_root(self.fd, name, os.O_DIRECTORY)
        if os.fstat(fd).st_dev == self.dev:
            os.close(fd)
            raise KernelError(f"/{name} of the new root is not the filesystem just mounted there", op="mount",
                              path="/" + name,
                              hint="the rootfs changed under us: is it shared with a running container?")
        self.anchors[name] = fd
        self.bases[name] = proc.fd_path(fd)

    def close(self) -> None:
        for fd in self.anchors.values():
            os.close(fd)
        self.anchors.clear()
        self.bases.clear()

    def p(self, rel: str) -> str:
        """A path string for ``rel`` (e.g. ``"dev/null"``) through its anchor."""
        top, _, rest = rel.strip("/").partition("/")
        base = self.bases[top]
        return f"{base}/{rest}" if rest else base

    def here(self, rel: str) -> str:
        """``rel`` relative to its anchor, made the working directory: valid
        only until the next call of this method (use it for one system call)."""
        top, _, rest = rel.strip("/").partition("/")
        if self.cwd != top:
            os.fchdir(self.anchors[top])
            self.cwd = top
        return rest or "."

    def mount(self, source: str | None, rel: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        """mount(2) on ``rel``; a ``source`` path must be absolute (:meth:`p`)."""
        _mount(source, self.here(rel), fstype, flags, data, what="/" + rel.strip("/"))

    def setattr(self, rel: str, attrs: int, recursive: bool = False) -> None:
        fd = os.open(self.here(rel), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            syscalls.mount_setattr(fd, attrs, recursive=recursive)
        finally:
            os.close(fd)

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(self.here(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None


def _write_new(path: str, mode: int, content: bytes = b"") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        while content:
            content = content[os.write(fd, content):]
    finally:
        os.close(fd)


def _mount_files(r: _Root, files: Mapping[str, str]) -> None:
    """Bind each text over its container path, from a file on our /dev tmpfs
    that is unlinked at once (the mount keeps it; nothing shows in /dev)."""
    for i, (dest, text) in enumerate(files.items()):
        # Relative to /dev made the working directory: nothing below changes it.
        staging = r.here(f"dev/.pycontain-file-{i}")
        _write_new(staging, 0o644, text.encode())
        try:
            target = _mount_target(r.fd, r.path, dest, source_is_dir=False)
            try:
                _mount(staging, proc.fd_path(target), None, C.MS_BIND, what=dest)
            finally:
                os.close(target)
        finally:
            os.unlink(staging)


def _mount_dev(r: _Root, dev_fd: int) -> None:
    _mount("tmpfs", proc.fd_path(dev_fd), "tmpfs", C.MS_NOSUID | C.MS_NODEV | C.MS_STRICTATIME,
           "mode=755,size=65536k", what="/dev")
    r.anchor("dev")
    for name in DEVICES:
        # An empty regular file to bind over (mknod(2) of S_IFREG: one call
        # instead of open+close, no privilege, EEXIST like O_EXCL).
        os.mknod(r.here(f"dev/{name}"), stat.S_IFREG | 0o666)
        r.mount(f"/dev/{name}", f"dev/{name}", None, C.MS_BIND)  # the host's node: a trusted source
    for name, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o1777)):
        os.mkdir(r.here(f"dev/{name}"), mode)
    r.mount("devpts", "dev/pts", "devpts", C.MS_NOSUID | C.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    r.mount("shm", "dev/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
    r.mount("mqueue", "dev/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC)
    for name, link in _DEV_LINKS:
        os.symlink(link, r.here(f"dev/{name}"))


# Inode numbers of the initial namespaces (include/linux/proc_ns.h): fixed,
# so no need to read /proc/1/ns (which a sandboxed host may hide).
_PROC_USER_INIT_INO = 0xEFFFFFFD
_PROC_CGROUP_INIT_INO = 0xEFFFFFFB


def _in_own_cgroup_namespace() -> bool:
    return proc.namespace_id("self", "cgroup").inode != _PROC_CGROUP_INIT_INO


def _in_user_namespace() -> bool:
    return proc.namespace_id("self", "user").inode != _PROC_USER_INIT_INO


class CgroupMount(NamedTuple):
    """A cgroup hierarchy mounted below /sys/fs/cgroup (a mountinfo line's parts)."""

    mount_point: str
    fstype: str
    root: str
    super_options: tuple[str, ...]
    dev: int  # st_dev of the files on it


def host_cgroup_mounts() -> tuple[CgroupMount, ...]:
    """The cgroup hierarchies mounted below /sys/fs/cgroup, from mountinfo
    now: what a :class:`RootfsPlan` made in the caller hands to the child
    (``host_cgroups``), which checks it is still so instead of reading it."""
    return tuple(CgroupMount(m.mount_point, m.fstype, m.root, m.super_options, os.makedev(m.major, m.minor))
                 for m in proc.mountinfo("self", fstypes=("cgroup", "cgroup2"))
                 if _is_under(m.mount_point, "/sys/fs/cgroup"))


def _cgroup_mounts(given: tuple[CgroupMount, ...] | None) -> tuple[CgroupMount, ...]:
    if given is not None and _still_mounted(given):
        return given
    return host_cgroup_mounts()


def _still_mounted(mounts: tuple[CgroupMount, ...]) -> bool:
    """Whether the caller's list is what this mount namespace has: each mount
    point still on its filesystem, and no other directory below
    /sys/fs/cgroup (a hierarchy mounted since, e.g. net_cls/net_prio on
    demand, or in a mount namespace joined since, has one). Far cheaper in
    the child than reading and parsing mountinfo."""
    base = "/sys/fs/cgroup"
    below = set()
    for m in mounts:
        if m.mount_point != base:
            if posixpath.dirname(m.mount_point) != base:
                return False
            below.add(m.mount_point[len(base) + 1:])
    try:
        for m in mounts:
            if os.stat(m.mount_point).st_dev != m.dev:
                return False
        if len(below) == len(mounts):  # not cgroup2 at base: a tmpfs of hierarchies (or nothing)
            with os.scandir(base) as entries:
                if {e.name for e in entries if e.is_dir(follow_symlinks=False)} != below:
                    return False
    except OSError:
        return False
    return True


def _make_dir(path: str) -> None:
    """A directory to mount on, usually with one mkdir: its parent mostly
    exists (makedirs for the rest); an existing one is fine."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, 0o755, exist_ok=True)


def _mount_cgroup(r: _Root, mode: str, given: tuple[CgroupMount, ...] | None = None) -> None:
    base = "sys/fs/cgroup"
    st = r.lstat(base)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return  # a sysfs without cgroup support
    if mode == "auto":
        mode = "namespace" if _in_own_cgroup_namespace() else "own"
    ro = C.MS_RDONLY | _NOSUID_NODEV_NOEXEC
    mounts = () if mode == "empty" else _cgroup_mounts(given)
    pure_v2 = any(m.mount_point == "/sys/fs/cgroup" for m in mounts)
    if not pure_v2:
        r.mount("tmpfs", base, "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=755,size=64k")
    membership = {}
    if mode == "own":  # fresh mounts ("namespace") need no membership
        for line in proc.proc_cgroup("self"):
            key = "" if line.hierarchy_id == 0 else ",".join(sorted(line.controllers))
            membership[key] = line.path
    # The kernel mounts cgroup v1 hierarchies only for the initial user
    # namespace; inside another one only cgroup2 can be shown afresh.
    v1_allowed = mode != "namespace" or not _in_user_namespace()
    for m in mounts:
        if m.fstype == "cgroup" and not v1_allowed:
            continue
        rel = m.mount_point.lstrip("/")
        if m.mount_point != "/sys/fs/cgroup":
            _make_dir(r.here(rel))  # inside our own tmpfs
        if mode == "namespace":
            if m.fstype == "cgroup2":
                r.mount("cgroup2", rel, "cgroup2", ro)
            else:
                # The same controller set joins the existing hierarchy; in a
                # cgroup namespace the mount is rooted at our own cgroup.
                opts = [o for o in m.super_options if o not in ("rw", "ro") and not o.startswith("release_agent=")]
                r.mount("cgroup", rel, "cgroup", ro, ",".join(opts))
        else:
            if m.fstype == "cgroup2":
                own = membership.get("")
            else:
                ctrls = [o for o in m.super_options if o not in ("rw", "ro", "xattr", "clone_children",
                                                                  "noprefix", "cpuset_v2_mode")
                         and not o.startswith("release_agent=")]
                own = membership.get(",".join(sorted(ctrls)))
            # /proc/self/cgroup and the mount's root are both relative to our
            # cgroup namespace root; bind the part of our own cgroup this mount shows.
            if own is None or not _is_under(own, m.root):
                continue
            inner = own[len(m.root.rstrip("/")):]
            r.mount(m.mount_point.rstrip("/") + inner, rel, None, C.MS_BIND)  # a host path: trusted source
    # One recursive call makes the tmpfs and every hierarchy below it read-only.
    r.setattr(base, _ATTR_LOCKDOWN, recursive=True)


def _mask(r: _Root, path: str) -> None:
    st = r.lstat(path)
    if st is None:
        return  # not on this kernel: nothing to hide
    if stat.S_ISDIR(st.st_mode):
        r.mount("tmpfs", path, "tmpfs", C.MS_RDONLY | _NOSUID_NODEV_NOEXEC)
    else:
        r.mount(r.p("dev/null"), path, None, C.MS_BIND)


def _read_only(r: _Root, path: str) -> None:
    if r.lstat(path) is None:
        return
    where = r.here(path)
    _mount(where, where, None, C.MS_BIND | C.MS_REC, what=path)  # onto itself, in the anchor's tree
    r.setattr(path, _ATTR_LOCKDOWN, recursive=True)


# -- the whole sequence -------------------------------------------------------------------


def enter_rootfs(plan: RootfsPlan | str, *, mount_root: Callable[[], None] | None = None,
                 volumes: Iterable[Any] = (), read_only: bool = False, files: Mapping[str, str] | None = None,
                 cgroup: str = "auto", nodev: bool = True) -> None:
    """Make ``plan.rootfs`` this process's ``/`` (see the module docstring).

    ``plan`` is a :class:`RootfsPlan`, or the rootfs path with the plan's
    fields as keywords. ``mount_root``, a callable without arguments, mounts
    the root filesystem at that path (with a RootfsPlan: instead of its
    ``mount_rootfs``, e.g. a plan checked in the caller and mounted with
    something only the child has).

    Run in a child that has its own mount namespace (and, for a /proc that
    shows only the container, its own pid namespace, as PID 1 or below),
    with CAP_SYS_ADMIN. On return, the cwd is ``/`` of the new root and the
    host's tree is unmounted from this namespace.

    Raises:
        InvalidArgument: the image's /proc, /sys or /dev is a symlink or not
            a directory; a volume destination that resolves into a reserved
            place, through a dangling symlink, or to a different file kind.
        KernelError / PermissionDenied: a mount the kernel refused (the
            message names the container path).

    Example::

        enter_rootfs(RootfsPlan("/tmp/rootfs", read_only=True))
    """
    mounter = None
    if mount_root is not None:
        if not callable(mount_root):
            raise InvalidArgument("mount_root must be callable", field="mount_root", value=mount_root)
        mounter = _call_without_path(mount_root)
    if not isinstance(plan, RootfsPlan) and isinstance(plan, (str, os.PathLike)):
        plan = RootfsPlan(os.fspath(plan), mount_rootfs=mounter, read_only=read_only, volumes=tuple(volumes),
                          cgroup=cgroup, nodev=nodev, files=dict(files or {}))
    if not isinstance(plan, RootfsPlan):
        raise InvalidArgument("enter_rootfs takes a RootfsPlan or a rootfs path", field="plan", value=plan)
    mount_rootfs = mounter or plan.mount_rootfs
    # 1. Nothing we do may reach the host's mount namespace.
    _mount(None, "/", None, C.MS_REC | C.MS_PRIVATE, what="/")
    # 2. The root filesystem, as a mount point of its own.
    if mount_rootfs is not None:
        _make_dir(plan.rootfs)
        mount_rootfs(plan.rootfs)
    root_fd = os.open(plan.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # The real path (what realpath() gives, in one readlink): volume
        # landings are checked against it.
        root = proc.fd_target(root_fd)
        if mount_rootfs is None or not _is_mount_root(root_fd, root):
            _mount(root, root, None, C.MS_BIND, what=root)
            os.close(root_fd)
            root_fd = -1
            root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if plan.nodev:
            syscalls.mount_setattr(root_fd, syscalls.MOUNT_ATTR_NODEV)
        # The image's kernel-filesystem directories are checked before any
        # volume could change them.
        kfds = {name: _kernel_dir(root_fd, name) for name in ("proc", "dev", "sys")}
        try:
            # 3. Volumes.
            for vol in plan.volumes:
                _mount_volume(root_fd, root, vol, plan.nodev)
            # 4. Kernel filesystems.
            r = _Root(root, root_fd)
            try:
                _mount("proc", proc.fd_path(kfds["proc"]), "proc", _NOSUID_NODEV_NOEXEC, what="/proc")
                r.anchor("proc")
                _mount_dev(r, kfds["dev"])
                _mount("sysfs", proc.fd_path(kfds["sys"]), "sysfs", C.MS_RDONLY | _NOSUID_NODEV_NOEXEC,
                       what="/sys")
                r.anchor("sys")
                _mount_files(r, plan.files)
                _mount_cgroup(r, plan.cgroup, plan.host_cgroups)
                # 5. Docker's masked and read-only paths.
                for path in plan.masked_paths:
                    _mask(r, path)
                for path in plan.readonly_paths:
                    _read_only(r, path)
            finally:
                r.close()
        finally:
            for fd in kfds.values():
                os.close(fd)
        # 6. Swap roots; the old one ends up stacked on "." and is detached.
        os.fchdir(root_fd)
    finally:
        if root_fd >= 0:
            os.close(root_fd)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", C.MNT_DETACH)
    os.chdir("/")
    # 7. A read-only root: only the root mount; volumes keep their own mode.
    if plan.read_only:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.mount_setattr(fd, syscalls.MOUNT_ATTR_RDONLY)
        finally:
            os.close(fd)


def _call_without_path(fn: Callable[[], None]) -> Callable[[str], None]:
    def mount(_path: str) -> None:
        fn()

    return mount


def _is_mount_root(fd: int, path: str) -> bool:
    """Whether ``fd`` (of ``path``) is the root of a mount (the storage driver mounted it)."""
    answer = syscalls.is_mount_root(fd)
    if answer is not None:
        return answer
    if path == "/":
        return True
    return proc.mount_id(path) != proc.mount_id(os.path.dirname(path))


def describe_plan(plan: RootfsPlan) -> list[str]:
    """The mounts :func:`enter_rootfs` will make, as readable lines (for docs and errors)."""
    lines = [f"/ <- {plan.rootfs}" + (" (ro)" if plan.read_only else "")]
    lines += [f"{v.destination} <- {v.source}" + (" (ro)" if v.read_only else "") for v in plan.volumes]
    lines += ["/proc <- proc", "/dev <- tmpfs", "/sys <- sysfs (ro)", f"/sys/fs/cgroup ({plan.cgroup}, ro)"]
    lines += [f"{p} masked" for p in plan.masked_paths] + [f"{p} read-only" for p in plan.readonly_paths]
    return lines

