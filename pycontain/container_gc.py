"""Garbage collection: what containers of dead creators left behind.

A container dies with the process that made it (unless detached), but a
creator killed half-way through :meth:`~pycontain.Container.start` (SIGKILL,
OOM, a power cut of the notebook kernel) leaves its pieces: the state
directory, the cgroup, the prepared writable layer, the network namespace
file (a bind mount) and with it the veth pair. :func:`collect` finds and
removes them; :meth:`Container.start` calls it first, and ``pycontain gc``
(alias ``pycontain container prune``) runs it by hand.

What is garbage, and why it is safe to remove
---------------------------------------------

Every piece is named by the container's *key*,
``<name>-<id8>.<creator pid>`` (``.d`` for a detached container), so a piece
can be judged even when its state directory is gone or belongs to another
state directory (the cgroup tree is shared by every pycontain user of the
host):

* a state directory (ours) is garbage when the container is not detached and
  its creator is gone, or it is detached but was never started and its
  creator is gone;
* a cgroup below ``pycontain/containers``, a writable layer below the store's
  ``rootfs/`` is garbage when its state (ours) is garbage, or when no state
  of ours names it and its key's creator is gone (never for detached keys we
  don't know: they belong to another state directory);
* a network namespace file of ours is garbage when no live state of ours
  has that container name; a mount namespace file holding a size-limited
  writable layer (``storage/<key>``) goes with its key.

A creator pid that was reused by another process only makes the piece look
alive: pid reuse delays collection, it never removes live things.
Removing a cgroup kills what is still inside it (PID 1 of an orphan whose
parent-death signal was lost).

Cost: with nothing to collect, a few directory listings and ``kill(pid, 0)``
calls: well under a millisecond (measured in tests/integration/test_faults.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycontain.errors import PycontainError
from pycontain.statedir import containers_dir, list_dir, read_json, rootfs_dir, state_dir

#: Parent of every container cgroup, below each hierarchy root. Kept apart
#: from ``pycontain/`` itself so collection never touches cgroups users made
#: with :class:`pycontain.Cgroup`.
CGROUP_PARENT = "pycontain/containers"

#: A state directory without a readable state.json older than this is a
#: creator that died between mkdir and the first write.
_STALE_EMPTY_S = 60.0


@dataclass
class GcReport:
    """What :func:`collect` removed (or, with ``dry_run``, would remove)."""

    containers: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    rootfs: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.containers or self.cgroups or self.rootfs or self.netns)

    def as_dict(self) -> dict[str, list[str]]:
        return {"containers": self.containers, "cgroups": self.cgroups, "rootfs": self.rootfs,
                "netns": self.netns, "errors": self.errors}


def container_key(name: str, cid: str, creator_pid: int, detach: bool) -> str:
    """The name of a container's cgroup and writable layer: ``<name>-<id8>.<pid|d>``."""
    return f"{name}-{cid[:8]}.{'d' if detach else creator_pid}"


def parse_key(key: str) -> tuple[str, str, int | None] | None:
    """``(name, id8, creator pid or None for detached)``, or None if ``key`` is no container key."""
    stem, dot, owner = key.rpartition(".")
    name, dash, cid = stem.rpartition("-")
    if not dot or not dash or not name or len(cid) != 8:
        return None
    if owner == "d":
        return name, cid, None
    if not owner.isdigit():
        return None
    return name, cid, int(owner)


def alive(pid: Any) -> bool:
    """Whether process ``pid`` (a creator, a PID 1) still runs: a zombie does
    not, e.g. a PID 1 killed by SIGKILL that its creator has not reaped yet."""
    from pycontain.kernel.proc import process_alive

    return process_alive(pid)


def _netns_dir() -> str:
    return os.path.join(state_dir(), "networks", "netns")


def _storage_ns_dir() -> str:
    # mount namespaces holding size-limited writable layers (Container(storage_size=))
    return os.path.join(state_dir(), "storage")


def _is_garbage_state(st: dict[str, Any]) -> bool:
    if alive(st.get("creator_pid")):
        return False
    if not st.get("detach"):
        return True
    # Detached: kept after exit (like ``docker ps -a``), unless never started.
    return not st.get("pid")


def _read_states() -> dict[str, tuple[dict[str, Any] | None, bool]]:
    """name -> (state or None if unreadable, garbage?)."""
    out: dict[str, tuple[dict[str, Any] | None, bool]] = {}
    root = str(containers_dir())
    now = time.time()
    for name in list_dir(root):
        path = os.path.join(root, name)
        try:
            # One read: a state being written is young, and skipped below.
            st = dict(read_json(Path(path) / "state.json", attempts=1))
        except (OSError, ValueError):
            try:
                old = now - os.stat(path).st_mtime > _STALE_EMPTY_S
            except OSError:
                continue
            out[name] = (None, old)
            continue
        out[name] = (st, _is_garbage_state(st))
    return out


def _key_is_garbage(key: str, states: dict[str, tuple[dict[str, Any] | None, bool]]) -> bool:
    parsed = parse_key(key)
    if parsed is None:
        return False
    name, cid, creator = parsed
    known = states.get(name)
    if known is not None and known[0] is not None and str(known[0].get("id", "")).startswith(cid):
        return known[1]
    # Not (or no longer) one of our states: judge by the creator in the key.
    return creator is not None and not alive(creator)


_LAYOUT: list[Any] = []


