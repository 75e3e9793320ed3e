"""Container networking: bridges, veth endpoints, names, ports, counters, limits.

A :class:`Network` is a Linux bridge in the host's network namespace with its
own address management. A container joins it through an :class:`Endpoint`:
a veth pair whose host end is a port of the bridge and whose other end is
``eth0`` inside the container's network namespace, with an address from the
network's subnet and a default route through the bridge's address (the
gateway). Containers on one network reach each other by name through
``/etc/hosts`` (:meth:`Network.hosts_file`).

What pycontain never does, on purpose: enable ``ip_forward``, add NAT
(MASQUERADE/DNAT) or any route to the outside. Traffic from a container can
reach the host and the other containers of its network, nothing beyond.
Published ports (:class:`PortForward`) are served by a userspace proxy on
127.0.0.1 (see :mod:`pycontain.backends.portproxy` for the trade-offs).

The ``network=`` values of a container (:func:`resolve_network`):

* ``"none"`` (default): its own netns with only ``lo`` up (:func:`setup_loopback`);
* ``"host"``: the host's netns;
* ``"bridge"``: the default network (:meth:`Network.default`, 10.213.0.0/24);
* a :class:`Network`.

State (name, subnet, bridge, gateway, endpoints) lives in JSON files under
``$PYCONTAIN_STATE_DIR/networks/`` (default ``/run/pycontain``), changed
under an ``fcntl`` lock so several processes allocate addresses safely.

Example::

    import pycontain
    with pycontain.Network.create("lab", subnet="10.213.7.0/24") as net:
        ep = net.attach("/run/netns/a", name="web")     # a netns file or a pid
        print(ep.ip, ep.counters())
        ep.limit_bandwidth("20mbit")
        with pycontain.network.PortForward(8080, ep.ip, 80):
            ...                                          # curl 127.0.0.1:8080
    pycontain.networks()                                 # a DataFrame
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from pycontain.backends import netlink
from pycontain.errors import AlreadyExists, Busy, InvalidArgument, NotFound
from pycontain.statedir import list_dir

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from pycontain.backends.portproxy import TcpForwarder

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_SUBNET",
    "Attachment",
    "Endpoint",
    "Network",
    "PortForward",
    "hosts_content",
    "networks",
    "parse_ports",
    "parse_rate",
    "prepare_endpoint",
    "publish",
    "connect",
    "resolve_network",
    "setup_loopback",
    "shape_classid",
]

#: The default network's name and subnet. 10.88.0.0/16 is podman's, Docker
#: takes 172.17.0.0/16 and then 172.18-31: a /24 in 10.213 rarely collides,
#: and a collision is refused (:class:`~pycontain.errors.InvalidArgument`).
DEFAULT_NAME = "bridge"
DEFAULT_SUBNET = "10.213.0.0/24"
#: Names a user network cannot take: the other values of ``network=``.
RESERVED_NAMES = frozenset({"none", "host", DEFAULT_NAME})

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
# A name in /etc/hosts: a container name (Docker's rule), which glibc's
# files backend resolves as is (it does not enforce RFC 1123).
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_RATE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>bit|kbit|mbit|gbit)?\Z", re.IGNORECASE)
_RATE_UNITS = {"": 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
MIN_RATE_BITS = 8_000


# -- validation (pure, before anything touches the kernel) -------------------


def _check_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidArgument("invalid network name", field=field, value=value,
                              hint="1-63 characters: letters, digits, '_', '.', '-'; starting with a letter or digit")
    return value


def _check_hostname(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not _HOSTNAME_RE.match(value):
        raise InvalidArgument("invalid container name for /etc/hosts", field=field, value=value,
                              hint="1-128 characters: letters, digits, '_', '.', '-'; starting with a letter or digit")
    return value


def _parse_subnet(value: Any) -> ipaddress.IPv4Network:
    if isinstance(value, ipaddress.IPv4Network):
        net = value
    elif isinstance(value, str):
        try:
            parsed = ipaddress.ip_network(value, strict=True)
        except ValueError as e:
            raise InvalidArgument(f"invalid CIDR: {e}", field="subnet", value=value,
                                  hint="an IPv4 network with its host bits zero, e.g. '10.213.7.0/24'") from None
        if not isinstance(parsed, ipaddress.IPv4Network):
            raise InvalidArgument("only IPv4 subnets are supported", field="subnet", value=value,
                                  hint="e.g. '10.213.7.0/24'")
        net = parsed
    else:
        raise InvalidArgument("a subnet is a CIDR string", field="subnet", value=value, hint="e.g. '10.213.7.0/24'")
    if "/" not in str(value) and not isinstance(value, ipaddress.IPv4Network):
        raise InvalidArgument("give the prefix length", field="subnet", value=value, hint="e.g. '10.213.7.0/24'")
    if not 8 <= net.prefixlen <= 29:
        raise InvalidArgument("the prefix length must be between /8 and /29", field="subnet", value=value,
                              hint="a /29 holds the gateway and 5 containers; /24 holds 253")
    if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast or net.is_reserved \
            or net.overlaps(ipaddress.IPv4Network("0.0.0.0/8")):
        raise InvalidArgument("the subnet must be a private range (RFC 1918)", field="subnet", value=value,
                              hint="use 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 space; a public range "
                              "would shadow real hosts")
    return net


def parse_rate(value: Any, field: str = "rate") -> int:
    """A bandwidth in bits per second, from an int or a string like ``"20mbit"``.

    Units follow tc(8): ``bit``, ``kbit``, ``mbit``, ``gbit`` are powers of 1000
    (case-insensitive). Rejects bools, floats, negatives, zero, exponents.

    Raises:
        InvalidArgument: naming ``field`` and the value.

    Example::

        parse_rate("20mbit")   # 20_000_000
    """
    hint = "bits per second as an int, or a string like '500kbit', '20mbit', '1.5gbit'"
    if isinstance(value, bool):
        raise InvalidArgument("a rate is not a bool", field=field, value=value, hint=hint)
    if isinstance(value, int):
        bits = value
    elif isinstance(value, str):
        m = _RATE_RE.match(value.strip())
        if not m:
            raise InvalidArgument("invalid rate", field=field, value=value, hint=hint)
        try:
            bits = int(Decimal(m["num"]) * _RATE_UNITS[(m["unit"] or "").lower()])
        except InvalidOperation:  # pragma: no cover - the regex already excludes it
            raise InvalidArgument("invalid rate", field=field, value=value, hint=hint) from None
    else:
        raise InvalidArgument("a rate is an int or a string", field=field, value=value, hint=hint)
    if bits < MIN_RATE_BITS or bits > netlink.MAX_TBF_RATE_BITS:
        raise InvalidArgument(f"the rate must be between {MIN_RATE_BITS} and {netlink.MAX_TBF_RATE_BITS} bit/s",
                              field=field, value=value, hint=hint)
    return bits


def _check_port(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgument("a port is an int from 1 to 65535", field=field, value=value,
                              hint="e.g. ports={8080: 80}")
    return value


def parse_ports(ports: Any) -> list[tuple[int, int]]:
    """Validate ``ports={host_port: container_port}``; return sorted pairs.

    Raises:
        InvalidArgument: a port that is not an int in 1..65535 (field
        ``ports``), or a mapping of the wrong shape.

    Example::

        parse_ports({8080: 80})   # [(8080, 80)]
    """
    if ports is None:
        return []
    if not isinstance(ports, Mapping):
        raise InvalidArgument("ports is a mapping of host port to container port", field="ports", value=ports,
                              hint="e.g. ports={8080: 80}")
    return sorted((_check_port(h, "ports"), _check_port(c, "ports")) for h, c in ports.items())


def hosts_content(members: Mapping[str, str]) -> str:
    """``/etc/hosts`` text: localhost lines, then one ``IP name`` line per member."""
    lines = [
        "# generated by pycontain; rewritten when containers join or leave the network",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    for name, ip in sorted(members.items(), key=lambda kv: ipaddress.IPv4Address(kv[1])):
        lines.append(f"{ip}\t{name}")
    return "\n".join(lines) + "\n"


def _short_hash(*parts: str, n: int) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


def bridge_name(network: str) -> str:
    """``pcbr-`` + 10 hex digits: fits IFNAMSIZ (15 characters)."""
    return "pcbr-" + _short_hash(network, n=10)


def veth_name(network: str, endpoint: str) -> str:
    """``pcv-`` + 11 hex digits, unique per (network, endpoint name)."""
    return "pcv-" + _short_hash(network, endpoint, n=11)


# -- state ---------------------------------------------------------------------


def _state_dir() -> str:
    from pycontain.statedir import state_dir

    return os.path.join(state_dir(), "networks")


@contextlib.contextmanager
def _locked() -> Iterator[str]:
    """Hold the networks lock (flock(2), released if the process dies)."""
    d = _state_dir()
    os.makedirs(d, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _record_path(name: str) -> str:
    return os.path.join(_state_dir(), f"{name}.json")


def _hosts_path(name: str) -> str:
    return os.path.join(_state_dir(), f"{name}.hosts")


def _load(name: str) -> dict[str, Any] | None:
    try:
        with open(_record_path(name)) as f:
            rec: dict[str, Any] = json.load(f)
            return rec
    except FileNotFoundError:
        return None


def _load_all() -> list[dict[str, Any]]:
    out = []
    names = sorted(list_dir(_state_dir()))
    for fn in names:
        if fn.endswith(".json"):
            rec = _load(fn[: -len(".json")])
            if rec is not None:
                out.append(rec)
    return out


def _save(rec: dict[str, Any]) -> None:
    path = _record_path(rec["name"])
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    _write_hosts(rec)


def _write_hosts(rec: dict[str, Any]) -> None:
    # Rewritten in place (same inode), never replaced: containers bind-mount
    # this file on /etc/hosts, and a bind mount keeps pointing at the old
    # inode when a file is renamed over.
    text = hosts_content({n: e["ip"] for n, e in rec["endpoints"].items()}).encode()
    fd = os.open(_hosts_path(rec["name"]), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    finally:
        os.close(fd)


def _prune(rec: dict[str, Any]) -> bool:
    """Forget endpoints whose host-side veth is gone (their netns died)."""
    present = set(netlink.link_names())
    gone = [n for n, e in rec["endpoints"].items() if e["ifname"] not in present]
    for n in gone:
        del rec["endpoints"][n]
    return bool(gone)


def _in_use() -> list[tuple[str, ipaddress.IPv4Network]]:
    recs = _load_all()
    used = [(f"pycontain network {r['name']!r}", ipaddress.IPv4Network(r["subnet"])) for r in recs]
    own = frozenset(r["bridge"] for r in recs)
    return used + netlink.host_ipv4_networks(ignore_ifnames=own)


def _overlaps(net: ipaddress.IPv4Network) -> str | None:
    for where, other in _in_use():
        if net.overlaps(other):
            return f"{where} ({other})"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    used = _in_use()
    for third in range(1, 255):
        candidate = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(other) for _, other in used):
            return candidate
    raise InvalidArgument("no free /24 left in 10.213.0.0/16", field="subnet", value=None,
                          hint="give a subnet explicitly, e.g. subnet='172.30.0.0/24'")


# -- public API -------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A container's place on a network: one veth pair.

    ``ifname`` is the host end (a bridge port), ``peer_ifname`` the end inside
    the container's netns (``eth0``), ``ip``/``prefixlen`` its address,
    ``gateway`` the bridge's address (its default route), ``netns`` the
    namespace file it was attached through.
    """

    network: str
    name: str
    ip: str
    prefixlen: int
    gateway: str
    mac: str
    ifname: str
    peer_ifname: str
    netns: str

    def counters(self) -> dict[str, int]:
        """Traffic counters from the container's point of view.

        ``rx_bytes``, ``tx_bytes``, ``rx_packets``, ``tx_packets`` (bytes and
        packets since the endpoint was made), read from the host end of the
        veth with rx and tx swapped: what the host end sends, the container
        receives. The container cannot reset or fake them.

        Raises:
            NotFound: the endpoint is gone (detached, or its netns died).
        """
        host = netlink.link_counters(self.ifname)
        return {
            "rx_bytes": host["tx_bytes"],
            "tx_bytes": host["rx_bytes"],
            "rx_packets": host["tx_packets"],
            "tx_packets": host["rx_packets"],
        }

    def limit_bandwidth(self, rate: int | str | None, direction: str = "both") -> None:
        """Limit the container's bandwidth to ``rate`` bits/s (``None`` removes it).

        ``direction``: ``"in"`` (to the container: a tbf qdisc on the host end
        of the veth), ``"out"`` (from the container: a tbf qdisc on ``eth0``
        inside its netns; a container without CAP_NET_ADMIN cannot remove it),
        or ``"both"``. A tbf queue holds 50 ms of traffic; beyond it packets
        drop and TCP slows down to the rate.

        Raises:
            InvalidArgument: a bad rate (see :func:`parse_rate`) or direction.

        Example::

            ep.limit_bandwidth("20mbit")          # both directions
            ep.limit_bandwidth(None)              # unlimited again
        """
        if direction not in ("in", "out", "both"):
            raise InvalidArgument("direction is 'in', 'out' or 'both'", field="direction", value=direction)
        bits = None if rate is None else parse_rate(rate, "rate")
        targets: list[tuple[str, str | None]] = []
        if direction in ("in", "both"):
            targets.append((self.ifname, None))
        if direction in ("out", "both"):
            targets.append((self.peer_ifname, self.netns))
        for ifname, ns in targets:
            if bits is None:
                netlink.clear_root_qdisc(ifname, ns)
            else:
                netlink.set_rate(ifname, bits, ns)


