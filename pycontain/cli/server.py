"""The warm CLI server: ``pycontain run`` without importing pycontain each time.

A fresh interpreter spends ~80 ms importing the container machinery before
``pycontain run`` can start anything, more than runc takes for the whole
container. So, as Mercurial's chg and emacsclient do, one long-lived process
per user (per interpreter and launcher) imports it once and forks a worker
for each command; the launcher (bin/pycontain) is a thin client that imports
next to nothing, connects to the server's unix socket, hands over the
command and waits for its exit status. Where a C compiler is at hand, the
server builds a C client of the same protocol (client.c, see build_client)
that the launcher's shell line runs instead: no interpreter starts at all.

Protocol (one unix stream connection per command; every frame is one kind
byte, the payload length as 8 hex digits, the payload):

* client -> server ``R``: run. Payload: NUL-separated pid, umask (decimal),
  which of stdin/stdout/stderr follow (e.g. ``012``; a closed one is left
  out), argc, the arguments, then ``KEY=VALUE`` environment entries. With it,
  SCM_RIGHTS: the client's cwd (an O_PATH fd), then the present stdio fds.
* client -> server ``K``: a signal the client received (decimal signum);
  the server sends it on to the worker.
* client -> server ``S``: status; ``Q``: stop (answered with ``T`` text).
* server -> client ``X``: the worker's exit: a code, or ``-N`` when signal N
  killed it. ``N``: refused (nothing ran; the client runs the command
  in-process), e.g. when pycontain's source changed since the server started;
  the payload starts with ``restart`` (the server is going: the client starts
  a fresh one after its command) or ``keep`` (it is not: start none).

Why it is safe: the socket lives in a directory only its uid can enter
(0700, checked), the server accepts only peers of its own uid
(SO_PEERCRED) and the client talks only to a server of its own uid; stale
code never runs (the socket's name hashes the interpreter, the launcher and
the protocol; the server refuses and exits once a loaded pycontain source
file changed); it exits after an idle time; ``PYCONTAIN_CLI_SERVER=0``
turns it all off.

Containers die with their creator: the worker is the creator (it forks the
container, whose parent-death signal is tied to it). A client that dies
(EOF on its connection, even after SIGKILL) takes its worker with it
(SIGKILL), and the server then collects what the worker left (cgroup, state)
with :func:`pycontain.container_gc.collect`.

Environment: ``PYCONTAIN_CLI_SERVER`` (``0`` = never use nor start one),
``PYCONTAIN_CLI_SERVER_DIR`` (the socket directory), ``PYCONTAIN_CLI_SERVER_IDLE``
(seconds without a command before the server exits; default 300).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    import socket

ORDER = 90

#: Bump when the frames change: it is part of the socket's name, so an old
#: client never talks to a new server (the launcher has the same constant).
PROTOCOL = "1"

#: Seconds without a command before the server exits.
DEFAULT_IDLE_S = 300.0

#: What ``pycontain run`` and the container child import: the server imports
#: them once, before it forks any worker. A name that no longer exists is
#: skipped (the list is a speed-up, not a contract).
WARM_MODULES = (
    "pycontain.cli", "pycontain.cli.containers", "pycontain.container", "pycontain.container_config",
    "pycontain.container_gc", "pycontain.statedir", "pycontain.units", "pycontain.errors",
    "pycontain.cgroup", "pycontain.image", "pycontain.engine", "pycontain.engine.child",
    "pycontain.engine.forker", "pycontain.engine.process", "pycontain.engine.spec",
    "pycontain.backends.capabilities", "pycontain.backends.seccomp_cache", "pycontain.backends.hardening",
    "pycontain.backends.cgroup_limits", "pycontain.backends.cgroup_v1", "pycontain.backends.cgroup_v2",
    "pycontain.backends.storage_store", "pycontain.backends.storage_driver",
    "pycontain.backends.storage_overlay", "pycontain.backends.rootfs",
    "pycontain.kernel.syscalls", "pycontain.kernel.proc", "pycontain.kernel.cgroupfs",
    "pycontain.kernel.nsfs", "pycontain.kernel.fs", "pycontain.kernel.constants",
    "pickle", "select", "traceback", "tempfile", "random", "hashlib", "json",
)

#: Per-process caches every ``run`` fills, filled once here and inherited by
#: each worker: host facts and pure results that no client's environment
#: changes (validation regexes, the signal set, the cgroup mounts, the default
#: seccomp program for the default capabilities: ~2 ms of a first run).
WARM_CALLS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("pycontain.container_config", "make_config", {"image": "host", "command": ["/bin/true"], "name": "warm-up"}),
    ("pycontain.engine.spec", "_valid_signals", {}),
    ("pycontain.container_gc", "_cgroup_roots", {}),
    ("pycontain.backends.hardening", "prepare", {}),
)

#: The C client (client.c beside this module; see build_client): the server
#: builds it into its socket directory, where bin/pycontain's shell line finds
#: it under CLIENT_NAME (the launcher has the same name: tests keep them equal).
CLIENT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "client.c")
CLIENT_NAME = f"pycontain-client-{PROTOCOL}"

HEADER = 9  # kind byte + 8 hex digits of length
MAX_FRAME = 16 << 20  # a run request: arguments + environment, far below this


def enabled(environ: Any = None) -> bool:
    """False when ``PYCONTAIN_CLI_SERVER`` turns the server off (``0``, ``no``,
    ``false``, ``off``)."""
    env = os.environ if environ is None else environ
    return env.get("PYCONTAIN_CLI_SERVER", "1").strip().lower() not in ("0", "no", "false", "off")


def socket_dir(environ: Any = None, euid: int | None = None) -> str | None:
    """The directory of this user's CLI server sockets: ``$PYCONTAIN_CLI_SERVER_DIR``,
    else ``/run/pycontain/cli`` (root) or ``$XDG_RUNTIME_DIR/pycontain/cli``;
    None when a non-root user has no runtime directory (then no server).

    The launcher (bin/pycontain) has the same rule: keep them equal
    (tests/unit/test_cli_server.py checks).
    """
    env = os.environ if environ is None else environ
    uid = os.geteuid() if euid is None else euid
    d = env.get("PYCONTAIN_CLI_SERVER_DIR")
    if d:
        return str(d)
    if uid == 0:
        return "/run/pycontain/cli"
    x = env.get("XDG_RUNTIME_DIR")
    return f"{x}/pycontain/cli" if x else None


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits: names a socket (not a security boundary: the directory
    and the peer uid are). The launcher has the same function."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def socket_name(executable: str, launcher: os.stat_result, protocol: str = PROTOCOL) -> str:
    """The socket's file name for this interpreter, launcher (its device,
    inode and mtime: ``os.stat()`` of bin/pycontain) and protocol: another
    install, or an edited launcher, never reaches this server."""
    key = "\0".join((protocol, executable, str(launcher.st_dev), str(launcher.st_ino), str(launcher.st_mtime_ns)))
    return f"cli-{fnv1a64(key.encode('utf-8', 'surrogateescape')):016x}.sock"


def encode_frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame: ``kind`` (one byte), the length in 8 hex digits, ``payload``."""
    return kind + b"%08x" % len(payload) + payload