def _cgroup_roots() -> list[str]:
    """``<hierarchy>/pycontain/containers`` for every hierarchy (probed once per process)."""
    if not _LAYOUT:
        from pycontain.kernel import cgroupfs

        try:
            _LAYOUT.append(cgroupfs.layout())
        except (PycontainError, OSError):
            return []
    layout = _LAYOUT[0]
    mounts = [m for c, m in sorted(layout.v1_mounts.items()) if not c.startswith("name=")]
    if layout.v2_mount:
        mounts.append(layout.v2_mount)
    return [f"{m}/{CGROUP_PARENT}" for m in dict.fromkeys(mounts)]


def prune_standing_parent() -> None:
    """Remove the containers' standing cgroup parent (``pycontain/containers``)
    in every hierarchy where it is empty. Containers keep it while a process
    runs them (making and pruning it with each container cost a mkdir and
    an rmdir per hierarchy); the process removes it as it exits, so nothing
    of pycontain's is left below ``pycontain/`` once no container runs.
    Where another process's container still lives, rmdir says EBUSY: it stays."""
    for root in _cgroup_roots():
        with contextlib.suppress(OSError):
            os.rmdir(root)


def after_creator_died() -> None:
    """What a zygote runs once its creator died without closing it: collect
    what the creator's containers left, then prune the standing parent."""
    collect()
    prune_standing_parent()


def _cgroup_names() -> set[str]:
    from pycontain.kernel import cgroupfs

    names: set[str] = set()
    for root in _cgroup_roots():
        with contextlib.suppress(PycontainError, OSError):
            names.update(cgroupfs.children(root))
    return names


def _remove_cgroup(name: str) -> None:
    from pycontain.cgroup import Cgroup

    try:
        cg = Cgroup.open(name, parent=CGROUP_PARENT)
    except LookupError:
        return
    cg.remove()


def _remove_rootfs(path: str) -> None:
    from pycontain.backends import storage_driver, storage_store

    try:
        plan = storage_driver.load_plan(path)
    except (PycontainError, OSError, ValueError, TypeError):
        plan = None
    if plan is not None:
        st = storage_store.Store(plan.store)
        with contextlib.suppress(PycontainError, OSError):
            storage_driver.driver_by_name(plan.driver, st).cleanup(plan)
        with contextlib.suppress(PycontainError, OSError):
            storage_driver.unregister(st, plan.owner)
    shutil.rmtree(path, ignore_errors=True)


def _prune_networks(released: set[str]) -> None:
    """Detach the endpoints whose network namespace files were ``released``
    (their veth would go only when the kernel gets round to freeing the
    namespace), then forget endpoints whose veth is gone (network.py's own
    bookkeeping)."""
    from pycontain import network

    if not list_dir(network._state_dir()):
        return
    for rec in network._load_all():
        for endpoint, info in list(rec.get("endpoints", {}).items()):
            if info.get("netns") in released:
                with contextlib.suppress(PycontainError, OSError):
                    network.Network.get(rec["name"]).detach(endpoint)
    with network._locked():
        for rec in network._load_all():
            if network._prune(rec):
                network._save(rec)


def collect(*, dry_run: bool = False) -> GcReport:
    """Remove what containers of dead creators left behind; return what went.

    Looks at this user's state directory and store, and at the cgroups below
    ``pycontain/containers`` (see the module docs for the rules). With
    ``dry_run=True`` nothing is removed. Errors on single pieces are
    collected in ``report.errors``, never raised: collection is best effort
    and must not stop a container from starting.

    Example::

        from pycontain.container_gc import collect
        print(collect().as_dict())
    """
    report = GcReport()
    states = _read_states()

    def attempt(kind: str, what: str, fn: Any, *args: Any) -> None:
        getattr(report, kind).append(what)
        if dry_run:
            return
        try:
            fn(*args)
        except (PycontainError, OSError) as e:
            report.errors.append(f"{kind} {what}: {e}")

    # 1. cgroups first: removing one kills what is left inside (an orphaned
    # PID 1 still holds its network namespace and its mounts).
    for key in sorted(_cgroup_names()):
        if _key_is_garbage(key, states):
            attempt("cgroups", key, _remove_cgroup, key)
    # 2. network namespace files (bind mounts in this mount namespace).
    netns_dir = _netns_dir()
    released: set[str] = set()
    for entry in sorted(list_dir(netns_dir)):
        owner = entry.rpartition("-")[0]
        known = states.get(owner)
        if known is None or known[1]:
            from pycontain.kernel import nsfs

            attempt("netns", entry, nsfs.unbind_namespace, os.path.join(netns_dir, entry))
            released.add(os.path.join(netns_dir, entry))
    # 3. mount namespaces of size-limited writable layers (named by key).
    storage_ns = _storage_ns_dir()
    for key in sorted(list_dir(storage_ns)):
        if _key_is_garbage(key, states):
            from pycontain.kernel import nsfs

            attempt("rootfs", f"{key} (size-limited)", nsfs.unbind_namespace, os.path.join(storage_ns, key))
    # 4. writable layers of this store.
    layers = str(rootfs_dir())
    for key in sorted(list_dir(layers)):
        if _key_is_garbage(key, states):
            attempt("rootfs", key, _remove_rootfs, os.path.join(layers, key))
    # 5. the state directories themselves.
    for name, (_st, garbage) in sorted(states.items()):
        if garbage:
            attempt("containers", name, shutil.rmtree, os.path.join(str(containers_dir()), name))
    if released and not dry_run:
        try:
            _prune_networks(released)
        except (PycontainError, OSError) as e:
            report.errors.append(f"networks: {e}")
    return report