class Network:
    """A bridge with its own subnet and address management.

    Get one with :meth:`create`, :meth:`get` or :meth:`default`; objects are
    handles on shared state, so several processes can use one network.
    Attributes: ``name``, ``subnet`` (an ``IPv4Network``), ``bridge`` (the
    bridge interface), ``gateway`` (the bridge's address). A context manager:
    leaving the ``with`` block removes the network (``force=True``).
    """

    def __init__(self, rec: Mapping[str, Any]) -> None:
        self.name: str = rec["name"]
        self.subnet = ipaddress.IPv4Network(rec["subnet"])
        self.bridge: str = rec["bridge"]
        self.gateway: str = rec["gateway"]

    def __repr__(self) -> str:
        return f"Network(name={self.name!r}, subnet='{self.subnet}', bridge={self.bridge!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("Network", self.name))

    # -- life cycle

    @classmethod
    def create(cls, name: str, subnet: str | None = None) -> Network:
        """Create network ``name``: a bridge whose address is the subnet's first host.

        ``subnet`` is a private IPv4 CIDR (``"10.213.7.0/24"``); by default the
        first free ``/24`` of 10.213.1.0 - 10.213.254.0.

        Raises:
            InvalidArgument: a bad or reserved name, an invalid CIDR, a
                non-private subnet, or one that overlaps another pycontain
                network or an address/route of the host (field ``subnet``).
            AlreadyExists: a network of that name exists.

        Example::

            net = Network.create("lab", subnet="10.213.7.0/24")
        """
        _check_name(name)
        if name in RESERVED_NAMES:
            raise InvalidArgument("this network name is reserved", field="name", value=name,
                                  hint="'none', 'host' and 'bridge' are values of network=; "
                                  "use Network.default() for the default bridge")
        return cls._create(name, subnet)

    @classmethod
    def _create(cls, name: str, subnet: Any) -> Network:
        net = None if subnet is None else _parse_subnet(subnet)
        with _locked():
            if _load(name) is not None:
                raise AlreadyExists("a network with this name exists", op="create network", field="name",
                                    value=name, hint=f"use Network.get({name!r}) or remove it first")
            if net is None:
                net = _free_subnet()
            else:
                clash = _overlaps(net)
                if clash is not None:
                    raise InvalidArgument(f"the subnet overlaps {clash}", field="subnet", value=str(subnet),
                                          hint="pick a range this host does not use")
            gateway = str(next(net.hosts()))
            bridge = bridge_name(name)
            if netlink.link_exists(bridge):
                raise AlreadyExists("the bridge interface already exists", op="create network", field="bridge",
                                    value=bridge, hint="a stale bridge of a lost state dir; delete it with "
                                    f"`ip link del {bridge}`")
            rec = {"name": name, "subnet": str(net), "bridge": bridge, "gateway": gateway,
                   "created": time.time(), "endpoints": {}}
            netlink.create_bridge(bridge, f"{gateway}/{net.prefixlen}")
            try:
                _save(rec)
            except BaseException:
                netlink.delete_link(bridge)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_record_path(name))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_hosts_path(name))
                raise
        return cls(rec)

    @classmethod
    def get(cls, name: str) -> Network:
        """The existing network ``name`` (``"bridge"``: the default, created if missing).

        Raises:
            NotFound: no such network.
        """
        _check_name(name)
        if name == DEFAULT_NAME:
            return cls.default()
        rec = _load(name)
        if rec is None:
            raise NotFound("no such network", op="get network", field="name", value=name,
                           hint="pycontain.networks() lists them; Network.create() makes one")
        return cls(rec)

    @classmethod
    def default(cls) -> Network:
        """The default network ``"bridge"`` (10.213.0.0/24), created on first use."""
        rec = _load(DEFAULT_NAME)
        if rec is not None:
            return cls(rec)
        try:
            return cls._create(DEFAULT_NAME, DEFAULT_SUBNET)
        except AlreadyExists:  # another process made it first
            rec = _load(DEFAULT_NAME)
            if rec is None:
                raise
            return cls(rec)

    def remove(self, force: bool = False) -> None:
        """Delete the bridge and the network's state. Idempotent.

        Raises:
            Busy: containers are still attached (unless ``force``, which
                detaches them first).
        """
        with _locked():
            rec = _load(self.name)
            if rec is not None:
                _prune(rec)
                if rec["endpoints"] and not force:
                    raise Busy("containers are attached to the network", op="remove network", field="network",
                               value=self.name, errno=errno.EBUSY,
                               hint=f"stop or detach {', '.join(sorted(rec['endpoints']))} first, "
                               "or pass force=True")
                for ep in rec["endpoints"].values():
                    netlink.delete_link(ep["ifname"])
            netlink.delete_link(self.bridge)
            for path in (_record_path(self.name), _hosts_path(self.name)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove(force=True)

    # -- endpoints

    def _record(self) -> dict[str, Any]:
        rec = _load(self.name)
        if rec is None:
            raise NotFound("the network was removed", op="network", field="network", value=self.name)
        return rec

    def attach(self, netns: netlink.NetnsRef, name: str, ip: str | None = None,
               ifname: str = "eth0") -> Endpoint:
        """Put the network namespace ``netns`` on this network as host ``name``.

        ``netns`` is a namespace file (``/run/netns/x``, a file the engine
        persisted) or the pid of a process in it. ``ip`` picks the address
        (default: the lowest free one). Inside the netns, ``ifname`` gets the
        address, ``lo`` and ``ifname`` go up, and the default route points
        at the gateway.

        Raises:
            InvalidArgument: a bad name, or ``ip`` outside the subnet, the
                gateway, or the network/broadcast address.
            AlreadyExists: ``name`` or ``ip`` is taken on this network.
            NotFound: the network or the netns is gone.
            InvalidArgument: the subnet is full (field ``ip``).

        Example::

            ep = net.attach(child.pid, name="web")
        """
        _check_hostname(name)
        if not isinstance(ifname, str) or not 1 <= len(ifname) <= 15 or "/" in ifname or ifname in (".", ".."):
            raise InvalidArgument("invalid interface name", field="ifname", value=ifname,
                                  hint="1-15 characters, no '/'")
        want = None
        if ip is not None:
            try:
                want = ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidArgument("invalid IPv4 address", field="ip", value=ip) from None
            if want not in self.subnet or want in (self.subnet.network_address, self.subnet.broadcast_address) \
                    or str(want) == self.gateway:
                raise InvalidArgument("the address is not a free host address of the subnet", field="ip", value=ip,
                                      hint=f"pick a host of {self.subnet} other than the gateway {self.gateway}")
        path = netlink.netns_path(netns)
        with _locked():
            rec = self._record()
            _prune(rec)
            eps = rec["endpoints"]
            if name in eps:
                raise AlreadyExists("a container with this name is on the network", op="attach", field="name",
                                    value=name, hint="names resolve through /etc/hosts; pick another one")
            taken = {e["ip"] for e in eps.values()} | {self.gateway}
            if want is not None:
                if str(want) in taken:
                    raise AlreadyExists("the address is taken", op="attach", field="ip", value=ip)
                addr = str(want)
            else:
                free = (str(h) for h in self.subnet.hosts() if str(h) not in taken)
                found = next(free, None)
                if found is None:
                    raise InvalidArgument("the network has no free address", field="ip", value=None,
                                          hint=f"{self.subnet} is full; detach a container or use a larger subnet")
                addr = found
            host_if = veth_name(self.name, name)
            mac = netlink.create_veth(path, host_if, ifname, self.bridge, f"{addr}/{self.subnet.prefixlen}",
                                      self.gateway)
            ep = Endpoint(network=self.name, name=name, ip=addr, prefixlen=self.subnet.prefixlen,
                          gateway=self.gateway, mac=mac, ifname=host_if, peer_ifname=ifname, netns=path)
            eps[name] = {"ip": addr, "mac": mac, "ifname": host_if, "peer_ifname": ifname, "netns": path}
            try:
                _save(rec)
            except BaseException:
                netlink.delete_link(host_if)
                raise
        return ep

    def detach(self, endpoint: Endpoint | str) -> None:
        """Take a container off the network (its veth pair goes). Idempotent."""
        name = endpoint.name if isinstance(endpoint, Endpoint) else endpoint
        host_if = endpoint.ifname if isinstance(endpoint, Endpoint) else veth_name(self.name, name)
        with _locked():
            netlink.delete_link(host_if)
            rec = _load(self.name)
            if rec is not None and rec["endpoints"].pop(name, None) is not None:
                _save(rec)

    def endpoints(self) -> list[Endpoint]:
        """The containers on the network now."""
        rec = self._record()
        return [Endpoint(network=self.name, name=n, ip=e["ip"], prefixlen=self.subnet.prefixlen,
                         gateway=self.gateway, mac=e["mac"], ifname=e["ifname"], peer_ifname=e["peer_ifname"],
                         netns=e["netns"])
                for n, e in sorted(rec["endpoints"].items())]

    def hosts_file(self) -> str:
        """The ``/etc/hosts`` text for members of this network: every member's name."""
        rec = self._record()
        return hosts_content({n: e["ip"] for n, e in rec["endpoints"].items()})

    @property
    def hosts_path(self) -> str:
        """A file holding :meth:`hosts_file`, kept current in place as members
        come and go: bind-mount it read-only on a container's ``/etc/hosts``."""
        return _hosts_path(self.name)


def networks() -> pandas.DataFrame:
    """Every pycontain network as a DataFrame.

    Columns: ``name``, ``subnet``, ``gateway``, ``bridge``, ``containers``
    (the count), ``members`` (the names).
    """
    import pandas

    rows = []
    for rec in _load_all():
        rows.append({
            "name": rec["name"],
            "subnet": rec["subnet"],
            "gateway": rec["gateway"],
            "bridge": rec["bridge"],
            "containers": len(rec["endpoints"]),
            "members": sorted(rec["endpoints"]),
        })
    return pandas.DataFrame(rows, columns=["name", "subnet", "gateway", "bridge", "containers", "members"])


def resolve_network(value: Any) -> str | Network:
    """Check a container's ``network=``: ``"none"``, ``"host"``, ``"bridge"``,
    a network's name, or a :class:`Network`.

    ``"bridge"`` becomes :meth:`Network.default` (created on first use), a
    name the :class:`Network` of that name.

    Raises:
        InvalidArgument: anything else (field ``network``).
        NotFound: a name no network has.
    """
    if isinstance(value, Network):
        return value
    if value in ("none", "host"):
        return str(value)
    if value == DEFAULT_NAME:
        return Network.default()
    if isinstance(value, str) and _NAME_RE.match(value):
        return Network.get(value)
    raise InvalidArgument("unknown network", field="network", value=value,
                          hint="'none' (default), 'host', 'bridge', a network's name or a pycontain.Network")


def setup_loopback(netns: netlink.NetnsRef) -> None:
    """Bring ``lo`` up in ``netns`` (``network="none"``: only loopback works)."""
    netlink.loopback_up(netns)


class PortForward:
    """Forward ``host_ip:host_port`` (127.0.0.1 by default) to ``target_ip:target_port``.

    A userspace TCP proxy in threads of this process (no NAT; see
    :mod:`pycontain.backends.portproxy`). Listening starts in the
    constructor; :meth:`close` (or leaving ``with``) stops it, idempotent.

    Raises:
        InvalidArgument: a port outside 1..65535 (field ``ports``) or a bad address.
        Busy: the host port is in use (errno EADDRINUSE).

    Example::

        with PortForward(8080, ep.ip, 80):
            urllib.request.urlopen("http://127.0.0.1:8080/")
    """

    def __init__(self, host_port: int, target_ip: str, target_port: int, host_ip: str = "127.0.0.1") -> None:
        from pycontain.backends.portproxy import TcpForwarder

        self.host_port = _check_port(host_port, "ports")
        self.target_port = _check_port(target_port, "ports")
        for field, value in (("target_ip", target_ip), ("host_ip", host_ip)):
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise InvalidArgument("invalid IPv4 address", field=field, value=value) from None
        self.target_ip = target_ip
        self.host_ip = host_ip
        self._fwd: TcpForwarder | None = TcpForwarder((host_ip, host_port), (target_ip, target_port))

    def __repr__(self) -> str:
        return f"PortForward({self.host_ip}:{self.host_port} -> {self.target_ip}:{self.target_port})"

    def close(self) -> None:
        """Stop listening and close every forwarded connection."""
        if self._fwd is not None:
            self._fwd.close()
            self._fwd = None

    def __enter__(self) -> PortForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(endpoint: Endpoint, ports: Any) -> list[PortForward]:
    """Start a :class:`PortForward` for each ``{host_port: container_port}`` of ``ports``.

    All or nothing: if one host port is busy, those already started stop.
    """
    pairs = parse_ports(ports)
    started: list[PortForward] = []
    try:
        for host_port, container_port in pairs:
            started.append(PortForward(host_port, endpoint.ip, container_port))
    except BaseException:
        for pf in started:
            pf.close()
        raise
    return started


def shape_classid(ifname: str, classid: int | str, rate: int | str, netns: netlink.NetnsRef | None = None) -> None:
    """Shape traffic of a net_cls cgroup: htb class ``classid`` at ``rate`` on ``ifname``.

    The net_cls side (writing ``classid`` to the cgroup's ``net_cls.classid``)
    belongs to the cgroup code; this sets up the tc side: an htb root qdisc
    ``MAJOR:`` on ``ifname`` (in ``netns``, default the host), a class
    ``MAJOR:MINOR`` limited to ``rate``, and a filter that sends each packet
    to the class named by its socket's cgroup classid. Packets of sockets
    without a classid pass unlimited. Shaping happens where packets leave:
    for a container, ``ifname`` is its ``eth0`` inside ``netns`` (a veth
    forgets the socket when the packet crosses to the host end).

    ``classid`` is ``0xMMMMmmmm`` or ``"MMMM:mmmm"`` (hex, as tc writes it).

    Raises:
        InvalidArgument: a bad classid (major 0 or minor 0) or rate.
        Unsupported: this kernel cannot load the classifier.

    Example::

        shape_classid("eth0", "10:1", "5mbit", netns=child.pid)  # cgroup: net_cls.classid = 0x100001
    """
    cid = _parse_classid(classid)
    bits = parse_rate(rate, "rate")
    from pycontain.kernel import bpf

    prog = bpf.load_cgroup_classid_program()
    try:
        netlink.htb_classid_shaping(ifname, cid, bits, prog, netns)
    finally:
        os.close(prog)


def _parse_classid(value: Any) -> int:
    hint = "'MAJOR:MINOR' in hex like '10:1', or an int 0xMMMMmmmm; both parts non-zero"
    if isinstance(value, bool):
        raise InvalidArgument("invalid classid", field="classid", value=value, hint=hint)
    if isinstance(value, int):
        cid = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}", value):
        major, minor = value.split(":")
        cid = (int(major, 16) << 16) | int(minor, 16)
    else:
        raise InvalidArgument("invalid classid", field="classid", value=value, hint=hint)
    if not 0 < cid <= 0xFFFFFFFF or cid >> 16 in (0, 0xFFFF) or cid & 0xFFFF == 0:
        raise InvalidArgument("invalid classid", field="classid", value=value, hint=hint)
    return cid


