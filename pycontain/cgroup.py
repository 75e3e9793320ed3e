"""Cgroups with one API on cgroup v1, hybrid and v2 hosts.

::

    import pycontain
    with pycontain.Cgroup("job", memory="64M", cpus=0.5, pids=32) as cg:
        child = cg.run(["python3", "-c", "print('hi')"], wait=True)
        cg.stats()          # pandas Series: mem_bytes, cpu_s, pids, ...

Every keyword is a limit; a keyword left out means no limit. Values are
parsed strictly (:mod:`pycontain.units`) before anything is created. The
backend (v1 or v2) is picked once by probing the host; naming one with
``version=`` never falls back silently.

Where things live (DESIGN.md §4): ``<hierarchy root>/pycontain/<name>`` in
each v1 hierarchy, or ``/sys/fs/cgroup/pycontain/<name>`` on v2. pycontain
only ever writes into cgroups it created (plus enabling controllers in
``cgroup.subtree_control`` of the parents on the way down, and initialising
an empty ``pycontain`` parent's cpuset on v1).

The limits (all optional):

=================  ==============================  ===========================================
keyword            example                         meaning
=================  ==============================  ===========================================
``memory``         ``"64M"``, ``2**30``            memory limit in bytes (v1 limit_in_bytes,
                                                   v2 memory.max); ``"max"`` lifts it
``memory_swap``    ``"0"``, ``"1G"``               swap allowed *on top of* memory (v2
                                                   meaning; v1 memsw is set to memory+swap)
``cpus``           ``0.5``, ``"1.5"``              CPU quota in CPUs per period
``cpu_period_us``  ``100000``                      the quota period (default 100 ms)
``cpu_weight``     ``100`` (1..10000)              share of a contended CPU (v1: cpu.shares via
                                                   runc's conversion)
``cpuset``         ``"0-1,3"``                     CPUs the processes may run on
``cpuset_mems``    ``"0"``                         memory nodes
``pids``           ``32``                          most processes + threads at once
``io_weight``      ``100`` (1..10000)              share of a contended disk (needs BFQ/io.cost)
``io_max``         ``{"/dev/loop0": {"rbps":      per-device throttles: rbps, wbps (bytes/s),
                   "1M"}}``                        riops, wiops (ops/s)
``devices``        ``["deny /dev/null"]``,         device access rules, see
                   ``["deny a", "allow c 1:3"]``   :func:`pycontain.backends.cgroup_limits.parse_devices`
``net_classid``    ``0x100010`` or ``"10:10"``     net_cls classid for tc (v1 only)
``net_prio``       ``{"eth0": 5}``                 net_prio.ifpriomap (v1 only; interfaces of the
                                                   host's initial network namespace, as the
                                                   kernel looks them up there)
``hugetlb``        ``{"2MB": "64M"}``              huge page limit per page size (a fault past
                                                   it is a SIGBUS)
=================  ==============================  ===========================================

Host specifics: on a hybrid host (v1 hierarchies plus systemd's cgroup2 at
``/sys/fs/cgroup/unified``) the hugetlb controller is usually bound to the
cgroup2 mount, so a cgroup with a ``hugetlb`` limit is also created there and
its processes join it. net_cls and net_prio hierarchies are mounted by
pycontain when the kernel has them but nobody mounted them, and unmounted
when its last cgroup using them is removed. On cgroup v2, ``devices`` is a
BPF program attached to the cgroup, and ``net_classid``/``net_prio`` raise
:class:`~pycontain.errors.Unsupported`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pycontain.backends.cgroup_limits import Limits, parse_limits, validate_name, validate_parent
from pycontain.backends.cgroup_v1 import V1Group
from pycontain.backends.cgroup_v2 import V2Group
from pycontain.errors import InvalidArgument, NotFound, PermissionDenied, Unsupported
from pycontain.kernel import cgroupfs
from pycontain.kernel.proc import proc_cgroup

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from pycontain.engine import Child

__all__ = ["Cgroup", "cgroups", "DEFAULT_PARENT"]

#: The parent of every pycontain cgroup, below each hierarchy root.
DEFAULT_PARENT = "pycontain"

_Group = V1Group | V2Group


def _layout_and_backend(version: str | None) -> tuple[cgroupfs.CgroupLayout, type[V1Group] | type[V2Group]]:
    """Probe the host once and pick the backend; an explicit choice never falls back."""
    if version not in (None, "v1", "v2"):
        raise InvalidArgument("version: expected 'v1', 'v2' or None (probe)", field="version", value=version)
    layout = cgroupfs.layout()
    host = {"v2": "v2", "v1": "v1", "hybrid": "v1"}.get(layout.mode)
    if host is None:
        raise Unsupported("no cgroup filesystem is mounted", op="cgroup", path=cgroupfs.CGROUP_ROOT,
                          hint="mount cgroup2 at /sys/fs/cgroup (or run pycontain.doctor())")
    if version is not None and version != host:
        raise Unsupported(f"version={version!r} asked, but this host runs cgroup {layout.mode}", field="version",
                          value=version, hint="leave version=None to use what the host has")
    return layout, (V2Group if host == "v2" else V1Group)


def _to_limits(kw: dict[str, Any]) -> Limits:
    cpus = mems = None
    count = None
    if kw.get("cpuset") is not None or kw.get("cpus") is not None:
        cpus = cgroupfs.online_cpus()
        count = len(cpus)
    if kw.get("cpuset_mems") is not None:
        mems = cgroupfs.online_mems()
    return parse_limits(available_cpus=cpus, available_mems=mems, cpu_count=count, **kw)


class Cgroup:
    """A cgroup pycontain created, with limits; a context manager.

    ``Cgroup(name, **limits)`` creates it at once (see the module docstring
    for the limit keywords). Leaving the ``with`` block, or ``remove()``,
    kills whatever is still inside and removes it; ``remove()`` may be
    called any number of times.

    Args:
        name: one path component (letters, digits, ``_ . @ : + -``).
        parent: the parent below each hierarchy root (default ``"pycontain"``).
        version: ``"v1"`` or ``"v2"`` to insist on one; None probes the host.

    Raises:
        InvalidArgument: a bad name or limit, naming the field and value,
            before any cgroup exists.
        AlreadyExists: a cgroup of that name exists.
        Unsupported: a limit needs a controller this host lacks (e.g.
            net_cls on v2), or ``version`` does not match the host.
        PermissionDenied: not root (or no delegated subtree).

    Example::

        with Cgroup("job", memory="64M", cpus=0.5) as cg:
            cg.call(sum, [1, 2, 3])      # 6, computed inside the cgroup
    """

    def __init__(self, name: str, *, parent: str = DEFAULT_PARENT, version: str | None = None,
                 memory: Any = None, memory_swap: Any = None, cpus: Any = None, cpu_period_us: Any = None,
                 cpu_weight: Any = None, cpuset: Any = None, cpuset_mems: Any = None, pids: Any = None,
                 io_weight: Any = None, io_max: Any = None, devices: Any = None, net_classid: Any = None,
                 net_prio: Any = None, hugetlb: Any = None) -> None:
        self.name = validate_name(name)
        self.parent = validate_parent(parent)
        limits = _to_limits(dict(
            memory=memory, memory_swap=memory_swap, cpus=cpus, cpu_period_us=cpu_period_us,
            cpu_weight=cpu_weight, cpuset=cpuset, cpuset_mems=cpuset_mems, pids=pids, io_weight=io_weight,
            io_max=io_max, devices=devices, net_classid=net_classid, net_prio=net_prio, hugetlb=hugetlb,
        ))
        layout, backend = _layout_and_backend(version)
        group = backend.plan(layout, self.parent, self.name, limits)
        group.create(limits, layout)  # type: ignore[arg-type]
        self._group: _Group = group
        self._readonly = False
        self._removed = False

    @classmethod
    def _view(cls, group: _Group, name: str, parent: str) -> Cgroup:
        self = cls.__new__(cls)
        self.name = name
        self.parent = parent
        self._group = group
        self._readonly = True
        self._removed = False
        return self

    @classmethod
    def open(cls, name: str, *, parent: str = DEFAULT_PARENT) -> Cgroup:
        """An existing pycontain cgroup, e.g. one a container made in another
        process; writable (pycontain created it), so ``remove()`` works.

        Raises:
            InvalidArgument: a bad name.
            NotFound: no such cgroup below ``parent``.

        Example::

            Cgroup.open("web-1a2b3c4d").stats()
        """
        self = cls.view(name, parent=parent)
        self._readonly = False
        return self

    @classmethod
    def current(cls) -> Cgroup:
        """A read-only view of the caller's own cgroup(s): stats and pids only.

        Every method that would change it raises :class:`PermissionDenied`:
        pycontain never writes into a cgroup it did not create.
        """
        layout, backend = _layout_and_backend(None)
        members = proc_cgroup("self")
        group = backend.of_process(layout, members)
        path = next((m.path for m in members if "memory" in m.controllers), None) or \
            next((m.path for m in members if m.hierarchy_id == 0), "/")
        return cls._view(group, path, "")

    @classmethod
    def view(cls, name: str, *, parent: str = DEFAULT_PARENT) -> Cgroup:
        """A read-only view of an existing pycontain cgroup (e.g. one listed by :func:`cgroups`,
        made by another process): stats, pids and frozen only.

        Raises :class:`NotFound` if there is no such cgroup.
        """
        name = validate_name(name)
        parent = validate_parent(parent)
        layout, backend = _layout_and_backend(None)
        group = backend.attach(layout, parent, name)
        if group is None:
            raise NotFound("no such pycontain cgroup", field="name", value=name,
                           hint="pycontain.cgroups() lists them")
        return cls._view(group, name, parent)

    # -- description ------------------------------------------------------------------

    @property
    def version(self) -> str:
        """``"v1"`` or ``"v2"``: the backend in use."""
        return self._group.version

    @property
    def paths(self) -> list[str]:
        """The cgroup's directories (one per v1 hierarchy, one on v2)."""
        return [os.path.dirname(f) for f in self._group.procs_files()]

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a new process writes itself into to join."""
        return self._group.procs_files()

    @property
    def readonly(self) -> bool:
        return self._readonly

    def exists(self) -> bool:
        """True while the cgroup exists in the kernel."""
        return self._group.exists()

    def __repr__(self) -> str:
        state = "removed" if self._removed else ("read-only" if self._readonly else self.version)
        return f"<Cgroup {self.name!r} {state}>"

    def _writable(self, op: str) -> None:
        if self._readonly:
            raise PermissionDenied(f"{op}: this is a read-only view of a cgroup pycontain did not create",
                                   op=op, path=self.paths[0] if self.paths else None, errno=errno.EPERM,
                                   hint="create your own: pycontain.Cgroup('name', ...)")
        if self._removed:
            raise NotFound(f"{op}: the cgroup was removed", op=op, field="name", value=self.name,
                           hint="create a new Cgroup")

    # -- limits and membership --------------------------------------------------------------

    def update(self, **limits: Any) -> None:
        """Change limits of the live cgroup, e.g. ``cg.update(memory="128M")``.

        Same keywords as the constructor; ``"max"`` lifts a limit. Values are
        checked before anything is written.

        Raises:
            InvalidArgument, Unsupported, KernelError (e.g. EBUSY when a memory
            limit is below what the processes use and cannot be reclaimed).
        """
        self._writable("update")
        parsed = _to_limits(limits)
        self._group.apply(parsed)

    def add(self, pid: int) -> None:
        """Move process ``pid`` (and all its threads) into this cgroup.

        Moving a process costs an RCU grace period the first time
        (~5-20 ms); :meth:`run` places children before they start instead.
        """
        self._writable("add")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidArgument("pid: expected a positive int", field="pid", value=pid)
        try:
            self._group.add(pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise NotFound("no such process", field="pid", value=pid) from None
            raise

    def pids(self) -> list[int]:
        """The process ids in the cgroup (thread group leaders)."""
        return self._group.pids()

    # -- freezing and killing -----------------------------------------------------------------

    def freeze(self, timeout: float = 5.0) -> None:
        """Stop every process in the cgroup until :meth:`thaw` (they use no CPU)."""
        self._writable("freeze")
        self._group.freeze(timeout)

    def thaw(self) -> None:
        """Let frozen processes run again."""
        self._writable("thaw")
        self._group.thaw()

    @property
    def frozen(self) -> bool:
        """True while the cgroup is frozen (or freezing)."""
        return self._group.frozen()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL every process in the cgroup and wait until it is empty.

        v2 uses ``cgroup.kill``; v1 freezes, signals each process and thaws,
        so nothing can fork away in between.
        """
        self._writable("kill")
        self._group.kill(timeout)

    def remove(self, timeout: float = 10.0, *, keep_parent: bool = False) -> None:
        """Kill what is inside and remove the cgroup. Idempotent.

        A nested parent (``parent="pycontain/jobs"``) is removed with its
        last cgroup, unless ``keep_parent`` (containers keep their standing
        ``pycontain/containers``, as Docker keeps ``/docker``: making and
        removing it with every container cost two cgroupfs calls per
        hierarchy). The top ``pycontain`` always stays.
        """
        if self._readonly:
            self._writable("remove")
        if self._removed:
            return
        self._group.remove(timeout, keep_parent=keep_parent)
        self._removed = True

    close = remove

    def __enter__(self) -> Cgroup:
        return self

    def __del__(self) -> None:
        # Like subprocess.Popen: a cgroup forgotten without remove() stays in
        # the kernel (on purpose: it may outlive this object), so say so.
        if not getattr(self, "_readonly", True) and not getattr(self, "_removed", True):
            import warnings

            warnings.warn(f"cgroup {self.name!r} was not removed; use `with Cgroup(...)` or call remove()",
                          ResourceWarning, stacklevel=2)

    def __exit__(self, *exc: object) -> None:
        if not self._readonly:
            self.remove()

    # -- running things inside ----------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, wait: bool = False, timeout: float | None = None, **spec: Any) -> Child:
        """Start ``argv`` as a child inside this cgroup; the caller stays where it is.

        The child writes itself into the cgroup before it execs, so the
        program never runs outside it. Extra keywords go to
        :class:`pycontain.engine.ChildSpec` (``env``, ``cwd``, ``stdout``,
        ``new``, ...).

        Returns the :class:`pycontain.engine.Child` (``.pid``, ``.wait()``,
        ``.kill()``, ``.returncode``). With ``wait=True`` it returns once the
        child has ended (``.returncode`` set; negative = killed by that
        signal, e.g. -9 after an OOM kill).

        Example::

            child = cg.run(["sh", "-c", "echo hi"], wait=True)
            child.returncode   # 0
        """
        self._writable("run")
        from pycontain.engine import ChildSpec, start

        child = start(ChildSpec(argv=argv, cgroup_procs=tuple(self._group.procs_files()), **spec))
        if wait:
            child.wait(timeout)
        return child

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in a child inside this cgroup and return its result.

        The function and its result cross by cloudpickle; an exception in the
        child is raised here with the child's traceback attached. A child
        killed (e.g. by the OOM killer) raises :class:`PycontainError`.

        Example::

            cg.call(pow, 2, 10)   # 1024
        """
        self._writable("call")
        from pycontain.engine import ChildSpec, start

        # Leaving the with block kills a child that outlived the timeout.
        with start(ChildSpec(target=fn, args=args, kwargs=kwargs,
                             cgroup_procs=tuple(self._group.procs_files()))) as child:
            return child.result(timeout)

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Child:
        """Like :meth:`call` but returns the running :class:`~pycontain.engine.Child` at once;
        get the value with ``child.result()``."""
        self._writable("spawn")
        from pycontain.engine import ChildSpec, start

        return start(ChildSpec(target=fn, args=args, kwargs=kwargs, cgroup_procs=tuple(self._group.procs_files())))

    def limits(self) -> dict[str, Any]:
        """The main limits in force, read from the kernel, in the constructor's words.

        Keys: ``memory``, ``memory_swap`` (bytes), ``cpus``, ``cpu_period_us``,
        ``cpu_weight``, ``cpuset``, ``cpuset_mems`` (kernel list strings),
        ``pids`` (and ``net_classid`` on v1); None means no limit.

        Example::

            Cgroup("job", memory="64M").limits()["memory"]   # 67108864
        """
        return self._group.limits()

    # -- statistics ------------------------------------------------------------------------------

    def stats_dict(self) -> dict[str, float]:
        """:meth:`stats` as a plain dict (no pandas): for samplers on a hot path."""
        return self._group.stats()

    def stats(self) -> pd.Series:
        """Usage read from the cgroup's own files, as a pandas Series.

        Keys carry their units: ``mem_bytes``, ``mem_peak_bytes``,
        ``mem_limit_bytes`` (inf = no limit), ``oom_events``,
        ``oom_kill_events``, ``mem_max_events``, ``cpu_s``, ``cpu_user_s``,
        ``cpu_system_s``, ``cpu_periods``, ``cpu_throttled_periods``,
        ``cpu_throttled_s``, ``cpu_limit_cpus``, ``pids``, ``pids_limit``,
        ``io_read_bytes``, ``io_write_bytes``, and on v2 the pressure (PSI)
        values ``{cpu,memory,io}_pressure_{some,full}_avg{10,60,300}_pct``
        and ``..._total_s``. NaN where the host has no such counter.

        Example::

            cg.stats()["mem_peak_bytes"]
        """
        import numpy as np
        import pandas as pd

        data = self._group.stats()
        keys = tuple(data)
        # Building the Index is most of the cost of a Series from a dict;
        # the keys are the same on every call, so build it once (keeps
        # stats() well under 1 ms).
        index = _INDEX_CACHE.get(keys)
        if index is None:
            index = _INDEX_CACHE[keys] = pd.Index(keys)
        return pd.Series(np.fromiter(data.values(), dtype=np.float64, count=len(keys)), index=index,
                         name=self.name, copy=False)


_INDEX_CACHE: dict[tuple[str, ...], Any] = {}


def cgroups(parent: str = DEFAULT_PARENT) -> pd.DataFrame:
    """pycontain's cgroups, like systemd-cgtop: one row per cgroup below ``parent``.

    Columns: ``name``, ``processes``, ``mem_bytes``, ``mem_limit_bytes``,
    ``cpu_s``, ``cpu_limit_cpus``, ``pids``, ``frozen``. Read-only.

    Example::

        pycontain.cgroups().sort_values("mem_bytes")
    """
    import pandas as pd

    parent = validate_parent(parent)
    layout, backend = _layout_and_backend(None)
    names: set[str] = set()
    if backend is V2Group:
        names.update(cgroupfs.children(f"{layout.v2_mount}/{parent}"))
    else:
        for ctrl, mount in layout.v1_mounts.items():
            if not ctrl.startswith("name="):
                names.update(cgroupfs.children(f"{mount}/{parent}"))
    rows = []
    for name in sorted(names):
        group = backend.attach(layout, parent, name)
        if group is None:
            continue
        s = group.stats()
        rows.append({
            "name": name,
            "processes": len(group.pids()),
            "mem_bytes": s["mem_bytes"],
            "mem_limit_bytes": s["mem_limit_bytes"],
            "cpu_s": s["cpu_s"],
            "cpu_limit_cpus": s["cpu_limit_cpus"],
            "pids": s["pids"],
            "frozen": group.frozen(),
        })
    columns = ["name", "processes", "mem_bytes", "mem_limit_bytes", "cpu_s", "cpu_limit_cpus", "pids", "frozen"]
    return pd.DataFrame(rows, columns=columns)
