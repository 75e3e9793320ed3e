"""What this host can isolate, and why not where it can't.

:func:`doctor` gathers facts (privileges, user-namespace sysctls, a real
``unshare`` of every namespace kind and a real overlay mount, done in one
short-lived child process; the cgroup layout and each controller; btrfs,
seccomp, pyroute2) and turns them into a :class:`Report`: one row per item
with a status, a detail that says what was found, and a hint that says what
to do where something is missing.

The two steps are separate on purpose: :meth:`HostFacts.gather` reads the
host, :func:`assess` is pure, so every judgement is unit-tested on recorded
facts (a Binder pod, a non-root user, a v2 host) without needing that host.

Example::

    >>> import pycontain
    >>> report = pycontain.doctor()
    >>> print(report)                      # an aligned text table
    >>> report.ok("overlayfs")             # True where overlay mounts work
    >>> report.frame                       # the same as a pandas DataFrame
    >>> pycontain.cgroup_version()         # "v1", "v2" or "hybrid"
"""

from __future__ import annotations

import html
import importlib.util
import os
import shutil
import sys
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pycontain.errors import NotFound, Unsupported
from pycontain.kernel import cgroupfs, probe, proc
from pycontain.kernel.constants import CAP_NUMBERS, NAMESPACE_KINDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "doctor",
    "cgroup_version",
    "Report",
    "Check",
    "ControllerInfo",
    "HostFacts",
    "assess",
    "STATUSES",
]

#: Every status a check can have, best first. "unknown": the probe itself
#: could not run (no interpreter to start, timeout), so nothing is claimed.
STATUSES = ("ok", "limited", "missing", "unknown")

#: Controllers pycontain drives (DESIGN.md §1), in the order the report shows them.
#: On a v2 host "blkio" is called "io".
CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "freezer", "devices",
               "net_cls", "net_prio", "hugetlb")

# Kernel config options behind each namespace kind (namespaces(7)).
_NS_CONFIG = {
    "mnt": "(always built in)",
    "uts": "CONFIG_UTS_NS",
    "ipc": "CONFIG_IPC_NS",
    "pid": "CONFIG_PID_NS",
    "net": "CONFIG_NET_NS",
    "user": "CONFIG_USER_NS",
    "cgroup": "CONFIG_CGROUPS (Linux 4.6+)",
    "time": "CONFIG_TIME_NS (Linux 5.6+)",
}

_NS_WHAT = {
    "mnt": "own mount table (rootfs, /proc, /dev)",
    "uts": "own hostname",
    "ipc": "own System V IPC and POSIX queues",
    "pid": "own process tree, PID 1 inside",
    "net": "own network stack",
    "user": "own uid/gid mapping",
    "cgroup": "own view of /proc/self/cgroup",
    "time": "own monotonic and boot clocks",
}

_CAP_SYS_ADMIN = 1 << CAP_NUMBERS["CAP_SYS_ADMIN"]


# -- facts ----------------------------------------------------------------------