@dataclass
class Attachment:
    """What :func:`connect` or :func:`prepare_endpoint` set up for one container.

    ``mode`` is ``"none"``, ``"host"`` or ``"network"``; ``endpoint`` and
    ``network`` are set for ``"network"``; ``forwards`` are the published
    ports; ``netns_path`` is the network namespace file the container joins
    when pycontain made the namespace itself (:func:`prepare_endpoint`).
    :meth:`release` undoes everything, idempotent.
    """

    mode: str
    network: Network | None = None
    endpoint: Endpoint | None = None
    forwards: tuple[PortForward, ...] = ()
    netns_path: str | None = None

    @property
    def ip(self) -> str | None:
        """The container's address on its network (None for "none"/"host")."""
        return self.endpoint.ip if self.endpoint else None

    @property
    def hosts_path(self) -> str | None:
        """The network's live hosts file (see :attr:`Network.hosts_path`)."""
        return self.network.hosts_path if self.network else None

    def hosts_file(self, hostname: str | None = None) -> str:
        """``/etc/hosts`` for the container: its network's members, and its own ``hostname``."""
        members = {}
        if self.network is not None:
            members = {e.name: e.ip for e in self.network.endpoints()}
        text = hosts_content(members)
        if hostname and hostname not in members:
            text += f"{self.ip or '127.0.1.1'}\t{hostname}\n"
        return text

    def counters(self) -> dict[str, int] | None:
        """rx/tx bytes and packets of the container's endpoint (None without one)."""
        return self.endpoint.counters() if self.endpoint else None

    def release(self) -> None:
        """Stop the port forwards, leave the network, release the netns file. Idempotent."""
        for pf in self.forwards:
            pf.close()
        if self.network is not None and self.endpoint is not None:
            self.network.detach(self.endpoint)
        if self.netns_path is not None:
            from pycontain.kernel import nsfs

            nsfs.unbind_namespace(self.netns_path)
            self.netns_path = None

    close = release


