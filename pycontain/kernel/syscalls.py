"""ctypes wrappers for the system calls containers are made of.

Each wrapper checks the result and turns errno into a typed error
(:func:`pycontain.errors.kernel_error`) naming the operation and path. The
wrappers do no policy: callers decide flags and order.

Several of these calls (``unshare(CLONE_NEWUSER)``, ``setns`` into a mount
namespace) fail with EINVAL in a multi-threaded process (unshare(2), setns(2)),
so pycontain calls them only in single-threaded children (DESIGN.md §3).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Iterable

from pycontain.errors import InvalidArgument, Unsupported, kernel_error
from pycontain.kernel import constants as C

# "libc.so.6" directly: find_library() runs ldconfig in a subprocess (20-35 ms per start).
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

_c_unshare = _libc.unshare
_c_unshare.argtypes = [ctypes.c_int]
_c_setns = _libc.setns
_c_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_c_mount = _libc.mount
_c_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_c_umount2 = _libc.umount2
_c_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_c_sethostname = _libc.sethostname
_c_sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_c_setdomainname = _libc.setdomainname
_c_setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_c_prctl = _libc.prctl
_c_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_c_syscall = _libc.syscall
_c_syscall.restype = ctypes.c_long
_c_renameat2 = _libc.renameat2  # glibc 2.28+
_c_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

#: renameat2(2) flag: fail with EEXIST rather than replace the target.
RENAME_NOREPLACE = 1
_AT_FDCWD = -100


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _fs(path: str | os.PathLike[str] | None) -> bytes | None:
    if path is None:
        return None
    # str.encode directly for the usual str (what os.fsencode does after its
    # type checks): these wrappers run ~50 times in every container's setup.
    raw = path.encode(_FS_ENCODING, _FS_ERRORS) if type(path) is str else os.fsencode(path)
    if b"\0" in raw:
        raise InvalidArgument("path contains a NUL byte", field="path", value=path)
    return raw


def _check(ret: int, op: str, path: str | os.PathLike[str] | None = None, detail: str | None = None) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise kernel_error(op, err, path=path, detail=detail)
    return ret


def _syscall_number(name: str) -> int:
    try:
        return C.SYSCALL_NUMBERS[name]
    except KeyError:
        raise Unsupported(
            f"no system call number for {name} on this architecture",
            op=name,
            hint="pycontain knows x86_64 and aarch64",
        ) from None


# -- namespaces -------------------------------------------------------------


def namespace_flags(kinds: Iterable[str]) -> int:
    """OR of the CLONE_NEW* flags for namespace kinds like ``("net", "uts")``."""
    flags = 0
    for kind in kinds:
        try:
            flags |= C.NAMESPACE_FLAGS[kind]
        except KeyError:
            raise InvalidArgument(
                "unknown namespace kind",
                field="kind",
                value=kind,
                hint=f"one of {', '.join(C.NAMESPACE_KINDS)}",
            ) from None
    return flags


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces (CLONE_* flags)."""
    if _c_unshare(flags) == -1:  # (details formatted only for an error, here and below)
        _check(-1, "unshare", detail=f"flags={flags:#x}")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace (or, with a pidfd, namespaces) behind ``fd``."""
    if _c_setns(fd, nstype) == -1:
        _check(-1, "setns", detail=f"fd={fd} nstype={nstype:#x}")


# -- mounts -----------------------------------------------------------------


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2). ``data`` is the filesystem's option string (e.g. overlay's lowerdir=...)."""
    ret = _c_mount(
        _fs(source),
        _fs(target),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data is not None else None,
    )
    if ret == -1:  # the detail is formatted only for the error
        _check(ret, "mount", target, detail=f"source={source!s} type={fstype} flags={flags:#x}")


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    """umount2(2); ``flags`` such as MNT_DETACH."""
    _check(_c_umount2(_fs(target), flags), "umount2", target)


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """renameat2(2) with RENAME_NOREPLACE: move ``src`` to ``dst`` unless
    ``dst`` exists (a plain rename(2) would replace an empty directory or a
    file there). Raises the typed error of the errno (EEXIST: it exists)."""
    _check(_c_renameat2(_AT_FDCWD, _fs(src), _AT_FDCWD, _fs(dst), RENAME_NOREPLACE), "renameat2", dst)


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    """pivot_root(2); glibc has no wrapper, so this uses syscall(2).

    ``pivot_root(".", ".")`` stacks the old root on the new one so it can be
    unmounted with MNT_DETACH without a put_old directory (pivot_root(2), NOTES).
    """
    nr = _syscall_number("pivot_root")
    ret = _c_syscall(ctypes.c_long(nr), ctypes.c_char_p(_fs(new_root)), ctypes.c_char_p(_fs(put_old)))
    _check(ret, "pivot_root", new_root)


