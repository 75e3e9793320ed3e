"""A container in a user namespace (``Container(userns=...)``): the setup
steps that need the host's privilege, then the switch into the namespace.

The container's setup runs as the host's root in its private mount
namespace; the user namespace (made beforehand, with its id maps) is joined
last, just before the capabilities are dropped:

1. :func:`idmap_plan`: each overlay layer directory, and the directory that
   holds the overlay's upper and work directories, is replaced (in this
   mount namespace only) by an *idmapped* copy of itself
   (``open_tree(OPEN_TREE_CLONE)`` + ``mount_setattr(MOUNT_ATTR_IDMAP)`` +
   ``move_mount`` onto the same path; mount_setattr(2)). Through it, a file
   owned by uid 0 on disk shows as the host uid that the container's root
   maps to, so inside the namespace the image's files are root's again,
   and what the container writes lands on disk as uid 0 (the writable
   layer commits like any other). The host's ``/`` (image "host") is cloned
   and idmapped onto a directory of the container instead, since a mount
   over ``/`` is not seen by lookups that start at ``/``.
2. :func:`mapped_root`: the mounts are made with the effective uid/gid of
   the container's root (capabilities kept). overlayfs does its copy-ups
   with the credentials of whoever mounted it; a mounter with uid 0, which
   the idmapped upper layer cannot represent, gets EOVERFLOW there, and
   the overlay falls back to read-only. Files the setup creates (/dev, a
   volume's mount point) belong to the container's root for the same reason.
3. :func:`enter_user_namespace`: setns(CLONE_NEWUSER) and become id 0
   inside. From then on every capability applies only to what the
   namespace owns: the container's mount, network, UTS and IPC namespaces
   were made before, by the host's root, so they are not among them.

overlayfs takes idmapped layers since Linux 5.19 (overlayfs.rst, "Idmapped
layers"); tmpfs (``storage_size``) can be idmapped since 6.3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator

from pycontain.backends.storage_driver import MountStep, RootfsPlan
from pycontain.kernel import constants as C
from pycontain.kernel import syscalls

#: Where the idmapped copy of the host's ``/`` is attached, in the container dir.
HOST_ROOT_DIR = "idmapped-root"

_UNESCAPE = re.compile(r"\\(.)")


def _split(text: str, sep: str) -> list[str]:
    """Split overlayfs option text on ``sep`` where it is not escaped by a backslash."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text)


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _option(data: str, name: str) -> str | None:
    for opt in _split(data, ","):
        key, _, value = opt.partition("=")
        if key == name:
            return value
    return None


def overlay_dirs(step: MountStep) -> tuple[list[str], str | None]:
    """An overlay mount step's lower directories (as written, unescaped) and upperdir."""
    data = step.data or ""
    lower = _option(data, "lowerdir")
    upper = _option(data, "upperdir")
    lowers = [_unescape(x) for x in _split(lower, ":")] if lower else []
    return lowers, _unescape(upper) if upper else None


def _resolve(path: str, step: MountStep) -> str:
    return os.path.normpath(os.path.join(step.cwd or "/", path))


def _replace_lower(step: MountStep, old: str, new: str) -> MountStep:
    opts = _split(step.data or "", ",")
    for i, opt in enumerate(opts):
        key, _, value = opt.partition("=")
        if key == "lowerdir":
            entries = [_escape(new) if _unescape(x) == old else x for x in _split(value, ":")]
            opts[i] = "lowerdir=" + ":".join(entries)
    return dataclasses.replace(step, data=",".join(opts))


