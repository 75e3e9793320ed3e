"""The code that runs in the single-threaded child, between fork and exec.

This module is the one place where "a fresh single-threaded process becomes
what a :class:`~pycontain.engine.spec.ChildSpec` says" (DESIGN.md §3). Its
fork source may be the caller (direct fork) or a zygote; the code is the same.

Rules for everything here, because the child is a fork of a possibly
multi-threaded process whose other threads may hold locks (stdio buffers,
logging, the import machinery) at the instant of the fork:

* no logging, no print, no ``sys.stdout``/``sys.stderr``;
* no imports: every module used is imported at module load, in the parent;
* the garbage collector is off, so no foreign ``__del__`` runs here;
* errors travel to the parent through a CLOEXEC pipe with ``os.write``;
* the process never returns into the caller's code: it leaves with
  ``os._exit`` (or ``exec``).
"""

from __future__ import annotations

import _signal
import errno
import fcntl
import gc
import os
import pickle
import select
import signal
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pycontain.engine.spec import ChildSpec
from pycontain.errors import PycontainError, kernel_error
from pycontain.kernel import constants as C
from pycontain.kernel import nsfs, syscalls

# Message kinds on the status pipe (child -> parent). Each message is one
# kind byte, a 4-byte big-endian length and a payload.
#
# Namespaces created; payload: b"first" or b"workload" and the kinds to persist.
# The parent writes id maps (for "first") and binds, then answers b"G" on the sync pipe.
MSG_UNSHARED = b"U"
MSG_WORKLOAD = b"P"  # pid of the workload when an intermediate forked it (pid/time namespaces)
MSG_ERROR = b"E"  # payload: a pickled PycontainError

#: Kinds a relay unshares before forking the workload: pid and time only act
#: on children, and a new user namespace must exist first to own the others.
FORK_FIRST_KINDS = frozenset({"user", "pid", "time"})

#: Exit code of a child whose setup failed (like a shell's "cannot execute").
SETUP_FAILED = 127

# User-namespace setup order matters: join the user namespace first, so the
# other joins happen with the capabilities it grants (setns(2), NOTES); mnt
# last, since it changes root and cwd.
_JOIN_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "time", "mnt")


# Signals the pid-namespace relay passes on to the workload instead of dying.
_FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
              signal.SIGCONT, signal.SIGWINCH)


class Channels:
    """The parent's pipes, as fd numbers in the child."""

    __slots__ = ("status", "sync", "result")

    def __init__(self, status: int, sync: int | None, result: int | None) -> None:
        self.status = status  # write end, CLOEXEC: exec closes it, telling the parent "running"
        self.sync = sync  # read end: the parent's "go on" after it wrote maps / persisted
        self.result = result  # write end for target's pickled outcome


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue
        view = view[n:]


def send(fd: int, kind: bytes, payload: bytes) -> None:
    write_all(fd, kind + len(payload).to_bytes(4, "big") + payload)


# Upper bound for closing fds: os.closerange becomes one close_range(2) call.
_FD_CEILING = 0x7FFFFFFF

_ATOMIC_PAYLOAD = 4096 - 5 - 64  # PIPE_BUF minus the header, with room to spare


def _os_error(op: str, e: OSError, path: str | None = None) -> PycontainError:
    return kernel_error(op, e.errno or errno.EIO, path=path if path is not None else e.filename)


def _report(fd: int, exc: BaseException) -> None:
    if not isinstance(exc, PycontainError):
        if isinstance(exc, OSError):
            exc = _os_error("setup", exc)
        else:
            text = "".join(traceback.format_exception(exc))
            exc = PycontainError(f"child setup failed: {type(exc).__name__}: {exc}", op="setup",
                                 hint="remote traceback:\n" + text)
    try:
        payload = pickle.dumps(exc)
    except Exception:
        payload = pickle.dumps(PycontainError(str(exc), op="setup"))
    if len(payload) > _ATOMIC_PAYLOAD:
        # Writes up to PIPE_BUF are atomic: keep errors whole when a relay
        # and its workload share the pipe.
        fields: dict[str, Any] = {"op": getattr(exc, "op", None) or "setup", "path": getattr(exc, "path", None),
                  "errno": getattr(exc, "errno", None), "hint": (getattr(exc, "hint", None) or "")[:1000] or None}
        try:
            short = type(exc)(getattr(exc, "message", str(exc))[:1500], **fields)
        except Exception:
            short = PycontainError(str(exc)[:1500], **fields)
        payload = pickle.dumps(short)
    try:
        send(fd, MSG_ERROR, payload)
    except OSError:
        pass