def sethostname(name: str) -> None:
    """sethostname(2) in the caller's UTS namespace."""
    raw = name.encode()
    if _c_sethostname(raw, len(raw)) == -1:
        _check(-1, "sethostname", detail=f"name={name!r}")


def setdomainname(name: str) -> None:
    """setdomainname(2) in the caller's UTS namespace."""
    raw = name.encode()
    _check(_c_setdomainname(raw, len(raw)), "setdomainname", detail=f"name={name!r}")


# -- prctl ------------------------------------------------------------------


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2), returning its (non-negative) result."""
    ret: int = _c_prctl(option, arg2, arg3, arg4, arg5)
    if ret == -1:
        _check(ret, "prctl", detail=f"option={option}")
    return ret


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve can no longer grant privileges (setuid, file caps)."""
    prctl(C.PR_SET_NO_NEW_PRIVS, 1)


def get_no_new_privs() -> bool:
    return bool(prctl(C.PR_GET_NO_NEW_PRIVS))


def set_pdeathsig(sig: int) -> None:
    """PR_SET_PDEATHSIG: get ``sig`` when the parent thread dies."""
    prctl(C.PR_SET_PDEATHSIG, sig)


def set_child_subreaper(on: bool = True) -> None:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants reparent to us, not init."""
    prctl(C.PR_SET_CHILD_SUBREAPER, int(on))


def capbset_drop(cap: int) -> None:
    """PR_CAPBSET_DROP: remove ``cap`` from the bounding set (needs CAP_SETPCAP)."""
    prctl(C.PR_CAPBSET_DROP, cap)


def capbset_drop_all_but(keep: int) -> None:
    """Drop every capability not in the mask ``keep`` from the bounding set,
    up to the kernel's last one (PR_CAPBSET_DROP answers EINVAL past it;
    dropping an absent one succeeds). One prctl per capability, without the
    wrappers: it runs in every container's setup.

    Raises:
        PermissionDenied / KernelError: the kernel refused (no CAP_SETPCAP).
    """
    drop = C.PR_CAPBSET_DROP
    for cap in range(64):
        if keep >> cap & 1:
            continue
        if _c_prctl(drop, cap, 0, 0, 0) == -1:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                return
            raise kernel_error("prctl", err, detail=f"option=PR_CAPBSET_DROP cap={cap}")


def capbset_read(cap: int) -> bool:
    return bool(prctl(C.PR_CAPBSET_READ, cap))


def ambient_clear_all() -> None:
    prctl(C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_CLEAR_ALL)


def set_name(name: str) -> None:
    """PR_SET_NAME: the thread name ps shows (at most 15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_c_prctl(C.PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0), "prctl(PR_SET_NAME)")


# -- capabilities -------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


# Array types made once here: ctypes makes (and caches) a new type on first
# use, which would otherwise happen in every container's child.
_CapDataPair = _CapData * 2


