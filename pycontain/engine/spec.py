"""What a child should become: :class:`ChildSpec`, checked before any fork.

Every field is validated (and normalized to immutable types) when the spec
is built, so bad input raises :class:`~pycontain.errors.InvalidArgument`
naming the field and value before anything touches the kernel.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycontain.errors import InvalidArgument
from pycontain.kernel.constants import NAMESPACE_KINDS

#: Kinds whose unshare(2) only affects the children of the caller: the
#: workload must be a child of the process that unshared (or joined) them.
CHILDREN_ONLY_KINDS = frozenset({"pid", "time"})

_HOST_NAME_MAX = 64  # HOST_NAME_MAX, sethostname(2)
_ID_MAP_MAX_LINES = 340  # user_namespaces(7), since Linux 4.15


_VALID_SIGNALS: list[frozenset[int]] = []


def _valid_signals() -> frozenset[int]:
    """signal.valid_signals() as plain ints, once: it builds 60-odd Signals
    enums per call (~0.25 ms), and every spec with a pdeathsig asks."""
    if not _VALID_SIGNALS:
        _VALID_SIGNALS.append(frozenset(int(s) for s in signal.valid_signals()))
    return _VALID_SIGNALS[0]


def _kinds_hint() -> str:
    return "one of " + ", ".join(NAMESPACE_KINDS)


def _check_kind(kind: Any, fieldname: str) -> str:
    if not isinstance(kind, str) or kind not in NAMESPACE_KINDS:
        raise InvalidArgument("unknown namespace kind", field=fieldname, value=kind, hint=_kinds_hint())
    return kind


def _check_text(value: Any, fieldname: str, *, allow_empty: bool = True) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InvalidArgument("expected a string", field=fieldname, value=value)
    if "\0" in value:
        raise InvalidArgument("contains a NUL byte", field=fieldname, value=value,
                              hint="the kernel takes C strings; NUL cannot be passed")
    if not allow_empty and not value:
        raise InvalidArgument("must not be empty", field=fieldname, value=value)
    return value


def _check_fd(value: Any, fieldname: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument("expected a file descriptor (an int >= 0)", field=fieldname, value=value)
    return value


def _check_id_map(value: Any, fieldname: str) -> str:
    text = _check_text(value, fieldname, allow_empty=False)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or len(lines) > _ID_MAP_MAX_LINES:
        raise InvalidArgument(f"an id map has 1 to {_ID_MAP_MAX_LINES} lines", field=fieldname, value=value)
    for ln in lines:
        parts = ln.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[2]) == 0 \
                or any(int(p) > 0xFFFFFFFF for p in parts):
            raise InvalidArgument("each id map line is 'inside outside count' (count > 0)",
                                  field=fieldname, value=value, hint='e.g. "0 100000 65536"')
    return "\n".join(" ".join(ln.split()) for ln in lines) + "\n"


@dataclass(frozen=True)
class ChildSpec:
    """A process to start in new or existing namespaces.

    Exactly one of ``argv`` (exec'd, with a PATH lookup using ``env``'s PATH)
    and ``target`` (a Python callable run in the child; its result or
    exception comes back by cloudpickle) must be given.

    Fields:
        new: namespace kinds to unshare (``mnt uts ipc pid net user cgroup time``).
        join: ``(kind, path)`` pairs to setns(2) into first (user first).
        cgroup_procs: cgroup.procs (or v1 ``tasks``) files the child writes
            its own pid to before anything else, so the workload never runs
            outside its cgroups and the caller is never moved.
        hostname: set in the child's UTS namespace ("uts" in new or join).
        uid_map / gid_map: "inside outside count" lines, written by the
            parent once the child unshared "user".
        persist: kind -> file: bind-mount the new namespace there (like
            ``ip netns add``) so it outlives the child. For "mnt" the kernel
            may refuse (EINVAL); :meth:`pycontain.Namespace.create` handles it.
        stdin / stdout / stderr: fds for 0/1/2, or None to inherit.
        pass_fds: fds kept open in the child; every other fd above 2 is closed.
        pdeathsig: signal the child gets when the creating *thread* exits
            (PR_SET_PDEATHSIG); None to let it outlive its creator.
        affinity: CPUs the child may run on (sched_setaffinity(2)), set first;
            None keeps the caller's.
        preexec: a callable run in the final process after the namespace
            setup and hostname, before the fds are closed, ``cwd`` is entered
            and exec/target run (e.g. mounts, pivot_root); exceptions raised
            there reach the caller of ``start``.
        returns: False for a ``target`` that never returns (it execs, or
            leaves with ``os._exit``): should it raise, its exception comes
            back by the standard pickle, and cloudpickle (~5 ms to import)
            is never loaded for it.

    Raises:
        InvalidArgument: naming the field and value, for any bad field.

    Example::

        ChildSpec(argv=["hostname"], new={"uts"}, hostname="box")
    """

    argv: Sequence[str] | None = None
    target: Callable[..., Any] | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    new: Iterable[str] = frozenset()
    join: Sequence[tuple[str, str]] = ()
    cgroup_procs: Sequence[str] = ()
    hostname: str | None = None
    uid_map: str | None = None
    gid_map: str | None = None
    persist: Mapping[str, str] = field(default_factory=dict)
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    pass_fds: Sequence[int] = ()
    pdeathsig: int | None = signal.SIGKILL
    preexec: Callable[[], None] | None = None
    affinity: Iterable[int] | None = None
    returns: bool = True

    def __post_init__(self) -> None:
        put = object.__setattr__
        if not isinstance(self.returns, bool):
            raise InvalidArgument("returns is True or False", field="returns", value=self.returns)
        # -- what to run
        if self.argv is not None and self.target is not None:
            raise InvalidArgument("give argv or target, not both", field="argv", value=self.argv)
        if self.argv is None and self.target is None:
            raise InvalidArgument("nothing to run: give argv or target", field="argv", value=None)
        if self.argv is not None:
            if isinstance(self.argv, (str, bytes)):
                raise InvalidArgument("argv is a list of strings, not one string", field="argv",
                                      value=self.argv, hint='e.g. ["sh", "-c", "echo hi"]')
            argv = tuple(_check_text(a, "argv") for a in self.argv)
            if not argv or not argv[0]:
                raise InvalidArgument("argv must name a program", field="argv", value=self.argv)
            put(self, "argv", argv)
        if self.target is not None and not callable(self.target):
            raise InvalidArgument("target must be callable", field="target", value=self.target)
        if self.argv is not None and (self.args or self.kwargs):
            raise InvalidArgument("args/kwargs go with target, not argv", field="args", value=self.args)
        put(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, Mapping):
            raise InvalidArgument("kwargs must be a mapping", field="kwargs", value=self.kwargs)
        put(self, "kwargs", dict(self.kwargs))
        # -- environment
        if self.env is not None:
            if not isinstance(self.env, Mapping):
                raise InvalidArgument("env must be a mapping of str to str", field="env", value=self.env)
            env = {}
            for k, v in self.env.items():
                _check_text(k, "env key", allow_empty=False)
                if "=" in k:
                    raise InvalidArgument("an environment name cannot contain '='", field="env key", value=k)
                env[k] = _check_text(v, f"env[{k}]")
            put(self, "env", env)
        if self.cwd is not None:
            put(self, "cwd", _check_text(self.cwd, "cwd", allow_empty=False))
        # -- namespaces
        if isinstance(self.new, str):
            raise InvalidArgument("new is a set of kinds, not one string", field="new", value=self.new,
                                  hint='e.g. {"net", "uts"}')
        new = frozenset(_check_kind(k, "new") for k in self.new)
        put(self, "new", new)
        joins = []
        for item in self.join:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InvalidArgument("join items are (kind, path) pairs", field="join", value=item)
            kind = _check_kind(item[0], "join")
            path = _check_text(item[1], f"join[{kind}]", allow_empty=False)
            joins.append((kind, path))
        if len({k for k, _ in joins}) != len(joins):
            raise InvalidArgument("each kind can be joined once", field="join", value=self.join)
        put(self, "join", tuple(joins))
        if isinstance(self.cgroup_procs, str):
            raise InvalidArgument("cgroup_procs is a list of files", field="cgroup_procs", value=self.cgroup_procs)
        procs = tuple(_check_text(p, "cgroup_procs", allow_empty=False) for p in self.cgroup_procs)
        for p in procs:
            if not os.path.isabs(p):
                raise InvalidArgument("cgroup_procs entries are absolute paths", field="cgroup_procs", value=p)
        put(self, "cgroup_procs", procs)
        joined = {k for k, _ in joins}
        if self.hostname is not None:
            name = _check_text(self.hostname, "hostname", allow_empty=False)
            if len(name.encode()) > _HOST_NAME_MAX:
                raise InvalidArgument(f"a hostname has at most {_HOST_NAME_MAX} bytes", field="hostname",
                                      value=name)
            if "uts" not in new and "uts" not in joined:
                raise InvalidArgument("setting a hostname needs a UTS namespace of its own", field="hostname",
                                      value=name, hint='add "uts" to new (or join one)')
        for name in ("uid_map", "gid_map"):
            value = getattr(self, name)
            if value is not None:
                if "user" not in new:
                    raise InvalidArgument(f"{name} needs a new user namespace", field=name, value=value,
                                          hint='add "user" to new')
                put(self, name, _check_id_map(value, name))
        if not isinstance(self.persist, Mapping):
            raise InvalidArgument("persist maps kind -> file path", field="persist", value=self.persist)
        persist = {}
        for kind, path in self.persist.items():
            _check_kind(kind, "persist")
            if kind not in new:
                raise InvalidArgument("only a new namespace can be persisted", field="persist", value=kind,
                                      hint=f'add "{kind}" to new')
            path = _check_text(path, f"persist[{kind}]", allow_empty=False)
            if not os.path.isabs(path):
                raise InvalidArgument("persist paths are absolute", field=f"persist[{kind}]", value=path)
            persist[kind] = path
        if len(set(persist.values())) != len(persist):
            raise InvalidArgument("persist paths must differ", field="persist", value=self.persist)
        put(self, "persist", persist)
        # -- file descriptors
        for name in ("stdin", "stdout", "stderr"):
            value = getattr(self, name)
            if value is not None:
                _check_fd(value, name)
        if isinstance(self.pass_fds, int):
            raise InvalidArgument("pass_fds is a list of fds", field="pass_fds", value=self.pass_fds)
        put(self, "pass_fds", tuple(sorted({_check_fd(fd, "pass_fds") for fd in self.pass_fds})))
        if self.pdeathsig is not None and self.pdeathsig != 0:
            if isinstance(self.pdeathsig, bool) or self.pdeathsig not in _valid_signals():
                raise InvalidArgument("not a signal", field="pdeathsig", value=self.pdeathsig)
        if self.affinity is not None:
            if isinstance(self.affinity, int):
                raise InvalidArgument("affinity is a set of CPU numbers", field="affinity", value=self.affinity)
            cpus = frozenset(self.affinity)
            if not cpus or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
                raise InvalidArgument("affinity is a non-empty set of CPU numbers (ints >= 0)",
                                      field="affinity", value=self.affinity)
            put(self, "affinity", cpus)
        if self.preexec is not None and not callable(self.preexec):
            raise InvalidArgument("preexec must be callable", field="preexec", value=self.preexec)

    @property
    def needs_fork(self) -> bool:
        """Whether the workload must be a child of the process that did the setup
        (a new or joined pid namespace, or a new time namespace)."""
        joined = {k for k, _ in self.join}
        return bool(CHILDREN_ONLY_KINDS & (set(self.new) | joined))

    @property
    def pid_by_forker(self) -> bool:
        """Whether the forking thread can place the child in its pid namespace.

        unshare(CLONE_NEWPID) and setns(CLONE_NEWPID) only change the pid
        namespace of the calling *thread's* future children (unshare(2),
        setns(2)), and unlike a new user namespace they work in a
        multi-threaded process. So the forker switches, forks and switches
        back, and the child is PID 1 (or a member of the joined namespace)
        at once: no relay process stays between the caller and the
        workload. Not possible when a user namespace must own the new pid
        namespace (it must exist first, made by the child), with a time
        namespace (setns of one needs a single-threaded caller), or when
        the pid namespace is to be persisted.
        """
        joined = {k for k, _ in self.join}
        new = set(self.new)
        if not ({"pid"} & (new | joined)) or "pid" in self.persist:
            return False
        return not ({"user", "time"} & (new | joined))

    @property
    def needs_relay(self) -> bool:
        """Whether a relay must fork the workload (and stay, to pass its status on)."""
        return self.needs_fork and not self.pid_by_forker

    @property
    def needs_parent(self) -> bool:
        """Whether the parent must act for the child: id maps, persist binds, or
        moving a relay's workload into its cgroups."""
        return bool(self.uid_map or self.gid_map or self.persist or (self.cgroup_procs and self.needs_relay))
