"""The copy storage driver: a plain copy of the image per container; works anywhere.

``prepare`` applies the unpacked layers bottom-up into
``container_dir/rootfs`` (overlay whiteouts delete, opaque directories are
emptied first), then records a manifest of every path (type, inode, ctime)
so ``diff`` can tell what the container added, changed and deleted. The
mount is a bind mount of that directory. Slow for big images, but needs no
overlayfs and no btrfs; the btrfs driver reuses the same merge and manifest.

The merge writes only below the destination's directory fd and never
follows a symlink (the layers come from untrusted images).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Sequence
from typing import IO

from pycontain.backends import storage_driver as sd
from pycontain.backends import storage_tar
from pycontain.backends.storage_store import LayerRecord, Store
from pycontain.backends.tarsafe import OVERLAY_OPAQUE_XATTR, remove_at
from pycontain.errors import Unsupported
from pycontain.kernel.constants import MS_BIND

MANIFEST = "manifest.json"
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _copy_meta(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    for name in os.listxattr(src_fd):
        if name.startswith("user."):
            os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_file(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> None:
    sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dst_dir)
        try:
            left = st.st_size
            while left > 0:
                # copy_file_range reflinks on btrfs/xfs and copies in the kernel elsewhere.
                n = os.copy_file_range(sfd, dfd, min(left, 1 << 30))
                if n == 0:
                    break
                left -= n
            _copy_meta(sfd, dfd, st)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def merge_layer(src: str, dst: str) -> None:
    """Apply the unpacked (overlay-style) layer ``src`` onto the tree ``dst``."""
    sfd = os.open(src, _NOFOLLOW_DIR)
    dfd = os.open(dst, _NOFOLLOW_DIR)
    links: dict[tuple[int, int], tuple[int, str]] = {}
    try:
        _merge(sfd, dfd, links)
    finally:
        os.close(sfd)
        os.close(dfd)
        for fd, _name in links.values():
            os.close(fd)


def _merge(sfd: int, dfd: int, links: dict[tuple[int, int], tuple[int, str]]) -> None:
    with os.scandir(sfd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        st = _lstat(sfd, name)
        if st is None:
            continue
        old = _lstat(dfd, name)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            remove_at(dfd, name)  # whiteout
            continue
        if stat.S_ISDIR(st.st_mode):
            csfd = os.open(name, _NOFOLLOW_DIR, dir_fd=sfd)
            try:
                opaque = False
                try:
                    opaque = os.getxattr(csfd, OVERLAY_OPAQUE_XATTR) == b"y"
                except OSError:
                    pass
                if old is not None and (opaque or not stat.S_ISDIR(old.st_mode)):
                    remove_at(dfd, name)
                    old = None
                if old is None:
                    os.mkdir(name, 0o700, dir_fd=dfd)
                cdfd = os.open(name, _NOFOLLOW_DIR, dir_fd=dfd)
                try:
                    _merge(csfd, cdfd, links)
                    _copy_meta(csfd, cdfd, st)
                finally:
                    os.close(cdfd)
            finally:
                os.close(csfd)
            continue
        if old is not None:
            remove_at(dfd, name)
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                ldir, lname = links[key]
                try:
                    os.link(lname, name, src_dir_fd=ldir, dst_dir_fd=dfd, follow_symlinks=False)
                    continue
                except OSError:
                    pass
            _copy_file(sfd, dfd, name, st)
            if st.st_nlink > 1:
                links[key] = (os.dup(dfd), name)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(name, stat.S_IMODE(st.st_mode), dir_fd=dfd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        # devices and sockets never come out of the store (tarsafe skips them)


# -- manifests and diffs -----------------------------------------------------------------


def snapshot(root: str) -> dict[str, list[int | str]]:
    """path -> [kind, inode, ctime_ns, size] of every entry under ``root`` (no symlink followed).

    ctime changes with every write, chmod, chown or rename of an inode, and a
    replaced file has a new inode: comparing the two finds every change.
    """
    out: dict[str, list[int | str]] = {}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        for name in dirnames + filenames:
            st = _lstat(dirfd, name)
            if st is None:
                continue
            out["/" + prefix + name] = [sd.file_kind(st.st_mode), st.st_ino, st.st_ctime_ns, st.st_size]
    return out


def write_manifest(path: str, snap: dict[str, list[int | str]]) -> None:
    with open(path, "w") as f:
        json.dump(snap, f)


def manifest_changes(root: str, manifest_path: str) -> list[sd.Change]:
    with open(manifest_path) as f:
        before: dict[str, list[int | str]] = json.load(f)
    now = snapshot(root)
    out: list[sd.Change] = []
    for path in sorted(now):
        kind, _ino, _ctime, size = now[path]
        size_i = int(size) if kind == "file" else 0
        if path not in before:
            out.append(sd.Change(path, "A", size_i, str(kind)))
        elif before[path] != now[path]:
            out.append(sd.Change(path, "C", size_i, str(kind)))
    deleted = sorted(p for p in before if p not in now)
    gone: list[str] = []
    for path in deleted:
        if any(path.startswith(g + "/") for g in gone[-1:]):
            continue  # inside a deleted directory: one whiteout covers it
        gone.append(path)
        out.append(sd.Change(path, "D", 0, "whiteout"))
    return sorted(out, key=lambda c: c.path)


def commit_changes(root: str, changes: list[sd.Change], out: IO[bytes]) -> None:
    fd = os.open(root, _NOFOLLOW_DIR)
    try:
        storage_tar.write_entries(
            fd,
            [c.path.lstrip("/") for c in changes if c.change in "AC"],
            [c.path.lstrip("/") for c in changes if c.change == "D"],
            out,
        )
    finally:
        os.close(fd)


class CopyDriver:
    name = "copy"

    def __init__(self, store: Store) -> None:
        self.store = store

    def prepare(self, layers: Sequence[LayerRecord], container_dir: str, *, image: str = "",
                owner: str = "") -> sd.RootfsPlan:
        if any(layer.is_host for layer in layers):
            raise Unsupported("the copy driver cannot use the host as a layer (it would copy the host)",
                              op="prepare", field="driver", value=self.name, hint="use the overlay driver")
        sd.prepare_container_dir(container_dir)
        rootfs = os.path.join(container_dir, "rootfs")
        plan = sd.new_plan(self.name, self.store, layers, container_dir, image, owner, rootfs)
        try:
            os.mkdir(rootfs, 0o755)
            for layer in layers:
                merge_layer(layer.path, rootfs)
            write_manifest(os.path.join(container_dir, MANIFEST), snapshot(rootfs))
            plan.mounts = [sd.MountStep(rootfs, "", None, MS_BIND)]
            plan.save()
            sd.register(self.store, plan)
        except BaseException:
            shutil.rmtree(container_dir, ignore_errors=True)
            raise
        return plan

    def diff(self, plan: sd.RootfsPlan) -> list[sd.Change]:
        return manifest_changes(plan.rootfs, os.path.join(plan.container_dir, MANIFEST))

    def commit(self, plan: sd.RootfsPlan, out: IO[bytes]) -> None:
        commit_changes(plan.rootfs, self.diff(plan), out)

    def cleanup(self, plan: sd.RootfsPlan) -> None:
        sd.unregister(self.store, plan.owner)
        if os.path.isdir(plan.container_dir):
            shutil.rmtree(plan.container_dir)