@dataclass
class HostFacts:
    """Raw facts about the host, as read; :func:`assess` judges them.

    Every field is plain data, so facts can be recorded on one machine
    (``asdict``) and judged in a test on another.
    """

    euid: int
    kernel: str
    cap_eff: int | None = None
    seccomp_mode: int | None = None  # 0 none, 1 strict, 2 filter (proc(5))
    seccomp_filters: int | None = None
    no_new_privs: bool | None = None
    userns_sysctls: dict[str, int | None] = field(default_factory=dict)
    filesystems: frozenset[str] = frozenset()
    btrfs_module: bool = False
    mkfs_btrfs: str | None = None
    seccomp_kernel: bool = False
    seccomp_actions: tuple[str, ...] = ()
    libseccomp: str | None = None
    pyseccomp: bool = False
    pyroute2: str | None = None  # version, "" if present without metadata, None if absent
    cgroup_mode: str = "none"
    v1_mounts: dict[str, str] = field(default_factory=dict)
    v2_mount: str | None = None
    v2_controllers: tuple[str, ...] = ()
    #: name -> (hierarchy id, enabled) from /proc/cgroups
    kernel_controllers: dict[str, tuple[int, bool]] = field(default_factory=dict)
    #: cgroup directory -> whether the caller may create cgroups in it
    cgroup_writable: dict[str, bool] = field(default_factory=dict)
    #: results of the probe child (see pycontain.kernel.probe), or {"error": ...}
    probe: dict[str, Any] = field(default_factory=dict)
    #: the image store: root, exists, fstype, drivers (name -> None or why not), or error
    store: dict[str, Any] = field(default_factory=dict)
    #: PYCONTAIN_STORAGE_DRIVER, the user's explicit driver choice, if any
    storage_driver: str | None = None

    @classmethod
    def gather(cls, *, run_probe: bool = True, timeout: float = 5.0) -> HostFacts:
        """Read this host's facts. Never raises for a missing feature.

        ``run_probe=False`` skips the probe child (namespace and overlay rows
        then say "unknown"); ``timeout`` (seconds) bounds the probe child.
        """
        # Start the child first: its ~0.1-0.2 s overlap the reads below.
        child = probe.ProbeChild.start() if run_probe else None
        facts = cls(euid=os.geteuid(), kernel=os.uname().release)
        try:
            status = proc.status()
        except OSError:
            status = {}
        facts.cap_eff = _int(status.get("CapEff"), 16)
        facts.seccomp_mode = _int(status.get("Seccomp"))
        facts.seccomp_filters = _int(status.get("Seccomp_filters"))
        nnp = _int(status.get("NoNewPrivs"))
        facts.no_new_privs = None if nnp is None else bool(nnp)
        facts.userns_sysctls = probe.userns_sysctls()
        facts.filesystems = probe.filesystems()
        facts.btrfs_module = "btrfs" in facts.filesystems or probe.module_available("btrfs")
        facts.mkfs_btrfs = shutil.which("mkfs.btrfs") or _which_sbin("mkfs.btrfs")
        facts.seccomp_kernel = probe.seccomp_kernel_support()
        facts.seccomp_actions = probe.seccomp_actions()
        facts.libseccomp = probe.find_libseccomp()
        facts.pyseccomp = _has_module("pyseccomp")
        facts.pyroute2 = _module_version("pyroute2")
        try:
            layout = cgroupfs.layout()
        except OSError:
            layout = cgroupfs.CgroupLayout("none")
        facts.cgroup_mode = layout.mode
        facts.v1_mounts = dict(layout.v1_mounts)
        facts.v2_mount = layout.v2_mount
        facts.v2_controllers = tuple(layout.v2_controllers())
        facts.kernel_controllers = {
            name: (c.hierarchy, c.enabled) for name, c in layout.kernel_controllers.items()
        }
        for path in {*facts.v1_mounts.values(), *([layout.v2_mount] if layout.v2_mount else [])}:
            facts.cgroup_writable[path] = probe.cgroup_parent_writable(path)
        facts.store = _store_facts()
        facts.storage_driver = os.environ.get("PYCONTAIN_STORAGE_DRIVER") or None
        if child is not None:
            facts.probe = child.result(timeout=timeout)
        else:
            facts.probe = {"error": "skipped (doctor(probe=False))"}
        return facts

    def to_dict(self) -> dict[str, Any]:
        """The facts as JSON-ready data."""
        out = asdict(self)
        out["filesystems"] = sorted(self.filesystems)
        out["seccomp_actions"] = list(self.seccomp_actions)
        out["v2_controllers"] = list(self.v2_controllers)
        out["kernel_controllers"] = {k: list(v) for k, v in self.kernel_controllers.items()}
        return out


def _store_facts() -> dict[str, Any]:
    """Where the image store is, its filesystem, and each storage driver's probe.

    The drivers are probed (storage_driver.probe_drivers, the same probe that
    picks the driver) only when the store exists, so doctor never creates a
    store (the probe may add missing subdirectories to an existing one).
    """
    try:
        from pycontain.backends import storage_driver, storage_store
        from pycontain.kernel import fs as kfs

        root = storage_store.default_root()
        existing = root
        while not os.path.exists(existing) and existing != os.path.dirname(existing):
            existing = os.path.dirname(existing)
        out: dict[str, Any] = {"root": root, "exists": os.path.isdir(root), "fstype": kfs.fs_type(existing)}
        if out["exists"]:
            out["drivers"] = storage_driver.probe_drivers(storage_store.Store(root))
        return out
    except Exception as e:  # doctor reports, never raises
        return {"error": f"{type(e).__name__}: {e}"}


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text.split()[0], base)
    except (ValueError, IndexError):
        return None