def capget(pid: int = 0) -> tuple[int, int, int]:
    """capget(2): (effective, permitted, inheritable) as 64-bit masks."""
    header = _CapHeader(C.LINUX_CAPABILITY_VERSION_3, pid)
    data = _CapDataPair()
    nr = _syscall_number("capget")
    _check(_c_syscall(ctypes.c_long(nr), ctypes.byref(header), ctypes.byref(data)), "capget")
    return (
        data[0].effective | (data[1].effective << 32),
        data[0].permitted | (data[1].permitted << 32),
        data[0].inheritable | (data[1].inheritable << 32),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) on the calling thread, with 64-bit masks."""
    header = _CapHeader(C.LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    mask = 0xFFFFFFFF
    data[0].effective, data[1].effective = effective & mask, effective >> 32
    data[0].permitted, data[1].permitted = permitted & mask, permitted >> 32
    data[0].inheritable, data[1].inheritable = inheritable & mask, inheritable >> 32
    nr = _syscall_number("capset")
    _check(_c_syscall(ctypes.c_long(nr), ctypes.byref(header), ctypes.byref(data)), "capset")


def cap_mask(names: Iterable[str]) -> int:
    """Bit mask for capability names (``"CAP_NET_RAW"`` or ``"NET_RAW"``)."""
    mask = 0
    for name in names:
        key = name.upper()
        if not key.startswith("CAP_"):
            key = "CAP_" + key
        if key not in C.CAP_NUMBERS:
            raise InvalidArgument("unknown capability", field="capability", value=name,
                                  hint="names as in capabilities(7), e.g. CAP_NET_ADMIN")
        mask |= 1 << C.CAP_NUMBERS[key]
    return mask


def cap_names(mask: int) -> list[str]:
    """Capability names set in ``mask``, in kernel order."""
    return [name for i, name in enumerate(C.CAPABILITIES) if mask >> i & 1]


# -- pidfd ------------------------------------------------------------------


def pidfd_open(pid: int) -> int:
    """pidfd_open(2): a file descriptor that refers to process ``pid``."""
    return _check(int(_c_syscall(ctypes.c_long(_syscall_number("pidfd_open")), ctypes.c_int(pid), ctypes.c_uint(0))),
                  "pidfd_open", detail=f"pid={pid}")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    nr = _syscall_number("pidfd_send_signal")
    _check(int(_c_syscall(ctypes.c_long(nr), ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0))),
           "pidfd_send_signal", detail=f"sig={sig}")


# -- network interfaces ---------------------------------------------------------------

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFNAMSIZ = 16
_IFREQ_SIZE = 40  # sizeof(struct ifreq) on 64-bit Linux
_AF_INET = 2
_SOCK_DGRAM = 2
_SOCK_CLOEXEC = 0o2000000
_Ifreq = ctypes.c_char * _IFREQ_SIZE
_c_socket = _libc.socket
_c_socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_c_ioctl = _libc.ioctl
_c_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def interface_up(name: str = "lo") -> None:
    """Bring interface ``name`` up in the caller's network namespace.

    Uses the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls (netdevice(7)) rather than
    netlink: inside a container's setup these are two system calls on a
    datagram socket and need no library (nor the socket module, whose
    first use in a fresh child costs more than the calls).
    """
    raw = name.encode()
    if not raw or len(raw) >= _IFNAMSIZ or b"\0" in raw:
        raise InvalidArgument("invalid interface name", field="interface", value=name)
    fd = _c_socket(_AF_INET, _SOCK_DGRAM | _SOCK_CLOEXEC, 0)
    if fd == -1:
        _check(-1, "socket", detail="AF_INET, SOCK_DGRAM")
    try:
        # struct ifreq: the name in 16 bytes, then ifr_flags (a short) in a 24-byte union.
        ifreq = _Ifreq()
        ifreq.raw = raw.ljust(_IFNAMSIZ, b"\0") + bytes(_IFREQ_SIZE - _IFNAMSIZ)
        if _c_ioctl(fd, _SIOCGIFFLAGS, ifreq) == -1:
            _check(-1, "ioctl(SIOCGIFFLAGS)", path=name)
        flags = int.from_bytes(ifreq.raw[_IFNAMSIZ:_IFNAMSIZ + 2], sys.byteorder) | _IFF_UP
        ctypes.memmove(ctypes.addressof(ifreq) + _IFNAMSIZ, flags.to_bytes(2, sys.byteorder), 2)
        if _c_ioctl(fd, _SIOCSIFFLAGS, ifreq) == -1:
            _check(-1, "ioctl(SIOCSIFFLAGS)", path=name)
    finally:
        os.close(fd)


# -- seccomp and safe path resolution (rootfs/hardening backends) -------------------

_SECCOMP_MODE_FILTER = 2  # <linux/seccomp.h>
_NR_OPENAT2 = 437  # unified number on every architecture (Linux 5.6)

# openat2(2) resolve flags -- include/uapi/linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_load_bpf(program: bytes) -> None:
    """PR_SET_SECCOMP(SECCOMP_MODE_FILTER) with a classic-BPF program (raw
    ``struct sock_filter`` array, e.g. libseccomp's ``seccomp_export_bpf``).

    Needs no_new_privs or CAP_SYS_ADMIN (seccomp(2)); irreversible, inherited
    across fork and execve.
    """
    if not program or len(program) % 8 or len(program) // 8 > 0xFFFF:
        raise InvalidArgument("a BPF program is a non-empty array of 8-byte instructions",
                              field="program", value=len(program))
    count = len(program) // 8
    # The bytes themselves, not a copy in a new array type: the kernel copies
    # the program, and ``program`` lives until prctl returns.
    prog = _SockFprog(count, ctypes.cast(ctypes.c_char_p(program), ctypes.POINTER(_SockFilter)))
    if _c_prctl(C.PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) == -1:
        _check(-1, "prctl(PR_SET_SECCOMP)", detail=f"{count} instructions")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str | os.PathLike[str], flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dirfd`` with RESOLVE_* restrictions.

    ``RESOLVE_IN_ROOT`` resolves as if ``dirfd`` were ``/`` (absolute symlinks
    and ``..`` stay inside): the kernel-side answer to symlink escapes from
    a container's rootfs (CVE-2021-30465 in runc).
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = _fs(path)
    for _attempt in range(_OPENAT2_ATTEMPTS):
        ret = int(_c_syscall(ctypes.c_long(_NR_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                             ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
        # EAGAIN: with RESOLVE_IN_ROOT/BENEATH, a mount or rename anywhere on
        # the host raced a ".." of the walk, and the kernel would not vouch
        # for it; openat2(2) says to retry (nothing was opened). Containers
        # tearing down elsewhere unmount all the time.
        if ret >= 0 or ctypes.get_errno() != errno.EAGAIN:
            break
    return _check(ret, "openat2", path)


_OPENAT2_ATTEMPTS = 32


# mount_setattr(2) -- include/uapi/linux/mount.h
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR_IDMAP = 0x00100000
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(fd: int, attr_set: int, attr_clr: int = 0, *, recursive: bool = False,
                  userns_fd: int | None = None) -> None:
    """mount_setattr(2) on the mount ``fd`` (an O_PATH fd of its root) refers to.

    Unlike a bind remount it changes only the given MOUNT_ATTR_* flags, and
    with ``recursive`` the whole subtree at once (a truly read-only volume,
    not just its top mount). With ``MOUNT_ATTR_IDMAP`` in ``attr_set``,
    ``userns_fd`` (an fd of a user namespace) gives the id mapping: an
    idmapped mount, which only a detached mount that was never attached
    (``open_tree(OPEN_TREE_CLONE)``) may become (mount_setattr(2)).
    """
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd if userns_fd is not None else 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    ret = int(_c_syscall(ctypes.c_long(_syscall_number("mount_setattr")), ctypes.c_int(fd), ctypes.c_char_p(b""),
                         ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))))
    if ret == -1:
        _check(ret, "mount_setattr", detail=f"set={attr_set:#x} clear={attr_clr:#x} recursive={recursive}")


# statx(2) -- include/uapi/linux/stat.h
STATX_ATTR_MOUNT_ROOT = 0x00002000
_STATX_SIZE = 256  # sizeof(struct statx)
_STATX_ATTRIBUTES = 8  # offsetof(struct statx, stx_attributes)
_STATX_ATTRIBUTES_MASK = 56  # offsetof(struct statx, stx_attributes_mask)
_c_statx = _libc.statx  # glibc 2.28
_c_statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
_StatxBuffer = ctypes.c_char * _STATX_SIZE


def is_mount_root(fd: int) -> bool | None:
    """Whether the file behind ``fd`` (an O_PATH fd is enough) is the root of
    a mount: STATX_ATTR_MOUNT_ROOT of statx(2), one call. None when this
    kernel does not say (before Linux 5.8); then compare mount ids instead
    (:func:`pycontain.kernel.proc.mount_id`)."""
    buf = _StatxBuffer()
    _check(_c_statx(fd, b"", AT_EMPTY_PATH, 0, buf), "statx", detail=f"fd={fd}")
    raw = buf.raw
    if not int.from_bytes(raw[_STATX_ATTRIBUTES_MASK:_STATX_ATTRIBUTES_MASK + 8], sys.byteorder) & STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(int.from_bytes(raw[_STATX_ATTRIBUTES:_STATX_ATTRIBUTES + 8], sys.byteorder) & STATX_ATTR_MOUNT_ROOT)


# open_tree(2) / move_mount(2) -- include/uapi/linux/mount.h
OPEN_TREE_CLONE = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def open_tree(path: str | os.PathLike[str], *, clone: bool = True, recursive: bool = False,
              dirfd: int = -100) -> int:
    """open_tree(2): an fd of the mount at ``path``; with ``clone`` a new
    detached copy of it (a bind mount not attached anywhere yet), which
    :func:`mount_setattr` may idmap and :func:`move_mount` attach. The fd
    is close-on-exec; a detached mount vanishes when its last fd closes.
    ``dirfd`` defaults to AT_FDCWD."""
    flags = os.O_CLOEXEC | (OPEN_TREE_CLONE if clone else 0) | (AT_RECURSIVE if recursive else 0)
    raw = _fs(path)
    ret = int(_c_syscall(ctypes.c_long(_syscall_number("open_tree")), ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                         ctypes.c_uint(flags)))
    if ret == -1:
        _check(ret, "open_tree", path, detail=f"flags={flags:#x}")
    return ret


def move_mount(fd: int, target: str | os.PathLike[str], *, target_dirfd: int = -100) -> None:
    """move_mount(2): attach the (detached) mount behind ``fd`` at ``target``
    (MOVE_MOUNT_F_EMPTY_PATH: ``fd`` itself is the source)."""
    raw = _fs(target)
    ret = int(_c_syscall(ctypes.c_long(_syscall_number("move_mount")), ctypes.c_int(fd), ctypes.c_char_p(b""),
                         ctypes.c_int(target_dirfd), ctypes.c_char_p(raw), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)))
    _check(ret, "move_mount", target)
