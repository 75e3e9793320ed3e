"""Start a :class:`ChildSpec` as a single-threaded child; :class:`Child` handles it.

This is the direct-fork path of DESIGN.md §3: the caller forks, and the
child (see :mod:`pycontain.engine.child`) does all namespace work. The
caller only writes what must be written from outside: uid/gid maps and
namespace bind mounts ("persist"), in its own mount namespace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from pycontain.engine import child as _child
from pycontain.engine import forker
from pycontain.engine.spec import ChildSpec
from pycontain.errors import InvalidArgument, KernelError, PycontainError, Timeout, kernel_error
from pycontain.kernel import nsfs, syscalls

__all__ = ["Child", "RemoteError", "start"]


class RemoteError(PycontainError):
    """A target's exception that could not be pickled back; carries its text."""


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        b = os.read(fd, n)
        if not b:
            break
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _read_message(fd: int) -> tuple[bytes, bytes] | None:
    head = _read_exact(fd, 5)
    if not head:
        return None
    if len(head) < 5:
        raise PycontainError("the child's status message was cut short", op="start")
    size = int.from_bytes(head[1:], "big")
    return head[:1], _read_exact(fd, size)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    # Keep pipe ends off fds 0-2, where the child's stdio goes.
    out = []
    for fd in (r, w):
        if fd < 3:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = new
        out.append(fd)
    return out[0], out[1]


def is_open(fd: int) -> bool:
    """Whether ``fd`` is an open file descriptor of this process."""
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _kill_and_reap(pid: int, reaper: Any = None) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        (reaper or _DIRECT).wait_status(pid, None)
    except OSError:
        pass  # already reaped


class DirectReaper:
    """Exit statuses of the caller's own children (waitpid)."""

    def poll_status(self, pid: int) -> int | None:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            raise kernel_error("waitpid", errno.ECHILD, detail=f"pid={pid}",
                               hint="someone else reaped this child (os.wait in another thread?)") from None
        return status if got else None

    def wait_status(self, pid: int, deadline: float | None) -> int | None:
        """The status, or None when ``deadline`` (time.monotonic) passed first."""
        if deadline is None:
            while True:
                try:
                    return os.waitpid(pid, 0)[1]
                except ChildProcessError:
                    raise kernel_error("waitpid", errno.ECHILD, detail=f"pid={pid}") from None
        pidfd = syscalls.pidfd_open(pid)
        try:
            while True:
                status = self.poll_status(pid)
                if status is not None:
                    return status
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                select.select([pidfd], [], [], left)
        finally:
            os.close(pidfd)


_DIRECT = DirectReaper()

#: Children dropped without wait(); start() reaps those that ended.
_ORPHANS: list[Child] = []


def _reap_orphans() -> None:
    for child in list(_ORPHANS):
        try:
            done = child.poll() is not None
        except Exception:
            done = True  # reaped elsewhere, or its zygote is gone
            child._release_fds()
        if done:
            try:
                _ORPHANS.remove(child)
            except ValueError:
                pass


