"""The btrfs storage driver: subvolume snapshots, for stores on btrfs.

For each prefix of an image's layer list (its OCI ChainID) the driver keeps
a subvolume ``<store>/btrfs/<chain>`` holding the merged tree of those
layers: the chain of layers 1..n is a snapshot of the chain 1..n-1 with
layer n merged in (as the copy driver merges), so images that share lower
layers share their subvolumes and blocks. A container's rootfs is one more
snapshot, of its image's top chain: constant time whatever the image size.
The mount is a bind mount of that snapshot; ``diff``/``commit`` compare with
the chain's manifest (snapshots keep inode numbers and ctimes).

The container directory must be on the same btrfs filesystem as the store
(snapshots cannot cross filesystems). Subvolumes are made and removed with
``btrfs subvolume`` (btrfs-progs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import IO

from pycontain.backends import storage_copy as sc
from pycontain.backends import storage_driver as sd
from pycontain.backends.storage_store import LayerRecord, Store
from pycontain.errors import KernelError, Unsupported
from pycontain.kernel import fs as kfs
from pycontain.kernel.constants import MS_BIND


def _btrfs(*args: str) -> None:
    proc = subprocess.run(["btrfs", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"btrfs {' '.join(args[:2])} failed: {proc.stderr.strip()}", op="btrfs " + args[0],
                          path=args[-1])


def is_subvolume(path: str) -> bool:
    # A btrfs subvolume's root directory always has inode number 256.
    try:
        return os.lstat(path).st_ino == 256 and kfs.fs_type(path) == "btrfs"
    except OSError:
        return False


def delete_subvolume(path: str) -> None:
    if is_subvolume(path):
        _btrfs("subvolume", "delete", path)
    elif os.path.lexists(path):
        shutil.rmtree(path)


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainIDs: chain(1) = diff_id(1); chain(n) = sha256(chain(n-1) + ' ' + diff_id(n))."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


class BtrfsDriver:
    name = "btrfs"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.chains = os.path.join(store.root, "btrfs")

    def _chain_path(self, chain: str) -> str:
        return os.path.join(self.chains, chain.split(":", 1)[1])

    def _ensure_chain(self, layers: Sequence[LayerRecord]) -> str | None:
        os.makedirs(self.chains, mode=0o700, exist_ok=True)
        prev: str | None = None
        for layer, chain in zip(layers, chain_ids([x.diff_id for x in layers])):
            path = self._chain_path(chain)
            if not os.path.exists(path + ".json"):
                with self.store.lock():
                    if not os.path.exists(path + ".json"):
                        tmp = path + ".tmp"
                        delete_subvolume(tmp)
                        if prev is None:
                            _btrfs("subvolume", "create", tmp)
                        else:
                            _btrfs("subvolume", "snapshot", prev, tmp)
                        try:
                            sc.merge_layer(layer.path, tmp)
                            delete_subvolume(path)
                            os.rename(tmp, path)
                        except BaseException:
                            delete_subvolume(tmp)
                            raise
                        with open(path + ".layers", "w") as f:
                            json.dump([x.diff_id for x in layers[: layers.index(layer) + 1]], f)
                        sc.write_manifest(path + ".json", sc.snapshot(path))
            prev = path
        return prev

    def prepare(self, layers: Sequence[LayerRecord], container_dir: str, *, image: str = "",
                owner: str = "") -> sd.RootfsPlan:
        if any(layer.is_host for layer in layers):
            raise Unsupported("the btrfs driver cannot use the host as a layer", op="prepare", field="driver",
                              value=self.name, hint="use the overlay driver")
        sd.prepare_container_dir(container_dir)
        if kfs.fs_type(container_dir) != "btrfs":
            shutil.rmtree(container_dir, ignore_errors=True)
            raise Unsupported("the container directory must be on the store's btrfs filesystem", op="prepare",
                              path=container_dir)
        rootfs = os.path.join(container_dir, "rootfs")
        plan = sd.new_plan(self.name, self.store, layers, container_dir, image, owner, rootfs)
        try:
            top = self._ensure_chain(layers)
            if top is None:
                _btrfs("subvolume", "create", rootfs)
                sc.write_manifest(os.path.join(container_dir, sc.MANIFEST), {})
            else:
                _btrfs("subvolume", "snapshot", top, rootfs)
                shutil.copyfile(top + ".json", os.path.join(container_dir, sc.MANIFEST))
            plan.extra["chain"] = top
            plan.mounts = [sd.MountStep(rootfs, "", None, MS_BIND)]
            plan.save()
            sd.register(self.store, plan)
        except BaseException:
            delete_subvolume(rootfs)
            shutil.rmtree(container_dir, ignore_errors=True)
            raise
        return plan

    def diff(self, plan: sd.RootfsPlan) -> list[sd.Change]:
        return sc.manifest_changes(plan.rootfs, os.path.join(plan.container_dir, sc.MANIFEST))

    def commit(self, plan: sd.RootfsPlan, out: IO[bytes]) -> None:
        sc.commit_changes(plan.rootfs, self.diff(plan), out)

    def cleanup(self, plan: sd.RootfsPlan) -> None:
        sd.unregister(self.store, plan.owner)
        delete_subvolume(plan.rootfs)
        if os.path.isdir(plan.container_dir):
            shutil.rmtree(plan.container_dir)

    def prune_chains(self) -> list[str]:
        """Delete chain snapshots that use a layer no longer in the store; returns their paths."""
        removed: list[str] = []
        if not os.path.isdir(self.chains):
            return removed
        for name in sorted(os.listdir(self.chains)):
            if not name.endswith(".layers"):
                continue
            base = os.path.join(self.chains, name[: -len(".layers")])
            with open(os.path.join(self.chains, name)) as f:
                diff_ids = json.load(f)
            if all(self.store.has_layer(d) for d in diff_ids):
                continue
            with self.store.lock():
                delete_subvolume(base)
                for suffix in (".json", ".layers"):
                    if os.path.exists(base + suffix):
                        os.unlink(base + suffix)
            removed.append(base)
        return removed

    def remove_all_chains(self) -> None:
        """Delete every chain subvolume (they are a cache; rebuilt on demand)."""
        if not os.path.isdir(self.chains):
            return
        for name in os.listdir(self.chains):
            p = os.path.join(self.chains, name)
            if name.endswith((".json", ".layers")):
                os.unlink(p)
            else:
                delete_subvolume(p)