def parse_header(header: bytes) -> tuple[bytes, int]:
    """``(kind, payload length)`` of a frame header; ValueError if malformed."""
    if len(header) != HEADER:
        raise ValueError(f"short frame header {header!r}")
    n = int(header[1:], 16)
    if not 0 <= n <= MAX_FRAME:
        raise ValueError(f"frame length {n} out of range")
    return header[:1], n


class Request:
    """A client's run request, decoded (see the module docstring)."""

    def __init__(self, payload: bytes) -> None:
        fields = payload.split(b"\0")
        try:
            self.pid = int(fields[0])
            self.umask = int(fields[1])
            self.stdio = tuple(int(c) for c in fields[2].decode())
            argc = int(fields[3])
        except (IndexError, ValueError, UnicodeDecodeError):
            raise ValueError("malformed run request") from None
        if argc < 0 or len(fields) < 4 + argc or any(i not in (0, 1, 2) for i in self.stdio):
            raise ValueError("malformed run request")
        self.argv = [os.fsdecode(a) for a in fields[4:4 + argc]]
        self.env: dict[bytes, bytes] = {}
        for entry in fields[4 + argc:]:
            key, sep, value = entry.partition(b"=")
            if sep and key:
                self.env[key] = value

    @staticmethod
    def encode(pid: int, umask: int, stdio: str, argv: list[str], env: dict[bytes, bytes]) -> bytes:
        """The payload of a run request (what the launcher sends)."""
        return b"\0".join([b"%d" % pid, b"%d" % umask, stdio.encode(), b"%d" % len(argv),
                           *(os.fsencode(a) for a in argv), *(k + b"=" + v for k, v in env.items())])


