"""Write a directory tree as a deterministic OCI layer tar.

Used by ``Layer.from_dir`` and by every storage driver's ``commit``. The
same tree always gives the same bytes (so the same diff_id): entries in
sorted byte order, depth first; numeric uid/gid kept but user and group
*names* left empty (they would leak the host's passwd database into the
digest); mtimes truncated to whole seconds; PAX format; only ``user.*``
extended attributes.

The tree may be a container's upper directory that the container is still
writing to, so it is read without following symlinks anywhere: directories
are opened relative to their parent's fd with ``O_NOFOLLOW``, files with
``O_NOFOLLOW`` and checked to be the inode that was listed; a file that
shrinks while read is padded with zeros to its listed size.

With ``overlay=True`` overlayfs' own whiteouts are converted to OCI ones: a
character device 0/0 becomes ``.wh.NAME``, a directory with
``trusted.overlay.opaque=y`` gets a ``.wh..wh..opq`` entry.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from typing import IO

from pycontain.backends.tarsafe import OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX

_CHUNK = 1 << 20


class _FdReader:
    """Reads exactly ``size`` bytes from ``fd``, zero-padded if the file shrank."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        if n < 0 or n > self.left:
            n = self.left
        data = os.read(self.fd, min(n, _CHUNK))
        if not data:
            data = bytes(min(n, _CHUNK))
        self.left -= len(data)
        return data


def is_whiteout(st: os.stat_result) -> bool:
    """overlayfs' whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(dirfd: int) -> bool:
    try:
        return os.getxattr(dirfd, OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def user_xattrs(fd: int) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in sorted(names):
        if not name.startswith("user."):
            continue
        try:
            out["SCHILY.xattr." + name] = os.getxattr(fd, name).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return out


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = int(st.st_mtime)
    return ti


class TreeWriter:
    """Writes one tree into a tar; ``skipped`` lists what was left out and why."""

    def __init__(self, out: IO[bytes], overlay: bool, root_dev: int | None = None) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
        self.overlay = overlay
        #: with a device, directories of other filesystems (mount points) are
        #: written empty, not descended into (tar --one-file-system): a layer
        #: of "/" must not swallow /proc or /sys.
        self.root_dev = root_dev
        self.links: dict[tuple[int, int], str] = {}
        self.skipped: list[str] = []
        self.count = 0

    def close(self) -> None:
        self.tar.close()

    def add_dir(self, dirfd: int, prefix: str) -> None:
        with os.scandir(dirfd) as it:
            names = sorted((e.name for e in it), key=os.fsencode)
        for name in names:
            path = prefix + name
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we looked
            self.add_entry(dirfd, name, path, st)

    def add_entry(self, dirfd: int, name: str, path: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    return
                raise
            try:
                ti = _info(path, os.fstat(fd))
                ti.type = tarfile.DIRTYPE
                ti.pax_headers = user_xattrs(fd)
                self.tar.addfile(ti)
                self.count += 1
                if self.overlay and is_opaque(fd):
                    self._marker(path + "/" + OPAQUE_MARKER, st)
                if self.root_dev is not None and st.st_dev != self.root_dev:
                    self.skipped.append(f"{path}: another filesystem, not descended into")
                    return
                self.add_dir(fd, path + "/")
            finally:
                os.close(fd)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                ti = _info(path, st)
                ti.type = tarfile.LNKTYPE
                ti.linkname = self.links[key]
                self.tar.addfile(ti)
                self.count += 1
                return
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP):
                    return
                raise
            try:
                fst = os.fstat(fd)
                if (fst.st_dev, fst.st_ino) != key or not stat.S_ISREG(fst.st_mode):
                    return  # swapped for something else since listed: skip, never follow
                ti = _info(path, fst)
                ti.size = fst.st_size
                ti.pax_headers = user_xattrs(fd)
                self.tar.addfile(ti, _FdReader(fd, fst.st_size))  # type: ignore[arg-type]
                self.count += 1
                if fst.st_nlink > 1:
                    self.links[key] = path
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            ti = _info(path, st)
            ti.type = tarfile.SYMTYPE
            try:
                ti.linkname = os.readlink(name, dir_fd=dirfd)
            except OSError:
                return
            self.tar.addfile(ti)
            self.count += 1
        elif self.overlay and is_whiteout(st):
            parent, _, base = path.rpartition("/")
            self._marker((parent + "/" if parent else "") + WHITEOUT_PREFIX + base, st)
        elif stat.S_ISFIFO(mode):
            ti = _info(path, st)
            ti.type = tarfile.FIFOTYPE
            self.tar.addfile(ti)
            self.count += 1
        else:
            self.skipped.append(f"{path}: {'device node' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'socket'} not exported")

    def _marker(self, path: str, st: os.stat_result) -> None:
        ti = tarfile.TarInfo(path)
        ti.mode = 0o600
        ti.mtime = int(st.st_mtime)
        ti.uname = ti.gname = ""
        self.tar.addfile(ti)
        self.count += 1


def write_tree(root: str | os.PathLike[str], out: IO[bytes], *, overlay: bool = True,
               one_file_system: bool = True) -> TreeWriter:
    """Write the tree under ``root`` (not ``root`` itself) as a layer tar to ``out``.

    Returns the writer, whose ``skipped`` lists device nodes, sockets and
    mount points (with ``one_file_system``, other filesystems below ``root``
    appear as empty directories) left out. Example::

        with open("layer.tar", "wb") as f:
            write_tree("/path/to/rootfs", f)
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    w = TreeWriter(out, overlay, os.fstat(fd).st_dev if one_file_system else None)
    try:
        w.add_dir(fd, "")
    finally:
        os.close(fd)
        w.close()
    return w


