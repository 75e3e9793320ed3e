"""Linux namespaces: see them, create them, keep them, join them.

A :class:`Namespace` is identified by the device and inode of its nsfs file
(``/proc/PID/ns/KIND``), the same number ``lsns`` and ``ls -l /proc/PID/ns``
show. ``namespaces()`` lists every namespace on the host as a DataFrame;
``Namespace.create`` makes one that lives without processes (bind-mounted on
a file, as ``ip netns add`` does); ``spawn`` starts a process in new or
existing namespaces. All namespace changes happen in a single-threaded child
(see :mod:`pycontain.engine`), never in the caller.

Example::

    import pycontain
    with pycontain.Namespace.create("net") as netns:
        child = pycontain.spawn(["ip", "link"], join=[netns])
        child.wait()
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pycontain import statedir
from pycontain.engine import Child, ChildSpec, Zygote, start
from pycontain.errors import InvalidArgument, KernelError, Unsupported
from pycontain.kernel import nsfs, proc
from pycontain.kernel.constants import NAMESPACE_KINDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Namespace", "namespaces", "spawn", "KINDS"]

#: Namespace kinds, as the kernel spells them in /proc/PID/ns.
KINDS: tuple[str, ...] = NAMESPACE_KINDS

# Marks a persist directory that pycontain bind-mounted onto itself and made
# private (needed for mount namespaces where the directory's mount propagates).
_PRIVATE_MARKER = ".pycontain-private-bind"


def _check_kind(kind: object, field: str = "kind") -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidArgument("unknown namespace kind", field=field, value=kind,
                              hint="one of " + ", ".join(KINDS))
    return kind


def _check_pid(pid: object) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidArgument("a pid is a positive int", field="pid", value=pid)
    return pid


def _default_ns_dir() -> str:
    return os.path.join(os.fspath(statedir.state_dir()), "ns")


def _noop() -> None:
    return None


class Namespace:
    """One namespace of the kernel: ``kind``, ``inode`` (and ``dev``).

    Two Namespace objects are equal (and hash the same) when they name the
    same kernel namespace, whatever path or pid they were found through.

    Attributes:
        kind: "mnt", "uts", "ipc", "pid", "net", "user", "cgroup" or "time".
        inode: the nsfs inode, as lsns's NS column.
        dev: the nsfs device number.
        pid: the process it was found through, or None.
        persisted_path: the file it is bind-mounted on, when made by
            :meth:`create` (None after :meth:`release`).
    """

    __slots__ = ("kind", "dev", "inode", "pid", "_path", "persisted_path")

    def __init__(self, kind: str, dev: int, inode: int, *, pid: int | None = None, path: str | None = None,
                 persisted_path: str | None = None) -> None:
        self.kind = _check_kind(kind)
        self.dev = dev
        self.inode = inode
        self.pid = pid
        self._path = path
        self.persisted_path = persisted_path

    # -- finding ---------------------------------------------------------------------

    @classmethod
    def of(cls, pid: int, kind: str) -> Namespace:
        """The ``kind`` namespace of process ``pid``.

        Raises:
            InvalidArgument: bad pid or kind.
            NotFound: no such process.
            PermissionDenied: the process may not be inspected (ptrace rules).

        Example: ``Namespace.of(os.getppid(), "net")``
        """
        _check_pid(pid)
        _check_kind(kind)
        nid = proc.namespace_id(pid, kind)
        return cls(kind, nid.dev, nid.inode, pid=pid, path=proc.namespace_path(pid, kind))

    @classmethod
    def current(cls, kind: str) -> Namespace:
        """The caller's ``kind`` namespace. Example: ``Namespace.current("uts")``."""
        return cls.of(os.getpid(), kind)

    @classmethod
    def open(cls, path: str | os.PathLike[str], kind: str | None = None) -> Namespace:
        """The namespace behind a namespace file (persisted bind or /proc/PID/ns/KIND).

        When ``path`` is a bind mount of a namespace (from :meth:`create`,
        ``ip netns add`` or ``unshare --net=FILE``), the result has
        ``persisted_path`` set and :meth:`release` removes that bind.

        Raises:
            KernelError: ``path`` is missing or not a namespace file.
            InvalidArgument: ``kind`` given and different from the file's.
        """
        path = os.fspath(path)
        if kind is not None:
            _check_kind(kind)
        found = nsfs.namespace_kind(path)
        if kind is not None and found != kind:
            raise InvalidArgument(f"{path} is a {found} namespace, not {kind}", field="kind", value=kind)
        dev, ino = nsfs.namespace_file_id(path)
        # A bind-mounted namespace file (made by create(), ip netns add,
        # unshare --net=FILE) can be released through the object opened on it.
        real = os.path.realpath(path)
        kept = any(point == real for point, _, _ in nsfs.nsfs_mounts())
        return cls(found, dev, ino, path=path, persisted_path=path if kept else None)

    # -- creating ----------------------------------------------------------------------

    @classmethod
    def create(cls, kind: str, path: str | os.PathLike[str] | None = None, *, uid_map: str | None = None,
               gid_map: str | None = None) -> Namespace:
        """Make a new ``kind`` namespace that lives without processes.

        It is bind-mounted on ``path`` (default: a new file under
        ``$PYCONTAIN_STATE_DIR/ns/``, /run/pycontain/ns for root), like
        ``ip netns add`` does for "net". Join it with ``spawn(join=[ns])``;
        end it with :meth:`release` (or use it as a context manager).

        A mount namespace can only be kept on a mount that does not
        propagate into it; when the kernel refuses (EINVAL, e.g. on a shared
        ``/`` under systemd), the directory of ``path`` is bind-mounted on
        itself and made private, and that bind is undone when the last
        namespace kept there is released.

        "pid" is not supported: a pid namespace dies with its first process
        (its init), so it cannot be kept empty; start a process with
        ``spawn(new=["pid"])`` instead.

        Args:
            kind: the namespace kind.
            path: an absolute file path that does not exist yet.
            uid_map, gid_map: id maps ("inside outside count" lines), for "user".

        Raises:
            InvalidArgument, Unsupported, AlreadyExists (path taken), KernelError.

        Example::

            ns = Namespace.create("net")
            ...
            ns.release()
        """
        _check_kind(kind)
        if kind == "pid":
            raise Unsupported("a pid namespace cannot be kept without processes", op="create namespace",
                              field="kind", value=kind,
                              hint='its init is its first process; use spawn(argv, new=["pid"]) and '
                              'Namespace.of(child.pid, "pid")')
        if (uid_map is not None or gid_map is not None) and kind != "user":
            raise InvalidArgument("id maps belong to a user namespace", field="uid_map", value=uid_map,
                                  hint='use kind="user"')
        if path is None:
            path = os.path.join(_default_ns_dir(), f"{kind}-{uuid.uuid4().hex[:12]}")
        path = os.fspath(path)
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise InvalidArgument("path must be an absolute file path", field="path", value=path)
        spec = ChildSpec(target=_noop, new={kind}, persist={kind: path}, uid_map=uid_map, gid_map=gid_map)
        if kind != "mnt":
            start(spec).result()
        else:
            _persist_mount_namespace(spec, path)
        dev, ino = nsfs.namespace_file_id(path)
        return cls(kind, dev, ino, path=path, persisted_path=path)

    def release(self) -> None:
        """Unmount and remove the file that keeps this namespace (idempotent).

        The namespace itself ends once no process and no other file holds it.
        A Namespace that was not made by :meth:`create` has nothing to release.
        """
        path = self.persisted_path
        if path is None:
            return
        nsfs.unbind_namespace(path)
        _drop_private_dir(os.path.dirname(path))
        self.persisted_path = None

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- looking ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        """A path that opens this namespace: the persisted file, or /proc/PID/ns/KIND."""
        if self.persisted_path is not None:
            return self.persisted_path
        if self._path is not None:
            return self._path
        pids = self.processes()
        if not pids:
            raise KernelError(f"no process or file holds {self!r} any more", op="namespace path",
                              errno=errno.ENOENT)
        return proc.namespace_path(pids[0], self.kind)

    def processes(self) -> list[int]:
        """Pids (ascending) of the processes in this namespace, as lsns counts them."""
        return nsfs.pids_in_namespace(self.kind, self.dev, self.inode)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Namespace):
            return NotImplemented
        return (self.dev, self.inode) == (other.dev, other.inode)

    def __hash__(self) -> int:
        return hash((self.dev, self.inode))

    def __repr__(self) -> str:
        where = f" path={self.persisted_path}" if self.persisted_path else (f" pid={self.pid}" if self.pid else "")
        return f"<Namespace {self.kind}:[{self.inode}]{where}>"


