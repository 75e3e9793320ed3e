"""cgroup v1 backend: one directory per controller hierarchy.

A pycontain cgroup named ``job`` is the directory ``<mount>/pycontain/job`` in
every v1 hierarchy the host mounts (cpu, cpuacct, cpuset, memory, devices,
freezer, blkio, pids), plus net_cls/net_prio when asked for (mounted by
pycontain if the kernel has them but nobody mounted them, and unmounted
again when the last pycontain cgroup using them is gone). On a hybrid host
(systemd's "unified" cgroup2 next to the v1 hierarchies) hugetlb lives on
the cgroup2 mount, so a hugetlb limit puts the processes there too.

Translations to the shared vocabulary (pycontain.backends.cgroup_limits)
are commented where the two versions differ.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from pycontain.backends.cgroup_limits import (
    UNLIMITED,
    Limits,
    bytes_or_inf,
    shares_to_weight,
    weight_to_shares,
)
from pycontain.errors import AlreadyExists, KernelError, PycontainError, Timeout, Unsupported
from pycontain.kernel import cgroupfs
from pycontain.kernel.cgroupfs import CGROUP_ROOT, CgroupLayout
from pycontain.kernel.cgroupfs import parse_keyed as _keyed
from pycontain.kernel.cgroupfs import parse_value as _int
from pycontain.units import format_cpuset

#: The v1 hierarchies every pycontain cgroup joins when the host mounts them.
BASE_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
#: Joined only when a limit needs them (and mounted on demand).
NET_CONTROLLERS = ("net_cls", "net_prio")

# Which controller each limit needs.
_NEEDS = {
    "memory": "memory",
    "memory_swap": "memory",
    "cpus": "cpu",
    "cpu_period_us": "cpu",
    "cpu_weight": "cpu",
    "cpuset": "cpuset",
    "cpuset_mems": "cpuset",
    "pids": "pids",
    "io_weight": "blkio",
    "io_max": "blkio",
    "devices": "devices",
    "net_classid": "net_cls",
    "net_prio": "net_prio",
}

# -- hierarchies pycontain mounted itself ---------------------------------------------
#
# The issue asks that pycontain unmount whatever it mounted. Mounts are
# host-wide, so the bookkeeping is per process: a reference count per mount
# point pycontain mounted, dropped when a cgroup using it is removed.
_mount_lock = threading.Lock()
_our_mounts: dict[str, list[Any]] = {}  # mount point -> [refcount, created_dir]


def _acquire_net_hierarchy(controller: str, layout: CgroupLayout) -> str:
    """The mount point of ``controller``'s v1 hierarchy, mounting it if nobody has."""
    with _mount_lock:
        mounted = layout.v1_mounts.get(controller)
        if mounted is None:
            # Another Cgroup of this process may have mounted it after `layout` was read.
            fresh = cgroupfs.layout()
            mounted = fresh.v1_mounts.get(controller)
        if mounted is not None:
            if mounted in _our_mounts:
                _our_mounts[mounted][0] += 1
            return mounted
        info = layout.kernel_controllers.get(controller)
        if info is None or not info.enabled:
            raise Unsupported(f"the kernel has no {controller} controller", field=controller,
                              hint="it needs CONFIG_CGROUP_NET_CLASSID / CONFIG_CGROUP_NET_PRIO")
        if layout.v2_mount == CGROUP_ROOT:
            raise Unsupported(f"{controller} exists only in cgroup v1", field=controller)
        target = f"{CGROUP_ROOT}/{controller}"
        created = cgroupfs.mount_v1_hierarchy(controller, target)
        _our_mounts[target] = [1, created]
        return target


def _release_net_hierarchy(mount_point: str, parent: str) -> None:
    """Drop one use of a hierarchy we mounted; unmount it when nothing uses it."""
    with _mount_lock:
        entry = _our_mounts.get(mount_point)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] > 0:
            return
        # Remove our (empty) parent cgroups, then unmount only if the hierarchy
        # holds no cgroup at all: another tool may have started using it.
        parts = parent.split("/")
        for i in range(len(parts), 0, -1):
            path = f"{mount_point}/{'/'.join(parts[:i])}"
            if cgroupfs.children(path):
                break
            try:
                cgroupfs.remove_dir(path)
            except KernelError:
                break
        if cgroupfs.children(mount_point):
            return
        del _our_mounts[mount_point]
        cgroupfs.unmount_hierarchy(mount_point, remove_dir_too=bool(entry[1]))


