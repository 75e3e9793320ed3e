"""The userspace port forwarder, on 127.0.0.1 only (no root, no namespaces)."""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from pycontain.backends.portproxy import TcpForwarder
from pycontain.errors import Busy
from pycontain.network import PortForward


class Upstream:
    """A threaded server on 127.0.0.1: echoes until EOF, then sends 'bye' and closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            conn.sendall(b"bye")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture
def upstream():  # type: ignore[no-untyped-def]
    u = Upstream()
    yield u
    u.close()


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the reply must still come back
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_forwards_both_ways_with_half_close(upstream: Upstream) -> None:
    threads_before = threading.active_count()
    with TcpForwarder(("127.0.0.1", 0), ("127.0.0.1", upstream.port)) as fwd:
        payload = bytes(range(256)) * 4000  # 1 MB
        assert _roundtrip(fwd.port, payload) == payload + b"bye"
        results: list[bytes] = []

        def client(i: int) -> None:
            results.append(_roundtrip(fwd.port, b"x%d" % i))

        clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(10)
        assert sorted(results) == sorted(b"x%dbye" % i for i in range(8))
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before + len(upstream.threads) + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith("pycontain-port")], names


def test_close_ends_open_connections_and_frees_the_port(upstream: Upstream) -> None:
    fwd = TcpForwarder(("127.0.0.1", 0), ("127.0.0.1", upstream.port))
    port = fwd.port
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"hi")
    assert s.recv(2) == b"hi"
    fwd.close()
    fwd.close()  # idempotent
    s.settimeout(5)
    assert s.recv(100) in (b"", b"bye")
    s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    # The port can be bound again at once (SO_REUSEADDR, listener closed).
    again = TcpForwarder(("127.0.0.1", port), ("127.0.0.1", upstream.port))
    again.close()


def test_unreachable_target_drops_the_client_only(upstream: Upstream) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # nothing listens there once closed
    with TcpForwarder(("127.0.0.1", 0), ("127.0.0.1", dead_port)) as fwd:
        with socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        # The forwarder still accepts.
        with socket.create_connection(("127.0.0.1", fwd.port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(10) == b""


def test_port_in_use_is_busy() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(Busy) as e:
            PortForward(port, "127.0.0.1", 80)
    assert e.value.errno == errno.EADDRINUSE
    assert e.value.field == "ports" and e.value.value == port
    assert "in use" in str(e.value)
