"""Namespace files: id maps, persisting a namespace by bind mount, joining one.

These are the /proc and nsfs operations the engine needs around a child
that creates namespaces (user_namespaces(7), setns(2), ``ip netns add``).
Every failure is a typed error naming the operation and path.
"""

from __future__ import annotations

import errno
import fcntl
import os

from pycontain.errors import AlreadyExists, kernel_error
from pycontain.kernel import constants as C
from pycontain.kernel import syscalls
from pycontain.kernel.proc import PROC, mountinfo


def proc_ns_path(pid: int, kind: str, *, for_children: bool = False) -> str:
    """``/proc/PID/ns/KIND``; ``for_children`` picks ``pid_for_children`` /
    ``time_for_children``, where a process that unshared pid or time keeps
    the namespace its future children go into (unshare(2))."""
    if for_children and kind in ("pid", "time"):
        return f"{PROC}/{pid}/ns/{kind}_for_children"
    return f"{PROC}/{pid}/ns/{kind}"


def write_id_map(pid: int, which: str, text: str) -> None:
    """Write ``text`` ("inside outside count" lines) to /proc/PID/uid_map or gid_map.

    The kernel accepts a map once, in a single write (user_namespaces(7)).
    """
    path = f"{PROC}/{pid}/{which}"
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise kernel_error("open", e.errno or errno.EIO, path=path) from None
    try:
        os.write(fd, data)
    except OSError as e:
        raise kernel_error(f"write {which}", e.errno or errno.EIO, path=path, detail=f"map={text!r}",
                           hint="each line is 'inside outside count'; ranges must not overlap and "
                           "the writer needs CAP_SETUID/CAP_SETGID over the outside ids") from None
    finally:
        os.close(fd)


def deny_setgroups(pid: int) -> None:
    """Write "deny" to /proc/PID/setgroups: required before an unprivileged gid_map."""
    path = f"{PROC}/{pid}/setgroups"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"deny")
        finally:
            os.close(fd)
    except OSError as e:
        raise kernel_error("write setgroups", e.errno or errno.EIO, path=path) from None


def write_pid(path: str, pid: int = 0) -> None:
    """Write ``pid`` (0: the caller) to a file such as a cgroup's ``cgroup.procs``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise kernel_error("open", e.errno or errno.EIO, path=path) from None
    try:
        os.write(fd, str(pid).encode())
    except OSError as e:
        raise kernel_error("write", e.errno or errno.EIO, path=path, detail=f"pid={pid}") from None
    finally:
        os.close(fd)


def open_namespace(path: str) -> int:
    """Open a namespace file (/proc/PID/ns/KIND or a persisted bind) for setns(2)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise kernel_error("open namespace", e.errno or errno.EIO, path=path) from None


def bind_namespace(source: str, target: str) -> None:
    """Keep the namespace behind ``source`` alive by bind-mounting it on ``target``.

    ``target`` is created as an empty file (its directory too); it must not
    exist yet. On failure nothing is left behind.
    """
    parent = os.path.dirname(target) or "."
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except OSError as e:
        raise kernel_error("mkdir", e.errno or errno.EIO, path=parent) from None
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    except FileExistsError:
        raise AlreadyExists("a file is already there", op="persist namespace", path=target,
                            hint="pick another path or release the namespace kept there") from None
    except OSError as e:
        raise kernel_error("create", e.errno or errno.EIO, path=target) from None
    os.close(fd)
    try:
        syscalls.mount(source, target, None, C.MS_BIND)
    except BaseException:
        try:
            os.unlink(target)
        except OSError:
            pass
        raise


def unbind_namespace(path: str) -> bool:
    """Undo :func:`bind_namespace`: detach the mount and remove the file.

    Idempotent: returns False when there was nothing to release.
    """
    did = False
    try:
        syscalls.umount2(path, C.MNT_DETACH)
        did = True
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point
            raise
    try:
        os.unlink(path)
        did = True
    except FileNotFoundError:
        pass
    except OSError as e:
        raise kernel_error("unlink", e.errno or errno.EIO, path=path) from None
    return did


def is_mount_point(path: str) -> bool:
    """Whether ``path`` is the mount point of some mount in the caller's mount namespace."""
    real = os.path.realpath(path)
    return any(m.mount_point == real for m in mountinfo())


def make_private_bind(path: str) -> None:
    """Bind ``path`` onto itself and make it private, so binds under it stay put.

    A mount namespace can only be persisted on a mount that does not
    propagate into that namespace (else the kernel refuses: a loop, EINVAL).
    """
    syscalls.mount(path, path, None, C.MS_BIND)
    try:
        syscalls.mount(None, path, None, C.MS_PRIVATE)
    except BaseException:
        syscalls.umount2(path, C.MNT_DETACH)
        raise