# How often to retry keeping a mount namespace (see _persist_mount_namespace).
_MNT_PERSIST_ATTEMPTS = 8


def _persist_mount_namespace(spec: ChildSpec, path: str) -> None:
    """Keep a new mount namespace on ``path``, working around two EINVALs of mount(2).

    1. The bind must not propagate into the namespace it names (a loop): when
       the directory's mount is shared, the directory becomes a private bind
       of itself first (undone by the last release).
    2. The kernel also refuses to bind a mount namespace that is not newer
       than the caller's own, comparing namespace ids; since Linux 6.x those
       come from per-CPU batches and are not monotonic, so a caller outside
       the initial mount namespace sometimes gets EINVAL for a fresh one (seen
       ~1 in 12 on 6.18, and then often several times in a row). Ids made on
       one CPU do grow, so trying once pinned to each CPU we may run on finds
       the CPU that made the caller's namespace.
    """
    directory = os.path.dirname(path)
    made_private = False
    # First anywhere; then once on each CPU we may use: namespaces made on
    # the CPU that made ours get larger ids. Then a few more tries.
    cpus: list[frozenset[int] | None] = [None] + [frozenset({c}) for c in sorted(os.sched_getaffinity(0))]
    plan = (cpus + [None] * _MNT_PERSIST_ATTEMPTS)[:max(_MNT_PERSIST_ATTEMPTS, len(cpus))]
    for attempt, affinity in enumerate(plan):
        try:
            start(dataclasses.replace(spec, affinity=affinity)).result()
            return
        except KernelError as e:
            if e.errno != errno.EINVAL or e.op != "mount":
                if made_private:
                    _drop_private_dir(directory)
                raise
            if not made_private and nsfs.mount_propagation(directory) != "private":
                _make_private_dir(directory)
                made_private = True
            if attempt == len(plan) - 1:
                if made_private:
                    _drop_private_dir(directory)
                raise Unsupported("the kernel refused to keep the mount namespace", op="create namespace",
                                  field="kind", value="mnt", path=path, errno=errno.EINVAL,
                                  hint="keep it from the initial mount namespace, or on a private mount "
                                  "(mount --bind DIR DIR; mount --make-private DIR)") from e


