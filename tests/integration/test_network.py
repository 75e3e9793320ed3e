"""Networking on the real kernel: bridges, veths, names, ports, counters, limits.

"Containers" here are network namespaces made by pycontain's engine
(``new={"net"}``, kept by ``persist={"net": path}``), with Python targets
run inside them (``join=[("net", path)]``). Every address used lives inside
namespaces these tests create, or on 127.0.0.1.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from pycontain import network as pcnet
from pycontain.backends import netlink
from pycontain.engine import ChildSpec, start
from pycontain.errors import AlreadyExists, Busy, InvalidArgument, KernelError
from pycontain.kernel import nsfs

SUBNET = "10.213.201.0/24"


def _idle() -> None:
    return None


@pytest.fixture
def make_netns(tmp_path) -> Iterator[Callable[[str], str]]:  # type: ignore[no-untyped-def]
    """Make persisted network namespaces; released (and so destroyed) after the test."""
    made: list[str] = []

    def make(name: str) -> str:
        path = str(tmp_path / f"{name}.netns")
        child = start(ChildSpec(target=_idle, new={"net"}, persist={"net": path}))
        child.result(timeout=10)
        made.append(path)
        return path

    yield make
    for path in made:
        nsfs.unbind_namespace(path)


@pytest.fixture
def net() -> Iterator[pcnet.Network]:
    n = pcnet.Network.create("itest", subnet=SUBNET)
    yield n
    n.remove(force=True)


def run_in(netns: str, fn: Callable[..., object], *args: object, mnt: bool = False):  # type: ignore[no-untyped-def]
    """Start ``fn(*args)`` in ``netns`` (optionally in a private mount namespace)."""
    return start(ChildSpec(target=fn, args=args, join=[("net", netns)], new={"mnt"} if mnt else frozenset()))


# -- targets run inside the namespaces -----------------------------------------------------


def _echo_server(port: int, count: int = 1) -> int:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4)
    srv.settimeout(20)
    for _ in range(count):
        conn, _ = srv.accept()
        with conn:
            data = conn.recv(1024)
            conn.sendall(b"pong:" + data)
    return count


def _connect_retry(addr: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(addr, timeout=5)
        except (TimeoutError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _ask(addr: tuple[str, int], msg: bytes) -> bytes:
    with _connect_retry(addr) as s:
        s.sendall(msg)
        out = b""
        while True:
            chunk = s.recv(1024)
            if not chunk:
                return out
            out += chunk


def _ask_by_name_with_hosts(hosts_path: str, name: str, port: int) -> tuple[str, bytes]:
    """In a private mount ns: /etc/hosts := the network's hosts file; resolve and talk."""
    from pycontain.kernel import constants as C
    from pycontain.kernel import syscalls

    # Our mount namespace is a copy of the host's: make it private before
    # binding, or the bind would propagate back to the host.
    syscalls.mount(None, "/", None, C.MS_REC | C.MS_PRIVATE)
    syscalls.mount(hosts_path, "/etc/hosts", None, C.MS_BIND)
    ip = socket.gethostbyname(name)
    return ip, _ask((name, port), b"hello " + name.encode())


def _probe_isolated(targets: list[tuple[str, int]]) -> dict[str, object]:
    """From a "none" netns: loopback works; every other address fails."""
    out: dict[str, object] = {}
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    with socket.create_connection(srv.getsockname(), timeout=2):
        out["loopback"] = "ok"
    srv.close()
    for host, port in targets:
        try:
            socket.create_connection((host, port), timeout=2).close()
            out[host] = "connected"
        except OSError as e:
            out[host] = e.errno
    out["links"] = sorted(name for _, name in socket.if_nameindex())
    return out