# ioctl_ns(2) requests: _IO(0xb7, n)
NS_GET_USERNS = 0xB701
NS_GET_PARENT = 0xB702
NS_GET_NSTYPE = 0xB703
NS_GET_OWNER_UID = 0xB704

_FLAG_KINDS = {flag: kind for kind, flag in C.NAMESPACE_FLAGS.items()}


def namespace_kind(path: str) -> str:
    """The kind ("net", "mnt", ...) of the namespace file at ``path`` (NS_GET_NSTYPE).

    Raises:
        KernelError: ENOTTY/EINVAL when ``path`` is not a namespace file.
    """
    fd = open_namespace(path)
    try:
        try:
            flag = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as e:
            raise kernel_error("ioctl NS_GET_NSTYPE", e.errno or errno.EINVAL, path=path,
                               hint="this is not a namespace file") from None
    finally:
        os.close(fd)
    return _FLAG_KINDS.get(flag, str(flag))


def namespace_file_id(path: str) -> tuple[int, int]:
    """(device, inode) of a namespace file, following /proc/PID/ns links."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise kernel_error("stat", e.errno or errno.EIO, path=path) from None
    return st.st_dev, st.st_ino


def process_uid(pid: int) -> int | None:
    """The owner uid of process ``pid`` (as lsns shows it), None if it is gone."""
    try:
        return os.stat(f"{PROC}/{pid}").st_uid
    except OSError:
        return None


def nsfs_mounts() -> list[tuple[str, str, int]]:
    """Namespace files bind-mounted in the caller's mount namespace:
    ``(mount point, kind, inode)`` from mountinfo (fstype nsfs, root ``net:[4026532184]``)."""
    out = []
    for m in mountinfo():
        if m.fstype != "nsfs":
            continue
        kind, _, rest = m.root.lstrip("/").partition(":[")
        if rest.endswith("]") and rest[:-1].isdigit():
            out.append((m.mount_point, kind, int(rest[:-1])))
    return out


def scan_namespaces(kinds: tuple[str, ...] = C.NAMESPACE_KINDS) -> dict[tuple[str, int, int], list[int]]:
    """Every namespace of every process, like lsns: ``(kind, dev, inode) -> [pids]``.

    Reads /proc/PID/ns/KIND of each process in /proc (not threads, as lsns);
    processes that exit during the scan are skipped. Pids are ascending.
    """
    out: dict[tuple[str, int, int], list[int]] = {}
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        pid = int(name)
        for kind in kinds:
            try:
                st = os.stat(f"{PROC}/{pid}/ns/{kind}")
            except OSError:
                continue
            out.setdefault((kind, st.st_dev, st.st_ino), []).append(pid)
    for pids in out.values():
        pids.sort()
    return out


def pids_in_namespace(kind: str, dev: int, inode: int) -> list[int]:
    """The pids (ascending) whose ``kind`` namespace is (dev, inode)."""
    return scan_namespaces((kind,)).get((kind, dev, inode), [])


def unmount_private_bind(path: str) -> None:
    """Undo :func:`make_private_bind` (lazily if something still uses it)."""
    try:
        syscalls.umount2(path, 0)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        syscalls.umount2(path, C.MNT_DETACH)


def mount_propagation(path: str) -> str:
    """Propagation ("shared", "slave", "private", "unbindable") of the mount ``path`` is on."""
    real = os.path.realpath(path)
    best = None
    for m in mountinfo():
        point = m.mount_point
        if real == point or real.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best.mount_point):
                best = m
    return best.propagation if best is not None else "private"


def join_cgroup(procs_path: str) -> None:
    """Move the calling, single-threaded process into the cgroup of ``procs_path``.

    On cgroup v1 this writes "0" to the cgroup's ``tasks`` file: moving one
    thread (the caller itself) skips the global threadgroup lock that a
    write to ``cgroup.procs`` takes, whose first use after a pause waits for
    an RCU grace period (kernel/cgroup/cgroup.c, cgroup_procs_write_start:
    "If we migrate a single thread, we don't care about threadgroup
    stability"): ~1 ms for 8 hierarchies here instead of ~10-25 ms. For a
    process with one thread it is the same move. cgroup v2 has no ``tasks``
    (cgroup.threads only works inside threaded subtrees), so there the
    process is moved through ``cgroup.procs``.
    """
    if procs_path.endswith("/cgroup.procs"):
        tasks = procs_path[: -len("cgroup.procs")] + "tasks"
        try:
            fd = os.open(tasks, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass  # cgroup v2
        except OSError as e:
            raise kernel_error("open", e.errno or errno.EIO, path=tasks) from None
        else:
            try:
                os.write(fd, b"0")
            except OSError as e:
                raise kernel_error("write", e.errno or errno.EIO, path=tasks, detail="tid=0 (self)") from None
            finally:
                os.close(fd)
            return
    write_pid(procs_path, 0)