def _which_sbin(name: str) -> str | None:
    # Non-root users often lack /sbin in PATH, yet may run mkfs.btrfs via sudo.
    return shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def _has_module(name: str) -> bool:
    # find_spec locates a top-level module without importing it.
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _module_version(name: str) -> str | None:
    """The installed version of top-level package ``name``; "" if unknown, None if absent.

    Read from the ``<name>-<version>.dist-info`` directory beside the package
    rather than importlib.metadata, which scans every distribution on
    sys.path and would cost doctor tens of milliseconds.
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    where = list(spec.submodule_search_locations or []) or [spec.origin or ""]
    site_dir = os.path.dirname(where[0])
    prefix = name.replace("-", "_") + "-"
    try:
        entries = os.listdir(site_dir)
    except OSError:
        return ""
    for entry in entries:
        for suffix in (".dist-info", ".egg-info"):
            if entry.startswith(prefix) and entry.endswith(suffix):
                return entry[len(prefix) : -len(suffix)]
    return ""


# -- the report ---------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One row of the report.

    ``status`` is one of :data:`STATUSES`; ``detail`` says what was found,
    ``hint`` what to do (empty when nothing needs doing).
    """

    area: str
    item: str
    status: str
    detail: str
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ControllerInfo:
    """Where one cgroup controller stands on this host.

    ``in_kernel``: listed and enabled in /proc/cgroups (or on the v2 root);
    ``mounted_at``: its v1 hierarchy, if mounted; ``on_v2``: listed in the
    cgroup2 mount's cgroup.controllers; ``usable``: pycontain can set limits
    with it here, as this user, without mounting anything.
    """

    name: str
    in_kernel: bool
    hierarchy: int | None
    mounted_at: str | None
    on_v2: bool
    usable: bool