def reset_signals() -> None:
    """Default dispositions and an empty mask, as a fresh exec'd program expects.

    Python ignores SIGPIPE and SIGXFSZ and installs its own handlers; a
    workload must not inherit that (subprocess's restore_signals, runc).
    """
    # The C-level _signal functions: signal's wrappers convert every number
    # to an enum member, which costs more than the reset itself.
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if _signal.getsignal(sig) != _signal.SIG_DFL:
                _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            continue  # reserved real-time signals of the C library
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


def _set_pdeathsig(spec: ChildSpec, parent: int, parent_fd: int | None) -> None:
    if spec.pdeathsig:
        syscalls.set_pdeathsig(int(spec.pdeathsig))
        # The parent may have died before prctl: then no signal comes. In a
        # new pid namespace getppid() is 0, so a pidfd of the parent tells.
        if parent_fd is not None:
            gone, _, _ = select.select([parent_fd], [], [], 0)
            os.close(parent_fd)
            if gone:
                os._exit(SETUP_FAILED)
        elif os.getppid() != parent:
            os._exit(SETUP_FAILED)


def _join(spec: ChildSpec) -> None:
    fds = []
    try:
        # Open every file first: joining mnt changes what paths mean. A pid
        # namespace the forker placed us in is joined already.
        joins = [kp for kp in spec.join if not (kp[0] == "pid" and spec.pid_by_forker)]
        order = sorted(joins, key=lambda kp: _JOIN_ORDER.index(kp[0]))
        for kind, path in order:
            fds.append((kind, path, nsfs.open_namespace(path)))
        for kind, path, fd in fds:
            try:
                syscalls.setns(fd, C.NAMESPACE_FLAGS[kind])
            except PycontainError as e:
                e.path = path
                raise kernel_error(f"setns {kind}", e.errno or errno.EINVAL, path=path,
                                   hint=None if e.errno != errno.EINVAL else
                                   f"is {path} a {kind} namespace? (setns checks the type)") from None
    finally:
        for _, _, fd in fds:
            os.close(fd)


def _inside_root_mapped(text: str | None) -> bool:
    return bool(text) and any(ln.split()[0] == "0" for ln in (text or "").splitlines() if ln.strip())


def _become_root_inside(spec: ChildSpec) -> None:
    """Switch to id 0 of the new user namespace where the maps define it.

    After unshare(CLONE_NEWUSER) the process keeps its old kernel ids, which
    the new maps usually do not cover (it shows as 65534 inside); a container
    expects to be root inside, mapped to the outside ids of the map.
    """
    try:
        if _inside_root_mapped(spec.gid_map):
            os.setresgid(0, 0, 0)
            if os.geteuid() == 0 or _inside_root_mapped(spec.uid_map):
                try:
                    os.setgroups([])
                except PermissionError:
                    pass  # setgroups was denied (unprivileged gid_map): nothing to drop then
        if _inside_root_mapped(spec.uid_map):
            os.setresuid(0, 0, 0)
    except OSError as e:
        raise _os_error("setresuid", e) from None