def _make_private_dir(directory: str) -> None:
    os.makedirs(directory, mode=0o755, exist_ok=True)
    marker = os.path.join(directory, _PRIVATE_MARKER)
    if os.path.exists(marker) and nsfs.is_mount_point(directory):
        return
    nsfs.make_private_bind(directory)
    with open(marker, "w"):
        pass


def _drop_private_dir(directory: str) -> None:
    """Undo :func:`_make_private_dir` once no namespace file is kept under it."""
    marker = os.path.join(directory, _PRIVATE_MARKER)
    if not os.path.exists(marker):
        return
    real = os.path.realpath(directory)
    if any(os.path.dirname(point) == real for point, _, _ in nsfs.nsfs_mounts()):
        return
    try:
        os.unlink(marker)
    except FileNotFoundError:
        pass
    if nsfs.is_mount_point(directory):
        nsfs.unmount_private_bind(directory)


def namespaces(kind: str | None = None, *, persisted: bool = False) -> pd.DataFrame:
    """Every namespace on the host, like ``lsns``: one row per namespace.

    Columns (lsns's defaults): ``ns`` (inode), ``type``, ``nprocs``, ``pid``
    (the lowest), ``user`` (owner of that process), ``command`` (its command
    line). Rows are sorted by ``ns``. ``kind`` keeps one type only.
    ``persisted=True`` adds namespaces kept only by a bind mount (``nprocs``
    0) and an ``nsfs`` column with the files they are mounted on.

    Example::

        df = pycontain.namespaces("net")
    """
    kinds = (_check_kind(kind),) if kind is not None else KINDS
    import pandas as pd
    scan = nsfs.scan_namespaces(kinds)
    users: dict[int | None, str | None] = {}

    def user_of(pid: int) -> str | None:
        uid = nsfs.process_uid(pid)
        if uid not in users:
            users[uid] = _user_name(uid)
        return users[uid]

    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for (k, _dev, ino), pids in scan.items():
        row = {"ns": ino, "type": k, "nprocs": len(pids), "pid": pids[0], "user": user_of(pids[0]),
               "command": proc.command(pids[0])}
        rows.append(row)
        seen[(k, ino)] = row
    columns = ["ns", "type", "nprocs", "pid", "user", "command"]
    if persisted:
        columns.append("nsfs")
        for row in rows:
            row["nsfs"] = None
        for point, k, ino in nsfs.nsfs_mounts():
            if k not in kinds:
                continue
            if (k, ino) in seen:
                existing = seen[(k, ino)]
                existing["nsfs"] = point if existing["nsfs"] is None else existing["nsfs"] + "," + point
                continue
            row = {"ns": ino, "type": k, "nprocs": 0, "pid": None, "user": None, "command": None, "nsfs": point}
            rows.append(row)
            seen[(k, ino)] = row
    df = pd.DataFrame(rows, columns=columns)
    if not df.empty:
        df = df.sort_values(["ns", "type"], kind="stable").reset_index(drop=True)
    df["pid"] = df["pid"].astype("Int64")
    return df


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _join_pairs(join: Iterable[Namespace | tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = []
    for item in join:
        if isinstance(item, Namespace):
            pairs.append((item.kind, item.path))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pairs.append((item[0], os.fspath(item[1])))
        else:
            raise InvalidArgument("join takes Namespace objects or (kind, path) pairs", field="join",
                                  value=item)
    return pairs


def spawn(
    argv: Sequence[str] | None = None,
    *,
    target: Callable[..., Any] | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    new: Iterable[str] = (),
    join: Iterable[Namespace | tuple[str, str]] = (),
    hostname: str | None = None,
    uid_map: str | None = None,
    gid_map: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    pass_fds: Sequence[int] = (),
    cgroup_procs: Sequence[str] = (),
    persist: Mapping[str, str] | None = None,
    pdeathsig: int | None = signal.SIGKILL,
    zygote: Zygote | None = None,
) -> Child:
    """Start ``argv`` (or the Python callable ``target``) in new and/or joined namespaces.

    A thin wrapper over :func:`pycontain.engine.start`; see
    :class:`pycontain.engine.ChildSpec` for every option. The child dies with
    the calling thread unless ``pdeathsig=None``. ``zygote`` forks it from a
    :class:`pycontain.engine.Zygote` instead of from the caller.

    Returns:
        a :class:`pycontain.engine.Child`: ``pid``, ``wait(timeout)``,
        ``kill()``, ``result()`` (for ``target``).

    Raises:
        InvalidArgument: bad options (before anything starts).
        KernelError, PermissionDenied: a setup step failed; nothing is left behind.

    Example::

        child = pycontain.spawn(["hostname"], new=["uts"], hostname="box")
        child.wait()
    """
    spec = ChildSpec(argv=argv, target=target, args=args, kwargs=kwargs or {}, new=new,
                     join=_join_pairs(join), hostname=hostname, uid_map=uid_map, gid_map=gid_map, env=env,
                     cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=pass_fds,
                     cgroup_procs=cgroup_procs, persist=persist or {}, pdeathsig=pdeathsig)
    return start(spec, zygote=zygote)