def _check_network_arg(network: Any, ports: Any, bandwidth: Any) -> tuple[list[tuple[int, int]], int | None]:
    pairs = parse_ports(ports)
    bits = None if bandwidth is None else parse_rate(bandwidth, "bandwidth")
    if isinstance(network, str) and network in ("none", "host"):
        if pairs:
            raise InvalidArgument(f"ports need a network; network={network!r} has none to forward to",
                                  field="ports", value=ports, hint='use network="bridge" or a pycontain.Network')
        if bits is not None:
            raise InvalidArgument(f"a bandwidth limit needs a network, not network={network!r}",
                                  field="bandwidth", value=bandwidth)
    return pairs, bits


def connect(netns: netlink.NetnsRef | None, network: Any, name: str, ports: Any = None,
            bandwidth: int | str | None = None) -> Attachment:
    """Give the netns ``netns`` the network ``network=`` asks for.

    * ``"none"``: ``lo`` up in ``netns``, nothing else;
    * ``"host"``: nothing (the container shares the host's netns; ``netns`` is ignored);
    * ``"bridge"``, a network's name or a :class:`Network`: :meth:`Network.attach`
      as ``name``, then ``bandwidth`` (:meth:`Endpoint.limit_bandwidth`, both
      directions) and ``ports`` (:func:`publish`).

    All arguments are checked before anything is changed, and a failure
    half-way undoes what was done.

    Raises:
        InvalidArgument: a bad ``network``, ``ports`` or ``bandwidth``, or
            ports/bandwidth with "none"/"host" (nothing to forward to).
        NotFound: no network of that name.
        Busy: a host port is in use.
        AlreadyExists: ``name`` is taken on the network.

    Example::

        att = connect(child.pid, "bridge", "web", ports={8080: 80})
        ...
        att.release()
    """
    _pairs, bits = _check_network_arg(network, ports, bandwidth)
    _check_hostname(name)
    resolved = resolve_network(network)
    if resolved == "host":
        return Attachment("host")
    if netns is None:
        raise InvalidArgument("a network namespace is needed", field="netns", value=None,
                              hint='only network="host" runs without one')
    if resolved == "none":
        setup_loopback(netns)
        return Attachment("none")
    assert isinstance(resolved, Network)
    ep = resolved.attach(netns, name=name)
    att = Attachment("network", network=resolved, endpoint=ep)
    try:
        if bits is not None:
            ep.limit_bandwidth(bits)
        att.forwards = tuple(publish(ep, ports))
    except BaseException:
        att.release()
        raise
    return att