def _fix_stdio(spec: ChildSpec, keep: set[int]) -> None:
    sources = (spec.stdin, spec.stdout, spec.stderr)
    # Sources that sit on another stdio slot would be overwritten by an
    # earlier dup2: move them out of the way first.
    moved = list(sources)
    for i, src in enumerate(sources):
        if src is not None and src < 3 and src != i:
            moved[i] = fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 3)
    for i, src in enumerate(moved):
        if src is None:
            continue
        if src == i:
            os.set_inheritable(i, True)
        else:
            os.dup2(src, i, inheritable=True)
    for fd in spec.pass_fds:
        if fd not in (0, 1, 2):
            os.set_inheritable(fd, True)
    # Close everything else: fds leaked into containers are a classic escape
    # (CVE-2024-21626 in runc). os.closerange uses close_range(2) when it can.
    top = -1
    for fd in sorted(keep | {0, 1, 2}):
        if fd > top + 1:
            os.closerange(top + 1, fd)
        top = fd
    os.closerange(top + 1, _FD_CEILING)


def _chdir(path: str) -> None:
    """chdir after the fds were closed, and refuse a directory outside our root.

    A cwd of ``/proc/self/fd/N`` through an fd leaked from the caller would
    be a directory of the host (runc's CVE-2024-21626): with the fds closed
    it no longer resolves; and getcwd(2) calls a directory outside the root
    "(unreachable)" (glibc: ENOENT), which is refused as well.
    """
    try:
        os.chdir(path)
    except OSError as e:
        raise _os_error("chdir", e, path) from None
    try:
        where = os.getcwd()
    except OSError:
        where = "(unreachable)"
    if not where.startswith("/"):
        raise kernel_error("chdir", errno.EPERM, path=path,
                           detail="the directory is outside the root (CVE-2024-21626)")


def _exec(spec: ChildSpec, env: dict[str, str]) -> NoReturn:
    assert spec.argv is not None
    exec_argv(spec.argv, env)


def _on_path(argv: Sequence[str], env: dict[str, str], run: Callable[[str], Any], *, look_first: bool) -> Any:
    """``run(path)`` for each PATH candidate of ``argv[0]`` (``env``'s PATH, like
    execvpe) until one works; raise the most meaningful error as typed."""
    program = argv[0]
    candidates = [program] if "/" in program else [os.path.join(d, program) for d in os.get_exec_path(env)]
    first_error: OSError | None = None
    for path in candidates:
        try:
            if look_first and len(candidates) > 1:
                os.stat(path)
            return run(path)
        except OSError as e:
            # Like execvp: remember a meaningful error (EACCES) over ENOENT.
            if first_error is None or (first_error.errno == errno.ENOENT and e.errno != errno.ENOENT):
                first_error = e
    assert first_error is not None
    raise kernel_error("execve", first_error.errno or errno.ENOENT, path=program,
                       hint="is the program installed and on PATH inside the container?"
                       if first_error.errno == errno.ENOENT else None)


def exec_argv(argv: Sequence[str], env: dict[str, str]) -> NoReturn:
    """execve ``argv`` with a PATH lookup in ``env`` (like execvpe); raises the typed error."""
    _on_path(argv, env, lambda path: os.execve(path, list(argv), env), look_first=False)
    raise AssertionError("unreachable: execve returned")  # pragma: no cover


def spawn_argv(argv: Sequence[str], env: dict[str, str]) -> int:
    """Start ``argv`` as a child with a PATH lookup in ``env``; return its pid.

    posix_spawn(3): the C library starts the child with clone(CLONE_VM |
    CLONE_VFORK), so no page table of this Python process is copied (a
    fork of it costs ~0.5-1 ms, this ~0.1 ms). The child gets default
    signal dispositions and an empty signal mask, like an exec'd program
    after :func:`reset_signals`. Raises the typed error of the exec.
    Each failed posix_spawn costs a process (and a pid inside the
    container), so candidates are looked at first, as execvp's failed
    execve calls would.
    """
    return int(_on_path(argv, env, lambda path: os.posix_spawn(path, list(argv), env, setsigmask=(),
                                                                setsigdef=_DEFAULT_SIGNALS), look_first=True))


# Every catchable signal: posix_spawn resets them to their defaults in the child.
_DEFAULT_SIGNALS = tuple(s for s in signal.valid_signals()
                         if s not in (signal.SIGKILL, signal.SIGSTOP) and s < 32)


