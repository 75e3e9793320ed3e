"""A small userspace TCP forwarder for published ports (``ports={8080: 80}``).

Why userspace and not iptables DNAT: pycontain must not touch the host's
firewall or routing (no NAT, no ip_forward, no ``route_localnet``, which DNAT
from 127.0.0.1 would need). The host reaches a container's address directly
through the bridge route, so a proxy that accepts on ``127.0.0.1:HOST_PORT``
and connects to ``CONTAINER_IP:PORT`` needs no kernel state at all.

Trade-offs, written down:

* Each byte is copied through user space (two extra copies, one thread per
  direction of each connection): fine for notebooks and dashboards, slower
  than in-kernel NAT for bulk transfers.
* The container sees connections coming from the bridge's gateway address,
  not from the real client.
* The forwarder lives in threads of the process that published the port and
  dies with it, like the containers that process owns (PR_SET_PDEATHSIG).
  A separate forwarder process would survive a detached container, at the
  price of a process to track by pid; not needed yet.
* Only TCP; only the listening address given (pycontain passes 127.0.0.1).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading

from pycontain.errors import Busy, kernel_error

_CHUNK = 64 * 1024


class TcpForwarder:
    """Accept on ``listen`` and splice each connection to ``target``.

    The socket is bound in the constructor, so a port in use fails there
    (:class:`~pycontain.errors.Busy`, errno EADDRINUSE) before any thread
    starts. :meth:`close` stops accepting, closes every open connection and
    joins the threads; it is idempotent.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, connect_timeout: float = 5.0) -> None:
        self.listen = listen
        self.target = target
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(listen)
            sock.listen(128)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise Busy("the host port is in use", op="bind", field="ports", value=listen[1],
                           errno=errno.EADDRINUSE,
                           hint="pick another host port, or stop what listens on it") from None
            raise kernel_error("bind", e.errno or errno.EIO, detail=f"{listen[0]}:{listen[1]}") from None
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"pycontain-port-{listen[1]}",
                                          daemon=True)
        self._acceptor.start()

    @property
    def port(self) -> int:
        """The port actually bound (useful when ``listen`` asked for port 0)."""
        port: int = self._sock.getsockname()[1]
        return port

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        client, _addr = self._sock.accept()
                    except OSError:
                        continue
                    self._spawn(self._connect_and_pipe, client)
        finally:
            sel.close()

    def _spawn(self, fn: object, *args: object) -> None:
        with self._lock:
            if self._closed:
                for a in args:
                    if isinstance(a, socket.socket):
                        a.close()
                return
            t = threading.Thread(target=self._run_thread, args=(fn, *args), daemon=True,
                                 name=f"pycontain-port-{self.listen[1]}-conn")
            self._threads.add(t)
            t.start()

    def _run_thread(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _track(self, *socks: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._conns.update(socks)
            return True

    def _untrack_close(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._conns.discard(s)
        for s in socks:
            s.close()

    def _connect_and_pipe(self, client: socket.socket) -> None:
        if not self._track(client):
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
            upstream.settimeout(None)
        except OSError:
            self._untrack_close(client)
            return
        if not self._track(upstream):
            upstream.close()
            self._untrack_close(client)
            return
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True,
                                name=f"pycontain-port-{self.listen[1]}-back")
        with self._lock:
            self._threads.add(back)
        back.start()
        self._pipe(client, upstream)
        back.join()
        with self._lock:
            self._threads.discard(back)
        self._untrack_close(client, upstream)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # Half-close: tell the other side this direction is done, keep the other one open.
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Stop forwarding: close the listener and every connection; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._acceptor.join()
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                break
            for t in threads:
                t.join(timeout=5)
                with self._lock:
                    self._threads.discard(t)
        with self._lock:
            left = list(self._conns)
            self._conns.clear()
        for s in left:
            s.close()

    def __enter__(self) -> TcpForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
