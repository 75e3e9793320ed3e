"""Readers for /proc: mountinfo, namespaces, cgroup membership, status.

Parsers are split from file access (``parse_*`` take text) so they can be
tested on fixed samples without root.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from pycontain.errors import NotFound, PycontainError, kernel_error
from pycontain.kernel.constants import NAMESPACE_KINDS

PROC = "/proc"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (proc(5)).
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/PID/mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: tuple[str, ...]
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def propagation(self) -> str:
        """"shared", "slave" or "private", from the optional fields."""
        tags = [t.split(":")[0] for t in self.optional]
        if "shared" in tags:
            return "shared"
        if "master" in tags:
            return "slave"
        if "unbindable" in tags:
            return "unbindable"
        return "private"


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse the text of a mountinfo file."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f = left.split(" ")
        r = right.split(" ")
        major, minor = f[2].split(":")
        mounts.append(
            MountInfo(
                mount_id=int(f[0]),
                parent_id=int(f[1]),
                major=int(major),
                minor=int(minor),
                root=_unescape(f[3]),
                mount_point=_unescape(f[4]),
                options=tuple(f[5].split(",")),
                optional=tuple(x for x in f[6:] if x),
                fstype=r[0],
                source=_unescape(r[1]) if len(r) > 1 else "",
                super_options=tuple(r[2].split(",")) if len(r) > 2 else (),
            )
        )
    return mounts


def read_all(fd: int) -> bytes:
    """Everything ``fd`` yields until end of file."""
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_text(path: str, op: str = "read") -> str:
    """The whole text of a /proc, /sys or cgroup file; a typed error (naming ``op``) on failure."""
    # os.open/os.read, not open(): no TextIOWrapper, isatty ioctl, seeks and
    # fstats (5 system calls fewer per file; these run in every container's setup).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = read_all(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise kernel_error(op, e.errno or errno.EIO, path=path) from None
    return data.decode("utf-8", "surrogateescape")


def _of_types(text: str, fstypes: Collection[str]) -> str:
    """The lines of mountinfo ``text`` whose filesystem type is in ``fstypes``."""
    keep = []
    for line in text.splitlines():
        _, sep, right = line.partition(" - ")
        if sep and right.partition(" ")[0] in fstypes:
            keep.append(line)
    return "\n".join(keep)


def mountinfo(pid: int | str = "self", fstypes: Collection[str] | None = None) -> list[MountInfo]:
    """The mounts seen by process ``pid`` (default: the caller); with
    ``fstypes``, only those of these filesystem types (e.g. ``("cgroup",
    "cgroup2")``: the other lines are not parsed)."""
    text = read_text(f"{PROC}/{pid}/mountinfo")
    if fstypes is not None:
        text = _of_types(text, fstypes)
    return parse_mountinfo(text)


# -- namespaces ---------------------------------------------------------------


@dataclass(frozen=True)
class NamespaceId:
    """What identifies a namespace: the nsfs device and inode (ioctl_ns(2))."""

    kind: str
    dev: int
    inode: int


def namespace_path(pid: int | str, kind: str) -> str:
    return f"{PROC}/{pid}/ns/{kind}"


def namespace_id(pid: int | str, kind: str) -> NamespaceId:
    """The (device, inode) of process ``pid``'s namespace of ``kind``.

    Raises :class:`NotFound` when the process is gone.
    """
    path = namespace_path(pid, kind)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not os.path.exists(f"{PROC}/{pid}"):
            raise NotFound("no such process", field="pid", value=pid) from None
        raise kernel_error("stat", errno.ENOENT, path=path,
                           hint=f"this kernel has no {kind} namespace") from None
    except OSError as e:
        raise kernel_error("stat", e.errno or errno.EIO, path=path) from None
    return NamespaceId(kind, st.st_dev, st.st_ino)


def namespace_ids(pid: int | str) -> dict[str, NamespaceId]:
    """Every namespace of ``pid`` this kernel has, by kind. Missing kinds are left out."""
    out = {}
    for kind in NAMESPACE_KINDS:
        try:
            st = os.stat(namespace_path(pid, kind))
        except OSError:
            continue
        out[kind] = NamespaceId(kind, st.st_dev, st.st_ino)
    return out


def process_exists(pid: object) -> bool:
    """True while process ``pid`` exists (a zombie counts); False for junk like None or 0."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    return True


def process_alive(pid: object) -> bool:
    """True while process ``pid`` exists and has not exited: a zombie (state
    Z, or X while it is reaped) is dead, whoever has yet to reap it. False
    for junk like None or 0."""
    if not process_exists(pid):
        return False
    try:
        data = read_text(f"{PROC}/{pid}/stat")
    except PycontainError:
        return False  # gone since
    return stat_state(data) not in ("Z", "X", "")