def _peer_uid(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of ``conn`` (SO_PEERCRED)."""
    import socket
    import struct

    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return pid, uid


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        data = conn.recv(min(n, 1 << 20))
        if not data:
            raise EOFError("connection closed mid-frame")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def read_frame(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """The next frame from ``conn``; None at end of file."""
    first = conn.recv(HEADER)
    if not first:
        return None
    header = first if len(first) == HEADER else first + _recv_exact(conn, HEADER - len(first))
    kind, n = parse_header(header)
    return kind, _recv_exact(conn, n) if n else b""


def recv_frame_with_fds(conn: socket.socket, max_fds: int = 16) -> tuple[bytes, bytes, list[int]]:
    """One frame and the fds that came with it (close-on-exec). Reads exactly
    the frame: a forwarded signal right behind it stays for later. Raises
    EOFError, ValueError or OSError (the fds closed then)."""
    import socket

    header, ancdata, _flags, _addr = conn.recvmsg(HEADER, socket.CMSG_SPACE(max_fds * 4), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, type_, data in ancdata:
        if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, usable, 4))
    try:
        if not header:
            raise EOFError("the peer left before its request")
        if len(header) < HEADER:
            header += _recv_exact(conn, HEADER - len(header))
        kind, n = parse_header(header)
        return kind, _recv_exact(conn, n) if n else b"", fds
    except BaseException:
        _close_all(fds)
        raise


def check_dir(path: str) -> None:
    """Make ``path`` (and parents) if missing, then insist it is a real
    directory of this uid that nobody else may enter. Raises PermissionError."""
    import stat

    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path}: not a directory of uid {os.geteuid()} with mode 0700 "
                              f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")


# -- the C client ----------------------------------------------------------------
#
# The Python client in bin/pycontain costs an interpreter's start (~17 ms
# here) before it can say a word to the server; client.c does the same job in
# ~1 ms. The server builds it, once per source (its name carries a hash of
# client.c and the protocol), in a child process at low priority after it
# took its socket: never on a command's critical path, and never at all
# without a C compiler (the Python client then keeps doing the job).


def client_compiler(environ: Any = None) -> list[str] | None:
    """The C compiler command: ``$CC`` (split as a shell would), else ``cc``,
    found on ``PATH``; None when there is none."""
    import shlex
    import shutil

    env = os.environ if environ is None else environ
    try:
        words = shlex.split(env.get("CC") or "cc")
    except ValueError:
        return None
    if not words:
        return None
    exe = shutil.which(words[0], path=env.get("PATH") or os.defpath)
    return None if exe is None else [exe, *words[1:]]


def client_build_id(source: bytes) -> str:
    """What names a build of the C client: its source and the protocol."""
    import hashlib

    return hashlib.sha256(PROTOCOL.encode() + b"\0" + source).hexdigest()[:16]


def client_build_commands(cc: list[str], out: str, source: str = CLIENT_SOURCE) -> list[list[str]]:
    """The compiler commands to try in turn: static first (no dynamic loader
    to run at each start: ~0.3 ms here), then dynamic (not every libc ships
    a static library)."""
    flags = ["-O2", f'-DPYCONTAIN_PROTOCOL="{PROTOCOL}"', "-o", out, source]
    return [[*cc, "-static", *flags], [*cc, *flags]]


def _build_client(directory: str, build_id: str, cc: list[str], close: Any) -> None:
    """The builder process: compile client.c into ``directory`` under a
    temporary name, check that it runs and names this server's sockets as
    :func:`socket_name` does, rename it into place and link it as
    CLIENT_NAME. Never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # the server kills the whole group (cc, cc1, as, ld) if it stops first
        _reset_signals()
        _close_all(close)
        os.nice(10)
        import subprocess

        built = f"{directory}/{CLIENT_NAME}-{build_id}"
        tmp = f"{built}.{os.getpid()}.tmp"
        try:
            for cmd in client_build_commands(cc, tmp):
                if subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=300).returncode == 0:
                    break
            else:
                return
            # A compiler can "succeed" into something that does not run here
            # (a noexec mount, a cross compiler): the shell line would fail on
            # it for good. Check, with any file as the launcher.
            expected = f"{directory}/{socket_name(sys.executable, os.stat(CLIENT_SOURCE))}\n"
            env = dict(os.environ, PYCONTAIN_CLI_SERVER="1", PYCONTAIN_CLI_SERVER_DIR=directory)
            out = subprocess.run([tmp, "--print-socket", sys.executable, CLIENT_SOURCE], env=env,
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            if out.returncode != 0 or out.stdout != expected.encode("utf-8", "surrogateescape"):
                return
            os.chmod(tmp, 0o700)
            os.rename(tmp, built)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        install_client(directory, build_id)
        # Builds of older sources go (temporary files of another builder stay).
        for name in os.listdir(directory):
            if (name.startswith(CLIENT_NAME + "-") and name != os.path.basename(built)
                    and not name.endswith(".tmp")):
                try:
                    os.unlink(f"{directory}/{name}")
                except OSError:
                    pass
        code = 0
    except BaseException:
        pass
    finally:
        os._exit(code)


def install_client(directory: str, build_id: str) -> bool:
    """Make ``directory``/CLIENT_NAME the build ``build_id`` (a hard link,
    swapped in by rename: the shell line never sees a missing or half file);
    False when that build is not there or not ours."""
    import stat

    built = f"{directory}/{CLIENT_NAME}-{build_id}"
    target = f"{directory}/{CLIENT_NAME}"
    try:
        st = os.lstat(built)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return False
        try:
            if os.lstat(target).st_ino == st.st_ino:
                return True
        except FileNotFoundError:
            pass
        tmp = f"{target}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.link(built, tmp)
        os.rename(tmp, target)
    except OSError:
        return False
    return True


class _Job:
    """A running worker (or collector) and the client it answers to."""

    def __init__(self, pid: int, pidfd: int, conn: socket.socket | None, env: dict[bytes, bytes]) -> None:
        self.worker = conn is not None  # else a collector (see Server.collect)
        self.pid = pid
        self.pidfd = pidfd
        self.conn = conn
        self.env = env
        self.client_gone = False
        self.status_fd = -1
        self.reported = False  # the worker sent its exit code to the client itself


class _Spare:
    """A worker forked ahead of time, waiting for a command (see make_spare)."""

    def __init__(self, pid: int, pidfd: int, ctl: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.ctl = ctl
        self.ready = False


class Server:
    """One user's CLI server on the unix socket ``path`` (see the module docstring).

    Single-threaded: one selector loop over the listening socket, each
    client's connection (forwarded signals, EOF), each worker's pidfd (its
    exit) and a signal wake-up socket (SIGTERM/SIGINT/SIGHUP: shut down).
    """

    def __init__(self, path: str, idle_s: float | None = None) -> None:
        self.path = os.path.abspath(path)
        if idle_s is None:
            try:
                idle_s = float(os.environ.get("PYCONTAIN_CLI_SERVER_IDLE", DEFAULT_IDLE_S))
            except ValueError:
                idle_s = DEFAULT_IDLE_S
        self.idle_s = max(0.1, idle_s)
        self.started = time.time()
        self.served = 0
        self.by_spare = 0  # of which a spare worker ran
        self.jobs: dict[int, _Job] = {}  # by pidfd
        self.conns: dict[int, _Job] = {}  # by connection fd
        self.fds: set[int] = set()  # every fd of the server: closed in each worker
        self.sources: list[tuple[str, int]] = []
        self.listener: socket.socket | None = None
        self.lock_fd = -1
        self.ino = -1
        self.stopping = False
        self.stale_reason = ""
        self.sel: Any = None
        self.namespaces: dict[str, Any] = {}
        self.spare: _Spare | None = None
        # PYCONTAIN_CLI_SERVER_SPARE=0: no worker forked ahead (for comparisons)
        self.use_spare = os.environ.get("PYCONTAIN_CLI_SERVER_SPARE", "1") != "0"
        self.spare_after = 0.0  # no new spare before this time.monotonic() (one died unused)
        self.builder: tuple[int, int] | None = None  # (pid, pidfd) of the C client's builder
        self.client = "none"  # the C client: "ready", "building" or "none (why)"
        self.build_id = ""

    # -- start ----------------------------------------------------------------

    def warm_up(self) -> None:
        """Import what a ``pycontain run`` needs, then freeze it out of the
        cycle collector's view (workers are forks: fewer pages touched)."""
        import gc
        import importlib

        gc.set_threshold(50_000, 20, 20)
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # a renamed module: a slower worker, not a broken one
                continue
        for modname, function, kwargs in WARM_CALLS:
            try:
                getattr(importlib.import_module(modname), function)(**kwargs)
            except Exception:  # a speed-up, not a contract
                continue
        self.sources = []
        for name, module in list(sys.modules.items()):
            if name != "pycontain" and not name.startswith("pycontain."):
                continue
            src = getattr(module, "__file__", None)
            if not src:
                continue
            try:
                self.sources.append((src, os.stat(src).st_mtime_ns))
            except OSError:
                continue
        try:
            # An edited C client is stale code too: the next server builds it again.
            self.sources.append((CLIENT_SOURCE, os.stat(CLIENT_SOURCE).st_mtime_ns))
        except OSError:
            pass
        gc.collect()
        gc.freeze()

    def other_namespaces(self, pid: int) -> bool:
        """Whether process ``pid`` lives in namespaces other than ours (or is gone)."""
        from pycontain.errors import PycontainError
        from pycontain.kernel import proc

        try:
            return proc.namespace_ids(pid) != self.namespaces
        except (PycontainError, OSError):
            return True

    def stale(self) -> str:
        """Why the loaded code is no longer what is on disk; "" when it still is."""
        if self.stale_reason:
            return self.stale_reason
        for src, mtime in self.sources:
            try:
                now = os.stat(src).st_mtime_ns
            except OSError:
                now = -1
            if now != mtime:
                self.stale_reason = f"{src} changed since the server started"
                return self.stale_reason
        return ""

    def bind(self) -> bool:
        """Lock, bind and listen; False when another server holds the lock."""
        import fcntl
        import socket

        directory = os.path.dirname(self.path)
        check_dir(directory)
        self.lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.fds.add(self.lock_fd)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        listener.bind(tmp)
        listener.listen(128)
        self.ino = os.stat(tmp).st_ino
        # rename() replaces a stale socket atomically: a client connects to
        # the old file or this one, never to nothing.
        os.rename(tmp, self.path)
        self.listener = listener
        self.fds.add(listener.fileno())
        return True

    def owns_path(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.ino
        except OSError:
            return False

    def close_listener(self) -> None:
        """Stop taking clients: unlink our socket, drain the backlog with
        refusals, release the lock (a new server may start at once)."""
        if self.listener is None:
            return
        if self.sel is not None:
            self.sel.unregister(self.listener)
        if self.owns_path():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        if self.lock_fd >= 0:
            self.fds.discard(self.lock_fd)
            os.close(self.lock_fd)
            self.lock_fd = -1
        self.listener.setblocking(False)
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                break
            self._refuse(conn, "the CLI server is stopping", restart=True)
        self.fds.discard(self.listener.fileno())
        self.listener.close()
        self.listener = None

    # -- loop -----------------------------------------------------------------

    def serve(self) -> int:
        """Run until stopped (SIGTERM, ``pycontain server stop``), idle, replaced
        or stale; return the exit code."""
        import selectors
        import signal
        import socket

        os.chdir("/")  # pin no directory (a umount elsewhere must not be busy because of us)
        for fd in (0, 1, 2):
            # Fds received from clients must land above 2, or a worker's
            # dup2() onto 0-2 would clobber one with another.
            try:
                os.fstat(fd)
            except OSError:
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
        self.warm_up()
        from pycontain.kernel import proc

        self.namespaces = proc.namespace_ids("self")
        if not self.bind():
            return 0
        assert self.listener is not None
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self.fds.update((wake_r.fileno(), wake_w.fileno()))
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: None)
        sel = self.sel = selectors.DefaultSelector()
        self.fds.add(sel.fileno())
        sel.register(self.listener, selectors.EVENT_READ, "listen")
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        self.build_client(sel)
        last = time.monotonic()
        tick = min(5.0, self.idle_s)
        while True:
            if self.stopping:
                self.close_listener()
                self.drop_spare()
            if self.stopping and not self.jobs:
                return 0
            timeout = tick
            if self.use_spare and self.spare is None and not self.jobs and not self.stopping:
                wait = self.spare_after - time.monotonic()
                if wait <= 0:
                    self.make_spare()
                else:
                    timeout = min(timeout, wait)
            for key, _ in sel.select(timeout):
                what = key.data
                if what == "listen" and self.listener is not None:
                    try:
                        conn, _ = self.listener.accept()
                    except OSError:
                        continue
                    last = time.monotonic()
                    try:
                        self.accept(conn, sel)
                    except Exception:  # one odd client must not take the server down
                        conn.close()
                elif what == "build":
                    self.built(sel)
                elif what == "wake":
                    try:
                        while wake_r.recv(64):
                            pass
                    except BlockingIOError:
                        pass
                    self.stopping = True
                elif isinstance(what, _Spare):
                    self.spare_event(what, key.fd)
                elif isinstance(what, _Job):
                    if key.fd == what.pidfd:
                        self.reaped(what, sel)
                    elif key.fd == what.status_fd:
                        self.read_status(what, sel)
                    elif what.conn is not None:
                        self.from_client(what, sel)
            now = time.monotonic()
            if self.jobs:
                last = now
            elif not self.stopping and (now - last >= self.idle_s or not self.owns_path() or self.stale()):
                self.stopping = True

    def accept(self, conn: socket.socket, sel: Any) -> None:
        import selectors

        conn.settimeout(5.0)  # a client sends its request at once; never hang the loop on one
        try:
            peer, uid = _peer_uid(conn)
            if uid != os.geteuid():
                self._refuse(conn, f"uid {uid} is not the server's uid {os.geteuid()}")
                return
            if peer <= 0 or self.other_namespaces(peer):
                # A worker runs in the server's namespaces: a client in a
                # container or another mount namespace must run in its own.
                self._refuse(conn, "the client's namespaces are not the server's")
                return
            why = self.stale()
            if why:
                # Let a fresh server take over at once (lock and socket path
                # released first), then send this client to run in-process.
                self.stopping = True
                self.close_listener()
                self._refuse(conn, why, restart=True)
                return
            kind, body, fds = recv_frame_with_fds(conn)
        except (OSError, ValueError, EOFError):
            conn.close()
            return
        if kind == b"S":
            self._reply(conn, b"T", self.status_text().encode())
            _close_all(fds)
            return
        if kind == b"Q":
            self._reply(conn, b"T", b"stopping\n")
            _close_all(fds)
            self.stopping = True
            return
        if kind != b"R":
            _close_all(fds)
            self._refuse(conn, f"unknown request {kind!r}")
            return
        try:
            request = Request(body)
            if len(fds) != 1 + len(request.stdio):
                raise ValueError("wrong number of fds")
        except ValueError as e:
            _close_all(fds)
            self._refuse(conn, str(e))
            return
        conn.settimeout(None)
        self.fds.add(conn.fileno())
        # The worker tells its exit code to the client itself, and first to
        # us through this pipe: the client need not wait for the kernel to
        # tear the worker down (~1.5 ms), and its end of file then is no death.
        status_r, status_w = os.pipe()
        self.fds.add(status_r)  # not the worker's (it closes self.fds)
        handed = self.hand_to_spare(body, [*fds, conn.fileno(), status_w])
        if handed is not None:
            pid, pidfd = handed
            self.by_spare += 1
        else:
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                _worker(request, fds, conn.fileno(), status_w, close=[fd for fd in self.fds if fd != conn.fileno()])
            pidfd = os.pidfd_open(pid)
        _close_all([*fds, status_w])
        self.served += 1
        job = _Job(pid, pidfd, conn, request.env)
        job.status_fd = status_r
        os.set_blocking(status_r, False)
        self.fds.add(pidfd)
        self.jobs[pidfd] = job
        self.conns[conn.fileno()] = job
        conn.setblocking(False)
        sel.register(pidfd, selectors.EVENT_READ, job)
        sel.register(conn, selectors.EVENT_READ, job)
        sel.register(status_r, selectors.EVENT_READ, job)

    def from_client(self, job: _Job, sel: Any) -> None:
        """A forwarded signal, or the client's end of file (it died: so does its worker)."""
        import signal

        assert job.conn is not None
        try:
            frame = read_frame(job.conn)
        except BlockingIOError:
            return
        except (OSError, ValueError, EOFError):
            frame = None
        if frame is None:
            sel.unregister(job.conn)
            self._drop_conn(job)
            self.read_status(job, sel)
            if not job.reported:
                # The client is gone (killed, even by SIGKILL): do to the
                # worker what happened to the client, so the container dies
                # with it, as it would with an in-process command.
                job.client_gone = True
                _kill(job.pid, signal.SIGKILL)
            return
        kind, payload = frame
        if kind == b"K":
            try:
                signum = int(payload)
            except ValueError:
                return
            if 0 < signum < signal.NSIG and signum != signal.SIGKILL:
                _kill(job.pid, signum)

    # -- the C client ---------------------------------------------------------------

    def build_client(self, sel: Any) -> None:
        """Make the C client of this client.c ready in the socket directory:
        link an existing build, else fork a builder (see _build_client)."""
        import selectors

        directory = os.path.dirname(self.path)
        try:
            with open(CLIENT_SOURCE, "rb") as f:
                build_id = client_build_id(f.read())
        except OSError:
            self.client = "none (no client.c)"
            return
        if install_client(directory, build_id):
            self.client = "ready"
            return
        cc = client_compiler()
        if cc is None:
            self.client = "none (no C compiler: $CC or cc)"
            return
        pid = os.fork()
        if pid == 0:  # the builder: never returns
            _build_client(directory, build_id, cc, close=list(self.fds))
        try:
            os.setpgid(pid, pid)  # here too: stop_build may kill the group before the child set it
        except OSError:
            pass
        pidfd = os.pidfd_open(pid)
        self.fds.add(pidfd)
        self.builder = (pid, pidfd)
        self.client = "building"
        self.build_id = build_id
        sel.register(pidfd, selectors.EVENT_READ, "build")

    def built(self, sel: Any) -> None:
        """The builder ended: the client is ready, or there is none."""
        if self.builder is None:
            return
        pid = self._forget_builder(sel)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 1
        ok = status == 0 and install_client(os.path.dirname(self.path), self.build_id)
        self.client = "ready" if ok else "none (the build failed)"

    def _forget_builder(self, sel: Any) -> int:
        """Let go of the builder's pidfd (and its place in ``sel``, if one);
        its pid, for the caller to reap (a pidfd closed before the wait is
        fine: the pid stays ours until it is reaped)."""
        assert self.builder is not None
        pid, pidfd = self.builder
        self.builder = None
        if sel is not None:
            sel.unregister(pidfd)
        self.fds.discard(pidfd)
        os.close(pidfd)
        return pid

    def stop_build(self) -> None:
        """Kill an unfinished build (its whole process group) and reap it."""
        import signal

        if self.builder is None:
            return
        pid = self._forget_builder(None)
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        # what it had half written
        built = f"{os.path.dirname(self.path)}/{CLIENT_NAME}-{self.build_id}"
        for tmp in (f"{built}.{pid}.tmp", f"{os.path.dirname(self.path)}/{CLIENT_NAME}.{pid}.tmp"):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self.client = "none (stopped while building)"

    # -- the spare worker ---------------------------------------------------------
    #
    # A worker forked from the server pays, while it runs the command, a
    # copy-on-write page fault for each page of the server's heap it touches
    # (reference counts are writes): ~7 ms of a `pycontain run` here. So one
    # worker is forked ahead of time, touches the heap while nothing runs, and
    # waits for a command on a socket pair; the next command goes to it.

    def make_spare(self) -> None:
        import selectors
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the spare: never returns
            _spare(list(self.fds | {ours.fileno()}), theirs.fileno())
        theirs.close()
        spare = _Spare(pid, os.pidfd_open(pid), ours)
        self.fds.update((ours.fileno(), spare.pidfd))
        self.sel.register(ours, selectors.EVENT_READ, spare)
        self.sel.register(spare.pidfd, selectors.EVENT_READ, spare)
        self.spare = spare

    def spare_event(self, spare: _Spare, fd: int) -> None:
        """The spare is ready (a byte on its socket), or it died."""
        if spare is not self.spare:
            return  # an event of this select() round for a spare handed out meanwhile
        if fd == spare.ctl.fileno():
            try:
                data = spare.ctl.recv(16)
            except OSError:
                data = b""
            if data:
                spare.ready = True
                return
        # End of file or exit: it died unused. Try again later, not in a loop.
        self.spare_after = time.monotonic() + 5.0
        self.drop_spare()

    def drop_spare(self) -> None:
        import signal

        spare, self.spare = self.spare, None
        if spare is None:
            return
        self._forget_spare(spare)
        _kill(spare.pid, signal.SIGKILL)
        try:
            os.waitpid(spare.pid, 0)
        except ChildProcessError:
            pass
        self.fds.discard(spare.pidfd)
        os.close(spare.pidfd)

    def _forget_spare(self, spare: _Spare) -> None:
        for f in (spare.ctl, spare.pidfd):
            try:
                self.sel.unregister(f)
            except (KeyError, ValueError):
                pass
        self.fds.discard(spare.ctl.fileno())
        spare.ctl.close()

    def hand_to_spare(self, body: bytes, fds: list[int]) -> tuple[int, int] | None:
        """Give the run request ``body`` and its fds (cwd, stdio, connection,
        status pipe) to the ready spare; its (pid, pidfd), or None (no spare)."""
        import socket

        spare = self.spare
        if spare is None or not spare.ready:
            return None
        self.spare = None
        frame = encode_frame(b"R", body)
        try:
            spare.ctl.settimeout(2.0)
            sent = spare.ctl.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))])
            if sent < len(frame):
                spare.ctl.sendall(frame[sent:])
        except OSError:
            self.spare = spare
            self.drop_spare()
            return None
        self._forget_spare(spare)
        return spare.pid, spare.pidfd

    def read_status(self, job: _Job, sel: Any) -> None:
        """The worker's word that it told the client its exit code."""
        if job.status_fd < 0:
            return
        try:
            data = os.read(job.status_fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            job.reported = True
        # Data or end of file (the worker, and whatever it forked, closed it):
        # nothing more will come.
        sel.unregister(job.status_fd)
        self.fds.discard(job.status_fd)
        os.close(job.status_fd)
        job.status_fd = -1

    def reaped(self, job: _Job, sel: Any) -> None:
        self.read_status(job, sel)
        sel.unregister(job.pidfd)
        try:
            _, status = os.waitpid(job.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 1
        self.fds.discard(job.pidfd)
        os.close(job.pidfd)
        del self.jobs[job.pidfd]
        # The next spare (its fork, and its heap walk: ~20 ms of CPU) waits a
        # moment: not on the CPU while this client and its caller finish.
        self.spare_after = max(self.spare_after, time.monotonic() + 0.05)
        if job.conn is not None:
            sel.unregister(job.conn)
            if not job.reported:
                job.conn.setblocking(True)
                job.conn.settimeout(2.0)
                self._reply(job.conn, b"X", b"%d" % code)
            self._drop_conn(job)
        if job.worker and not job.reported and (code < 0 or job.client_gone):
            # A worker killed half-way leaves its container's cgroup and
            # state: collect them now rather than at the next start.
            self.collect(job.env, sel)

    def collect(self, env: dict[bytes, bytes], sel: Any) -> None:
        import selectors

        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _close_all(self.fds)
                os.environb.clear()
                os.environb.update(env)
                from pycontain.container_gc import collect

                collect()
                code = 0
            finally:
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        job = _Job(pid, pidfd, None, env)
        self.fds.add(pidfd)
        self.jobs[pidfd] = job
        sel.register(pidfd, selectors.EVENT_READ, job)

    def _drop_conn(self, job: _Job) -> None:
        if job.conn is not None:
            self.conns.pop(job.conn.fileno(), None)
            self.fds.discard(job.conn.fileno())
            job.conn.close()
            job.conn = None

    def _reply(self, conn: socket.socket, kind: bytes, payload: bytes) -> None:
        try:
            conn.sendall(encode_frame(kind, payload))
        except OSError:
            pass

    def _refuse(self, conn: socket.socket, why: str, restart: bool = False) -> None:
        """Send the client to run in-process; with ``restart``, it starts a
        fresh server after (this one is going: stale or stopping). Not
        otherwise: another uid's or another namespace's server would only
        fight this one for the socket."""
        self._reply(conn, b"N", (b"restart " if restart else b"keep ") + why.encode("utf-8", "replace"))
        conn.close()

    def status_text(self) -> str:
        from pycontain import __version__

        return (f"pid {os.getpid()}\nsocket {self.path}\nversion {__version__}\npython {sys.executable}\n"
                f"uptime_s {time.time() - self.started:.0f}\nserved {self.served}\nby_spare {self.by_spare}\n"
                f"running {len(self.conns)}\n"
                f"idle_timeout_s {self.idle_s:g}\nmodules {len(self.sources)}\n"
                f"spare {'ready' if self.spare is not None and self.spare.ready else 'none'}\n"
                f"client {self.client}\n")


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _close_all(fds: Any) -> None:
    for fd in list(fds):
        try:
            os.close(fd)
        except OSError:
            pass


def _reset_signals() -> None:
    """Signal dispositions of a fresh interpreter (the server's are its own)."""
    import signal

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _spare(server_fds: list[int], ctl_fd: int) -> None:
    """The spare worker: drop the server's fds, touch the heap, say ready,
    wait for a run request, then be its worker. Never returns."""
    code = 1
    try:
        _reset_signals()
        _close_all(server_fds)
        _touch_heap()
        try:
            # The container's PID 1, forked ahead too, with its namespaces made
            # (pycontain.engine.zygote.LocalSpare): the command's start costs
            # neither this worker's fork nor those. A speed-up, not a contract.
            from pycontain.engine.zygote import make_local_spare

            make_local_spare(close_in_child=(ctl_fd,))
        except Exception:
            pass
        os.write(ctl_fd, b"r")
        import socket

        ctl = socket.socket(fileno=ctl_fd)
        try:
            _kind, body, fds = recv_frame_with_fds(ctl)
        except EOFError:
            code = 0  # the server let us go
            return
        ctl.close()
        request = Request(body)
        _worker(request, fds[:-2], fds[-2], fds[-1], close=())
    except BaseException:
        pass
    finally:
        os._exit(code)


def _touch_heap() -> None:
    """Write to (nearly) every object of the heap inherited from the server,
    so its pages are this process's own before a command runs (a reference
    count going up and down is a write: the copy-on-write fault happens now)."""
    import gc

    gc.unfreeze()
    for obj in gc.get_objects():
        for _ in gc.get_referents(obj):
            pass
    gc.freeze()


def _worker(request: Request, fds: list[int], conn_fd: int, status_fd: int, close: Any = ()) -> None:
    """The worker: become the client's process (cwd, umask, stdio,
    environment, default signal dispositions), run the CLI, exit with its code.
    ``fds``: the client's cwd then its stdio; ``close``: the server's fds (a
    worker has no business with the listener, the lock, other clients'
    connections, and a detached container forked from it must not keep
    them; the objects that own them are never finalized: os._exit below).
    Never returns into the server's loop."""
    code = 1
    try:
        _reset_signals()
        _close_all(close)
        os.fchdir(fds[0])
        os.umask(request.umask)
        for fd, target in zip(fds[1:], request.stdio):
            os.dup2(fd, target)
        for target in {0, 1, 2} - set(request.stdio):
            try:
                os.close(target)
            except OSError:
                pass
        _close_all(fds)  # all >= 3: the server's own 0-2 are open (see serve)
        os.environb.clear()
        os.environb.update(request.env)
        _reopen_stdio(set(request.stdio))
        sys.argv = ["pycontain", *request.argv]
        from pycontain import container
        from pycontain.cli import main

        container.PRUNE_PARENT_AT_EXIT = False  # the server prunes it when it stops
        container.RECYCLE_STATE_DIRS = False  # one command each: a spare would only be deleted at exit
        code = main(request.argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
        code = 1
    finally:
        _finish(code, conn_fd, status_fd)


def _reopen_stdio(present: set[int]) -> None:
    """sys.stdin/stdout/stderr over the client's fds, buffered as a fresh
    interpreter would buffer them (line-buffered on a tty; stderr always)."""
    def stream(fd: int, mode: str, like: Any) -> Any:
        if fd not in present:
            return None
        encoding = getattr(like, "encoding", None) or "utf-8"
        errors = getattr(like, "errors", None) or ("backslashreplace" if fd == 2 else "strict")
        if mode == "r":
            return open(fd, encoding=encoding, errors=errors, closefd=False)
        line = fd == 2 or os.isatty(fd)
        return open(fd, "w", encoding=encoding, errors=errors, closefd=False, buffering=1 if line else -1)

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        new = stream(fd, mode, getattr(sys, f"__{name}__"))
        setattr(sys, name, new)
        setattr(sys, f"__{name}__", new)


def _finish(code: Any, conn_fd: int, status_fd: int) -> None:
    """What the launcher's finish() does (atexit handlers, flush, _exit), and
    tell the exit code to the server (first) and to the client."""
    code = code & 0xFF if isinstance(code, int) else 1
    try:
        import atexit

        atexit._run_exitfuncs()
        for s in (sys.stdout, sys.stderr):
            try:
                if s is not None:
                    s.flush()
            except (OSError, ValueError):
                pass
        # Close the client's stdio now: a reader of its pipes (`$(pycontain
        # run ...)`, subprocess) sees end of file at once, not after the
        # kernel has torn this process down.
        for fd in (0, 1, 2):
            try:
                os.close(fd)
            except OSError:
                pass
        os.write(status_fd, b"%d" % code)
        os.write(conn_fd, encode_frame(b"X", b"%d" % code))
    finally:
        os._exit(code)


# -- the `pycontain server` command ------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "server", help="the warm CLI server (status, stop)",
        description="The per-user warm CLI server that makes `pycontain run` start fast. "
                    "PYCONTAIN_CLI_SERVER=0 turns it off.")
    sub = p.add_subparsers(dest="server_command", metavar="ACTION")
    s = sub.add_parser("status", help="list running servers of this user")
    s.set_defaults(handler=cmd_status)
    s = sub.add_parser("stop", help="stop every server of this user (running commands finish first)")
    s.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    s.set_defaults(handler=cmd_stop)
    s = sub.add_parser("serve", help="run a server on SOCKET in the foreground (the launcher starts one itself)")
    s.add_argument("--socket", required=True, help="socket path; its directory must be 0700")
    s.add_argument("--idle", type=float, default=None, help="idle seconds before exiting")
    s.set_defaults(handler=cmd_serve)
    p.set_defaults(handler=cmd_status)


def server_sockets(directory: str | None = None) -> list[str]:
    """The socket paths in this user's socket directory (sorted)."""
    d = socket_dir() if directory is None else directory
    if not d:
        return []
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return [os.path.join(d, n) for n in sorted(names) if n.startswith("cli-") and n.endswith(".sock")]


def ask(path: str, kind: bytes, timeout: float = 5.0) -> tuple[int, str] | None:
    """Send a ``kind`` frame (S or Q) to the server on ``path``: (its pid, its
    answer); None when nothing of this uid answers there."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        pid, uid = _peer_uid(s)
        if uid != os.geteuid():
            return None
        s.sendall(encode_frame(kind))
        frame = read_frame(s)
    except (OSError, ValueError, EOFError):
        return None
    finally:
        s.close()
    if frame is None or frame[0] not in (b"T", b"N"):
        return None
    return pid, frame[1].decode("utf-8", "replace")


def cmd_status(args: argparse.Namespace) -> int:
    found = 0
    for path in server_sockets():
        answer = ask(path, b"S")
        if answer is None:
            print(f"{path}: stale (no server answers)")
            continue
        found += 1
        print(answer[1].rstrip("\n"))
        print()
    if not found:
        print(f"no CLI server running (socket directory: {socket_dir() or 'none'})")
        return 1
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_stop(args: argparse.Namespace) -> int:
    pids = []
    for path in server_sockets():
        answer = ask(path, b"Q")
        if answer is None:
            try:  # nobody answers: a stale socket file
                os.unlink(path)
            except OSError:
                pass
            continue
        pids.append(answer[0])
    deadline = time.monotonic() + args.timeout
    code = 0
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            print(f"pycontain: CLI server {pid} still running after {args.timeout:g} s", file=sys.stderr)
            code = 1
        else:
            print(f"stopped CLI server {pid}")
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    return serve(args.socket, args.idle)


def serve(path: str, idle_s: float | None = None) -> int:
    """Run a CLI server on ``path`` until it stops; the exit code.

    Raises PermissionError when the socket's directory is not this uid's own
    0700 directory.
    """
    server = Server(path, idle_s)
    try:
        return server.serve()
    finally:
        server.stop_build()
        # Its workers leave the containers' standing cgroup parent to it
        # (pycontain.container.PRUNE_PARENT_AT_EXIT): it goes, if empty, now.
        from pycontain.container_gc import prune_standing_parent

        prune_standing_parent()