class Report:
    """What this host can do: rows of :class:`Check`, plus per-controller facts.

    Read it as text (``print(report)``), as a DataFrame (``report.frame``),
    as HTML in a notebook, or as data (``report.to_dict()``). Look up one item
    with ``report.ok("overlayfs")`` or ``report["memory"]``.
    """

    def __init__(self, checks: list[Check], controllers: dict[str, ControllerInfo],
                 facts: HostFacts) -> None:
        self.checks: tuple[Check, ...] = tuple(checks)
        self.controllers: dict[str, ControllerInfo] = dict(controllers)
        self.facts = facts
        self.cgroup_mode: str = facts.cgroup_mode
        self._frame: pd.DataFrame | None = None

    # lookup
    def check(self, item: str, area: str | None = None) -> Check:
        """The row for ``item`` (e.g. ``"pid"``, ``"memory"``, ``"overlayfs"``).

        Raises :class:`~pycontain.errors.NotFound` for an unknown item.
        """
        for c in self.checks:
            if c.item == item and (area is None or c.area == area):
                return c
        raise NotFound("no such item in the doctor report", field="item", value=item,
                       hint="one of " + ", ".join(c.item for c in self.checks))

    __getitem__ = check

    def ok(self, item: str, area: str | None = None) -> bool:
        """Whether ``item`` is fully available (status "ok")."""
        return self.check(item, area).ok

    def status(self, item: str, area: str | None = None) -> str:
        return self.check(item, area).status

    def problems(self) -> list[Check]:
        """Rows that are not "ok"."""
        return [c for c in self.checks if not c.ok]

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    # views
    @property
    def frame(self) -> pd.DataFrame:
        """The report as a DataFrame: area, item, status, detail, hint (pandas imported here)."""
        if self._frame is None:
            import pandas as pd

            self._frame = pd.DataFrame(
                [(c.area, c.item, c.status, c.detail, c.hint) for c in self.checks],
                columns=["area", "item", "status", "detail", "hint"],
            )
        return self._frame.copy()

    def controllers_frame(self) -> pd.DataFrame:
        """One row per controller: in_kernel, hierarchy, mounted_at, on_v2, usable."""
        import pandas as pd

        return pd.DataFrame([asdict(c) for c in self.controllers.values()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: summary, every check, every controller, and the raw facts."""
        return {
            "cgroup_mode": self.cgroup_mode,
            "root": self.facts.euid == 0,
            "kernel": self.facts.kernel,
            "summary": self.summary(),
            "checks": [asdict(c) for c in self.checks],
            "controllers": {name: asdict(c) for name, c in self.controllers.items()},
            "facts": self.facts.to_dict(),
        }

    def summary(self) -> dict[str, int]:
        """How many rows have each status."""
        counts = dict.fromkeys(STATUSES, 0)
        for c in self.checks:
            counts[c.status] = counts.get(c.status, 0) + 1
        return counts

    def headline(self) -> str:
        who = "root" if self.facts.euid == 0 else f"uid {self.facts.euid}"
        counts = ", ".join(f"{n} {s}" for s, n in self.summary().items() if n)
        return f"pycontain doctor: Linux {self.facts.kernel}, cgroup {self.cgroup_mode}, {who} ({counts})"

    def __str__(self) -> str:
        headers = ("AREA", "ITEM", "STATUS", "DETAIL")
        rows = [(c.area, c.item, c.status, c.detail) for c in self.checks]
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
        indent = sum(widths) + 2 * 3
        lines = [self.headline(), ""]
        for area, item, status, detail in [headers, *rows]:
            lines.append(f"{area:<{widths[0]}}  {item:<{widths[1]}}  {status:<{widths[2]}}  {detail}".rstrip())
        # Hints go under their row, aligned with the detail column.
        out = lines[:3]
        for line, c in zip(lines[3:], self.checks):
            out.append(line)
            if c.hint and not c.ok:
                out.append(" " * indent + "hint: " + c.hint)
        return "\n".join(out)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colors = {"ok": "#1a7f37", "limited": "#9a6700", "missing": "#cf222e", "unknown": "#57606a"}
        esc = html.escape
        rows = []
        for c in self.checks:
            hint = f"<br><small><i>{esc(c.hint)}</i></small>" if c.hint and not c.ok else ""
            rows.append(
                f"<tr><td>{esc(c.area)}</td><td><b>{esc(c.item)}</b></td>"
                f"<td style='color:{colors.get(c.status, '#000')};font-weight:bold'>{esc(c.status)}</td>"
                f"<td style='text-align:left'>{esc(c.detail)}{hint}</td></tr>"
            )
        return (
            f"<div><p>{esc(self.headline())}</p>"
            "<table><thead><tr><th>area</th><th>item</th><th>status</th>"
            "<th style='text-align:left'>detail</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table></div>"
        )


# -- judging the facts -------------------------------------------------------------------


def assess(facts: HostFacts) -> Report:
    """Turn :class:`HostFacts` into a :class:`Report`. Pure: reads nothing."""
    checks: list[Check] = []
    checks += _privileges(facts)
    checks += _namespaces(facts)
    controllers = _controller_infos(facts)
    checks += _cgroups(facts, controllers)
    checks += _storage(facts)
    checks += _security(facts)
    checks += _network(facts)
    return Report(checks, controllers, facts)


def _userns_works(facts: HostFacts) -> bool:
    ns = facts.probe.get("namespaces", {})
    return bool(ns.get("user", {}).get("ok"))


def _privileges(f: HostFacts) -> list[Check]:
    out = []
    has_admin = f.cap_eff is not None and bool(f.cap_eff & _CAP_SYS_ADMIN)
    if f.euid == 0 and (has_admin or f.cap_eff is None):
        out.append(Check("privileges", "root", "ok", "uid 0 with CAP_SYS_ADMIN"))
    elif f.euid == 0:
        out.append(Check("privileges", "root", "limited",
                         "uid 0 but without CAP_SYS_ADMIN (inside an unprivileged container?)",
                         "run on a VM or a privileged container for mounts, namespaces and cgroups"))
    else:
        userns = _userns_works(f)
        out.append(Check(
            "privileges", "root", "limited" if userns else "missing",
            f"not root (uid {f.euid}): no cgroup limits; "
            + ("namespaces only inside a user namespace" if userns else "no namespaces"),
            "run as root (sudo) for cgroup limits and every namespace; "
            "without root pycontain isolates with user namespaces where the kernel allows",
        ))

    s = f.userns_sysctls
    max_ns = s.get("max_user_namespaces")
    clone = s.get("unprivileged_userns_clone")
    apparmor = s.get("apparmor_restrict_unprivileged_userns")
    parts = [f"max_user_namespaces={max_ns}" if max_ns is not None else "max_user_namespaces unreadable"]
    if clone is not None:
        parts.append(f"unprivileged_userns_clone={clone}")
    if apparmor is not None:
        parts.append(f"apparmor_restrict_unprivileged_userns={apparmor}")
    detail = ", ".join(parts)
    if max_ns == 0:
        out.append(Check("privileges", "user namespaces", "missing", detail + ": disabled for everyone",
                         "sysctl -w user.max_user_namespaces=15000 (as root)"))
    elif clone == 0:
        out.append(Check("privileges", "user namespaces", "limited",
                         detail + ": only root may create them",
                         "sysctl -w kernel.unprivileged_userns_clone=1 to let users isolate without root"))
    elif apparmor == 1:
        out.append(Check("privileges", "user namespaces", "limited",
                         detail + ": AppArmor restricts them for unprivileged programs",
                         "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give python an "
                         "AppArmor profile with 'userns,'"))
    elif max_ns is None and clone is None:
        out.append(Check("privileges", "user namespaces", "unknown", detail,
                         "cannot read /proc/sys/user; is /proc mounted?"))
    else:
        out.append(Check("privileges", "user namespaces", "ok",
                         detail + ": unprivileged users may create them"))
    return out


_PROBE_HINT = ("run pycontain.doctor() with probe=True (the default); the probe runs in a child "
               "process started from sys.executable, which must be executable by this user")


def _probe_error(f: HostFacts) -> str | None:
    err = f.probe.get("error")
    return str(err) if err else None


def _namespaces(f: HostFacts) -> list[Check]:
    out = []
    err = _probe_error(f)
    results = f.probe.get("namespaces", {})
    for kind in NAMESPACE_KINDS:
        what = _NS_WHAT[kind]
        r = results.get(kind)
        if err or r is None:
            out.append(Check("namespaces", kind, "unknown", f"not probed: {err or 'no result'}",
                             _PROBE_HINT))
            continue
        if r.get("ok"):
            out.append(Check("namespaces", kind, "ok", f"unshare works: {what}"))
        elif r.get("in_userns"):
            out.append(Check("namespaces", kind, "limited",
                             f"needs root here; works inside a new user namespace: {what}",
                             "run as root, or let pycontain create a user namespace first (rootless)"))
        elif not r.get("in_kernel", True):
            out.append(Check("namespaces", kind, "missing",
                             f"this kernel has no {kind} namespace ({r.get('error') or 'EINVAL'})",
                             f"needs a kernel built with {_NS_CONFIG[kind]}"))
        else:
            errno_ = r.get("errno")
            reason = r.get("error") or "failed"
            if errno_ in (1, 13):  # EPERM, EACCES
                hint = ("run as root; inside a container, the runtime's seccomp profile or missing "
                        "CAP_SYS_ADMIN forbids unshare (e.g. docker run --privileged)")
            elif errno_ == 28:  # ENOSPC: a namespace count limit
                hint = f"raise /proc/sys/user/max_{kind}_namespaces"
            else:
                hint = f"check that the kernel has {_NS_CONFIG[kind]}"
            out.append(Check("namespaces", kind, "missing", f"unshare fails: {reason}", hint))
    return out


def _v2_name(name: str) -> str:
    # cgroup v2 renamed blkio to io (Documentation/admin-guide/cgroup-v2.rst).
    return "io" if name == "blkio" else name


#: Controllers the v1 backend drives on the cgroup2 mount of a hybrid host.
_HYBRID_V2_CONTROLLERS = frozenset({"hugetlb"})


def _controller_infos(f: HostFacts) -> dict[str, ControllerInfo]:
    names = list(CONTROLLERS)
    for extra in [*f.kernel_controllers, *f.v2_controllers]:
        if extra not in names and _v2_name(extra) not in names and extra != "io":
            names.append(extra)
    infos = {}
    for name in names:
        hier, enabled = f.kernel_controllers.get(name, (None, False))
        on_v2 = _v2_name(name) in f.v2_controllers or name in f.v2_controllers
        in_kernel = bool(enabled) or on_v2
        mounted = f.v1_mounts.get(name)
        if f.cgroup_mode == "v2":
            usable = on_v2 and bool(f.v2_mount and f.cgroup_writable.get(f.v2_mount))
        elif mounted is not None:
            usable = bool(f.cgroup_writable.get(mounted))
        else:
            # v1 and hybrid hosts are served by the v1 backend, which uses a
            # controller on its own v1 hierarchy; the one exception is hugetlb,
            # which it drives on the hybrid cgroup2 mount (backends/cgroup_v1.py).
            usable = (name in _HYBRID_V2_CONTROLLERS and on_v2
                      and bool(f.v2_mount and f.cgroup_writable.get(f.v2_mount)))
        infos[name] = ControllerInfo(name, in_kernel, hier, mounted, on_v2, usable)
    return infos


# v2 has no per-controller file for these; the core does the job.
_V2_CORE = {
    "cpuacct": "v2 reports CPU usage through the cpu controller's cpu.stat",
    "freezer": "v2 freezes with the core's cgroup.freeze",
    "devices": "v2 controls devices with a BPF program attached to the cgroup",
}
_V2_ABSENT = {
    "net_cls": "cgroup v2 has no net_cls (tag traffic with BPF or nftables socket cgroup matches instead)",
    "net_prio": "cgroup v2 has no net_prio",
}


def _cgroups(f: HostFacts, infos: dict[str, ControllerInfo]) -> list[Check]:
    out = []
    mode = f.cgroup_mode
    if mode == "hybrid":
        out.append(Check("cgroups", "cgroup mode", "ok",
                         f"hybrid: v1 hierarchies under {cgroupfs.CGROUP_ROOT}, cgroup2 at {f.v2_mount}; "
                         "served by the v1 backend"))
    elif mode == "v1":
        out.append(Check("cgroups", "cgroup mode", "ok", f"v1: hierarchies under {cgroupfs.CGROUP_ROOT}"))
    elif mode == "v2":
        out.append(Check("cgroups", "cgroup mode", "ok", f"v2: unified hierarchy at {f.v2_mount}"))
    else:
        out.append(Check("cgroups", "cgroup mode", "missing", "no cgroup filesystem is mounted",
                         f"mount cgroup2 on {cgroupfs.CGROUP_ROOT} (mount -t cgroup2 none "
                         f"{cgroupfs.CGROUP_ROOT}); without it pycontain cannot limit resources"))
    root = f.euid == 0
    for name in CONTROLLERS:
        info = infos[name]
        label = _v2_name(name) if mode == "v2" else name
        out.append(_controller_check(f, info, label, root))
    return out


def _controller_check(f: HostFacts, info: ControllerInfo, label: str, root: bool) -> Check:
    name = info.name
    mode = f.cgroup_mode
    not_writable = ("run as root: pycontain creates its cgroups under <hierarchy>/pycontain"
                    if not root else "the cgroup filesystem is read-only here (inside a container?)")
    if mode == "none":
        status = "limited" if info.in_kernel else "missing"
        return Check("cgroups", label, status,
                     "in the kernel, no cgroup filesystem mounted" if info.in_kernel else "not in this kernel",
                     "mount the cgroup filesystem (see 'cgroup mode')")
    if mode == "v2":
        if name in _V2_CORE:
            if f.v2_mount and f.cgroup_writable.get(f.v2_mount):
                return Check("cgroups", label, "ok", _V2_CORE[name])
            return Check("cgroups", label, "limited", _V2_CORE[name] + "; the cgroup tree is not writable",
                         not_writable)
        if name in _V2_ABSENT:
            return Check("cgroups", label, "missing", _V2_ABSENT[name],
                         "pycontain's network isolation does not need it")
        if info.usable:
            return Check("cgroups", label, "ok", f"enabled on the cgroup2 mount at {f.v2_mount}")
        if info.on_v2:
            return Check("cgroups", label, "limited", f"enabled at {f.v2_mount}, not writable by uid {f.euid}",
                         not_writable)
        if info.in_kernel:
            return Check("cgroups", label, "limited",
                         "in the kernel, bound to a v1 hierarchy so v2 cannot use it",
                         f"unmount its v1 hierarchy, or boot with cgroup_no_v1={name}")
        return Check("cgroups", label, "missing", "not in this kernel",
                     f"needs a kernel built with the {label} controller")
    # v1 or hybrid: the v1 backend
    if info.usable and info.mounted_at:
        return Check("cgroups", label, "ok", f"mounted at {info.mounted_at}")
    if info.usable:
        return Check("cgroups", label, "ok", f"enabled on the cgroup2 mount at {f.v2_mount} (hybrid)")
    if info.mounted_at:
        return Check("cgroups", label, "limited",
                     f"mounted at {info.mounted_at}, not writable by uid {f.euid}", not_writable)
    if info.on_v2 and name in _HYBRID_V2_CONTROLLERS:
        return Check("cgroups", label, "limited",
                     f"enabled on the cgroup2 mount at {f.v2_mount}, not writable by uid {f.euid}",
                     not_writable)
    if info.on_v2:
        return Check("cgroups", label, "limited",
                     f"in the kernel but bound to the cgroup2 mount at {f.v2_mount}, "
                     "which the v1 backend of this hybrid host does not use for it",
                     f"{name} limits need a v1 hierarchy of it (as root: mount -t cgroup -o {name} {name} "
                     f"{cgroupfs.CGROUP_ROOT}/{name}) or a pure v2 host (systemd.unified_cgroup_hierarchy=1)")
    if info.in_kernel:
        where = f"{cgroupfs.CGROUP_ROOT}/{name}"
        if root:
            hint = f"pycontain mounts it at {where} when needed"
        else:
            hint = f"only root can mount it (mount -t cgroup -o {name} {name} {where})"
        detail = "present in the kernel, not mounted"
        if info.hierarchy:
            # /proc/cgroups is global: a hierarchy id without a mount here means
            # another mount namespace (a container, a test) has it mounted.
            detail += f" here (its v1 hierarchy {info.hierarchy} is mounted in another mount namespace)"
        return Check("cgroups", label, "limited", detail, hint)
    hier = f.kernel_controllers.get(name)
    if hier is not None and not hier[1]:
        return Check("cgroups", label, "missing", "in the kernel but disabled (cgroup_disable= on the command line?)",
                     f"remove cgroup_disable={name} from the kernel command line")
    return Check("cgroups", label, "missing", "not in this kernel",
                 f"needs a kernel built with the {name} controller")


def _storage(f: HostFacts) -> list[Check]:
    out = []
    err = _probe_error(f)
    r = f.probe.get("overlay")
    if err or not r:
        listed = "overlay" in f.filesystems
        out.append(Check("storage", "overlayfs", "unknown",
                         f"not probed: {err or 'no result'}; overlay "
                         + ("is" if listed else "is not") + " in /proc/filesystems",
                         _PROBE_HINT))
    elif r.get("ok"):
        how = "in a user namespace (rootless)" if r.get("userns") else "in a private mount namespace"
        out.append(Check("storage", "overlayfs", "ok", f"overlay mounts and copies up {how}"))
    else:
        errno_ = r.get("errno")
        detail = f"overlay probe failed at '{r.get('step')}': {r.get('error')}"
        if errno_ == 19:  # ENODEV: filesystem type unknown to the kernel
            hint = "modprobe overlay (as root); until then pycontain uses the copy driver"
        elif errno_ in (1, 13):
            hint = ("run as root, or on Linux 5.11+ with user namespaces allowed; "
                    "until then pycontain uses the copy driver")
        else:
            hint = "pycontain falls back to the copy driver (slower container creation)"
        out.append(Check("storage", "overlayfs", "missing", detail, hint))

    out.append(_store_check(f))

    kernel_btrfs = "btrfs" in f.filesystems or f.btrfs_module
    if kernel_btrfs and f.mkfs_btrfs:
        out.append(Check("storage", "btrfs", "ok",
                         f"btrfs in the kernel, {os.path.basename(f.mkfs_btrfs)} at {f.mkfs_btrfs}"))
    elif kernel_btrfs:
        out.append(Check("storage", "btrfs", "limited", "btrfs in the kernel, mkfs.btrfs not found",
                         "apt-get install btrfs-progs"))
    else:
        out.append(Check("storage", "btrfs", "missing", "btrfs is not in this kernel (nor a module)",
                         "optional: the btrfs driver is used only when the store is on btrfs; "
                         "overlay or copy serve otherwise"))
    return out


#: Driver preference of storage_driver.select_driver: best first.
_DRIVER_ORDER = ("btrfs", "overlay", "copy")
#: Filesystems overlayfs cannot take an upper layer from (the store holds it).
_NO_OVERLAY_UPPER = ("overlay", "nfs", "fuse")


def _store_check(f: HostFacts) -> Check:
    st = f.store
    if not st or st.get("error"):
        return Check("storage", "storage driver", "unknown",
                     f"cannot inspect the image store: {st.get('error') if st else 'not read'}",
                     "set PYCONTAIN_STORE to a writable directory")
    root, fstype = st["root"], st["fstype"]
    drivers: dict[str, str | None] | None = st.get("drivers")
    if drivers is None:
        if fstype in _NO_OVERLAY_UPPER:
            return Check("storage", "storage driver", "limited",
                         f"the store {root} (not created yet) would be on {fstype}, which overlayfs cannot use "
                         "as an upper layer: containers would get the slow copy driver",
                         "set PYCONTAIN_STORE to a directory on ext4, xfs, tmpfs or btrfs")
        return Check("storage", "storage driver", "ok",
                     f"the store {root} is not created yet; it will be on {fstype} "
                     "(btrfs is used on btrfs, else overlay, else copy)")
    unusable = "; ".join(f"{name}: {why}" for name, why in drivers.items() if why)
    explicit = f.storage_driver
    if explicit:
        why = drivers.get(explicit, "no such driver")
        if why:
            return Check("storage", "storage driver", "missing",
                         f"PYCONTAIN_STORAGE_DRIVER={explicit} cannot work here: {why}",
                         "unset PYCONTAIN_STORAGE_DRIVER to let pycontain choose, or move the store")
        return Check("storage", "storage driver", "ok",
                     f"{explicit} (chosen by PYCONTAIN_STORAGE_DRIVER) for the store {root} on {fstype}")
    chosen = next((d for d in _DRIVER_ORDER if d in drivers and drivers[d] is None), None)
    detail = f"{chosen} for the store {root} on {fstype}" + (f"; not usable: {unusable}" if unusable else "")
    if chosen in ("btrfs", "overlay"):
        return Check("storage", "storage driver", "ok", detail)
    return Check("storage", "storage driver", "limited", detail,
                 "the copy driver copies the whole image for each container; put the store "
                 "(PYCONTAIN_STORE) on ext4, xfs or btrfs with overlay in the kernel")


_SECCOMP_MODES = {0: "no filter", 1: "strict mode", 2: "already filtered"}


def _security(f: HostFacts) -> list[Check]:
    mode = _SECCOMP_MODES.get(f.seccomp_mode or 0, f"mode {f.seccomp_mode}")
    if f.seccomp_mode == 2 and f.seccomp_filters:
        mode += f" ({f.seccomp_filters} filters; a container's filter stacks on them)"
    caller = f"this process: {mode}"
    if f.no_new_privs:
        caller += ", no_new_privs set"
    if not f.seccomp_kernel:
        return [Check("security", "seccomp", "missing", f"kernel without seccomp filters; {caller}",
                      "needs a kernel with CONFIG_SECCOMP_FILTER; containers then run without a syscall filter")]
    missing = []
    if not f.libseccomp:
        missing.append(("libseccomp not found", "apt-get install libseccomp2"))
    if not f.pyseccomp:
        missing.append(("pyseccomp not importable", "pip install pyseccomp"))
    if missing:
        return [Check("security", "seccomp", "limited",
                      "kernel supports filters; " + "; ".join(m[0] for m in missing) + f"; {caller}",
                      "; ".join(m[1] for m in missing) + " (containers run without a syscall filter until then)")]
    return [Check("security", "seccomp", "ok",
                  f"kernel filters, {f.libseccomp}, pyseccomp; {caller}")]


def _network(f: HostFacts) -> list[Check]:
    if f.pyroute2 is None:
        return [Check("network", "pyroute2", "missing", "pyroute2 is not importable",
                      "pip install pyroute2; without it containers get only 'none' or loopback networking")]
    version = f" {f.pyroute2}" if f.pyroute2 else ""
    return [Check("network", "pyroute2", "ok", f"pyroute2{version} importable")]


# -- public entry points --------------------------------------------------------------------


def doctor(*, probe: bool = True, timeout: float = 5.0) -> Report:
    """Report what this host can do, and why not where it can't.

    Covers root, user namespaces, every namespace kind (really unshared, in a
    short-lived child process), the cgroup mode and each controller,
    overlayfs (really mounted, in a private mount namespace), btrfs, seccomp
    and pyroute2. Never raises for a missing feature: it reports it with a
    hint. Takes ~0.1-0.3 s; ``probe=False`` skips the child (namespace and
    overlay rows say "unknown"); ``timeout`` bounds the child, in seconds.

    Example::

        >>> report = pycontain.doctor()
        >>> report.ok("net"), report.cgroup_mode
        (True, 'hybrid')
    """
    return assess(HostFacts.gather(run_probe=probe, timeout=timeout))


def cgroup_version() -> str:
    """The host's cgroup mode: ``"v1"``, ``"v2"`` or ``"hybrid"``.

    Read from /proc/self/mountinfo (DESIGN.md §4): cgroup2 at the root of
    /sys/fs/cgroup is "v2"; v1 hierarchies with a cgroup2 mount beside them
    (systemd's hybrid layout) are "hybrid", served by the v1 backend;
    v1 hierarchies alone are "v1".

    Raises :class:`~pycontain.errors.Unsupported` when no cgroup filesystem is
    mounted.

    Example::

        >>> pycontain.cgroup_version()
        'hybrid'
    """
    mode = cgroupfs.layout().mode
    if mode not in ("v1", "v2", "hybrid"):
        raise Unsupported(
            "no cgroup filesystem is mounted",
            op="cgroup_version",
            path=cgroupfs.CGROUP_ROOT,
            hint=f"mount one (mount -t cgroup2 none {cgroupfs.CGROUP_ROOT}); pycontain.doctor() shows details",
        )
    return mode


class _CallableModule(types.ModuleType):
    """Lets ``pycontain.doctor()`` work even after ``import pycontain.doctor``.

    The function and this module share the name ``doctor``; importing the
    module binds the module as ``pycontain.doctor``, which would shadow the
    lazily exported function. Calling the module calls the function.
    """

    def __call__(self, *, probe: bool = True, timeout: float = 5.0) -> Report:
        return doctor(probe=probe, timeout=timeout)


sys.modules[__name__].__class__ = _CallableModule