def our_mounts() -> list[str]:
    """Mount points this process mounted and still holds (for doctor and tests)."""
    with _mount_lock:
        return sorted(_our_mounts)


# -- parsing helpers for the stats files -----------------------------------------------------


class V1Group:
    """One pycontain cgroup on a v1 (or hybrid) host.

    ``dirs`` maps each controller to the cgroup's directory in that
    controller's hierarchy; co-mounted controllers share a directory.
    ``unified`` is the cgroup2 directory used for hugetlb on hybrid hosts.
    """

    version = "v1"

    def __init__(self, dirs: dict[str, str], *, unified: str | None = None, name: str = "",
                 parent: str = "", net_mounts: dict[str, str] | None = None) -> None:
        self.dirs = dict(dirs)
        self.unified = unified
        self.name = name
        self.parent = parent
        #: controller -> mount point, for net_cls/net_prio hierarchies in use
        self.net_mounts = dict(net_mounts or {})
        self._swap: int | None = None
        self._stat_paths()

    # -- where things are -------------------------------------------------------------

    @classmethod
    def plan(cls, layout: CgroupLayout, parent: str, name: str, limits: Limits) -> V1Group:
        """Where the cgroup will live; raises Unsupported if a limit needs a
        controller this host lacks. Touches nothing."""
        dirs = {c: f"{layout.v1_mounts[c]}/{parent}/{name}" for c in BASE_CONTROLLERS if c in layout.v1_mounts}
        unified = None
        for lim in limits.given():
            ctrl = _NEEDS.get(lim)
            if ctrl is None or ctrl in dirs:
                continue
            if ctrl in NET_CONTROLLERS:
                info = layout.kernel_controllers.get(ctrl)
                if ctrl in layout.v1_mounts or (info is not None and info.enabled):
                    continue  # mounted (or mountable) at create time
            raise Unsupported(f"{lim}: the {ctrl} controller is not available on this host", field=lim,
                              hint="run pycontain.doctor() to see which controllers are mounted")
        if limits.hugetlb is not None:
            if "hugetlb" in layout.v1_mounts:
                dirs["hugetlb"] = f"{layout.v1_mounts['hugetlb']}/{parent}/{name}"
            elif layout.v2_mount and "hugetlb" in layout.v2_controllers():
                # Hybrid host: hugetlb is only on systemd's cgroup2 mount.
                unified = f"{layout.v2_mount}/{parent}/{name}"
            else:
                raise Unsupported("hugetlb: the hugetlb controller is not available on this host",
                                  field="hugetlb", hint="the kernel needs CONFIG_CGROUP_HUGETLB")
        return cls(dirs, unified=unified, name=name, parent=parent)

    @classmethod
    def attach(cls, layout: CgroupLayout, parent: str, name: str) -> V1Group | None:
        """A view of an existing pycontain cgroup (for listings), or None."""
        dirs = {}
        for c, mount in layout.v1_mounts.items():
            if c.startswith("name="):
                continue
            d = f"{mount}/{parent}/{name}"
            if os.path.isdir(d):
                dirs[c] = d
        if not dirs:
            return None
        unified = None
        if layout.v2_mount and os.path.isdir(f"{layout.v2_mount}/{parent}/{name}"):
            unified = f"{layout.v2_mount}/{parent}/{name}"
        return cls(dirs, unified=unified, name=name, parent=parent)

    @classmethod
    def of_process(cls, layout: CgroupLayout, memberships: list[Any]) -> V1Group:
        """A view of the cgroups a process is in (from /proc/PID/cgroup)."""
        dirs = {}
        unified = None
        for m in memberships:
            if m.hierarchy_id == 0:
                if layout.v2_mount:
                    unified = layout.v2_mount.rstrip("/") + m.path
                continue
            for c in m.controllers:
                if c in layout.v1_mounts:
                    dirs[c] = layout.v1_mounts[c].rstrip("/") + (m.path if m.path != "/" else "")
        return cls(dirs, unified=unified)

    def _unique_dirs(self) -> list[str]:
        seen: list[str] = []
        for d in self.dirs.values():
            if d not in seen:
                seen.append(d)
        if self.unified and self.unified not in seen:
            seen.append(self.unified)
        return seen

    def procs_files(self) -> list[str]:
        """The cgroup.procs file of every hierarchy, for a child to write itself into."""
        return [d + "/cgroup.procs" for d in self._unique_dirs()]

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._unique_dirs())

    # -- lifecycle ----------------------------------------------------------------------

    def create(self, limits: Limits, layout: CgroupLayout) -> None:
        """mkdir in every hierarchy, then apply ``limits``. On failure nothing is left."""
        made: list[str] = []
        acquired: list[str] = []
        try:
            for ctrl in NET_CONTROLLERS:
                if _NEEDS_NET[ctrl](limits):
                    mount = _acquire_net_hierarchy(ctrl, layout)
                    acquired.append(mount)
                    self.net_mounts[ctrl] = mount
                    self.dirs[ctrl] = f"{mount}/{self.parent}/{self.name}"
            self._stat_paths()
            # mkdir says whether it exists (EEXIST); what was made before is removed below.
            for d in self._unique_dirs():
                if not cgroupfs.make_dir_in_parents(d, self._make_parents):
                    raise AlreadyExists("a cgroup with this name exists", field="name", value=self.name,
                                        path=d, hint="pick another name, or remove the old cgroup")
                made.append(d)
            cpuset_dir = self.dirs.get("cpuset")
            if cpuset_dir:
                # A v1 cpuset child starts with empty cpus/mems and refuses
                # tasks until both are set (cgroup-v1/cpusets.rst, 1.7).
                parent = os.path.dirname(cpuset_dir)
                if not cgroupfs.read(parent + "/cpuset.cpus").strip() or \
                        not cgroupfs.read(parent + "/cpuset.mems").strip():
                    self._make_parents(cpuset_dir)  # a parent someone left with empty cpus/mems
                if limits.cpuset is None:
                    cgroupfs.write(cpuset_dir + "/cpuset.cpus", cgroupfs.read(parent + "/cpuset.cpus").strip())
                if limits.cpuset_mems is None:
                    cgroupfs.write(cpuset_dir + "/cpuset.mems", cgroupfs.read(parent + "/cpuset.mems").strip())
            if self.unified:
                self._enable_unified_hugetlb()
            self.apply(limits)
        except BaseException:
            for d in reversed(made):
                try:
                    cgroupfs.remove_dir(d)
                except PycontainError:
                    pass
            for mount in acquired:
                try:
                    _release_net_hierarchy(mount, self.parent)
                except PycontainError:
                    pass
            self.net_mounts.clear()
            raise

    def _make_parents(self, d: str) -> None:
        """Create the parent chain (``pycontain``...) below the hierarchy root if missing."""
        parent = os.path.dirname(d)
        chain = []
        while not os.path.isdir(parent):
            chain.append(parent)
            parent = os.path.dirname(parent)
        for p in reversed(chain):
            cgroupfs.make_dir(p)
        # cpuset: a parent with empty cpus/mems cannot have populated children.
        if os.path.exists(os.path.dirname(d) + "/cpuset.cpus"):
            for p in [*reversed(chain), os.path.dirname(d)]:
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not cgroupfs.read(f"{p}/{f}").strip():
                        cgroupfs.write(f"{p}/{f}", cgroupfs.read(f"{os.path.dirname(p)}/{f}").strip())

    def _enable_unified_hugetlb(self) -> None:
        # On the hybrid host's cgroup2 mount, hugetlb must be enabled in the
        # subtree_control of every ancestor for the child to get its files.
        assert self.unified is not None
        d = os.path.dirname(self.unified)
        chain = []
        while True:
            chain.append(d)
            if os.path.ismount(d) or d == "/":
                break
            d = os.path.dirname(d)
        for p in reversed(chain):
            if "hugetlb" not in cgroupfs.read(p + "/cgroup.subtree_control").split():
                cgroupfs.write(p + "/cgroup.subtree_control", "+hugetlb")

    def apply(self, limits: Limits) -> None:
        """Write ``limits`` into the cgroup's files (a live update)."""
        d = self.dirs
        for lim in limits.given():
            ctrl = _NEEDS.get(lim)
            if ctrl is not None and ctrl not in d:
                raise Unsupported(f"{lim}: this cgroup is not in a {ctrl} hierarchy", field=lim,
                                  hint=f"give {lim} when creating the cgroup" if ctrl in NET_CONTROLLERS
                                  else f"the {ctrl} controller is not mounted on this host")
        if limits.memory is not None or limits.memory_swap is not None:
            self._apply_memory(limits)
        if limits.cpus is not None or limits.cpu_period_us is not None:
            cpu = d["cpu"]
            # A new cgroup starts with the kernel's 100 ms period; an update
            # of cpus alone keeps the period the cgroup has.
            period = limits.cpu_period_us or int(cgroupfs.read(cpu + "/cpu.cfs_period_us"))
            cpus = limits.cpus
            if cpus is None:
                quota_now = int(cgroupfs.read(cpu + "/cpu.cfs_quota_us"))
                old_period = int(cgroupfs.read(cpu + "/cpu.cfs_period_us"))
                cpus = UNLIMITED if quota_now < 0 else quota_now / old_period
            # v1 splits cgroup v2's cpu.max "QUOTA PERIOD" into two files
            # (cgroup-v2.rst "cpu.max"; sched-bwc.rst for v1). Lift the quota
            # first so a period change is never refused against an old quota.
            cgroupfs.write(cpu + "/cpu.cfs_quota_us", "-1", field="cpus")
            cgroupfs.write(cpu + "/cpu.cfs_period_us", str(period), field="cpu_period_us")
            if cpus != UNLIMITED:
                cgroupfs.write(cpu + "/cpu.cfs_quota_us", str(max(1000, round(cpus * period))), field="cpus")
        if limits.cpu_weight is not None:
            # v1 cpu.shares <-> v2 cpu.weight: runc's linear mapping (cgroup_limits).
            cgroupfs.write(d["cpu"] + "/cpu.shares", str(weight_to_shares(limits.cpu_weight)), field="cpu_weight")
        if limits.cpuset is not None:
            cgroupfs.write(d["cpuset"] + "/cpuset.cpus", format_cpuset(limits.cpuset), field="cpuset")
        if limits.cpuset_mems is not None:
            cgroupfs.write(d["cpuset"] + "/cpuset.mems", format_cpuset(limits.cpuset_mems), field="cpuset_mems")
        if limits.pids is not None:
            cgroupfs.write(d["pids"] + "/pids.max", "max" if limits.pids == UNLIMITED else str(limits.pids),
                           field="pids")
        if limits.io_weight is not None:
            self._apply_io_weight(limits.io_weight)
        if limits.io_max is not None:
            # v1 keeps one file per direction and kind; "MAJ:MIN 0" removes a
            # limit (cgroup-v1/blkio-controller.rst, "Throttling").
            files = {"rbps": "read_bps_device", "wbps": "write_bps_device",
                     "riops": "read_iops_device", "wiops": "write_iops_device"}
            for (major, minor), one in limits.io_max.items():
                for key, value in one.items():
                    cgroupfs.write(f"{d['blkio']}/blkio.throttle.{files[key]}",
                                   f"{major}:{minor} {0 if value == UNLIMITED else value}", field="io_max")
        if limits.devices is not None:
            dev = d["devices"]
            # v1 keeps a default behaviour and an exception list; writing "a"
            # sets the default and clears the list (cgroup-v1/devices.rst).
            if limits.devices.default_allow:
                cgroupfs.write(dev + "/devices.allow", "a", field="devices")
                for rule in limits.devices.exceptions:
                    cgroupfs.write(dev + "/devices.deny", rule.v1_text(), field="devices")
            else:
                cgroupfs.write(dev + "/devices.deny", "a", field="devices")
                for rule in limits.devices.exceptions:
                    cgroupfs.write(dev + "/devices.allow", rule.v1_text(), field="devices")
        if limits.net_classid is not None:
            cgroupfs.write(d["net_cls"] + "/net_cls.classid", str(limits.net_classid), field="net_classid")
        if limits.net_prio is not None:
            # ifpriomap takes names of the *initial* network namespace's
            # interfaces: net/core/netprio_cgroup.c looks them up in init_net.
            for ifname, prio in limits.net_prio.items():
                cgroupfs.write(d["net_prio"] + "/net_prio.ifpriomap", f"{ifname} {prio}", field="net_prio")
        if limits.hugetlb is not None:
            if "hugetlb" not in d and self.unified is None:
                raise Unsupported("hugetlb: this cgroup has no hugetlb controller", field="hugetlb",
                                  hint="give hugetlb when creating the cgroup")
            for size, limit in limits.hugetlb.items():
                if "hugetlb" in d:
                    path, text = f"{d['hugetlb']}/hugetlb.{size}.limit_in_bytes", str(limit)
                else:
                    assert self.unified is not None
                    path = f"{self.unified}/hugetlb.{size}.max"
                    text = "max" if limit == UNLIMITED else str(limit)
                if not os.path.exists(path):
                    raise Unsupported(f"hugetlb: no {size} huge pages on this host", field="hugetlb", value=size)
                cgroupfs.write(path, text, field="hugetlb")

    def _apply_memory(self, limits: Limits) -> None:
        mem_dir = self.dirs["memory"]
        memsw = mem_dir + "/memory.memsw.limit_in_bytes"
        has_memsw = os.path.exists(memsw)
        if limits.memory_swap is not None:
            if not has_memsw:
                raise Unsupported("memory_swap: this kernel does not account swap", field="memory_swap",
                                  hint="boot with swapaccount=1 (or use cgroup v2)")
            self._swap = limits.memory_swap
        memory = limits.memory
        if memory is None:
            raw = int(cgroupfs.read(mem_dir + "/memory.limit_in_bytes"))
            memory = UNLIMITED if raw >= 2**62 else raw
        # v1's memsw limit is memory + swap together, v2's memory.swap.max is
        # swap alone (cgroup-v2.rst "memory.swap.max" vs cgroup-v1/memory.rst
        # 2.4). memsw must never be below the memory limit, so lift it first.
        if has_memsw:
            cgroupfs.write(memsw, "-1", field="memory_swap")
        cgroupfs.write(mem_dir + "/memory.limit_in_bytes", str(memory), field="memory")
        if has_memsw and self._swap is not None and self._swap != UNLIMITED and memory != UNLIMITED:
            cgroupfs.write(memsw, str(memory + self._swap), field="memory_swap")

    def _apply_io_weight(self, weight: int) -> None:
        blkio = self.dirs["blkio"]
        # v1 has blkio.weight (CFQ, 10..1000, gone since 5.0) or, with BFQ,
        # blkio.bfq.weight (1..1000, default 100 like v2's io.weight).
        for fname in ("blkio.bfq.weight", "blkio.weight"):
            path = f"{blkio}/{fname}"
            if os.path.exists(path):
                lo = 10 if fname == "blkio.weight" else 1
                cgroupfs.write(path, str(min(1000, max(lo, weight))), field="io_weight")
                return
        raise Unsupported("io_weight: no proportional I/O weight on this host", field="io_weight",
                          value=weight, hint="it needs the BFQ I/O scheduler (blkio.bfq.weight)")

    def add(self, pid: int) -> None:
        """Move process ``pid`` into this cgroup in every hierarchy."""
        for f in self.procs_files():
            cgroupfs.write(f, str(pid), field="pid")

    def pids(self) -> list[int]:
        """Processes in the cgroup (the thread group ids of cgroup.procs)."""
        for c in ("freezer", "pids", "memory", "cpu"):
            if c in self.dirs:
                return cgroupfs.procs(self.dirs[c])
        dirs = self._unique_dirs()
        return cgroupfs.procs(dirs[0]) if dirs else []

    def _subtree_dirs(self) -> list[str]:
        out = []
        for d in self._unique_dirs():
            out.append(d)
            out.extend(cgroupfs.descendants(d))
        return out

    def all_pids(self) -> list[int]:
        """Processes in the cgroup and in cgroups below it, in every hierarchy."""
        found: set[int] = set()
        for d in self._subtree_dirs():
            found.update(cgroupfs.procs(d))
        return sorted(found)

    def populated(self) -> bool:
        return any(cgroupfs.procs(d) for d in self._subtree_dirs())

    # -- freezer --------------------------------------------------------------------------

    def _freezer(self) -> str:
        if "freezer" not in self.dirs:
            raise Unsupported("the freezer controller is not mounted on this host", field="freezer")
        return self.dirs["freezer"] + "/freezer.state"

    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every process; returns once the kernel says FROZEN."""
        path = self._freezer()
        cgroupfs.write(path, "FROZEN")
        deadline = time.monotonic() + timeout
        # FREEZING is transitional; the kernel retries while tasks are busy
        # (cgroup-v1/freezer-subsystem.rst). Rewriting FROZEN nudges it.
        while cgroupfs.read(path).strip() != "FROZEN":
            if time.monotonic() > deadline:
                raise Timeout("the cgroup did not freeze in time", op="freeze", path=path,
                              hint="a task may be stuck in an uninterruptible sleep (D state)")
            time.sleep(0.001)
            cgroupfs.write(path, "FROZEN")

    def thaw(self) -> None:
        cgroupfs.write(self._freezer(), "THAWED")

    def frozen(self) -> bool:
        if "freezer" not in self.dirs:
            return False
        raw = cgroupfs.read_fast(self.dirs["freezer"] + "/freezer.state")
        return raw is not None and raw.strip() in (b"FROZEN", b"FREEZING")

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL everything inside and wait until the cgroup is empty.

        v1 has no cgroup.kill (v2 does, since 5.14): freeze first so nothing
        can fork while we signal, SIGKILL each process, thaw so the signals
        are delivered (cgroup-v1/freezer-subsystem.rst uses the same recipe).
        """
        deadline = time.monotonic() + timeout
        can_freeze = "freezer" in self.dirs and os.path.isdir(self.dirs["freezer"])
        while True:
            # v1 cgroup.procs lists only the cgroup's own processes; cgroups a
            # workload made below ours are searched too (the freezer is
            # hierarchical, so freezing ours stops them all).
            pids = self.all_pids()
            if not pids:
                return
            if can_freeze:
                try:
                    self.freeze(timeout=max(0.1, deadline - time.monotonic()))
                except Timeout:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if can_freeze:
                self.thaw()
            wait_until = min(deadline, time.monotonic() + 1.0)
            while self.populated() and time.monotonic() < wait_until:
                time.sleep(0.002)
            if not self.populated():
                return
            if time.monotonic() > deadline:
                raise Timeout("processes survived SIGKILL", op="kill", path=self._unique_dirs()[0],
                              hint="a process in uninterruptible sleep (D state) cannot die until its I/O ends")

    def _remove_if_empty(self) -> bool:
        """rmdir every hierarchy's directory; False at the first one still in
        use (processes, or cgroups below it), leaving the rest to the full path.

        The common case (a container whose PID 1 has been reaped: its pid
        namespace took every other process with it) costs one rmdir per
        hierarchy instead of reading every cgroup.procs first.
        """
        for d in reversed(self._unique_dirs()):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    def remove(self, timeout: float = 10.0, keep_parent: bool = False) -> None:
        """Kill what is inside, rmdir in every hierarchy, unmount hierarchies we mounted."""
        if not self._remove_if_empty() and self.exists():
            self.kill(timeout=timeout)
            for d in reversed(self._unique_dirs()):
                if os.path.isdir(d):
                    cgroupfs.remove_tree(d, timeout=timeout)  # cgroups made inside ours go first
        if self.parent and self.name and not keep_parent:
            for d in reversed(self._unique_dirs()):
                # Nested parents (pycontain/foo) go with their last cgroup;
                # the top one (pycontain) stays.
                root = d[: -len(f"/{self.parent}/{self.name}")]
                cgroupfs.remove_empty_parents(d, keep=f"{root}/{self.parent.split('/')[0]}")
        for ctrl, mount in list(self.net_mounts.items()):
            del self.net_mounts[ctrl]
            _release_net_hierarchy(mount, self.parent)

    # -- limits in force ---------------------------------------------------------------------

    def limits(self) -> dict[str, Any]:
        """The main limits as the kernel holds them, in the shared vocabulary (None = no limit)."""
        def num(path: str) -> int | None:
            raw = cgroupfs.read_fast(path)
            try:
                return int(raw) if raw is not None else None
            except ValueError:
                return None

        d = self.dirs
        out: dict[str, Any] = {}
        if "memory" in d:
            mem = num(d["memory"] + "/memory.limit_in_bytes")
            memsw = num(d["memory"] + "/memory.memsw.limit_in_bytes")
            out["memory"] = None if mem is None or mem >= 2**62 else mem
            # v1 keeps memory+swap; the vocabulary's memory_swap is swap alone.
            out["memory_swap"] = None if memsw is None or memsw >= 2**62 or out["memory"] is None \
                else memsw - out["memory"]
        if "cpu" in d:
            quota = num(d["cpu"] + "/cpu.cfs_quota_us")
            period = num(d["cpu"] + "/cpu.cfs_period_us")
            out["cpus"] = None if quota is None or quota < 0 or not period else quota / period
            out["cpu_period_us"] = period
            shares = num(d["cpu"] + "/cpu.shares")
            out["cpu_weight"] = shares_to_weight(shares) if shares else None
        if "cpuset" in d:
            out["cpuset"] = (cgroupfs.read_fast(d["cpuset"] + "/cpuset.cpus") or b"").decode().strip() or None
            out["cpuset_mems"] = (cgroupfs.read_fast(d["cpuset"] + "/cpuset.mems") or b"").decode().strip() or None
        if "pids" in d:
            out["pids"] = num(d["pids"] + "/pids.max")
        if "net_cls" in d:
            out["net_classid"] = num(d["net_cls"] + "/net_cls.classid")
        return out

    # -- stats ------------------------------------------------------------------------------

    def _stat_paths(self) -> None:
        d = self.dirs
        mem = d.get("memory", "/nonexistent")
        cpu = d.get("cpu", "/nonexistent")
        acct = d.get("cpuacct", "/nonexistent")
        pids = d.get("pids", "/nonexistent")
        blkio = d.get("blkio", "/nonexistent")
        self._paths = (
            mem + "/memory.usage_in_bytes",
            mem + "/memory.max_usage_in_bytes",
            mem + "/memory.limit_in_bytes",
            mem + "/memory.oom_control",
            mem + "/memory.failcnt",
            acct + "/cpuacct.usage",
            acct + "/cpuacct.stat",
            cpu + "/cpu.stat",
            cpu + "/cpu.cfs_quota_us",
            cpu + "/cpu.cfs_period_us",
            pids + "/pids.current",
            pids + "/pids.max",
            blkio + "/blkio.throttle.io_service_bytes_recursive",
        )

    def stats(self) -> dict[str, float]:
        """Usage counters from the cgroup's own files, keys carry units.

        Missing files (a controller not mounted, the root cgroup) give NaN.
        """
        r = cgroupfs.read_fast
        p = self._paths
        usage, peak, limit, oomc, failcnt = r(p[0]), r(p[1]), r(p[2]), r(p[3]), r(p[4])
        acct_usage, acct_stat, cpu_stat, quota, period = r(p[5]), r(p[6]), r(p[7]), r(p[8]), r(p[9])
        pids_cur, pids_max, io = r(p[10]), r(p[11]), r(p[12])
        oom = _keyed(oomc)
        cs = _keyed(cpu_stat)
        st = _keyed(acct_stat)
        # cpuacct.stat counts USER_HZ ticks (100 per second on Linux; the
        # kernel converts to clock_t for this file, cgroup-v1/cpuacct.rst).
        tick = 100.0
        q = _int(quota)
        per = _int(period)
        read = write = 0
        if io:
            for line in io.splitlines():
                parts = line.split()
                if len(parts) == 3:
                    if parts[1] == b"Read":
                        read += int(parts[2])
                    elif parts[1] == b"Write":
                        write += int(parts[2])
        oom_kill = oom.get(b"oom_kill", float("nan"))
        return {
            "mem_bytes": _int(usage),
            "mem_peak_bytes": _int(peak),
            "mem_limit_bytes": bytes_or_inf(int(limit)) if limit else float("nan"),
            # v1 has no count of OOM situations, only of kills (oom_control)
            # and of hits of the limit (failcnt; v2's memory.events "max").
            "oom_events": max(oom_kill, oom.get(b"under_oom", 0)) if oom else float("nan"),
            "oom_kill_events": oom_kill,
            "mem_max_events": _int(failcnt),
            "cpu_s": _int(acct_usage) / 1e9,
            "cpu_user_s": st.get(b"user", float("nan")) / tick,
            "cpu_system_s": st.get(b"system", float("nan")) / tick,
            "cpu_periods": cs.get(b"nr_periods", float("nan")),
            "cpu_throttled_periods": cs.get(b"nr_throttled", float("nan")),
            "cpu_throttled_s": cs.get(b"throttled_time", float("nan")) / 1e9,
            "cpu_limit_cpus": (float("inf") if q < 0 else q / per) if q == q and per == per else float("nan"),
            "pids": _int(pids_cur),
            "pids_limit": _int(pids_max),
            "io_read_bytes": read if io is not None else float("nan"),
            "io_write_bytes": write if io is not None else float("nan"),
        }


def _needs_net_cls(limits: Limits) -> bool:
    return limits.net_classid is not None


def _needs_net_prio(limits: Limits) -> bool:
    return limits.net_prio is not None


_NEEDS_NET = {"net_cls": _needs_net_cls, "net_prio": _needs_net_prio}