def _under(path: str, parents: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def idmap_onto(source: str, target: str, userns_fd: int) -> None:
    """Attach an idmapped copy of the mount tree at ``source`` (one mount, not
    its submounts) on ``target``, mapped through the user namespace ``userns_fd``."""
    fd = syscalls.open_tree(source, clone=True)
    try:
        syscalls.mount_setattr(fd, syscalls.MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        syscalls.move_mount(fd, target)
    finally:
        os.close(fd)


def idmap_plan(plan: RootfsPlan, target: str, userns_fd: int) -> RootfsPlan:
    """Idmap the directories the overlay steps of ``plan`` use; return the plan to mount.

    Run in the container's private mount namespace, before
    :func:`~pycontain.backends.storage_driver.mount_rootfs` (with the
    returned plan). The directories holding upper and work go first, then
    every lower directory not inside one of them and not made by an earlier
    step of the plan (the host overlay and its tmpfs, built from idmapped
    parts or created by the mapped root); a lower of ``/`` is replaced by an
    idmapped copy of the host's root.

    Raises:
        Unsupported: ``plan`` is not an overlay plan.
        KernelError: a refused open_tree, mount_setattr or move_mount
            (EINVAL: the filesystem cannot be idmapped).
    """
    from pycontain.errors import Unsupported

    if plan.driver != "overlay":
        raise Unsupported(f"a user namespace needs the overlay storage driver, not {plan.driver}",
                          op="userns", field="userns", value=plan.driver,
                          hint="use a store on a filesystem where the overlay driver is chosen, or userns=None")
    made: list[str] = []  # mount points made by earlier steps
    uppers: list[str] = []
    lowers: list[str] = []
    host_root = False
    for step in plan.mounts:
        if step.fstype == "overlay":
            below, upper = overlay_dirs(step)
            if upper is not None:
                uppers.append(os.path.dirname(_resolve(upper, step)))
            for x in below:
                path = _resolve(x, step)
                if path == "/":
                    host_root = True
                elif path not in made and path not in lowers:
                    lowers.append(path)
        # (relative step targets are below the rootfs mount point, as in mount_rootfs)
        made.append(os.path.normpath(os.path.join(target, step.target) if step.target else target))
    root_copy = os.path.join(plan.container_dir, HOST_ROOT_DIR)
    if host_root:
        # Before its parent may become idmapped: the host's root cannot
        # create files through a mount that does not map uid 0.
        os.makedirs(root_copy, 0o755, exist_ok=True)
    done: list[str] = []
    for path in [*uppers, *lowers]:
        if not _under(path, done):
            idmap_onto(path, path, userns_fd)
            done.append(path)
    if not host_root:
        return plan
    idmap_onto("/", root_copy, userns_fd)
    steps = [_replace_lower(s, "/", root_copy) if s.fstype == "overlay" and "/" in
             [_resolve(x, s) for x in overlay_dirs(s)[0]] else s for s in plan.mounts]
    return dataclasses.replace(plan, mounts=steps)


@contextlib.contextmanager
def mapped_root(uid: int, gid: int) -> Iterator[None]:
    """Within: effective (and so filesystem) uid/gid ``uid``/``gid``, every
    capability still effective. Mounts made here carry these credentials
    (overlayfs copies up with its mounter's), files created here get these
    owners. Restores uid/gid 0 at the end."""
    os.setresgid(-1, gid, -1)
    os.setresuid(-1, uid, -1)
    try:
        # A non-zero euid clears the effective set (capabilities(7), "Effect
        # of user ID changes"); the permitted set stays, so take it back.
        _, permitted, inheritable = syscalls.capget()
        syscalls.capset(permitted, permitted, inheritable)
        yield
    finally:
        os.setresuid(-1, 0, -1)  # back to euid 0: effective = permitted again
        os.setresgid(-1, 0, -1)


def enter_user_namespace(userns_fd: int) -> None:
    """Join the user namespace ``userns_fd`` and become uid/gid 0 there, with no
    supplementary groups. Needs a single-threaded caller (setns(2))."""
    from pycontain.errors import kernel_error

    syscalls.setns(userns_fd, C.NAMESPACE_FLAGS["user"])
    try:
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)
    except OSError as e:
        raise kernel_error("setresuid", e.errno or 0, detail="uid 0 in the user namespace",
                           hint="does the map cover id 0 inside?") from None
