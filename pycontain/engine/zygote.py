"""The zygote: a small single-threaded helper that forks children on request.

Forking a big caller (a notebook kernel with pandas and gigabytes of data)
costs page-table copies and copy-on-write faults in both processes. The
zygote is a fresh ``python -I`` that imported only pycontain (plus modules
you preload); it forks each child instead (DESIGN.md §3), and the child runs
the very same :func:`pycontain.engine.child.become`.

Protocol over a Unix stream socket (one per caller):

* caller -> zygote: a request ``(id, spec, env, targets)``, cloudpickled,
  with the fds the child needs attached (SCM_RIGHTS); ``targets`` says which
  fd number each one must have in the child (the caller's own numbers, so
  ``pass_fds``, ``stdout=`` and the status pipes mean the same there);
* zygote -> caller: ``("pid", id, pid)`` or ``("error", id, exc)``, then
  ``("exit", pid, status)`` when the zygote reaped a child.

A child in a new pid namespace (a container's PID 1) is forked *ahead* of
its request: the zygote keeps one spare child, already forked into a fresh
pid namespace and waiting on a socket of its own. Such a request
``(id, "spare", payload, dies)`` carries the spec still pickled; the zygote
hands payload and fds to the spare without unpickling them, answers with
the spare's pid at once, and forks the next spare while the child sets
itself up. The fork (page tables of the zygote, then the child's
copy-on-write faults: ~2-3 ms here) is thereby off the start's critical
path, as Android's pre-forked app processes take it off an app's start.

The zygote dies when the caller closes the socket (or dies); its children
die with it (PR_SET_PDEATHSIG).

Example::

    from pycontain.engine import ChildSpec, Zygote, start
    with Zygote() as z:
        start(ChildSpec(argv=["true"], new={"uts"}), zygote=z).wait()
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from pycontain.engine import child as _child
from pycontain.engine import forker
from pycontain.engine.process import DirectReaper, is_open
from pycontain.engine.spec import ChildSpec
from pycontain.errors import InvalidArgument, KernelError, PycontainError, kernel_error
from pycontain.kernel import syscalls

__all__ = ["Zygote", "shared_zygote"]

_HEADER = 8
_MAX_FDS = 250  # SCM_MAX_FD is 253

_BOOT = (
    "import json, os, sys\n"
    "sys.path[:] = json.loads(os.environ.pop('PYCONTAIN_ZYGOTE_PATH'))\n"
    "from pycontain.engine.zygote import serve\n"
    "serve(int(sys.argv[1]), json.loads(os.environ.pop('PYCONTAIN_ZYGOTE_PRELOAD')),\n"
    "      os.environ.pop('PYCONTAIN_ZYGOTE_CLEANUP', '') or None)\n"
)


#: The namespaces a spare makes while it waits (besides its pid namespace):
#: a new network namespace costs ~0.9 ms here and bringing its loopback up
#: ~0.5 ms more, ipc and uts ~0.2 ms each. (Their kernel memory is charged
#: to the zygote's cgroup, as it is made before the container's is joined.)
_SPARE_KINDS = frozenset({"net", "ipc", "uts"})


def _fits_spare(spec: ChildSpec) -> bool:
    """Whether a spare child (forked ahead into a new pid namespace, with new
    net, ipc and uts namespaces) can become ``spec``: one that wants a new pid
    namespace and new (or joined) ones of the spare's other kinds."""
    joined = dict(spec.join)
    return (spec.pid_by_forker and "pid" in spec.new and "pid" not in joined and not spec.persist
            and all(kind in spec.new or kind in joined for kind in _SPARE_KINDS))


#: What a spare is forked as: a new pid namespace, and a pidfd of the zygote
#: for the parent-death check (closed at take-over if the spec has no pdeathsig).
_SPARE_SHAPE = ChildSpec(argv=["/"], new=frozenset({"pid"}), pdeathsig=signal.SIGKILL)

#: The spare's name in ps (and for the test suite's leak check, which counts
#: it as part of the zygote); the child takes the zygote's name back at take-over.
SPARE_NAME = "pycontain-spare"