def forward_signals(workload: int) -> None:
    """Signals sent to the relay go to the workload (``kill <relay>`` works as expected)."""

    def forward(sig: int, _frame: Any) -> None:
        try:
            os.kill(workload, sig)
        except OSError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)


def _relay(workload: int) -> NoReturn:
    """Wait for the workload and leave with its status, as if we were it."""
    while True:
        try:
            _, status = os.waitpid(workload, 0)
            break
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        except InterruptedError:  # pragma: no cover
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # Die of the same signal. Not dumpable: a core of this relay is of no use.
        try:
            syscalls.prctl(C.PR_SET_DUMPABLE, 0)
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
        except Exception:
            pass
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else SETUP_FAILED)


def _run_target(spec: ChildSpec, ch: Channels, pickler: Any) -> NoReturn:
    assert spec.target is not None
    os.close(ch.status)  # "started": the parent's start() returns now
    # The collector was off during setup so no foreign __del__ ran. The
    # target may make many cycles: collect again, but only what it creates
    # -- everything inherited from the caller is frozen, so finalizers of
    # the caller's objects (whose fds are closed here) never run.
    gc.freeze()
    gc.enable()
    try:
        value = spec.target(*spec.args, **spec.kwargs)
        outcome: tuple[Any, ...] = ("ok", value)
    except BaseException as exc:
        outcome = ("err", exc, "".join(traceback.format_exception(exc)))
    try:
        data = pickler.dumps(outcome)
    except BaseException as exc:
        text = "".join(traceback.format_exception(exc))
        if outcome[0] == "ok":
            msg = f"the return value of the target cannot be pickled: {exc!r}"
            data = pickler.dumps(("unpicklable", msg, text))
        else:
            msg = f"{type(outcome[1]).__name__}: {outcome[1]}"
            data = pickler.dumps(("unpicklable", msg, outcome[2]))
    code = 0 if outcome[0] == "ok" else 1
    assert ch.result is not None
    try:
        write_all(ch.result, data)
    except OSError:
        code = SETUP_FAILED
    os._exit(code)


def _ask_parent(ch: Channels, who: bytes, persist: set[str]) -> None:
    """Ask the parent to act and wait for its go. ``who``: b"first" (maps and
    binds for the first process), b"cgroup" (move the workload into its
    cgroups) or b"workload" (binds of the workload's namespaces)."""
    send(ch.status, MSG_UNSHARED, b" ".join([who, *sorted(k.encode() for k in persist)]))
    assert ch.sync is not None
    if os.read(ch.sync, 1) != b"G":
        os._exit(SETUP_FAILED)  # the parent gave up; it reports why


#: Namespaces this process made before it knew its spec: a zygote's spare
#: child (pycontain.engine.zygote) makes a new net (with loopback up), ipc
#: and uts namespace while it waits, and is given only specs that want new
#: ones of these kinds. Empty in every other process.
PREMADE: frozenset[str] = frozenset()

#: Whether this process brought the loopback of its new net namespace up
#: (so a container's setup need not do it again).
LOOPBACK_UP = False


def _loopback_up() -> None:
    """A new network namespace comes with its loopback up (as with Docker,
    podman and ``bwrap --unshare-net``): a process inside can talk to itself
    on 127.0.0.1, and nothing else."""
    global LOOPBACK_UP
    syscalls.interface_up("lo")
    LOOPBACK_UP = True


