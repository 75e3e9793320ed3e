"""Network logic without the kernel: validation, naming, hosts files, state, allocation.

The netlink backend is replaced by a fake that records what would be made,
so these run without root in milliseconds.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from typing import Any

import pytest

from pycontain import network as pcnet
from pycontain.backends import netlink
from pycontain.errors import AlreadyExists, Busy, InvalidArgument, NotFound


class FakeNetlink:
    def __init__(self) -> None:
        self.links: set[str] = {"lo", "eth0"}
        self.host = [("address of eth0", ipaddress.IPv4Network("192.0.2.0/24")),
                     ("route via eth0", ipaddress.IPv4Network("10.50.0.0/16"))]
        self.lock = threading.Lock()

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setattr(netlink, "create_bridge", self.create_bridge)
        mp.setattr(netlink, "link_exists", lambda ifname, netns=None: ifname in self.links)
        mp.setattr(netlink, "link_names", lambda netns=None: sorted(self.links))
        mp.setattr(netlink, "delete_link", self.delete_link)
        mp.setattr(netlink, "host_ipv4_networks", lambda ignore_ifnames=frozenset(): list(self.host))
        mp.setattr(netlink, "create_veth", self.create_veth)

    def create_bridge(self, ifname: str, address: str) -> None:
        with self.lock:
            self.links.add(ifname)

    def delete_link(self, ifname: str, netns: Any = None) -> bool:
        with self.lock:
            had = ifname in self.links
            self.links.discard(ifname)
            return had

    def create_veth(self, netns: Any, host_ifname: str, peer_ifname: str, bridge: str, address: str,
                    gateway: str, mac: Any = None) -> str:
        assert bridge in self.links
        with self.lock:
            assert host_ifname not in self.links
            self.links.add(host_ifname)
        return "02:00:00:00:00:01"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNetlink:
    f = FakeNetlink()
    f.install(monkeypatch)
    return f


# -- pure validation -------------------------------------------------------------------


@pytest.mark.parametrize("value,bits", [
    (8000, 8000), ("20mbit", 20_000_000), ("20Mbit", 20_000_000), ("1.5gbit", 1_500_000_000),
    ("500kbit", 500_000), ("64000", 64_000), ("100000bit", 100_000),
])
def test_parse_rate_accepts(value: Any, bits: int) -> None:
    assert pcnet.parse_rate(value) == bits


@pytest.mark.parametrize("value", [True, False, 0, -5, 10, 2.5, "", "fast", "1e9", "nan", "-20mbit", "20 mb",
                                   "20mbps", "40gbit", None, [1]])
def test_parse_rate_rejects(value: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        pcnet.parse_rate(value, "bandwidth")
    assert e.value.field == "bandwidth"


def test_parse_ports() -> None:
    assert pcnet.parse_ports({8080: 80, 2222: 22}) == [(2222, 22), (8080, 80)]
    assert pcnet.parse_ports(None) == []
    for bad in ({0: 80}, {70000: 80}, {8080: 65536}, {True: 80}, {"8080": 80}, {8080: -1}, [8080, 80], "8080:80"):
        with pytest.raises(InvalidArgument) as e:
            pcnet.parse_ports(bad)
        assert e.value.field == "ports"


@pytest.mark.parametrize("subnet", ["10.213.7.1/24", "10.213.7.0/33", "300.1.1.0/24", "fd00::/64", "10.213.7.0/30",
                                    "10.0.0.0/7", "8.8.8.0/24", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/24",
                                    "banana", 42, ""])
def test_invalid_subnets_are_refused_before_the_kernel(fake: FakeNetlink, subnet: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        pcnet.Network.create("lab", subnet=subnet)
    assert e.value.field == "subnet"
    assert e.value.value == subnet
    assert not [n for n in fake.links if n.startswith("pcbr-")]


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 64, "none", "host", "bridge", None, 3])
def test_invalid_or_reserved_network_names(fake: FakeNetlink, name: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        pcnet.Network.create(name, subnet="10.213.7.0/24")
    assert e.value.field == "name"


def test_resolve_network_rejects_unknown_values() -> None:
    assert pcnet.resolve_network("none") == "none"
    assert pcnet.resolve_network("host") == "host"
    for bad in ("", None, 1, "a b", "-x"):
        with pytest.raises(InvalidArgument) as e:
            pcnet.resolve_network(bad)
        assert e.value.field == "network"
    with pytest.raises(NotFound):
        pcnet.resolve_network("bridged")


def test_interface_names_fit_ifnamsiz() -> None:
    names = {pcnet.bridge_name("x" * 63), pcnet.veth_name("x" * 63, "y" * 63), pcnet.bridge_name("a"),
             pcnet.veth_name("a", "b")}
    assert all(len(n) <= 15 for n in names)
    assert pcnet.veth_name("a", "b") != pcnet.veth_name("a", "c") != pcnet.veth_name("b", "b")


def test_hosts_content_orders_by_address() -> None:
    text = pcnet.hosts_content({"web": "10.0.0.10", "db": "10.0.0.9"})
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert lines[-2:] == ["10.0.0.9\tdb", "10.0.0.10\tweb"]


@pytest.mark.parametrize("value,cid", [("10:1", 0x100001), ("ffff:1", None), ("0:1", None), ("1:0", None),
                                       (0x00100001, 0x100001), ("1:2:3", None), (True, None), ("g:1", None)])
def test_classid_parsing(value: Any, cid: int | None) -> None:
    if cid is None:
        with pytest.raises(InvalidArgument):
            pcnet._parse_classid(value)
    else:
        assert pcnet._parse_classid(value) == cid


def test_classid_program_is_call_then_exit() -> None:
    from pycontain.kernel import bpf

    assert bpf.CLASSID_PROGRAM == bytes.fromhex("8500000011000000" "9500000000000000")


def test_port_forward_rejects_bad_ports_and_addresses() -> None:
    for hp, tp in ((0, 80), (65536, 80), (8080, 0), (True, 80)):
        with pytest.raises(InvalidArgument) as e:
            pcnet.PortForward(hp, "10.213.0.2", tp)
        assert e.value.field == "ports"
    with pytest.raises(InvalidArgument) as e:
        pcnet.PortForward(8080, "not-an-ip", 80)
    assert e.value.field == "target_ip"


def test_netns_refs() -> None:
    assert netlink.netns_path(42) == "/proc/42/ns/net"
    assert netlink.netns_path("/run/netns/a") == "/run/netns/a"
    for bad in (0, -1, True, "", None, 1.5):
        with pytest.raises(InvalidArgument):
            netlink.netns_path(bad)


# -- state, allocation, locking (fake netlink) ----------------------------------------------


def test_create_attach_detach_remove(fake: FakeNetlink) -> None:
    net = pcnet.Network.create("lab", subnet="10.213.7.0/29")
    assert net.gateway == "10.213.7.1" and net.bridge in fake.links
    assert pcnet.Network.get("lab") == net
    eps = [net.attach(f"/run/netns/x{i}", name=f"c{i}") for i in range(5)]
    assert [e.ip for e in eps] == [f"10.213.7.{i}" for i in range(2, 7)]
    with pytest.raises(InvalidArgument) as e:  # a /29 holds 5 containers
        net.attach("/run/netns/x9", name="c9")
    assert e.value.field == "ip"
    inode = os.stat(net.hosts_path).st_ino
    net.detach(eps[1])
    assert os.stat(net.hosts_path).st_ino == inode  # rewritten in place: bind mounts see it
    assert "c1" not in net.hosts_file() and "c2" in open(net.hosts_path).read()
    again = net.attach("/run/netns/y", name="again")
    assert again.ip == "10.213.7.3"  # the freed address is reused
    with pytest.raises(Busy):
        net.remove()
    net.remove(force=True)
    assert not [n for n in fake.links if n.startswith(("pcbr-", "pcv-"))]
    with pytest.raises(NotFound):
        pcnet.Network.get("lab")
    net.remove()  # idempotent


def test_attach_validates_before_touching_anything(fake: FakeNetlink) -> None:
    net = pcnet.Network.create("lab", subnet="10.213.7.0/24")
    before = set(fake.links)
    for ip in ("10.213.8.2", "10.213.7.0", "10.213.7.255", "10.213.7.1", "banana"):
        with pytest.raises(InvalidArgument) as e:
            net.attach("/run/netns/a", name="a", ip=ip)
        assert e.value.field == "ip" and e.value.value == ip
    for name in ("", "a b", "-a", "a/b", "a#b", "x" * 129, None):
        with pytest.raises(InvalidArgument) as e:
            net.attach("/run/netns/a", name=name)  # type: ignore[arg-type]
        assert e.value.field == "name"
    with pytest.raises(InvalidArgument):
        net.attach("/run/netns/a", name="a", ifname="x" * 16)
    assert fake.links == before
    ep = net.attach("/run/netns/a", name="a", ip="10.213.7.200")
    assert ep.ip == "10.213.7.200"
    with pytest.raises(AlreadyExists):
        net.attach("/run/netns/b", name="b", ip="10.213.7.200")
    net.remove(force=True)


def test_overlap_with_host_and_other_networks(fake: FakeNetlink) -> None:
    pcnet.Network.create("one", subnet="10.213.7.0/24")
    for subnet, clash in (("10.213.0.0/16", "one"), ("10.50.3.0/24", "route via eth0"),
                          ("192.0.2.0/25", "eth0")):
        with pytest.raises(InvalidArgument) as e:
            pcnet.Network.create("two", subnet=subnet)
        assert e.value.field == "subnet" and clash in str(e.value)
    with pytest.raises(AlreadyExists):
        pcnet.Network.create("one", subnet="10.213.9.0/24")
    df = pcnet.networks()
    assert list(df["name"]) == ["one"] and list(df["subnet"]) == ["10.213.7.0/24"]
    pcnet.Network.get("one").remove()


def test_dead_endpoints_are_pruned(fake: FakeNetlink) -> None:
    net = pcnet.Network.create("lab", subnet="10.213.7.0/24")
    ep = net.attach("/run/netns/a", name="a")
    fake.links.discard(ep.ifname)  # its netns died and took the veth along
    again = net.attach("/run/netns/b", name="a")  # the name is free again
    assert again.ip == ep.ip
    fake.links.discard(again.ifname)
    net.remove()  # not Busy


def test_concurrent_attaches_get_distinct_addresses(fake: FakeNetlink) -> None:
    net = pcnet.Network.create("lab", subnet="10.213.7.0/24")
    got: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            # Each thread uses its own handle, as another process would.
            got.append(pcnet.Network.get("lab").attach(f"/run/netns/{i}", name=f"c{i}").ip)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(got)) == 16
    assert len(net.endpoints()) == 16
    net.remove(force=True)


def test_default_subnets_are_free_slash24s(fake: FakeNetlink) -> None:
    fake.host.append(("route via eth0", ipaddress.IPv4Network("10.213.2.0/23")))
    a = pcnet.Network.create("a")
    b = pcnet.Network.create("b")
    c = pcnet.Network.create("c")
    assert [str(n.subnet) for n in (a, b, c)] == ["10.213.1.0/24", "10.213.4.0/24", "10.213.5.0/24"]
    for n in (a, b, c):
        n.remove()
