"""The overlay storage driver (default): layers stacked as overlayfs lowerdirs.

A container's rootfs is one overlay mount: the image's unpacked layer
directories as ``lowerdir`` (top first; the host layer is ``/``), and the
container's own ``upper``/``work`` directories. Preparing it is two mkdirs
whatever the image's size; every container of an image shares the same
lower directories (same inodes, one page cache).

The mount uses ``index=off,metacopy=off,redirect_dir=off`` so the upper dir
holds only plain entries, overlay whiteouts (char 0/0) and opaque markers:
exactly what an OCI layer can express, which makes ``diff`` and ``commit`` a
walk of the upper dir (overlayfs(5)). See :mod:`storage_driver` for the protocol.

It is also ``volatile`` (Linux 5.10+): overlayfs then skips every sync,
including the one at unmount, which otherwise syncs the whole filesystem
under the upper dir when the container's last process exits (~5 ms on this
host's ext4, against ~1.5 ms, and more with other writers busy). The
option was made for this use (kernel commit c86243b090bc: a container's
writable layer is thrown away if the node goes down, and so is ours: the
state lives in /run, and garbage collection removes layers of containers
whose creator is gone). ``fsync`` in the container still reaches volumes,
which are mounts of their own; ``commit()`` writes its layer to the store
from the host side.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from typing import IO

from pycontain.backends import storage_driver as sd
from pycontain.backends.storage_store import LayerRecord, Store
from pycontain.kernel.constants import MS_NODEV, MS_NOSUID, MS_RDONLY, OVERLAY_OPAQUE_XATTR

# mount(2) data is limited to one page.
_MAX_OPTIONS = 4000


def _escape(path: str) -> str:
    # overlayfs splits lowerdir on ':' and options on ','; both are escaped with '\'.
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


class OverlayDriver:
    name = "overlay"

    def __init__(self, store: Store) -> None:
        self.store = store

    def prepare(self, layers: Sequence[LayerRecord], container_dir: str, *, image: str = "",
                owner: str = "") -> sd.RootfsPlan:
        sd.prepare_container_dir(container_dir)
        upper = os.path.join(container_dir, "upper")
        work = os.path.join(container_dir, "work")
        plan = sd.new_plan(self.name, self.store, layers, container_dir, image, owner, upper)
        try:
            os.mkdir(upper, 0o755)
            os.mkdir(work, 0o700)
            lowers = list(plan.lowers)
            mounts: list[sd.MountStep] = []
            if not lowers:
                # overlayfs needs a lowerdir; an image without layers gets an empty one.
                empty = os.path.join(container_dir, "empty")
                os.mkdir(empty, 0o755)
                lowers = [empty]
            elif len(lowers) > 1 and lowers[-1] == "/":
                # The host's / below store layers: overlayfs refuses lowerdirs
                # where one contains another ("overlapping lowerdir path",
                # ELOOP), and the store lies inside /. So / is first made a
                # read-only overlay of its own (with an empty tmpfs as the
                # required second lowerdir, as overlayfs without upperdir needs
                # two), a different superblock that no longer overlaps.
                empty = os.path.join(container_dir, "host-empty")
                host = os.path.join(container_dir, "host")
                os.mkdir(empty, 0o755)
                os.mkdir(host, 0o755)
                mounts.append(sd.MountStep("pycontain-empty", empty, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
                                           "size=4k,mode=0755"))
                mounts.append(sd.MountStep("overlay", host, "overlay", MS_RDONLY,
                                           f"lowerdir={_escape(empty)}:/"))
                lowers = lowers[:-1] + [host]
            opts = self._options(lowers, upper, work, relative_to=None)
            cwd = None
            if len(opts) > _MAX_OPTIONS:
                cwd = self.store.layers_dir
                opts = self._options(lowers, upper, work, relative_to=cwd)
            mounts.append(sd.MountStep("overlay", "", "overlay", 0, opts, cwd))
            plan.mounts = mounts
            plan.save()
            sd.register(self.store, plan)
        except BaseException:
            shutil.rmtree(container_dir, ignore_errors=True)
            raise
        return plan

    @staticmethod
    def _options(lowers: list[str], upper: str, work: str, relative_to: str | None) -> str:
        def p(x: str) -> str:
            if relative_to and x.startswith(relative_to + "/"):
                return _escape(os.path.relpath(x, relative_to))
            return _escape(x)

        return (f"lowerdir={':'.join(p(x) for x in lowers)},upperdir={_escape(upper)},workdir={_escape(work)},"
                "index=off,metacopy=off,redirect_dir=off" + (",volatile" if _has_volatile() else ""))

    def diff(self, plan: sd.RootfsPlan) -> list[sd.Change]:
        return upper_changes(plan.rootfs, plan.lowers)

    def commit(self, plan: sd.RootfsPlan, out: IO[bytes]) -> None:
        from pycontain.backends import storage_tar  # tarfile: only on commit

        storage_tar.write_tree(plan.rootfs, out, overlay=True)

    def cleanup(self, plan: sd.RootfsPlan) -> None:
        sd.unregister(self.store, plan.owner)
        # What prepare() made, and overlayfs' own work/work; an upper dir with
        # files in it (or a directory of an older pycontain, with merged/)
        # sends remove_dir to a full walk.
        # (A volatile mount leaves the file work/work/incompat/volatile/dirty.)
        sd.remove_dir(plan.container_dir, (sd.PLAN_FILE, "work/work/incompat/volatile/dirty",
                                           "work/work/incompat/volatile/", "work/work/incompat/", "work/work/",
                                           "work/", "upper/", "empty/", "host-empty/", "host/"))


def _has_volatile() -> bool:
    """Whether this kernel's overlayfs knows ``volatile`` (Linux 5.10)."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 10)


def exists_below(lowers: Sequence[str], parts: list[str]) -> bool:
    """Is the path ``parts`` visible in the overlay of ``lowers`` (top first)?

    Follows overlayfs' rules: a whiteout hides the path, a non-directory hides
    everything below it, an opaque directory hides the layers under it. No
    symlink is followed.
    """
    for lower in lowers:
        cur = lower
        for i, comp in enumerate(parts):
            p = os.path.join(cur, comp)
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                break
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return False
            if i == len(parts) - 1:
                return True
            if not stat.S_ISDIR(st.st_mode):
                return False
            try:
                if os.getxattr(p, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y":
                    return exists_below([p], parts[i + 1:])
            except OSError:
                pass
            cur = p
    return False


def upper_changes(upper: str, lowers: Sequence[str]) -> list[sd.Change]:
    """Changes recorded in an overlay upper dir, walked without following symlinks."""
    out: list[sd.Change] = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(upper, follow_symlinks=False):
        rel = os.path.relpath(dirpath, upper)
        prefix = [] if rel == "." else rel.split("/")
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            parts = prefix + [name]
            path = "/" + "/".join(parts)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out.append(sd.Change(path, "D", 0, "whiteout"))
                continue
            change = "C" if exists_below(lowers, parts) else "A"
            out.append(sd.Change(path, change, st.st_size if stat.S_ISREG(st.st_mode) else 0, sd.file_kind(st.st_mode)))
    return out