def write_entries(rootfd: int, paths: list[str], deleted: list[str], out: IO[bytes]) -> TreeWriter:
    """Write a layer of chosen changes: ``paths`` (files and dirs, taken whole,
    relative to ``rootfd``) and whiteouts for ``deleted`` paths.

    Used by drivers without an upper directory (copy, btrfs) to commit a diff.
    Parents of every path are written first so the tar extracts on its own.
    """
    from pycontain.backends.tarsafe import open_dir_at, split_member_name

    w = TreeWriter(out, overlay=False)
    written_dirs: set[str] = set()
    items = sorted([(p, False) for p in paths] + [(p, True) for p in deleted], key=lambda x: os.fsencode(x[0]))
    try:
        for path, is_deleted in items:
            parts = split_member_name(path)
            if not parts:
                continue
            # parent directories, as they are now
            for i in range(1, len(parts)):
                sub = "/".join(parts[:i])
                if sub in written_dirs:
                    continue
                pfd = open_dir_at(rootfd, parts[: i - 1], create=False)
                try:
                    st = os.stat(parts[i - 1], dir_fd=pfd, follow_symlinks=False)
                    ti = _info(sub, st)
                    ti.type = tarfile.DIRTYPE
                    w.tar.addfile(ti)
                    w.count += 1
                finally:
                    os.close(pfd)
                written_dirs.add(sub)
            if is_deleted:
                parent = "/".join(parts[:-1])
                ti = tarfile.TarInfo((parent + "/" if parent else "") + WHITEOUT_PREFIX + parts[-1])
                ti.mode = 0o600
                ti.uname = ti.gname = ""
                w.tar.addfile(ti)
                w.count += 1
                continue
            pfd = open_dir_at(rootfd, parts[:-1], create=False)
            try:
                try:
                    st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    # Only the directory itself; changed children are listed on their own.
                    dfd = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        ti = _info(path, os.fstat(dfd))
                        ti.type = tarfile.DIRTYPE
                        ti.pax_headers = user_xattrs(dfd)
                        w.tar.addfile(ti)
                        w.count += 1
                    finally:
                        os.close(dfd)
                    written_dirs.add(path)
                else:
                    w.add_entry(pfd, parts[-1], path, st)
            finally:
                os.close(pfd)
    finally:
        w.close()
    return w