def become(spec: ChildSpec, ch: Channels, *, parent: int, env: dict[str, str], pickler: Any,
           parent_fd: int | None = None) -> NoReturn:
    """Turn this freshly forked, single-threaded process into ``spec``'s child.

    ``parent_fd``: a pidfd of the forker, given when the forker placed this
    child in its pid namespace (see :mod:`pycontain.engine.forker`).

    Never returns: it execs, or runs the target and ``os._exit``s. A failing
    step is reported on ``ch.status`` as a pickled typed error.
    """
    gc.disable()
    try:
        reset_signals()
        _set_pdeathsig(spec, parent, parent_fd)
        if spec.affinity is not None:
            try:
                os.sched_setaffinity(0, spec.affinity)
            except OSError as e:
                raise kernel_error("sched_setaffinity", e.errno or errno.EINVAL,
                                   detail=f"cpus={sorted(spec.affinity)}") from None
        # 1. cgroups first, so everything below (and the workload) is accounted
        # and a new cgroup namespace is rooted at the new cgroup. A relay
        # (pid/time namespaces) stays out: the parent moves the workload in
        # right after the fork, so limits such as pids.max count only it.
        relay = spec.needs_relay
        if not relay:
            for path in spec.cgroup_procs:
                nsfs.join_cgroup(path)
        # 2. join existing namespaces, user first (before any new user
        # namespace, which would take away the rights to join host ones).
        if spec.join:
            _join(spec)
        # 3. new namespaces, in one unshare: the kernel creates the user
        # namespace first and makes it own the others (clone(2)). When the
        # workload must be a child (pid, time), this process unshares only
        # what must be done before the fork; the workload unshares the rest,
        # so this relay is not counted in the workload's namespaces.
        first, second = set(spec.new), set()
        if spec.pid_by_forker:
            first.discard("pid")  # the forker made it: we are its PID 1
        first -= PREMADE  # a zygote's spare made these while it waited
        if relay:
            first, second = first & FORK_FIRST_KINDS, first - FORK_FIRST_KINDS
        if first:
            syscalls.unshare(syscalls.namespace_flags(first))
        # 4. the parent maps ids and persists namespace files.
        if spec.uid_map or spec.gid_map or first & set(spec.persist):
            _ask_parent(ch, b"first", first & set(spec.persist))
        if spec.uid_map or spec.gid_map:
            _become_root_inside(spec)
        if "net" in first:
            _loopback_up()
        # 5. pid and time namespaces apply to children: fork the workload
        # (unless the forker placed us in the pid namespace already).
        if relay:
            # A pidfd of the relay, for the workload to check it did not miss
            # the relay's death (its own getppid() is 0 in a new pid namespace).
            relay_fd = syscalls.pidfd_open(os.getpid()) if spec.pdeathsig else None
            workload = os.fork()
            if workload:
                # The relay keeps nothing of the caller's: not its sockets,
                # not the write ends of pipes someone waits on for EOF.
                os.closerange(0, ch.status)
                os.closerange(ch.status + 1, _FD_CEILING)
                forward_signals(workload)
                send(ch.status, MSG_WORKLOAD, str(workload).encode())
                os.close(ch.status)
                _relay(workload)
            # The workload dies with the relay (its parent) -- and thereby
            # with the caller, since the relay dies with the caller.
            if spec.pdeathsig and relay_fd is not None:
                syscalls.set_pdeathsig(int(spec.pdeathsig))
                relay_gone, _, _ = select.select([relay_fd], [], [], 0)
                os.close(relay_fd)
                if relay_gone:
                    os._exit(SETUP_FAILED)
            if spec.cgroup_procs:
                # Only the parent knows our host pid (and, with a new user
                # namespace, only it may still write to cgroupfs).
                _ask_parent(ch, b"cgroup", set())
            if second:
                syscalls.unshare(syscalls.namespace_flags(second))
                if "net" in second:
                    _loopback_up()
                if second & set(spec.persist):
                    _ask_parent(ch, b"workload", second & set(spec.persist))
        if ch.sync is not None:
            os.close(ch.sync)
        # 6. the rest of the setup, in the final process.
        if spec.hostname is not None:
            syscalls.sethostname(spec.hostname)
        if spec.preexec is not None:
            spec.preexec()
        keep = set(spec.pass_fds) | {ch.status}
        if ch.result is not None:
            keep.add(ch.result)
        _fix_stdio(spec, keep)
        if spec.cwd is not None:
            _chdir(spec.cwd)
        if spec.target is not None:
            _run_target(spec, ch, pickler)
        _exec(spec, env)
    except BaseException as exc:
        _report(ch.status, exc)
    finally:
        os._exit(SETUP_FAILED)
