"""cgroup v2 backend: one directory in the unified hierarchy.

A pycontain cgroup named ``job`` is ``/sys/fs/cgroup/pycontain/job``. The
controllers it needs are enabled in ``cgroup.subtree_control`` of the root
and of every ancestor (cgroup-v2.rst, "Enabling and Disabling"); no process
ever lives in those ancestors, which keeps the "no internal processes" rule.

Where v2 differs from v1 in the shared vocabulary
(pycontain.backends.cgroup_limits), the translation is commented here:
``cpu.max`` instead of cfs_quota_us/cfs_period_us, ``memory.swap.max`` is
swap alone, ``cgroup.freeze``/``cgroup.kill`` instead of the freezer
controller, and device access is a BPF program instead of devices lists.
net_cls and net_prio do not exist in v2.
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from typing import Any

from pycontain.backends.cgroup_limits import UNLIMITED, Limits
from pycontain.errors import AlreadyExists, PycontainError, Timeout, Unsupported
from pycontain.kernel import cgroupfs
from pycontain.kernel.cgroupfs import CgroupLayout
from pycontain.kernel.cgroupfs import parse_keyed as _keyed
from pycontain.kernel.cgroupfs import parse_value as _int
from pycontain.units import format_cpuset

#: Controllers enabled for pycontain's subtree when the host has them.
WANTED_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids", "hugetlb")

_NEEDS = {
    "memory": "memory",
    "memory_swap": "memory",
    "cpus": "cpu",
    "cpu_period_us": "cpu",
    "cpu_weight": "cpu",
    "cpuset": "cpuset",
    "cpuset_mems": "cpuset",
    "pids": "pids",
    "io_weight": "io",
    "io_max": "io",
    "hugetlb": "hugetlb",
}

_NAN = float("nan")


def _psi(raw: bytes | None, resource: str, out: dict[str, float]) -> None:
    # "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" (Documentation/accounting/psi.rst)
    if not raw:
        return
    for line in raw.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind = parts[0].decode()
        for item in parts[1:]:
            key, _, value = item.partition(b"=")
            if key == b"total":
                out[f"{resource}_pressure_{kind}_total_s"] = int(value) / 1e6
            else:
                out[f"{resource}_pressure_{kind}_{key.decode()}_pct"] = float(value)


class V2Group:
    """One pycontain cgroup on a cgroup v2 host."""

    version = "v2"

    def __init__(self, path: str, *, name: str = "", parent: str = "", mount: str = "/sys/fs/cgroup") -> None:
        self.path = path
        self.name = name
        self.parent = parent
        self.mount = mount
        self._device_prog: Any = None  # the attached BPF device program, if any
        self._stat_paths()

    # -- where things are -------------------------------------------------------------

    @classmethod
    def plan(cls, layout: CgroupLayout, parent: str, name: str, limits: Limits) -> V2Group:
        mount = layout.v2_mount or "/sys/fs/cgroup"
        available = set(layout.v2_controllers())
        for lim in limits.given():
            if lim in ("net_classid", "net_prio"):
                raise Unsupported(f"{lim}: net_cls and net_prio exist only in cgroup v1", field=lim,
                                  hint="on cgroup v2 classify traffic with a BPF program or by the cgroup path "
                                       "(e.g. nftables 'socket cgroupv2'); drop this limit")
            ctrl = _NEEDS.get(lim)
            if ctrl is not None and ctrl not in available:
                raise Unsupported(f"{lim}: the {ctrl} controller is not available on this host", field=lim,
                                  hint="run pycontain.doctor() to see which controllers are enabled")
        return cls(f"{mount}/{parent}/{name}", name=name, parent=parent, mount=mount)

    @classmethod
    def attach(cls, layout: CgroupLayout, parent: str, name: str) -> V2Group | None:
        mount = layout.v2_mount or "/sys/fs/cgroup"
        path = f"{mount}/{parent}/{name}"
        return cls(path, name=name, parent=parent, mount=mount) if os.path.isdir(path) else None

    @classmethod
    def of_process(cls, layout: CgroupLayout, memberships: list[Any]) -> V2Group:
        mount = layout.v2_mount or "/sys/fs/cgroup"
        rel = next((m.path for m in memberships if m.hierarchy_id == 0), "/")
        return cls(mount.rstrip("/") + (rel if rel != "/" else ""), mount=mount)

    def procs_files(self) -> list[str]:
        return [self.path + "/cgroup.procs"]

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    # -- lifecycle ----------------------------------------------------------------------

    def create(self, limits: Limits, layout: CgroupLayout) -> None:
        if os.path.isdir(self.path):
            raise AlreadyExists("a cgroup with this name exists", field="name", value=self.name,
                                path=self.path, hint="pick another name, or remove the old cgroup")
        if not cgroupfs.make_dir_in_parents(self.path, lambda _d: self._make_parents(layout)):
            raise AlreadyExists("a cgroup with this name exists", field="name", value=self.name,
                                path=self.path, hint="pick another name, or remove the old cgroup")
        try:
            self.apply(limits)
        except BaseException:
            self._detach_devices()
            try:
                cgroupfs.remove_dir(self.path)
            except PycontainError:
                pass
            raise

    def _make_parents(self, layout: CgroupLayout) -> None:
        available = layout.v2_controllers()
        wanted = [c for c in WANTED_CONTROLLERS if c in available]
        d = os.path.dirname(self.path)
        chain = []
        while d.rstrip("/") != self.mount.rstrip("/") and len(d) > len(self.mount):
            chain.append(d)
            d = os.path.dirname(d)
        ancestors = [self.mount, *reversed(chain)]
        for i, p in enumerate(ancestors):
            if i > 0:
                cgroupfs.make_dir(p)
            # A controller reaches a child only if every ancestor enables it
            # in cgroup.subtree_control (cgroup-v2.rst, "Top-down Constraint").
            enabled = cgroupfs.read(p + "/cgroup.subtree_control").split()
            for c in wanted:
                if c not in enabled:
                    cgroupfs.write(p + "/cgroup.subtree_control", "+" + c, field="controllers")

    def apply(self, limits: Limits) -> None:
        p = self.path
        for lim in limits.given():
            if lim in ("net_classid", "net_prio"):
                raise Unsupported(f"{lim}: net_cls and net_prio exist only in cgroup v1", field=lim)
            ctrl = _NEEDS.get(lim)
            if ctrl is not None and not os.path.exists(f"{p}/cgroup.controllers"):
                raise Unsupported(f"{lim}: cgroup is gone", field=lim)
        if limits.memory is not None:
            cgroupfs.write(p + "/memory.max", "max" if limits.memory == UNLIMITED else str(limits.memory),
                           field="memory")
        if limits.memory_swap is not None:
            # v2's memory.swap.max is swap alone; v1's memsw was memory+swap.
            if not os.path.exists(p + "/memory.swap.max"):
                raise Unsupported("memory_swap: this kernel does not account swap", field="memory_swap")
            cgroupfs.write(p + "/memory.swap.max",
                           "max" if limits.memory_swap == UNLIMITED else str(limits.memory_swap),
                           field="memory_swap")
        if limits.cpus is not None or limits.cpu_period_us is not None:
            # cpu.max is "$QUOTA $PERIOD" in one file (v1: cfs_quota_us + cfs_period_us).
            quota_s, _, period_s = cgroupfs.read(p + "/cpu.max").strip().partition(" ")
            period = limits.cpu_period_us or int(period_s)  # keep the cgroup's period unless given
            cpus = limits.cpus
            if cpus is None:
                cpus = UNLIMITED if quota_s == "max" else int(quota_s) / int(period_s)
            quota = "max" if cpus == UNLIMITED else str(max(1000, round(cpus * period)))
            cgroupfs.write(p + "/cpu.max", f"{quota} {period}", field="cpus")
        if limits.cpu_weight is not None:
            cgroupfs.write(p + "/cpu.weight", str(limits.cpu_weight), field="cpu_weight")
        if limits.cpuset is not None:
            cgroupfs.write(p + "/cpuset.cpus", format_cpuset(limits.cpuset), field="cpuset")
        if limits.cpuset_mems is not None:
            cgroupfs.write(p + "/cpuset.mems", format_cpuset(limits.cpuset_mems), field="cpuset_mems")
        if limits.pids is not None:
            cgroupfs.write(p + "/pids.max", "max" if limits.pids == UNLIMITED else str(limits.pids), field="pids")
        if limits.io_weight is not None:
            path = p + "/io.weight"
            if not os.path.exists(path):
                path = p + "/io.bfq.weight"
            if not os.path.exists(path):
                raise Unsupported("io_weight: no proportional I/O control on this host", field="io_weight",
                                  hint="it needs io.cost (CONFIG_BLK_CGROUP_IOCOST) or the BFQ scheduler")
            cgroupfs.write(path, f"default {limits.io_weight}" if path.endswith("/io.weight")
                           else str(min(1000, limits.io_weight)), field="io_weight")
        if limits.io_max is not None:
            for (major, minor), one in limits.io_max.items():
                keys = " ".join(f"{k}={'max' if v == UNLIMITED else v}" for k, v in one.items())
                cgroupfs.write(p + "/io.max", f"{major}:{minor} {keys}", field="io_max")
        if limits.hugetlb is not None:
            for size, limit in limits.hugetlb.items():
                path = f"{p}/hugetlb.{size}.max"
                if not os.path.exists(path):
                    raise Unsupported(f"hugetlb: no {size} huge pages on this host", field="hugetlb", value=size)
                cgroupfs.write(path, "max" if limit == UNLIMITED else str(limit), field="hugetlb")
        if limits.devices is not None:
            self._apply_devices(limits)

    def _apply_devices(self, limits: Limits) -> None:
        # v2 has no devices files: access is decided by a BPF program of type
        # BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup (cgroup-v2.rst,
        # "Device controller").
        try:
            bpf_devices = importlib.import_module("pycontain.kernel.bpf_devices")
        except ImportError:
            raise Unsupported("devices: the cgroup v2 device program is not available", field="devices") from None
        assert limits.devices is not None
        prog = bpf_devices.attach_device_policy(self.path, limits.devices.default_allow,
                                                [(r.kind, r.major, r.minor, r.access)
                                                 for r in limits.devices.exceptions])
        old = self._device_prog
        self._device_prog = prog
        if old is not None:
            old.detach()

    def _detach_devices(self) -> None:
        if self._device_prog is not None:
            try:
                self._device_prog.detach()
            except PycontainError:
                pass
            self._device_prog = None

    def add(self, pid: int) -> None:
        cgroupfs.write(self.path + "/cgroup.procs", str(pid), field="pid")

    def pids(self) -> list[int]:
        return cgroupfs.procs(self.path)

    def populated(self) -> bool:
        raw = cgroupfs.read_fast(self.path + "/cgroup.events")
        if raw is None:
            return False
        return _keyed(raw).get(b"populated", 0) == 1

    # -- freezer --------------------------------------------------------------------------

    def freeze(self, timeout: float = 5.0) -> None:
        # v2: cgroup.freeze, completion reported in cgroup.events "frozen"
        # (v1 used the freezer controller's freezer.state).
        cgroupfs.write(self.path + "/cgroup.freeze", "1")
        deadline = time.monotonic() + timeout
        while not self.frozen():
            if time.monotonic() > deadline:
                raise Timeout("the cgroup did not freeze in time", op="freeze", path=self.path)
            time.sleep(0.001)

    def thaw(self) -> None:
        cgroupfs.write(self.path + "/cgroup.freeze", "0")

    def frozen(self) -> bool:
        raw = cgroupfs.read_fast(self.path + "/cgroup.events")
        return raw is not None and _keyed(raw).get(b"frozen", 0) == 1

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL everything inside (cgroup.kill, Linux 5.14+) and wait until empty."""
        deadline = time.monotonic() + timeout
        if not self.populated():
            return
        if os.path.exists(self.path + "/cgroup.kill"):
            cgroupfs.write(self.path + "/cgroup.kill", "1")
        else:  # pragma: no cover - kernels before 5.14
            self.freeze()
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.thaw()
        while self.populated():
            if time.monotonic() > deadline:
                raise Timeout("processes survived SIGKILL", op="kill", path=self.path,
                              hint="a process in uninterruptible sleep (D state) cannot die until its I/O ends")
            time.sleep(0.002)

    def remove(self, timeout: float = 10.0, keep_parent: bool = False) -> None:
        if not os.path.isdir(self.path):
            self._detach_devices()
            return
        self.kill(timeout=timeout)  # cgroup.kill and "populated" cover the whole subtree
        cgroupfs.remove_tree(self.path, timeout=timeout)  # cgroups made inside ours go first
        if self.parent and self.name and not keep_parent:
            # Nested parents (pycontain/foo) go with their last cgroup;
            # the top one (pycontain) stays.
            cgroupfs.remove_empty_parents(self.path, keep=f"{self.mount.rstrip('/')}/{self.parent.split('/')[0]}")
        # rmdir released the kernel's reference to the program; close ours.
        self._detach_devices()

    # -- limits in force ---------------------------------------------------------------------

    def limits(self) -> dict[str, Any]:
        """The main limits as the kernel holds them, in the shared vocabulary (None = no limit)."""
        def text(name: str) -> str | None:
            raw = cgroupfs.read_fast(f"{self.path}/{name}")
            return raw.decode().strip() if raw is not None else None

        def num(name: str) -> int | None:
            t = text(name)
            return int(t) if t and t.isdigit() else None

        out: dict[str, Any] = {"memory": num("memory.max"), "memory_swap": num("memory.swap.max")}
        cpu_max = text("cpu.max")
        if cpu_max:
            quota, _, period = cpu_max.partition(" ")
            out["cpus"] = None if quota == "max" else int(quota) / int(period)
            out["cpu_period_us"] = int(period)
        out["cpu_weight"] = num("cpu.weight")
        out["cpuset"] = text("cpuset.cpus") or None
        out["cpuset_mems"] = text("cpuset.mems") or None
        out["pids"] = num("pids.max")
        return out

    # -- stats ------------------------------------------------------------------------------

    def _stat_paths(self) -> None:
        p = self.path
        self._paths = tuple(
            p + "/" + f
            for f in (
                "memory.current", "memory.peak", "memory.max", "memory.events", "cpu.stat", "cpu.max",
                "pids.current", "pids.max", "io.stat", "cpu.pressure", "memory.pressure", "io.pressure",
            )
        )

    def stats(self) -> dict[str, float]:
        r = cgroupfs.read_fast
        p = self._paths
        cur, peak, mx, events, cpu_stat, cpu_max = r(p[0]), r(p[1]), r(p[2]), r(p[3]), r(p[4]), r(p[5])
        pids_cur, pids_max, io = r(p[6]), r(p[7]), r(p[8])
        ev = _keyed(events)
        cs = _keyed(cpu_stat)
        limit = _NAN
        if cpu_max:
            q, _, per = cpu_max.partition(b" ")
            limit = float("inf") if q == b"max" else int(q) / int(per)
        read = write = 0
        if io:
            # "8:0 rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N"
            for line in io.splitlines():
                for item in line.split()[1:]:
                    if item.startswith(b"rbytes="):
                        read += int(item[7:])
                    elif item.startswith(b"wbytes="):
                        write += int(item[7:])
        out: dict[str, float] = {
            "mem_bytes": _int(cur),
            "mem_peak_bytes": _int(peak),
            "mem_limit_bytes": _int(mx),
            "oom_events": ev.get(b"oom", _NAN),
            "oom_kill_events": ev.get(b"oom_kill", _NAN),
            "mem_max_events": ev.get(b"max", _NAN),
            "cpu_s": cs.get(b"usage_usec", _NAN) / 1e6,
            "cpu_user_s": cs.get(b"user_usec", _NAN) / 1e6,
            "cpu_system_s": cs.get(b"system_usec", _NAN) / 1e6,
            "cpu_periods": cs.get(b"nr_periods", _NAN),
            "cpu_throttled_periods": cs.get(b"nr_throttled", _NAN),
            "cpu_throttled_s": cs.get(b"throttled_usec", _NAN) / 1e6,
            "cpu_limit_cpus": limit,
            "pids": _int(pids_cur),
            "pids_limit": _int(pids_max),
            "io_read_bytes": read if io is not None else _NAN,
            "io_write_bytes": write if io is not None else _NAN,
        }
        _psi(r(p[9]), "cpu", out)
        _psi(r(p[10]), "memory", out)
        _psi(r(p[11]), "io", out)
        return out