def _sink(port: int, nbytes: int) -> tuple[int, float]:
    """Receive ``nbytes``; return (bytes, seconds from first to last byte)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    srv.settimeout(30)
    conn, _ = srv.accept()
    got, t0 = 0, None
    with conn:
        while got < nbytes:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            if t0 is None:
                t0 = time.monotonic()
            got += len(chunk)
        t1 = time.monotonic()
        conn.sendall(b"done")
    return got, t1 - (t0 or t1)


def _source(addr: tuple[str, int], nbytes: int) -> int:
    with _connect_retry(addr) as s:
        s.settimeout(60)
        block = b"\0" * (1 << 16)
        sent = 0
        while sent < nbytes:
            n = min(len(block), nbytes - sent)
            s.sendall(block[:n])
            sent += n
        s.recv(16)
    return sent


# -- proofs ---------------------------------------------------------------------------


def test_two_containers_talk_tcp_by_name(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    a_ns, b_ns = make_netns("a"), make_netns("b")
    a = net.attach(a_ns, name="alpha")
    b = net.attach(b_ns, name="beta")
    assert a.ip != b.ip and {a.ip, b.ip} <= {str(h) for h in net.subnet.hosts()}
    assert "beta" in open(net.hosts_path).read()
    assert netlink.addresses("eth0", b_ns) == [f"{b.ip}/24"]
    assert {"dst": "0.0.0.0/0", "gateway": net.gateway, "ifname": "eth0"} in netlink.routes(a_ns)

    server = run_in(b_ns, _echo_server, 7000)
    client = run_in(a_ns, _ask_by_name_with_hosts, net.hosts_path, "beta", 7000, mnt=True)
    ip, reply = client.result(timeout=30)
    assert ip == b.ip
    assert reply == b"pong:hello beta"
    assert server.result(timeout=10) == 1
    # The host's /etc/hosts was not touched by the child's bind mount.
    assert "beta" not in open("/etc/hosts").read()


def test_none_reaches_nothing_but_itself(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    none_ns = make_netns("none")
    pcnet.setup_loopback(none_ns)
    other = net.attach(make_netns("other"), name="other")
    server = run_in(other.netns, _echo_server, 7001)
    try:
        probe = run_in(none_ns, _probe_isolated, [(net.gateway, 7001), (other.ip, 7001), ("192.0.2.2", 7001)])
        out = probe.result(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert out["loopback"] == "ok"
    assert out["links"] == ["lo"]
    for addr in (net.gateway, other.ip, "192.0.2.2"):
        assert out[addr] == errno.ENETUNREACH, out


def test_published_port_answers_on_loopback(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    ep = net.attach(make_netns("web"), name="web")
    server = run_in(ep.netns, _echo_server, 80, 2)
    with socket.socket() as probe:  # a free host port
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    [pf] = pcnet.publish(ep, {host_port: 80})
    with pf:
        assert _ask(("127.0.0.1", host_port), b"one") == b"pong:one"
        assert _ask(("127.0.0.1", host_port), b"two") == b"pong:two"
        # 127.0.0.1 only: the host's other addresses do not answer.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("192.0.2.2", host_port), timeout=2)
    assert server.result(timeout=10) == 2
    with pytest.raises(ConnectionRefusedError):  # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", host_port), timeout=2)


def test_counters_follow_traffic(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    ep = net.attach(make_netns("c"), name="counted")
    before = ep.counters()
    nbytes = 2_000_000
    sink = run_in(ep.netns, _sink, 7002, nbytes)
    assert _source((ep.ip, 7002), nbytes) == nbytes
    got, _ = sink.result(timeout=30)
    assert got == nbytes
    after = ep.counters()
    rx = after["rx_bytes"] - before["rx_bytes"]
    tx = after["tx_bytes"] - before["tx_bytes"]
    # Payload plus TCP/IP/Ethernet headers in, acks out.
    assert nbytes <= rx <= nbytes * 1.1, (rx, after)
    assert 0 < tx < nbytes * 0.1
    assert after["rx_packets"] - before["rx_packets"] >= nbytes // 65536
    assert after["tx_packets"] > before["tx_packets"]


@pytest.mark.slow
def test_bandwidth_limit_holds_within_20_percent(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    rate = 20_000_000
    nbytes = 5_000_000
    ep = net.attach(make_netns("slow"), name="slow")
    ep.limit_bandwidth("20mbit")
    assert netlink.qdiscs(ep.ifname) == ["tbf"]
    assert netlink.qdiscs("eth0", ep.netns) == ["tbf"]

    # In: host -> container, shaped on the host end of the veth.
    sink = run_in(ep.netns, _sink, 7003, nbytes)
    _source((ep.ip, 7003), nbytes)
    got, seconds = sink.result(timeout=60)
    measured_in = got * 8 / seconds
    # Out: container -> a listener on the bridge's address, shaped on eth0 inside.
    srv = socket.socket()
    srv.bind((net.gateway, 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    src = run_in(ep.netns, _source, (net.gateway, port), nbytes)
    conn, _ = srv.accept()
    got, t0 = 0, None
    with conn:
        while got < nbytes:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            t0 = t0 or time.monotonic()
            got += len(chunk)
        t1 = time.monotonic()
        conn.sendall(b"done")
    srv.close()
    src.result(timeout=30)
    measured_out = got * 8 / (t1 - (t0 or t1))
    print(f"measured in {measured_in / 1e6:.2f} Mbit/s, out {measured_out / 1e6:.2f} Mbit/s (limit 20)")
    for measured in (measured_in, measured_out):
        assert abs(measured - rate) <= 0.2 * rate, (measured_in, measured_out)

    # Unlimited again: the qdiscs are gone.
    ep.limit_bandwidth(None)
    assert "tbf" not in netlink.qdiscs(ep.ifname)
    assert "tbf" not in netlink.qdiscs("eth0", ep.netns)


def test_remove_leaves_nothing(make_netns) -> None:  # type: ignore[no-untyped-def]
    ns = make_netns("gone")
    net = pcnet.Network.create("leaves", subnet=SUBNET)
    ep = net.attach(ns, name="x")
    ep.limit_bandwidth("50mbit")
    assert net.bridge in netlink.link_names()
    assert any(r["ifname"] == net.bridge for r in netlink.routes())
    net.detach(ep)
    assert netlink.link_names(ns) == ["lo"]  # the container's end went with the host end
    net.detach(ep)  # idempotent
    net.remove()
    net.remove()  # idempotent
    links = netlink.link_names()
    assert net.bridge not in links and ep.ifname not in links, links
    assert not [r for r in netlink.routes() if r["dst"] == SUBNET or r["ifname"] == net.bridge]
    assert not os.path.exists(pcnet._record_path("leaves"))
    assert not os.path.exists(net.hosts_path)
    assert pcnet.networks().empty


def test_stale_endpoint_is_pruned_when_its_netns_dies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "short.netns")
    start(ChildSpec(target=_idle, new={"net"}, persist={"net": path})).result(timeout=10)
    with pcnet.Network.create("prune", subnet=SUBNET) as net:
        ep = net.attach(path, name="short")
        nsfs.unbind_namespace(path)  # the "container" dies: its netns goes, and the veth with it
        deadline = time.monotonic() + 5
        while netlink.link_exists(ep.ifname) and time.monotonic() < deadline:
            time.sleep(0.05)
        net.remove()  # not Busy: the dead endpoint is pruned


def test_default_network_and_listing() -> None:
    d = pcnet.Network.default()
    try:
        assert d.name == "bridge" and str(d.subnet) == pcnet.DEFAULT_SUBNET
        assert pcnet.Network.default() == d
        assert pcnet.resolve_network("bridge") == d
        assert pcnet.resolve_network("none") == "none"
        df = pcnet.networks()
        assert list(df["name"]) == ["bridge"] and df["containers"][0] == 0
    finally:
        d.remove()


# -- bad input ---------------------------------------------------------------------------


def test_overlapping_subnets_are_refused(net: pcnet.Network) -> None:
    with pytest.raises(InvalidArgument) as e:
        pcnet.Network.create("clash", subnet="10.213.201.128/25")
    assert e.value.field == "subnet" and "itest" in str(e.value)
    with pytest.raises(InvalidArgument) as e:  # the host's own eth0 network
        pcnet.Network.create("clash", subnet="192.0.2.0/24")
    assert e.value.field == "subnet" and "eth0" in str(e.value)
    with pytest.raises(AlreadyExists):
        pcnet.Network.create("itest", subnet="10.213.202.0/24")


def test_port_in_use_is_a_typed_error(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    ep = net.attach(make_netns("p"), name="p")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(Busy) as e:
            pcnet.publish(ep, {port: 80})
    assert e.value.errno == errno.EADDRINUSE and e.value.value == port and e.value.field == "ports"
    assert isinstance(e.value, KernelError)


def test_removing_a_network_with_containers_is_refused(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    ep = net.attach(make_netns("busy"), name="busy")
    with pytest.raises(Busy) as e:
        net.remove()
    assert e.value.field == "network" and e.value.value == "itest" and "busy" in str(e.value)
    assert net.bridge in netlink.link_names()  # nothing was taken away
    with pytest.raises(AlreadyExists):
        net.attach(make_netns("dup"), name="busy")
    with pytest.raises(AlreadyExists):
        net.attach(make_netns("dup2"), name="other", ip=ep.ip)
    net.detach(ep)
    net.remove()


def test_attach_to_a_missing_netns_leaves_nothing(net: pcnet.Network, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pycontain.errors import NotFound

    with pytest.raises(NotFound):
        net.attach(str(tmp_path / "nope"), name="ghost")
    assert net.endpoints() == []
    assert pcnet.veth_name("itest", "ghost") not in netlink.link_names()


# -- net_cls: a cgroup's classid picks the tc class (the tc side of the story) ----------------


def _classid_probe(dest: tuple[str, int], nbytes: int, classid: int) -> int:
    """In a private mount ns: a net_cls hierarchy (note: once mounted, the
    kernel keeps a v1 hierarchy whose root holds processes, so net_cls stays
    bound to it after the unmount, until reboot; every later net_cls mount,
    pycontain's cgroup code included, reuses that same hierarchy), a cgroup with ``classid``,
    one transfer from a process inside it, then one from outside it.

    Only ``pycontain/<name>`` is created (and removed) in the hierarchy; this
    process stays where it is, only its forked child enters the cgroup.
    """
    import tempfile

    from pycontain.kernel import constants as C
    from pycontain.kernel import syscalls

    syscalls.mount(None, "/", None, C.MS_REC | C.MS_PRIVATE)
    root = tempfile.mkdtemp(prefix="pycontain-netcls-")
    try:
        try:
            syscalls.mount("net_cls", root, "cgroup", 0, "net_cls")
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            # net_cls is already bound to a hierarchy together with net_prio
            # (the usual "net_cls,net_prio" mount): a mount must name both.
            syscalls.mount("net_cls", root, "cgroup", 0, "net_cls,net_prio")
    except BaseException:
        os.rmdir(root)
        raise
    parent = os.path.join(root, "pycontain")
    made_parent = not os.path.isdir(parent)
    cg = os.path.join(parent, f"nettest-{os.getpid()}")
    try:
        os.makedirs(cg)
        with open(os.path.join(cg, "net_cls.classid"), "w") as f:
            f.write(str(classid))
        pid = os.fork()
        if pid == 0:
            try:
                with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
                _source(dest, nbytes)
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        _source(dest, nbytes)  # this process has no classid: unshaped
        return os.waitstatus_to_exitcode(status)
    finally:
        os.rmdir(cg)
        if made_parent:
            os.rmdir(parent)
        syscalls.umount2(root, C.MNT_DETACH)
        os.rmdir(root)


@pytest.mark.v1
@pytest.mark.slow
def test_shape_classid_limits_only_the_classified_cgroup(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    import threading

    ep = net.attach(make_netns("cls"), name="cls")
    pcnet.shape_classid("eth0", "10:1", "10mbit", netns=ep.netns)
    assert 0x100001 in netlink.tc_classes("eth0", ep.netns)
    assert set(netlink.tc_filters("eth0", 0x100000, ep.netns)) == {"bpf"}

    nbytes = 2_500_000
    srv = socket.socket()
    srv.bind((net.gateway, 0))
    srv.listen(2)
    rates: list[float] = []

    def receive_two() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            got, t0 = 0, None
            with conn:
                while got < nbytes:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    t0 = t0 or time.monotonic()
                    got += len(chunk)
                rates.append(got * 8 / max(time.monotonic() - (t0 or 0), 1e-6))
                conn.sendall(b"done")

    t = threading.Thread(target=receive_two)
    t.start()
    try:
        probe = run_in(ep.netns, _classid_probe, (net.gateway, srv.getsockname()[1]), nbytes, 0x100001, mnt=True)
        assert probe.result(timeout=60) == 0
    finally:
        t.join(timeout=60)
        srv.close()
    print(f"classified {rates[0] / 1e6:.2f} Mbit/s, unclassified {rates[1] / 1e6:.2f} Mbit/s (class rate 10)")
    assert abs(rates[0] - 10e6) <= 0.2 * 10e6, rates
    assert rates[1] > 3 * 10e6, rates


# -- the Container hook -------------------------------------------------------------------------


def test_prepare_endpoint_makes_netns_network_and_ports(net: pcnet.Network) -> None:
    from types import SimpleNamespace

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    fake = SimpleNamespace(name="web", config=SimpleNamespace(ports={host_port: 80}))
    att = pcnet.prepare_endpoint(fake, net)
    try:
        assert att.mode == "network" and att.netns_path and os.path.exists(att.netns_path)
        assert att.ip in {str(h) for h in net.subnet.hosts()}
        assert f"{att.ip}\tweb" in att.hosts_file("web").splitlines()
        assert f"{att.ip}\talias" in att.hosts_file("alias").splitlines()
        server = run_in(att.netns_path, _echo_server, 80)
        # The proxy accepts at once; until the server inside listens, it
        # resets the connection. Ask again until the server answers.
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = _ask(("127.0.0.1", host_port), b"x")
            except ConnectionResetError:
                reply = b""
            if reply or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert reply == b"pong:x"
        server.result(timeout=10)
        counters = att.counters()
        assert counters is not None and counters["rx_bytes"] > 0 and counters["tx_bytes"] > 0
        # The name is taken on the network while the first one holds it.
        with pytest.raises(AlreadyExists):
            pcnet.prepare_endpoint(SimpleNamespace(name="web", config=SimpleNamespace(ports={})), net)
    finally:
        path = att.netns_path
        att.release()
        att.release()
    assert path is not None and not os.path.exists(path)
    assert net.endpoints() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", host_port), timeout=2)


def test_connect_none_host_and_bad_combinations(net: pcnet.Network, make_netns) -> None:  # type: ignore[no-untyped-def]
    ns = make_netns("n")
    att = pcnet.connect(ns, "none", "solo")
    assert att.mode == "none" and att.ip is None
    assert netlink.link_names(ns) == ["lo"]
    assert pcnet.connect(None, "host", "h").mode == "host"
    with pytest.raises(InvalidArgument) as e:
        pcnet.connect(ns, "none", "solo", ports={8080: 80})
    assert e.value.field == "ports"
    with pytest.raises(InvalidArgument) as e:
        pcnet.connect(ns, "host", "solo", bandwidth="1mbit")
    assert e.value.field == "bandwidth"
    with pytest.raises(InvalidArgument) as e:
        pcnet.connect(ns, net, "solo", ports={8080: 70000})
    assert e.value.field == "ports"
    from pycontain.errors import NotFound

    with pytest.raises(NotFound):
        pcnet.connect(ns, "no-such-net", "solo")
    att = pcnet.connect(ns, "itest", "named", bandwidth="30mbit")
    assert att.network == net and netlink.qdiscs(att.endpoint.ifname) == ["tbf"]  # type: ignore[union-attr]
    att.release()
    assert net.endpoints() == []
