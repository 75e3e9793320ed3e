"""Filesystem facts: which filesystem a path is on, which ones the kernel has.

``fs_type`` uses statfs(2) (its ``f_type`` magic number, see statfs(2) and
``<linux/magic.h>``); ``filesystems`` reads /proc/filesystems.
"""

from __future__ import annotations

import ctypes
import os

from pycontain.errors import kernel_error

# "libc.so.6" directly, as kernel.syscalls does: find_library() runs ldconfig
# in a subprocess, on every start of every process that imports this.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

#: f_type magic -> name (include/uapi/linux/magic.h)
FS_MAGIC: dict[int, str] = {
    0x9123683E: "btrfs",
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x6969: "nfs",
    0x65735546: "fuse",
    0x2FC12FC1: "zfs",
    0x858458F6: "ramfs",
    0x73717368: "squashfs",
    0x01021997: "9p",
}


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux (x86_64, aarch64): all fields are 8 bytes
    # except f_fsid (2 x int) ; we only read f_type.
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


_c_statfs = _libc.statfs
_c_statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]


def fs_magic(path: str | os.PathLike[str]) -> int:
    """statfs(2) f_type of the filesystem holding ``path``."""
    buf = _Statfs()
    if _c_statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        raise kernel_error("statfs", ctypes.get_errno(), path=path)
    return buf.f_type & 0xFFFFFFFF


def fs_type(path: str | os.PathLike[str]) -> str:
    """Name of the filesystem holding ``path`` ("btrfs", "ext4", ...; hex if unknown)."""
    magic = fs_magic(path)
    return FS_MAGIC.get(magic, hex(magic))


def filesystems() -> set[str]:
    """Filesystem types the running kernel offers (/proc/filesystems)."""
    try:
        with open("/proc/filesystems") as f:
            return {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return set()
