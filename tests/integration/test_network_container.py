"""Networking through the real Container: names, published ports, isolation of "none"."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from pycontain import network as pcnet

container_mod = pytest.importorskip("pycontain.container")

SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 80)); s.listen()\n"
    "for _ in range(2):\n"
    "    c, _ = s.accept(); c.sendall(b'hi from ' + socket.gethostname().encode()); c.close()\n"
)
CLIENT = (
    "import socket, sys, time\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        s = socket.create_connection(('srv', 80), timeout=2); break\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n"
    "sys.exit(0 if s.recv(100) == b'hi from srv' else 3)\n"
)
PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], 80), timeout=2)\n"
    "except OSError as e:\n"
    "    sys.exit(7 if e.errno == 101 else 8)\n"  # ENETUNREACH: no route at all
    "sys.exit(0)\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_containers_talk_by_name_and_publish_a_port() -> None:
    Container = container_mod.Container
    port = _free_port()
    with pcnet.Network.create("ctest", subnet="10.213.241.0/24") as net:
        srv = Container(command=[sys.executable, "-c", SERVER], name="srv", network=net, ports={port: 80})
        cli = Container(command=[sys.executable, "-c", CLIENT], name="cli", network=net)
        try:
            srv.start()
            cli.start()
            assert cli.wait(30) == 0
            # Traffic counters reach stats() (srv still waits for its second client).
            st = srv.stats()
            assert st["net_rx_bytes"] > 0 and st["net_tx_bytes"] > 0 and st["net_rx_packets"] > 0, st
            # The published port answers on the host's loopback.
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        assert s.recv(100) == b"hi from srv"
                    break
                except (ConnectionRefusedError, ConnectionResetError):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert srv.wait(30) == 0
            assert [e.name for e in net.endpoints()] == ["cli", "srv"]
        finally:
            for c in (cli, srv):
                c.remove(force=True)
        assert net.endpoints() == []


def test_a_none_container_reaches_nothing() -> None:
    Container = container_mod.Container
    with pcnet.Network.create("ctest2", subnet="10.213.242.0/24") as net:
        probe = Container(command=[sys.executable, "-c", PROBE, net.gateway], name="probe", network="none")
        try:
            probe.start()
            assert probe.wait(30) == 7
        finally:
            probe.remove(force=True)


def test_ip_live_names_and_bandwidth_through_container(tmp_path) -> None:
    """c.ip is the address on the network; a container that joins later is
    resolvable by an earlier one (the hosts file is live); bandwidth= holds."""
    Container = container_mod.Container
    with pcnet.Network.create("ctest2", subnet="10.213.242.0/24") as net:
        first = Container(command=["sleep", "60"], name="first", network=net, bandwidth="20mbit")
        late = Container(command=["sleep", "60"], name="late", network=net)
        try:
            first.start()
            assert first.ip is not None and first.ip.startswith("10.213.242.")
            late.start()
            assert first.exec(["sh", "-c", f"grep -q '^{late.ip}[[:space:]]late$' /etc/hosts"]) == 0
            # 5 MB from late to first at 20 Mbit/s: about 2 s.
            sink = ("import socket,time\ns=socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen()\n"
                    "c,_=s.accept(); n=0; t=None\nwhile True:\n    b=c.recv(65536)\n    if not b: break\n"
                    "    t = t or time.monotonic(); n+=len(b)\nprint(n*8/(time.monotonic()-t))")
            out = tmp_path / "rate"
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                server = first.exec([sys.executable, "-c", sink], wait=False, stdout=fd)
            finally:
                os.close(fd)
            time.sleep(0.5)
            send = ("import socket,time\nfor _ in range(100):\n    try:\n"
                    f"        s=socket.create_connection(('{first.ip}', 9000)); break\n"
                    "    except OSError: time.sleep(0.05)\ns.sendall(b'x' * 5_000_000); s.close()")
            assert late.exec([sys.executable, "-c", send], timeout=30) == 0
            server.wait(30)
            rate = float(out.read_text())
            assert 0.8 * 20e6 <= rate <= 1.2 * 20e6, rate
        finally:
            first.remove(force=True)
            late.remove(force=True)
