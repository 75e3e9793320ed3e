"""Storage drivers: how a container's rootfs is made from an image's layers.

The protocol (what the container engine uses)
=============================================

A driver turns the image's unpacked layers (``LayerRecord.path``, bottom
first; the lowest may be the host layer, path ``/``) into a rootfs for one
container, records what it did in a :class:`RootfsPlan`, and later lists or
commits the container's changes::

    driver = select_driver(store)                 # or select_driver(store, "overlay"|"btrfs"|"copy")
    plan = driver.prepare(layers, container_dir, image=image.digest, owner="c1")
    # ... in the container's child, after unshare(CLONE_NEWNS) and making / rprivate:
    mount_rootfs(plan, "/path/to/newroot")        # performs plan.mounts with pycontain.kernel.syscalls
    # (unmount_rootfs(plan, target) undoes it where the namespace lives on)
    # ... later, from any process:
    driver.diff(plan)                             # [Change(path, change A/C/D, size, type)]
    driver.commit(plan, fileobj)                  # writes an OCI layer tar of the changes
    driver.cleanup(plan)                          # after the mount namespace is gone; idempotent

* ``prepare`` does no mount: it only creates files under ``container_dir``
  (which it owns from then on) and returns the plan. It is constant time for
  overlay (mkdir upper/work) and btrfs (one subvolume snapshot); the copy
  driver copies the image.
* :func:`mount_rootfs` must run inside a private mount namespace (the
  engine's container child, or a test child made with ``unshare --mount
  --propagation private``); the mounts vanish with the namespace, so nothing
  needs unmounting on the host. ``plan.mounts`` are plain data
  (:class:`MountStep`) if the engine prefers to issue them itself.
* ``plan.save()`` writes ``container_dir/rootfs.json``; :func:`load_plan`
  reads it back in another process (``pycontain ps``, a new kernel).
* Each prepared rootfs registers itself under ``<store>/containers/`` so
  images and layers in use are not removed or pruned
  (:func:`containers_using`, :func:`layers_in_use`); ``cleanup`` unregisters.

Driver choice (:func:`select_driver`): btrfs when the store is on btrfs,
else overlay when the kernel has it, else copy. An explicit choice that the
host cannot serve raises Unsupported, never falls back silently; each probe
records why it failed (:func:`probe_drivers`, shown by ``doctor()``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from pycontain.backends.storage_store import LayerRecord, Store
from pycontain.errors import InvalidArgument, NotFound, Unsupported
from pycontain.kernel import fs as kfs
from pycontain.statedir import create_json, list_dir, read_json, rootfs_dir, write_json

PLAN_FILE = "rootfs.json"
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class MountStep:
    """One mount(2) call: ``target`` is relative to the rootfs mount point ('' = itself),
    or absolute (a helper mount the driver needs elsewhere, e.g. under the container dir).

    ``cwd``, when set, is the directory to chdir to first: overlay's
    ``lowerdir=`` then uses short relative paths, which keeps the option
    string under the kernel's one-page limit for images with many layers.
    """

    source: str | None
    target: str
    fstype: str | None
    flags: int
    data: str | None = None
    cwd: str | None = None


@dataclass
class RootfsPlan:
    """What a driver prepared for one container (JSON-serialisable)."""

    driver: str
    container_dir: str
    store: str
    image: str
    owner: str
    layers: list[str]  # diff_ids, bottom first
    lowers: list[str]  # unpacked layer dirs, top first (overlay order)
    rootfs: str  # the tree the container writes to: overlay upper, or the copied/snapshotted rootfs
    mounts: list[MountStep] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.container_dir, PLAN_FILE)
        # A shallow record: asdict() deep-copies (~1 ms per start).
        record = dict(vars(self), mounts=[vars(m) for m in self.mounts])
        try:
            # The first plan of a fresh directory: one create, no rename. A
            # reader that comes too early sees a half-written file, which
            # load_plan() calls not prepared yet.
            create_json(path, record)
        except FileExistsError:
            write_json(path, record)


def load_plan(container_dir: str) -> RootfsPlan:
    try:
        d = read_json(Path(container_dir, PLAN_FILE), attempts=1)
    except (FileNotFoundError, ValueError):  # (ValueError: being written, see RootfsPlan.save)
        raise NotFound("no rootfs prepared in this directory", path=container_dir, op="load_plan") from None
    d["mounts"] = [MountStep(**m) for m in d["mounts"]]
    return RootfsPlan(**d)


@dataclass(frozen=True)
class Change:
    """One path a container changed: ``change`` is A (added), C (changed) or D (deleted)."""

    path: str
    change: str
    size: int
    type: str


def file_kind(mode: int) -> str:
    """The ``type`` of a :class:`Change`: "dir", "symlink", "file" or "other"."""
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


class StorageDriver(Protocol):
    name: str

    def prepare(self, layers: Sequence[LayerRecord], container_dir: str, *, image: str = "",
                owner: str = "") -> RootfsPlan: ...

    def diff(self, plan: RootfsPlan) -> list[Change]: ...

    def commit(self, plan: RootfsPlan, out: IO[bytes]) -> None: ...

    def cleanup(self, plan: RootfsPlan) -> None: ...


# -- mounting (inside a private mount namespace only) ------------------------------------


def _dest(step: MountStep, target: str) -> str:
    # relative targets are below the rootfs mount point; absolute ones stay as they are
    return os.path.join(target, step.target) if step.target else target


def mount_rootfs(plan: RootfsPlan, target: str) -> None:
    """Mount the container's rootfs at ``target``, in the caller's mount namespace.

    Call this only in a process that has its own private mount namespace
    (``unshare(CLONE_NEWNS)`` and ``/`` made rprivate): that is what keeps the
    mounts off the host and removes them when the namespace dies. If a step
    fails, the steps before it are unmounted again and the error raised.
    """
    from pycontain.kernel import syscalls

    done: list[MountStep] = []
    try:
        for step in plan.mounts:
            dest = _dest(step, target)
            if step.cwd:
                here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.chdir(step.cwd)
                    syscalls.mount(step.source, dest, step.fstype, step.flags, step.data)
                finally:
                    os.fchdir(here)
                    os.close(here)
            else:
                syscalls.mount(step.source, dest, step.fstype, step.flags, step.data)
            done.append(step)
    except BaseException:
        _unmount(done, target)
        raise


def unmount_rootfs(plan: RootfsPlan, target: str) -> None:
    """Undo :func:`mount_rootfs` in the same mount namespace (lazily, last mount first).

    Not needed when the namespace goes away (its mounts go with it); useful
    when a process keeps its namespace, as tests do.
    """
    _unmount(list(plan.mounts), target)


def _unmount(steps: list[MountStep], target: str) -> None:
    from pycontain.kernel import syscalls
    from pycontain.kernel.constants import MNT_DETACH

    for step in reversed(steps):
        try:
            syscalls.umount2(_dest(step, target), MNT_DETACH)
        except OSError:
            pass


def remove_dir(path: str, expected: Sequence[str] = ()) -> None:
    """Remove the directory ``path``, which holds (at most) ``expected``:
    relative names in removal order, directories with a trailing "/".

    The entries are removed by name, one syscall each, before the directory
    itself; anything else in it (ENOTEMPTY, a file where a directory was
    expected) falls back to ``shutil.rmtree``. On this host's ext4 that
    walk (open, fstat, scandir per directory) cost ~1 ms more per container.
    Missing entries and a missing ``path`` are fine.
    """
    try:
        for name in expected:
            try:
                if name.endswith("/"):
                    os.rmdir(os.path.join(path, name))
                else:
                    os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            shutil.rmtree(path)  # once more, to raise what stops it


# -- registration of prepared rootfs (so in-use layers are not pruned) ----------------------


def _registry(st: Store) -> str:
    return os.path.join(st.root, "containers")


def check_owner(owner: str) -> str:
    if not _OWNER.match(owner):
        raise InvalidArgument("bad container name for the storage registry", field="owner", value=owner,
                              hint="letters, digits, '_', '.', '-'; at most 128")
    return owner


def _own_rootfs_dir(st: Store) -> str:
    """Where containers prepare their writable layers in this store
    (``pycontain.Container`` does): registered by being there."""
    return str(rootfs_dir(st.root))


def register(st: Store, plan: RootfsPlan) -> None:
    """Record that ``plan``'s container uses the store's layers.

    A directory in the store's own ``rootfs/`` is registered by being
    there (its plan file says the rest); one elsewhere gets a symlink
    ``containers/<owner>`` to it. A symlink, not a small JSON file: one
    syscall, no temporary file and no data block to free again on ext4.
    """
    if os.path.dirname(os.path.abspath(plan.container_dir)) == _own_rootfs_dir(st):
        return
    st.ensure()
    path = os.path.join(_registry(st), plan.owner)
    target = os.path.relpath(plan.container_dir, _registry(st))
    try:
        os.symlink(target, path)
    except FileExistsError:  # left by an earlier container of the same owner key
        os.unlink(path)
        os.symlink(target, path)


def unregister(st: Store, owner: str) -> None:
    for name in (owner, owner + ".json"):  # (.json: the registration of older versions)
        try:
            os.unlink(os.path.join(_registry(st), name))
        except FileNotFoundError:
            pass


def _registered(st: Store) -> dict[str, dict[str, Any]]:
    """owner -> what its plan says (container_dir, image, layers, driver), for
    the prepared rootfs still present."""
    # (One read each: a plan being written is not prepared yet, and skipped.)
    out = {}
    own = _own_rootfs_dir(st)
    for name in list_dir(own):
        with contextlib.suppress(OSError, ValueError):
            d = read_json(Path(own, name, PLAN_FILE), attempts=1)
            if isinstance(d, dict):
                d["container_dir"] = os.path.join(own, name)
                out[str(d.get("owner") or name)] = d
    reg = _registry(st)
    for name in list_dir(reg):
        try:
            if name.endswith(".json"):
                d, owner = read_json(Path(reg, name), attempts=1), name[:-5]
            else:
                container_dir = os.path.normpath(os.path.join(reg, os.readlink(os.path.join(reg, name))))
                d, owner = read_json(Path(container_dir, PLAN_FILE), attempts=1), name
                d["container_dir"] = container_dir
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and os.path.exists(os.path.join(d.get("container_dir", "/nonexistent"), PLAN_FILE)):
            out[owner] = d
    return out


def containers_using(st: Store, image_digest: str) -> list[str]:
    return sorted(k for k, d in _registered(st).items() if d.get("image") == image_digest)


def layers_in_use(st: Store) -> set[str]:
    used: set[str] = set()
    for d in _registered(st).values():
        used.update(d.get("layers", []))
    return used


def prune_driver_caches(st: Store) -> None:
    """Drop per-driver caches built from layers that are gone (btrfs chain snapshots)."""
    if os.path.isdir(os.path.join(st.root, "btrfs")):
        from pycontain.backends.storage_btrfs import BtrfsDriver

        BtrfsDriver(st).prune_chains()


# -- choosing a driver -----------------------------------------------------------------------


#: (directory, its st_dev) -> probe result: every container start selects a
#: driver, and the answer changes only with the filesystem under the store.
_PROBED: dict[tuple[str, int], dict[str, str | None]] = {}


def probe_drivers(st: Store) -> dict[str, str | None]:
    """driver name -> None if usable here, else why not. Creates nothing (doctor() calls it)."""
    where = st.root
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)  # the filesystem the store will be created on
    try:
        key = (where, os.stat(where).st_dev)
    except OSError:
        key = (where, -1)
    if key[1] != -1 and key in _PROBED:
        return dict(_PROBED[key])
    out = _probe(st, where)
    if key[1] != -1:
        _PROBED[key] = dict(out)
    return out


def _probe(st: Store, where: str) -> dict[str, str | None]:
    fstype = kfs.fs_type(where)
    out: dict[str, str | None] = {}
    out["btrfs"] = None if fstype == "btrfs" and shutil.which("btrfs") else (
        f"the store {st.root} is on {fstype}, not btrfs" if fstype != "btrfs" else "btrfs-progs not installed")
    if "overlay" not in kfs.filesystems():
        out["overlay"] = "the kernel has no overlay filesystem (modprobe overlay)"
    elif fstype in ("overlay", "nfs", "fuse"):
        out["overlay"] = f"the store is on {fstype}, which overlayfs cannot use as upper layer"
    else:
        out["overlay"] = None
    out["copy"] = None
    return out


def driver_by_name(name: str, st: Store) -> StorageDriver:
    if name == "overlay":
        from pycontain.backends.storage_overlay import OverlayDriver

        return OverlayDriver(st)
    if name == "btrfs":
        from pycontain.backends.storage_btrfs import BtrfsDriver

        return BtrfsDriver(st)
    if name == "copy":
        from pycontain.backends.storage_copy import CopyDriver

        return CopyDriver(st)
    raise InvalidArgument("unknown storage driver", field="driver", value=name, hint="overlay, btrfs or copy")


def select_driver(st: Store, name: str | None = None) -> StorageDriver:
    """The driver ``name``, or the best one for this store. An explicit
    choice that cannot work here raises Unsupported (no silent fallback)."""
    name = name or os.environ.get("PYCONTAIN_STORAGE_DRIVER") or None
    probes = probe_drivers(st)
    if name is not None:
        if name not in probes:
            driver_by_name(name, st)  # raises the InvalidArgument
        why = probes[name]
        if why is not None:
            raise Unsupported(f"storage driver {name} cannot work here: {why}", op="select_driver",
                              field="driver", value=name, hint="choose another driver or move the store")
        return driver_by_name(name, st)
    for candidate in ("btrfs", "overlay", "copy"):
        if probes[candidate] is None:
            return driver_by_name(candidate, st)
    raise Unsupported("no storage driver works here", op="select_driver")  # pragma: no cover


def new_plan(driver: str, st: Store, layers: Sequence[LayerRecord], container_dir: str, image: str,
             owner: str, rootfs: str) -> RootfsPlan:
    owner = check_owner(owner or os.path.basename(os.path.abspath(container_dir)))
    return RootfsPlan(
        driver=driver,
        container_dir=os.path.abspath(container_dir),
        store=st.root,
        image=image,
        owner=owner,
        layers=[layer.diff_id for layer in layers],
        lowers=[layer.path for layer in reversed(layers)],
        rootfs=rootfs,
    )


def prepare_container_dir(container_dir: str) -> None:
    os.makedirs(container_dir, mode=0o700, exist_ok=True)
    if os.path.exists(os.path.join(container_dir, PLAN_FILE)):
        raise InvalidArgument("a rootfs is already prepared in this directory", field="container_dir",
                              value=container_dir, hint="cleanup() it first or use a new directory")