def stat_state(stat: str) -> str:
    """The state letter (R, S, D, Z, ...) of a /proc/PID/stat line; "" if none.

    It is the field after the command name, which is in parentheses and may
    itself hold ") " (proc(5)): so it is looked for after the last ")".
    """
    return stat[stat.rfind(")") + 2:][:1]


def pids() -> list[int]:
    """Every process id visible in /proc, ascending."""
    return sorted(int(name) for name in os.listdir(PROC) if name.isdigit())


# -- cgroup membership ----------------------------------------------------------


@dataclass(frozen=True)
class CgroupMembership:
    """One line of /proc/PID/cgroup: hierarchy id, controllers, path."""

    hierarchy_id: int
    controllers: tuple[str, ...]
    path: str


def parse_proc_cgroup(text: str) -> list[CgroupMembership]:
    out = []
    for line in text.splitlines():
        if not line:
            continue
        hid, ctrls, path = line.split(":", 2)
        out.append(CgroupMembership(int(hid), tuple(c for c in ctrls.split(",") if c), path))
    return out


def proc_cgroup(pid: int | str = "self") -> list[CgroupMembership]:
    """The cgroups process ``pid`` is in (v1 hierarchies and the v2 ``0::`` line)."""
    return parse_proc_cgroup(read_text(f"{PROC}/{pid}/cgroup"))


# -- status -------------------------------------------------------------------------


def parse_status(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def status(pid: int | str = "self") -> dict[str, str]:
    """/proc/PID/status as a dict of raw strings (``"CapEff"``, ``"Seccomp"``, ...)."""
    return parse_status(read_text(f"{PROC}/{pid}/status"))


def threads(pid: int | str = "self") -> int:
    """How many threads process ``pid`` has."""
    return len(os.listdir(f"{PROC}/{pid}/task"))


def command(pid: int | str) -> str:
    """The command line of ``pid`` as lsns shows it (comm for kernel threads)."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    if raw:
        return " ".join(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0"))
    try:
        with open(f"{PROC}/{pid}/comm", "rb") as f:
            return os.fsdecode(f.read().strip())
    except OSError:
        return ""


def iter_namespace_owners() -> Iterator[tuple[int, dict[str, NamespaceId]]]:
    """(pid, {kind: id}) for every process we can inspect; races with exit are skipped."""
    for pid in pids():
        ids = namespace_ids(pid)
        if ids:
            yield pid, ids


# -- network counters -------------------------------------------------------------


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """Parse /proc/net/dev: interface -> rx/tx bytes and packets."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        f = rest.split()
        out[name.strip()] = {
            "rx_bytes": int(f[0]),
            "rx_packets": int(f[1]),
            "tx_bytes": int(f[8]),
            "tx_packets": int(f[9]),
        }
    return out


def net_dev(pid: int | str = "self") -> dict[str, dict[str, int]]:
    """Traffic counters of every interface in process ``pid``'s network namespace."""
    return parse_net_dev(read_text(f"{PROC}/{pid}/net/dev"))


# -- file descriptors -----------------------------------------------------------------


def mount_id(path: str) -> int:
    """The id of the mount ``path`` lies on (``mnt_id`` of /proc/self/fdinfo,
    proc(5)); two paths on the same mount share it. Cheaper than reading
    mountinfo to tell whether a directory is a mount point."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        for line in read_text(f"{PROC}/self/fdinfo/{fd}").splitlines():
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    finally:
        os.close(fd)
    raise kernel_error("read fdinfo", errno.EINVAL, path=path, detail="no mnt_id")


def fd_path(fd: int) -> str:
    """The /proc magic link of the caller's ``fd``: a path that means exactly
    the file the fd holds, however its name changes (mount targets by fd)."""
    return f"{PROC}/self/fd/{fd}"


def fd_target(fd: int) -> str:
    """Where the caller's ``fd`` points, as a path from the caller's root."""
    try:
        return os.readlink(fd_path(fd))
    except OSError as e:
        raise kernel_error("readlink", e.errno or errno.EIO, path=fd_path(fd)) from None


def open_fds(pid: int | str = "self") -> list[int]:
    """The open file descriptor numbers of ``pid``, ascending."""
    try:
        return sorted(int(n) for n in os.listdir(f"{PROC}/{pid}/fd"))
    except OSError as e:
        raise kernel_error("listdir", e.errno or errno.EIO, path=f"{PROC}/{pid}/fd") from None


def write_net_sysctl(name: str, value: str) -> None:
    """Write ``value`` to ``/proc/sys/net/<name>`` (e.g. ``ipv4/ip_unprivileged_port_start``).

    Network sysctls belong to the network namespace of the process that
    writes them: call this only in a process in the container's own netns.
    """
    from pycontain.errors import InvalidArgument

    if not name or name.startswith("/") or ".." in name.split("/"):
        raise InvalidArgument("a sysctl name below /proc/sys/net", field="name", value=name)
    path = f"{PROC}/sys/net/{name}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise kernel_error("write sysctl", e.errno or 0, path=path, detail=f"value={value!r}") from None