def _dumps(obj: Any) -> bytes:
    """``obj`` pickled for the zygote: by the standard pickle when that says
    the same as cloudpickle would, else by cloudpickle.

    The two differ only for what cannot be imported by name on the other
    side: ``__main__``'s functions and classes (a notebook's cells), and
    lambdas or local functions (pickle refuses those). cloudpickle's
    Python-level reducer runs for every object and cost ~0.5 ms per
    container start; the C pickler a tenth of that.
    """
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        data = b"__main__"
    if b"__main__" in data:  # (or a string that says so: cloudpickle is right either way)
        import cloudpickle

        data = cloudpickle.dumps(obj)
    return data


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(_HEADER, "big") + data


def _send_request(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """A framed request, its fds sent with its first bytes (SCM_RIGHTS)."""
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_request(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One framed request and the fds sent with its first bytes (SCM_RIGHTS).

    Raises:
        EOFError: the other end closed the socket.
    """
    head, fds, _flags, _addr = socket.recv_fds(sock, _HEADER, _MAX_FDS)
    if not head:
        raise EOFError
    head += _recv_exact(sock, _HEADER - len(head))
    return _recv_exact(sock, int.from_bytes(head, "big")), fds


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


# -- the zygote process ------------------------------------------------------------------


def serve(fd: int, preload: Iterable[str] = (), cleanup: str | None = None) -> None:  # pragma: no cover
    """Main loop of the zygote process (started by :class:`Zygote`)."""
    caller = os.getppid()
    try:
        watched, caller_gone = _serve(fd, preload)
        _wind_down(watched, caller if caller_gone else None, cleanup)
    finally:
        os._exit(0)  # what is left dies with us (pdeathsig); nothing printed on the caller's stderr


def _wind_down(watched: dict[int, bool], dead_caller: int | None, cleanup: str | None) -> None:  # pragma: no cover
    """Our children that die with their creator die now, and are reaped. If
    the caller died (it did not say goodbye: killed, crashed), ``cleanup``
    ("module:function", named by the caller) runs once it is gone: what its
    containers left behind (cgroups, writable layers, state) goes now, not
    at the next container start on this host."""
    import importlib
    import time

    from pycontain.kernel import proc

    for pid, dies in watched.items():
        if dies:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for pid, dies in watched.items():
        if dies:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
    if dead_caller is None or not cleanup:
        return
    # Its parent reaps it in a moment; until then it counts as alive.
    deadline = time.monotonic() + 3
    while proc.process_exists(dead_caller) and time.monotonic() < deadline:
        time.sleep(0.01)
    module, _, name = cleanup.partition(":")
    try:
        getattr(importlib.import_module(module), name)()
    except BaseException:
        pass  # best effort: the next container start collects what is left


def _serve(fd: int, preload: Iterable[str]) -> tuple[dict[int, bool], bool]:  # pragma: no cover - in the helper
    """Serve requests until the caller says goodbye (returns False) or is gone
    (True); returns the children still running, and whether each dies with
    the caller (its spec's pdeathsig)."""
    import importlib

    import cloudpickle

    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:
            pass  # a missing preload only makes children slower
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller's Ctrl-C is not ours
    me = os.getpid()
    watched: dict[int, bool] = {}
    spares = _Spares(me, (fd, wake_r, wake_w), cloudpickle)

    def reply(msg: tuple[Any, ...]) -> None:
        sock.sendall(_frame(pickle.dumps(msg)))

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            if spares.reaped(pid):
                continue  # a spare that was retired (or died): nobody asked for it
            watched.pop(pid, None)
            reply(("exit", pid, status))
            spares.exited(pid)

    try:
        spares.make()
        return watched, _loop(sock, fd, wake_r, wake_w, me, watched, reply, reap, importlib, cloudpickle, spares)
    except OSError:  # a reply to a caller that is gone
        return watched, True
    finally:
        spares.retire()


#: Seconds after a spare was given a request when the next one is forked even
#: if that container still runs.
_SPARE_REFORK_AFTER = 0.02


class _Spares:  # pragma: no cover - in the helper
    """The zygote's one spare child (see the module docstring)."""

    def __init__(self, zygote: int, zygote_fds: tuple[int, ...], pickler: Any) -> None:
        self.zygote = zygote
        self.zygote_fds = zygote_fds
        self.pickler = pickler
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.retired: set[int] = set()
        #: spares given a request, still running: the next spare is forked
        #: when one of them exits (its container's end, while its creator
        #: removes it), not while it sets itself up -- on a 2-CPU host the
        #: fork and the new spare's namespaces slowed that setup down
        self.handed: set[int] = set()
        #: when to fork the next spare anyway (a container that runs on)
        self.due: float | None = None
        try:
            with open("/proc/self/comm") as f:
                self.name = f.read().strip()
        except OSError:
            self.name = "python3"

    def make(self) -> None:
        """Fork the next spare (if none is waiting). A failure only means the
        next request forks as usual."""
        if self.pid is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid, parent_fd = forker.fork(_SPARE_SHAPE)
        except BaseException:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            try:
                ours.close()
                self._wait_and_become(theirs, parent_fd)
            finally:
                os._exit(_child.SETUP_FAILED)
        theirs.close()
        self.pid, self.sock = pid, ours

    def hand_over(self, payload: bytes, fds: list[int], make: bool = True) -> int | None:
        """Give the spare its request; returns its pid (None: no spare could take it)."""
        for _attempt in range(2):
            if make:
                self.make()
            if self.pid is None or self.sock is None:
                return None
            pid, sock = self.pid, self.sock
            self.pid = self.sock = None
            try:
                _send_request(sock, _frame(payload), fds)
            except OSError:
                self.retired.add(pid)  # it died meanwhile: try a fresh one
                continue
            finally:
                sock.close()
            self.handed.add(pid)
            self.due = time.monotonic() + _SPARE_REFORK_AFTER
            return pid
        return None

    def exited(self, pid: int) -> None:
        """A child exited: if it was a spare's, fork the next one now."""
        if pid in self.handed:
            self.handed.discard(pid)
            self.due = None
            self.make()

    def timeout(self) -> float | None:
        """How long the zygote may wait for a request before it must fork a spare."""
        if self.pid is not None or self.due is None:
            return None
        return max(0.0, self.due - time.monotonic())

    def when_due(self) -> None:
        if self.pid is None and self.due is not None and time.monotonic() >= self.due:
            self.due = None
            self.make()

    def close_in_child(self) -> None:
        """In a fresh fork: the zygote's end of the spare's socket is not ours."""
        if self.sock is not None:
            self.sock.close()
        self.pid = self.sock = None

    def retire(self) -> None:
        """Let the waiting spare go (it exits on EOF): new preloads, or the end."""
        if self.pid is not None and self.sock is not None:
            self.retired.add(self.pid)
            self.sock.close()
        self.pid = self.sock = None

    def reaped(self, pid: int) -> bool:
        if pid in self.retired:
            self.retired.discard(pid)
            return True
        if pid == self.pid:  # died while waiting
            if self.sock is not None:
                self.sock.close()
            self.pid = self.sock = None
            return True
        return False

    def _wait_and_become(self, sock: socket.socket, parent_fd: int | None) -> None:
        """In the spare: wait for a request, then become it (as a fresh fork would)."""
        signal.set_wakeup_fd(-1)
        for f in self.zygote_fds:
            os.close(f)
        with contextlib.suppress(Exception):
            syscalls.set_name(SPARE_NAME)
        premade: frozenset[str] = frozenset()
        try:
            syscalls.unshare(syscalls.namespace_flags(_SPARE_KINDS))
            premade = _SPARE_KINDS
            _child._loopback_up()
        except Exception:
            if premade:
                os._exit(0)  # a net namespace without loopback: let the zygote fork as usual
        try:
            payload, fds = _recv_request(sock)
        except (EOFError, ConnectionError):
            os._exit(0)  # retired, or the zygote is gone
        with contextlib.suppress(Exception):
            syscalls.set_name(self.name)
        sock.close()
        spec, env, targets = self.pickler.loads(payload)
        # Only the kinds the spec wants new: joined ones replace ours by setns.
        _child.PREMADE = premade & spec.new
        _child.LOOPBACK_UP = "net" in _child.PREMADE  # a joined net namespace has its own lo
        if not spec.pdeathsig and parent_fd is not None:
            os.close(parent_fd)
            parent_fd = None
        _become_child(spec, env, targets, fds, parent_fd, self.zygote, self.pickler)


def _loop(sock: socket.socket, fd: int, wake_r: int, wake_w: int, me: int, watched: dict[int, bool],
          reply: Any, reap: Any, importlib: Any, cloudpickle: Any,
          spares: _Spares) -> bool:  # pragma: no cover - in the helper
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [], spares.timeout())
        spares.when_due()
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if sock.fileno() not in ready:
            continue
        try:
            payload, fds = _recv_request(sock)
        except (EOFError, ConnectionError):
            return True  # EOF without a goodbye: the caller is gone
        try:
            req_id, spec, env, targets = cloudpickle.loads(payload)
        except Exception as e:
            for f in fds:
                os.close(f)
            reply(("error", None, PycontainError(f"bad request to the zygote: {e!r}", op="zygote")))
            continue
        if spec == "bye":
            return False
        if spec == "import":
            # Modules to keep loaded from now on, so later children have them
            # (and the spare, forked before, makes way for one that has them).
            spares.retire()
            failed = []
            for name in env:
                try:
                    importlib.import_module(name)
                except BaseException as e:  # a module may fail in any way: only its name comes back
                    failed.append((name, f"{type(e).__name__}: {e}"))
            reply(("imported", req_id, failed))
            spares.make()
            continue
        if spec == "spare":
            pid = spares.hand_over(env, fds)
            if pid is not None:
                for f in fds:
                    os.close(f)
                watched[pid] = bool(targets)
                reply(("pid", req_id, pid))
                reap()
                continue
            try:  # no spare: fork as for any other request
                spec, env, targets = cloudpickle.loads(env)
            except Exception as e:
                for f in fds:
                    os.close(f)
                reply(("error", req_id, PycontainError(f"bad request to the zygote: {e!r}", op="zygote")))
                continue
        try:
            pid, parent_fd = forker.fork(spec)
        except BaseException as e:
            for f in fds:
                os.close(f)
            reply(("error", req_id, e if isinstance(e, PycontainError) else
                   kernel_error("fork", getattr(e, "errno", None) or errno.EAGAIN)))
            continue
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                sock.detach()
                os.close(fd)
                os.close(wake_r)
                os.close(wake_w)
                spares.close_in_child()  # the zygote's, not ours
                _become_child(spec, env, targets, fds, parent_fd, me, cloudpickle)
            finally:
                os._exit(_child.SETUP_FAILED)
        for f in fds:
            os.close(f)
        watched[pid] = bool(spec.pdeathsig)
        reply(("pid", req_id, pid))
        reap()


def _become_child(spec: ChildSpec, env: dict[str, str], targets: dict[str, Any], fds: list[int],
                  parent_fd: int | None, zygote: int, pickler: Any) -> None:  # pragma: no cover - in the child
    """A fresh fork (or a spare taking its request) becomes ``spec``'s child."""
    if parent_fd is not None:
        # Out of the way of the fd numbers the caller's fds get.
        floor = max([*targets["numbers"], *fds, parent_fd, 2]) + 1
        parent_fd, old = fcntl.fcntl(parent_fd, fcntl.F_DUPFD_CLOEXEC, floor), parent_fd
        os.close(old)
    channels = _place_fds(fds, targets)
    try:
        # The caller's process group: its terminal's job control and
        # its signals (the notebook's stop button) reach us as they
        # would a child of the caller.
        os.setpgid(0, targets.get("pgid", 0))
    except OSError:
        pass
    _child.become(spec, channels, parent=zygote, env=env, pickler=pickler, parent_fd=parent_fd)


def _place_fds(fds: list[int], targets: dict[str, Any]) -> _child.Channels:  # pragma: no cover - in the child
    """Put received fds at the numbers the caller gave them; return the pipe channels."""
    wanted: list[int] = targets["numbers"]
    floor = max([*wanted, *fds, 2]) + 1
    high = [fcntl.fcntl(f, fcntl.F_DUPFD_CLOEXEC, floor) for f in fds]
    for f in fds:
        os.close(f)
    internal = {targets["status"], targets["sync"], targets["result"]}
    for src, dst in zip(high, wanted):
        # The pipes to the caller stay close-on-exec; stdio is inherited;
        # _fix_stdio makes pass_fds inheritable.
        os.dup2(src, dst, inheritable=dst < 3 and dst not in internal)
    for src in high:
        os.close(src)
    return _child.Channels(targets["status"], targets["sync"], targets["result"])


# -- the caller's side -----------------------------------------------------------------


class Zygote:
    """A fork server for :func:`pycontain.engine.start` (``zygote=``).

    Args:
        preload: modules the zygote imports once, so ``target`` children
            start with them loaded (e.g. ``("numpy", "pandas")``).
        cleanup: ``"module:function"`` the zygote calls if the caller dies
            without closing it (killed, crashed), once the caller is gone
            and its children that die with it are reaped; containers use
            ``"pycontain.container_gc:after_creator_died"``, so what they left behind
            goes at once.

    It is a context manager; :meth:`close` stops it (and its children).
    """

    def __init__(self, preload: Iterable[str] = (), cleanup: str | None = None) -> None:
        from pycontain.engine.process import start

        if cleanup is not None and (not isinstance(cleanup, str) or ":" not in cleanup):
            raise InvalidArgument("cleanup is 'module:function'", field="cleanup", value=cleanup,
                                  hint='e.g. "pycontain.container_gc:collect"')
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYCONTAIN_ZYGOTE_PATH"] = json.dumps([p for p in sys.path if isinstance(p, str)])
        env["PYCONTAIN_ZYGOTE_PRELOAD"] = json.dumps(list(preload))
        env["PYCONTAIN_ZYGOTE_CLEANUP"] = cleanup or ""
        try:
            # No pdeathsig: it would fire when the creating *thread* ends; the
            # zygote ends when this socket closes instead (also on our death).
            self._helper = start(ChildSpec(argv=[sys.executable, "-I", "-c", _BOOT, str(theirs.fileno())],
                                           env=env, pass_fds=[theirs.fileno()], pdeathsig=None,
                                           preexec=_own_process_group))
        finally:
            theirs.close()
        self.pid = self._helper.pid
        self._owner = os.getpid()  # a forked copy of the caller must not talk on our socket
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._next_id = 0
        self._replies: dict[int, tuple[Any, ...]] = {}
        self._statuses: dict[int, int] = {}
        self._forgotten: set[int] = set()
        self._closed = False
        self._dead = False

    # -- requests ------------------------------------------------------------------------

    def fork(self, spec: ChildSpec, env: dict[str, str], channels: _child.Channels) -> int:
        """Ask the zygote for a child that becomes ``spec``; returns its pid."""
        self._check_usable()
        spec, fds, targets = _request_parts(spec, channels)
        with self._send_lock:
            self._next_id += 1
            req_id = self._next_id
            try:
                if _fits_spare(spec):
                    # Pickled apart: the zygote passes it on to its spare child unread.
                    data = _frame(pickle.dumps((req_id, "spare", _dumps((spec, env, targets)),
                                                bool(spec.pdeathsig))))
                else:
                    data = _frame(_dumps((req_id, spec, env, targets)))
            except Exception as e:
                raise _unsendable(spec, e) from e
            try:
                _send_request(self._sock, data, fds)
            except OSError as e:
                self._dead = True
                raise kernel_error("send to zygote", e.errno or errno.EPIPE) from None
        while req_id not in self._replies:
            self._pump(None, lambda: req_id in self._replies)
        msg = self._replies.pop(req_id)
        if msg[0] == "error":
            raise msg[2]
        return int(msg[2])

    def preload(self, modules: Iterable[str]) -> list[tuple[str, str]]:
        """Import ``modules`` in the zygote, so children forked later have them loaded.

        Returns ``(name, error)`` for the modules that failed to import (the
        zygote goes on without them). Modules that start threads at import
        are fine: a child of a fork has only the forking thread.

        Example::

            z.preload(["numpy", "pandas"])
        """
        import cloudpickle

        names = [m for m in modules if isinstance(m, str) and m]
        if not names:
            return []
        self._check_usable()
        with self._send_lock:
            self._next_id += 1
            req_id = self._next_id
            try:
                self._sock.sendall(_frame(cloudpickle.dumps((req_id, "import", names, None))))
            except OSError as e:
                self._dead = True
                raise kernel_error("send to zygote", e.errno or errno.EPIPE) from None
        while req_id not in self._replies:
            self._pump(None, lambda: req_id in self._replies)
        return list(self._replies.pop(req_id)[2])

    def _check_usable(self) -> None:
        if self._closed or self._dead:
            raise KernelError("the zygote is gone", op="zygote", errno=errno.ESRCH,
                              hint="make a new Zygote()")
        if os.getpid() != self._owner:
            raise KernelError(f"this zygote belongs to process {self._owner}", op="zygote", errno=errno.EPERM,
                              hint="a forked process makes its own Zygote (shared_zygote() does that)")

    # -- statuses (the reaper interface of Child) -------------------------------------------

    def forget(self, pid: int) -> None:
        """Drop ``pid``'s exit status, now or when it comes (its waiter learnt it otherwise)."""
        with self._recv_lock:
            if self._statuses.pop(pid, None) is None:
                self._forgotten.add(pid)

    def poll_status(self, pid: int) -> int | None:
        while pid not in self._statuses and self._pump(0.0, lambda: pid in self._statuses):
            pass
        return self._statuses.pop(pid, None)

    def wait_status(self, pid: int, deadline: float | None) -> int | None:
        while pid not in self._statuses:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._pump(left, lambda: pid in self._statuses)
        return self._statuses.pop(pid)

    def _pump(self, timeout: float | None, done: Any) -> bool:
        """Read one message from the zygote if one comes within ``timeout``.

        Returns whether a message was read. ``done()`` is checked once the
        read lock is held: another thread may have read our message meanwhile.
        """
        if not self._recv_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        try:
            if done():
                return False
            if self._dead or self._closed:
                raise KernelError("the zygote " + ("was closed" if self._closed else "died")
                                  + "; its children were killed", op="zygote",
                                  errno=errno.ESRCH, hint="make a new Zygote()")
            ready, _, _ = select.select([self._sock], [], [], timeout)
            if not ready:
                return False
            try:
                head = _recv_exact(self._sock, _HEADER)
                msg = pickle.loads(_recv_exact(self._sock, int.from_bytes(head, "big")))
            except (EOFError, ConnectionError):
                self._dead = True
                raise KernelError("the zygote died; its children were killed", op="zygote",
                                  errno=errno.ESRCH, hint="make a new Zygote()") from None
            if msg[0] == "exit":
                if msg[1] in self._forgotten:
                    self._forgotten.discard(msg[1])
                else:
                    self._statuses[msg[1]] = msg[2]
            else:
                self._replies[msg[1]] = msg
            return True
        finally:
            self._recv_lock.release()

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the zygote; children still running are killed with it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._owner and not self._dead:
            # A goodbye: without it (the caller killed or crashed) the zygote
            # also runs its ``cleanup`` once the caller is gone.
            try:
                with self._send_lock:
                    self._sock.sendall(_frame(pickle.dumps((0, "bye", None, None))))
            except OSError:
                pass
        self._sock.close()
        if os.getpid() == self._owner:  # only the creator can reap the helper
            self._helper.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Zygote pid={self.pid}{' closed' if self._closed else ''}>"


def _request_parts(spec: ChildSpec, channels: _child.Channels) -> tuple[ChildSpec, list[int], dict[str, Any]]:
    """What a forked-elsewhere child needs besides the spec: the fds to send
    (SCM_RIGHTS) and the numbers they must have in the child."""
    if spec.cwd is None and spec.preexec is None and "mnt" not in {kind for kind, _ in spec.join}:
        # A forked child starts in the caller's current directory; so does ours.
        # (Joining a mount namespace moves to its root, in both cases; a
        # preexec that changes the root, e.g. a container's, picks its own.)
        try:
            spec = dataclasses.replace(spec, cwd=os.getcwd())
        except OSError:
            pass
    fds: list[int] = []
    numbers: list[int] = []

    def add(fd: int | None) -> None:
        if fd is not None and fd not in numbers:
            fds.append(fd)
            numbers.append(fd)

    add(channels.status)
    add(channels.sync)
    add(channels.result)
    for i, src in enumerate((spec.stdin, spec.stdout, spec.stderr)):
        if src is not None:
            add(src)
        elif is_open(i):
            add(i)  # "inherit" means the caller's stdio, not the zygote's
    for fd in spec.pass_fds:
        add(fd)
    if len(fds) > _MAX_FDS:
        raise PycontainError(f"too many fds to pass ({len(fds)})", op="zygote", hint=f"at most {_MAX_FDS}")
    targets = {"numbers": numbers, "status": channels.status, "sync": channels.sync,
               "result": channels.result, "pgid": os.getpgrp()}
    return spec, fds, targets


def _unsendable(spec: ChildSpec, e: Exception) -> InvalidArgument:
    return InvalidArgument(f"the child's code or arguments cannot be sent to the zygote: {e}",
                           field="target", value=spec.target,
                           hint="targets, args and preexec must be picklable (cloudpickle); "
                           "or start without zygote= to fork the caller")


class LocalSpare(DirectReaper):
    """A spare child of this very process, made ahead of one container start.

    For a short-lived single-threaded process that will start one container
    soon and has time before (the CLI server's worker, forked ahead of its
    command): the child is forked now into a new pid namespace, makes its
    net/ipc/uts namespaces and waits (see :class:`_Spares`); the start then
    costs neither this process's fork nor those namespaces. It is this
    process's own child, so it is reaped here (``waitpid``). One use; after
    it, or if it died, :meth:`fits` says no and the caller forks as usual.
    """

    def __init__(self, close_in_child: Iterable[int] = ()) -> None:
        import cloudpickle

        self._spares = _Spares(os.getpid(), tuple(close_in_child), cloudpickle)
        self._spares.make()

    def fits(self, spec: ChildSpec) -> bool:
        """Whether the spare can become ``spec`` (else :func:`pycontain.engine.start` forks as usual)."""
        pid = self._spares.pid
        if pid is None or not _fits_spare(spec):
            return False
        try:
            gone = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            gone = True
        if gone:  # killed while it waited
            self._spares.reaped(pid)
            return False
        return True

    def fork(self, spec: ChildSpec, env: dict[str, str], channels: _child.Channels) -> int:
        spec, fds, targets = _request_parts(spec, channels)
        try:
            payload = _dumps((spec, env, targets))
        except Exception as e:
            raise _unsendable(spec, e) from e
        pid = self._spares.hand_over(payload, fds, make=False)
        if pid is None:
            raise KernelError("the spare child is gone", op="fork", errno=errno.ESRCH,
                              hint="fork without it (pycontain does so by itself)")
        return pid

    # As the reaper of Child (poll_status, wait_status): our own children, reaped as any other.

    def forget(self, pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # it is gone (its pidfd said so): reap the zombie

    def close(self) -> None:
        """Let an unused spare go (it exits on EOF), and reap it."""
        pid = self._spares.pid
        self._spares.retire()
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


_local: list[LocalSpare] = []


def make_local_spare(close_in_child: Iterable[int] = ()) -> LocalSpare:
    """Make this process's :class:`LocalSpare` (see there); ``local_spare()`` returns it."""
    spare = LocalSpare(close_in_child)
    _local[:] = [spare]
    return spare


def local_spare() -> LocalSpare | None:
    """This process's :class:`LocalSpare`, if one was made here (not in a parent)."""
    if _local and _local[0]._spares.zygote == os.getpid():
        return _local[0]
    return None


def _own_process_group() -> None:  # pragma: no cover - runs in the zygote before exec
    """A process group of its own, so whoever signals the caller's group does
    not kill the zygote behind the caller's back. (ipykernel, at shutdown,
    SIGTERMs every process of its group and waits until none is left; a dead
    zygote stays the caller's zombie until the caller's atexit reaps it, so
    the kernel waited for itself until it was killed, and atexit never ran.)
    Its children join the caller's group again: for them the group's signals
    (a terminal's Ctrl-C and job control, the notebook's stop button) are right."""
    os.setpgid(0, 0)


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def shared_zygote(preload: Iterable[str] = (), cleanup: str | None = None) -> Zygote:
    """The process-wide :class:`Zygote`, started on first use (and again if it died).

    ``preload`` and ``cleanup`` count only when this call starts it. It is
    closed at interpreter exit.

    Example::

        start(ChildSpec(argv=["true"]), zygote=shared_zygote())
    """
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed or _shared._dead or _shared._owner != os.getpid():
            import atexit

            _shared = Zygote(preload, cleanup)
            atexit.register(_shared.close)
        return _shared