class Child:
    """A started child. ``pid`` is the host pid of the workload.

    With a new (or joined) pid namespace, the workload is a grandchild
    (PID 1 inside) and a small relay process in between passes its exit
    status on; ``relay_pid`` is then that relay's pid, otherwise equal to
    ``pid``. ``returncode`` follows subprocess: negative means killed by
    that signal.
    """

    def __init__(self, spec: ChildSpec, pid: int, relay_pid: int, result_fd: int | None,
                 pidfd: int | None = None, reaper: Any = None) -> None:
        self._pidfd = pidfd
        self._reaper = reaper or _DIRECT
        self.spec = spec
        self.pid = pid
        self.relay_pid = relay_pid
        self.returncode: int | None = None
        self._result_fd = result_fd
        self._result_data: bytearray | None = bytearray() if result_fd is not None else None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<Child pid={self.pid} {state}>"

    # -- waiting ---------------------------------------------------------------------

    def _set_status(self, status: int) -> None:
        self._ended(os.waitstatus_to_exitcode(status))

    def _ended(self, returncode: int) -> None:
        self.returncode = returncode
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _release_fds(self) -> None:
        """Close what this object holds, for a child whose status will never come."""
        for name in ("_pidfd", "_result_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _reaper_call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(self.relay_pid, *args)
        except KernelError:
            # The status is lost for good (the zygote died, or someone else
            # reaped the child): do not keep fds open for it.
            self._release_fds()
            raise

    def __del__(self) -> None:
        if getattr(self, "returncode", 0) is None and getattr(self, "_reaper", None) is not None:
            # Dropped while running: keep it to be reaped by a later start(),
            # like subprocess does, so no zombie piles up.
            _ORPHANS.append(self)
            return
        fd = getattr(self, "_pidfd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def poll(self) -> int | None:
        """The return code if the child has ended, else None (never blocks)."""
        with self._lock:
            if self.returncode is None:
                status = self._reaper_call(self._reaper.poll_status)
                if status is not None:
                    self._set_status(status)
                    if self._result_fd is not None:
                        self._drain_result(block=False)
            return self.returncode

    def wait(self, timeout: float | None = None, *, status_from: Callable[[], int | None] | None = None) -> int:
        """Wait for the child to end and return its return code.

        ``timeout`` in seconds; raises :class:`pycontain.errors.Timeout` when
        it passes (the child keeps running).

        ``status_from``: for a zygote's child, a way to learn its exit code
        without the zygote (a container's PID 1 writes it to a file before it
        exits): once the child is gone (its pidfd says so), its value is the
        return code, and the zygote's word on it is dropped unread. That
        saves a hop through the zygote (~0.5 ms here). None from it: ask the
        zygote as usual.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._result_fd is not None:
            # A target writes its outcome before it exits: read it, or a big
            # result would block the child on a full pipe forever.
            self._drain_result(block=True, deadline=deadline)
        with self._lock:
            if self.returncode is None and status_from is not None and self._pidfd is not None \
                    and hasattr(self._reaper, "forget"):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not select.select([self._pidfd], [], [], left)[0]:
                    raise Timeout(f"child {self.pid} still running after {timeout} s", op="wait",
                                  value=timeout, hint="kill() it, or wait longer")
                code = status_from()
                if code is not None:
                    self._reaper.forget(self.relay_pid)
                    self._ended(code)
            if self.returncode is None:
                status = self._reaper_call(self._reaper.wait_status, deadline)
                if status is None:
                    raise Timeout(f"child {self.pid} still running after {timeout} s", op="wait",
                                  value=timeout, hint="kill() it, or wait longer")
                self._set_status(status)
            assert self.returncode is not None
            return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the workload (nothing if it has ended).

        A PID 1 in a new pid namespace only receives signals it has a
        handler for, except SIGKILL and SIGSTOP (pid_namespaces(7)).
        """
        if self.returncode is not None:
            return
        try:
            if self._pidfd is not None:
                # The workload is the relay's child: once the relay reaped
                # it, its pid may be reused; a pidfd cannot be.
                syscalls.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise

    def terminate(self) -> None:
        self.kill(signal.SIGTERM)

    # -- target results ----------------------------------------------------------------

    def _drain_result(self, block: bool, deadline: float | None = None) -> None:
        fd = self._result_fd
        if fd is None:
            return
        assert self._result_data is not None
        while True:
            if not block or deadline is not None:
                left = 0.0 if not block else max(0.0, deadline - time.monotonic())  # type: ignore[operator]
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    if block:
                        raise Timeout(f"child {self.pid} still running", op="wait", hint="kill() it, or wait longer")
                    return
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                os.close(fd)
                self._result_fd = None
                return
            self._result_data += chunk

    def result(self, timeout: float | None = None) -> Any:
        """For a ``target=`` child: wait, then return its value or raise its exception.

        The child's exception is re-raised with the remote traceback text as
        a note (and its ``__cause__`` a :class:`RemoteError` holding the text).
        """
        if self.spec.target is None:
            raise InvalidArgument("result() is for target= children; use wait()", field="target", value=None)
        self.wait(timeout)
        data = bytes(self._result_data or b"")
        if not data:
            raise PycontainError(f"the target ended without a result (returncode {self.returncode})",
                                 op="result", hint="it was killed, or called os._exit")
        # pickle.loads reads cloudpickle's data too (it imports what that
        # names), and leaves cloudpickle out when the standard pickle wrote it.
        outcome = pickle.loads(data)
        if outcome[0] == "ok":
            return outcome[1]
        if outcome[0] == "err":
            exc = outcome[1]
            text = outcome[2]
            exc.add_note("remote traceback (in the child):\n" + text)
            raise exc from RemoteError("the exception was raised in the child", op="target", hint=text)
        raise RemoteError(outcome[1], op="target", hint="remote traceback:\n" + outcome[2])

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.returncode is None:
            self.kill()
            self.wait()


def start(spec: ChildSpec, *, zygote: Any = None, meanwhile: Callable[[int], None] | None = None) -> Child:
    """Fork a single-threaded child that becomes ``spec``; return once it runs.

    By default the caller forks (a snapshot of the caller: ``target`` sees
    its variables). With ``zygote=`` (a :class:`pycontain.engine.Zygote`),
    the child is forked from that small helper instead, which is faster for
    a big caller; ``target`` and ``preexec`` then travel by cloudpickle.

    ``meanwhile(pid)``, if given, runs in the caller right after the fork,
    while the child sets itself up; if it raises, the child is killed and
    reaped and the error raised.

    Returns after the child exec'd (or started its target). A failed setup
    step (cgroup join, setns, unshare, maps, persist, hostname, chdir, exec)
    raises its typed error here, and leaves no process and no persisted file.

    Raises:
        KernelError / PermissionDenied / NotFound / AlreadyExists: from the failing step.

    Example::

        child = start(ChildSpec(argv=["sleep", "1"], new={"net", "uts"}))
        child.wait()
    """
    if not isinstance(spec, ChildSpec):
        raise InvalidArgument("start() takes a ChildSpec", field="spec", value=spec)
    for name, fds in (("stdin", [spec.stdin]), ("stdout", [spec.stdout]), ("stderr", [spec.stderr]),
                      ("pass_fds", list(spec.pass_fds))):
        for fd in fds:
            if fd is not None and not is_open(fd):
                raise InvalidArgument("not an open file descriptor", field=name, value=fd)
    if _ORPHANS:
        _reap_orphans()
    env = dict(os.environ) if spec.env is None else dict(spec.env)
    pickler: Any = None
    if spec.target is not None and not spec.returns:
        pickler = pickle  # only an exception can come back: the standard pickle does
    elif spec.target is not None:
        import cloudpickle  # imported here, in the parent: never import in the child

        pickler = cloudpickle
    status_r, status_w = _pipe()
    sync_r = sync_w = result_r = result_w = None
    if spec.needs_parent:
        sync_r, sync_w = _pipe()
    if spec.target is not None:
        result_r, result_w = _pipe()
    channels = _child.Channels(status_w, sync_r, result_w)
    reaper: Any = _DIRECT
    if zygote is not None and not getattr(zygote, "fits", lambda _spec: True)(spec):
        zygote = None  # a spare made for other specs (engine.zygote.LocalSpare): fork the caller
    if zygote is not None:
        try:
            pid = zygote.fork(spec, env, channels)
        except BaseException:
            for fd in (status_r, status_w, sync_r, sync_w, result_r, result_w):
                if fd is not None:
                    os.close(fd)
            raise
        reaper = zygote
    else:
        pid = _fork(spec, env, pickler, channels, (status_r, status_w, sync_r, sync_w, result_r, result_w))
    os.close(status_w)
    for fd in (sync_r, result_w):
        if fd is not None:
            os.close(fd)
    persisted: list[str] = []
    workload = pid
    reaped = False
    workload_fd: int | None = None
    # the workload's requests, until its host pid is known (P message)
    stashed: list[tuple[str, list[str]]] = []
    try:
        if meanwhile is not None:
            # The caller's own work that need not come before the child runs,
            # done while the child sets itself up (on another CPU, usually).
            meanwhile(pid)
        error: BaseException | None = None
        while True:
            msg = _read_message(status_r)
            if msg is None:
                break
            kind, payload = msg
            if kind == _child.MSG_UNSHARED:
                who, *kinds = payload.decode().split()
                if who == "first":
                    _parent_setup(spec, pid, kinds, persisted, maps=True)
                    sync_w = _go(sync_w)
                elif workload != pid:
                    _workload_setup(spec, workload, who, kinds, persisted)
                    sync_w = _go(sync_w)
                else:
                    stashed.append((who, kinds))
            elif kind == _child.MSG_WORKLOAD:
                workload = int(payload)
                # Pinned at once: a pid the relay has reaped may be reused,
                # a pidfd cannot. (The relay waits only after sending this;
                # a workload that ended and was reaped meanwhile gives ESRCH.)
                try:
                    workload_fd = syscalls.pidfd_open(workload)
                except OSError:
                    workload_fd = None
                for who, kinds in stashed:
                    _workload_setup(spec, workload, who, kinds, persisted)
                    sync_w = _go(sync_w)
                stashed.clear()
            elif kind == _child.MSG_ERROR:
                try:
                    error = pickle.loads(payload)
                except Exception as e:  # pragma: no cover - defensive
                    error = PycontainError(f"the child failed and its error could not be read: {e!r}", op="start")
        if error is not None:
            _kill_and_reap(pid, reaper)
            reaped = True
            raise error
    except BaseException:
        for path in persisted:
            try:
                nsfs.unbind_namespace(path)
            except Exception:
                pass
        if result_r is not None:
            os.close(result_r)
        if workload_fd is not None:
            os.close(workload_fd)
        if not reaped:
            _kill_and_reap(pid, reaper)
        raise
    finally:
        os.close(status_r)
        if sync_w is not None:
            os.close(sync_w)
    if workload_fd is None and zygote is not None:
        # The zygote reaps its children: pin ours so kill() never hits a reused pid.
        try:
            workload_fd = syscalls.pidfd_open(workload)
        except OSError:
            workload_fd = None
    return Child(spec, workload, pid, result_r, workload_fd, reaper)


def _fork(spec: ChildSpec, env: dict[str, str], pickler: Any, channels: _child.Channels,
          fds: tuple[int | None, ...]) -> int:
    status_r, status_w, sync_r, sync_w, result_r, result_w = fds
    parent = os.getpid()
    try:
        pid, parent_fd = forker.fork(spec)
    except BaseException:
        for fd in fds:
            if fd is not None:
                os.close(fd)
        raise
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(status_r)  # type: ignore[arg-type]
            if sync_w is not None:
                os.close(sync_w)
            if result_r is not None:
                os.close(result_r)
            _child.become(spec, channels, parent=parent, env=env, pickler=pickler, parent_fd=parent_fd)
        finally:
            os._exit(_child.SETUP_FAILED)
    return pid


def _go(sync_w: int | None) -> int | None:
    """Let the child go on after the parent's part; the pipe stays open for a second round."""
    assert sync_w is not None
    os.write(sync_w, b"G")
    return sync_w


def _workload_setup(spec: ChildSpec, workload: int, who: str, kinds: list[str], persisted: list[str]) -> None:
    if who == "cgroup":
        for path in spec.cgroup_procs:
            nsfs.write_pid(path, workload)
    else:
        _parent_setup(spec, workload, kinds, persisted, maps=False)


def _parent_setup(spec: ChildSpec, pid: int, kinds: list[str], persisted: list[str], *, maps: bool) -> None:
    """What the parent does once the child unshared: id maps, then persist binds."""
    if maps and spec.uid_map:
        nsfs.write_id_map(pid, "uid_map", spec.uid_map)
    if maps and spec.gid_map:
        if os.geteuid() != 0:
            # Unprivileged writers must give up setgroups first (user_namespaces(7)).
            nsfs.deny_setgroups(pid)
        nsfs.write_id_map(pid, "gid_map", spec.gid_map)
    for kind in kinds:
        path = spec.persist[kind]
        nsfs.bind_namespace(nsfs.proc_ns_path(pid, kind, for_children=True), path)
        persisted.append(path)