def _idle() -> None:
    return None


def prepare_endpoint(container: Any, network: Any) -> Attachment:
    """Make a container's network before the container starts (Container's hook).

    Creates a network namespace (kept in a file under the state dir), puts
    it on ``network`` as ``container.name`` with ``container.config.ports``
    published (and ``container.config.bandwidth`` if the config has one), and
    returns the :class:`Attachment`: the container joins
    ``attachment.netns_path``, writes ``attachment.hosts_file(hostname)`` to
    its ``/etc/hosts``, and calls ``attachment.release()`` when removed.

    Raises:
        as :func:`connect`; nothing is left behind on failure.
    """
    import secrets

    from pycontain.engine import ChildSpec, start

    config = container.config
    ports = getattr(config, "ports", None) or None
    bandwidth = getattr(config, "bandwidth", None)
    _check_network_arg(network, ports, bandwidth)
    name = _check_hostname(container.name)
    resolved = resolve_network(network)
    if isinstance(resolved, str):
        # "host": nothing to make; "none": the container unshares its own netns.
        return Attachment(resolved)
    path = os.path.join(_state_dir(), "netns", f"{name}-{secrets.token_hex(4)}")
    start(ChildSpec(target=_idle, new={"net"}, persist={"net": path})).result(timeout=30)
    try:
        att = connect(path, resolved, name, ports=ports, bandwidth=bandwidth)
    except BaseException:
        from pycontain.kernel import nsfs

        nsfs.unbind_namespace(path)
        raise
    att.netns_path = path
    return att
