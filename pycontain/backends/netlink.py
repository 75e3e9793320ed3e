"""Netlink backend: every pyroute2 call of pycontain lives here.

pyroute2 is imported inside the functions, never at module import time, so
``import pycontain`` stays light (DESIGN.md §2).

Network namespaces are named by a *netns reference*: either the path of a
namespace file (``/run/netns/x``, a file the engine bind-mounted with
``persist={"net": path}``, ``/proc/PID/ns/net``) or a pid.

How a netlink socket gets into another namespace: a netlink socket belongs
to the network namespace of the thread that created it, forever
(netlink(7), ``sk->sk_net``). So :func:`_socket_in` starts a short-lived
thread, lets it ``setns(CLONE_NEWNET)`` (legal in a multi-threaded process:
unlike the user and mount namespaces, a network namespace is per thread,
setns(2)), create the socket, and exit. The caller's threads never change
namespace and nothing forks (pyroute2's own ``netns=`` forks the caller,
which is unsafe in a threaded Jupyter kernel).

Every pyroute2 ``NetlinkError`` becomes a typed error naming the operation
and the interface (:func:`pycontain.errors.kernel_error`).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pycontain.errors import InvalidArgument, KernelError, NotFound, kernel_error
from pycontain.kernel import constants as C
from pycontain.kernel import nsfs, syscalls

#: A network namespace: the path of a namespace file, or a pid.
NetnsRef = str | int

NETLINK_ROUTE = 0
TC_H_ROOT = 0xFFFFFFFF
ETH_P_ALL = 0x0003
#: tbf keeps its rate in a u32 of bytes per second (tc-tbf(8); TCA_TBF_RATE64
#: would lift this, pyroute2 does not send it).
MAX_TBF_RATE_BITS = (2**32 - 1) * 8


def netns_path(ref: NetnsRef) -> str:
    """The file that names ``ref``: the path itself, or ``/proc/PID/ns/net``."""
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise InvalidArgument("a network namespace is a path or a pid", field="netns", value=ref,
                              hint="e.g. '/run/netns/x', a file persisted with persist={'net': path}, or a pid")
    if isinstance(ref, int):
        if ref <= 0:
            raise InvalidArgument("a pid is a positive int", field="netns", value=ref)
        return nsfs.proc_ns_path(ref, "net")
    if not ref:
        raise InvalidArgument("empty netns path", field="netns", value=ref)
    return ref


def _open_netns(ref: NetnsRef) -> int:
    path = netns_path(ref)
    try:
        return nsfs.open_namespace(path)
    except KernelError as e:
        if e.errno == errno.ENOENT:
            raise NotFound("no such network namespace", op="open netns", path=path, value=ref,
                           hint="the process may have exited, or the namespace file was released") from None
        raise


def _socket_in(fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket that lives in the network namespace behind ``fd``."""

    def make() -> socket.socket:
        syscalls.setns(fd, C.CLONE_NEWNET)
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)

    # The thread ends after it; its changed namespace ends with it.
    return _on_thread(make, "pycontain-netns")


_T = TypeVar("_T")


def _on_thread(fn: Callable[[], _T], name: str) -> _T:
    """Run ``fn`` on a short-lived thread; return its value or raise its error here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _off_loop(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Run ``fn`` on a short-lived thread when this thread runs an asyncio loop.

    pyroute2 0.9 drives its own asyncio loop inside each call, which fails
    with "This event loop is already running" on a thread that already runs
    one -- a Jupyter kernel's main thread, where ``%%container --net`` and
    ``Network.create`` are called. Elsewhere ``fn`` runs directly.
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> _T:
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        return _on_thread(lambda: fn(*args, **kwargs), "pycontain-netlink")

    return call


@contextmanager
def _iproute(netns: NetnsRef | None = None) -> Iterator[Any]:
    """An ``IPRoute`` in the host's (caller's) netns, or in ``netns``."""
    from pyroute2 import IPRoute

    if netns is None:
        ipr = IPRoute(groups=0)
        # This socket is in the caller's netns: name lookups can use if_nametoindex.
        ipr._pycontain_host = True
    else:
        fd = _open_netns(netns)
        try:
            sock = _socket_in(fd)
        finally:
            os.close(fd)
        # groups=0: a query socket, no multicast subscriptions to overflow.
        ipr = IPRoute(fileno=sock.detach(), groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _op(op: str, ifname: str | None = None, ok: tuple[int, ...] = ()) -> Iterator[None]:
    """Turn pyroute2's NetlinkError into a typed error (errnos in ``ok`` are ignored)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as e:
        if e.code in ok:
            return
        raise kernel_error(op, e.code, detail=f"ifname={ifname}" if ifname else None) from None


def _host_index(ifname: str) -> int | None:
    # if_nametoindex(3) asks the kernel in C, in microseconds; pyroute2's
    # link_lookup dumps and parses every link (milliseconds each).
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _index(ipr: Any, ifname: str) -> int | None:
    if getattr(ipr, "_pycontain_host", False):
        return _host_index(ifname)
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _need_index(ipr: Any, ifname: str) -> int:
    index = _index(ipr, ifname)
    if index is None:
        raise NotFound("no such network interface", op="link lookup", field="ifname", value=ifname)
    return index


# -- host facts -------------------------------------------------------------


@_off_loop
def host_ipv4_networks(ignore_ifnames: frozenset[str] = frozenset()) -> list[tuple[str, ipaddress.IPv4Network]]:
    """IPv4 networks in use in the caller's netns: addresses and routes.

    Returns ``(where, network)`` pairs, e.g. ``("address of eth0", 192.0.2.0/24)``
    or ``("route via eth0", 10.0.0.0/8)``. Default routes (``/0``) are left
    out: they overlap everything by design. Interfaces in ``ignore_ifnames``
    (pycontain's own bridges) are skipped.
    """
    out: list[tuple[str, ipaddress.IPv4Network]] = []
    with _iproute() as ipr, _op("dump addresses and routes"):
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=socket.AF_INET):
            ifname = names.get(addr["index"], str(addr["index"]))
            if ifname in ignore_ifnames:
                continue
            net = ipaddress.IPv4Network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False)
            out.append((f"address of {ifname}", net))
        for route in ipr.route("dump", family=socket.AF_INET):
            if route["dst_len"] == 0:
                continue
            dst = route.get_attr("RTA_DST")
            if dst is None:
                continue
            oif = route.get_attr("RTA_OIF")
            ifname = names.get(oif, "?") if oif is not None else "?"
            if ifname in ignore_ifnames:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
            out.append((f"route via {ifname}", net))
    return out


@_off_loop
def link_exists(ifname: str, netns: NetnsRef | None = None) -> bool:
    """Whether interface ``ifname`` exists (in the host netns or in ``netns``)."""
    if netns is None:
        return _host_index(ifname) is not None
    with _iproute(netns) as ipr, _op("link lookup", ifname):
        return _index(ipr, ifname) is not None


@_off_loop
def link_names(netns: NetnsRef | None = None) -> list[str]:
    """The names of every interface in the host netns (or in ``netns``)."""
    if netns is None:
        return [name for _index, name in socket.if_nameindex()]
    with _iproute(netns) as ipr, _op("dump links"):
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]


@_off_loop
def routes(netns: NetnsRef | None = None) -> list[dict[str, Any]]:
    """IPv4 routes of the main table as dicts: ``dst`` (CIDR), ``gateway``, ``ifname``."""
    out = []
    with _iproute(netns) as ipr, _op("dump routes"):
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for r in ipr.route("dump", family=socket.AF_INET, table=254):
            dst = r.get_attr("RTA_DST") or "0.0.0.0"
            out.append({
                "dst": f"{dst}/{r['dst_len']}",
                "gateway": r.get_attr("RTA_GATEWAY"),
                "ifname": names.get(r.get_attr("RTA_OIF")),
            })
    return out


@_off_loop
def addresses(ifname: str, netns: NetnsRef | None = None) -> list[str]:
    """IPv4 addresses of ``ifname`` as ``"a.b.c.d/len"`` strings."""
    with _iproute(netns) as ipr, _op("dump addresses", ifname):
        index = _need_index(ipr, ifname)
        return [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(family=socket.AF_INET, index=index)]


# -- bridges, veths, loopback -------------------------------------------------


@_off_loop
def create_bridge(ifname: str, address: str) -> None:
    """Create bridge ``ifname`` with ``address`` (CIDR, the gateway) and bring it up.

    Nothing else: no ip_forward change, no NAT. On failure half-way the
    bridge is deleted again.
    """
    with _iproute() as ipr:
        with _op("create bridge", ifname):
            ipr.link("add", ifname=ifname, kind="bridge")
        try:
            with _op("configure bridge", ifname):
                index = _need_index(ipr, ifname)
                ip, prefix = address.split("/")
                ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
                ipr.link("set", index=index, state="up")
        except BaseException:
            with _op("delete link", ifname, ok=(errno.ENODEV,)):
                idx = _index(ipr, ifname)
                if idx is not None:
                    ipr.link("del", index=idx)
            raise


@_off_loop
def delete_link(ifname: str, netns: NetnsRef | None = None) -> bool:
    """Delete interface ``ifname``; False when it was not there (idempotent).

    Deleting one end of a veth pair deletes the other end too.
    """
    with _iproute(netns) as ipr:
        with _op("link lookup", ifname):
            index = _index(ipr, ifname)
        if index is None:
            return False
        with _op("delete link", ifname, ok=(errno.ENODEV,)):
            ipr.link("del", index=index)
        return True


@_off_loop
def loopback_up(netns: NetnsRef) -> None:
    """Bring ``lo`` up inside ``netns`` (a fresh netns has it down)."""
    with _iproute(netns) as ipr, _op("set lo up", "lo"):
        ipr.link("set", index=_need_index(ipr, "lo"), state="up")


@_off_loop
def create_veth(
    netns: NetnsRef,
    host_ifname: str,
    peer_ifname: str,
    bridge: str,
    address: str,
    gateway: str,
    mac: str | None = None,
) -> str:
    """Wire ``netns`` to ``bridge`` with a veth pair; return the peer's MAC.

    The host end ``host_ifname`` joins ``bridge``; the peer is created
    directly inside ``netns`` as ``peer_ifname`` (so it never collides with
    a host interface of the same name), gets ``address`` (CIDR), is brought
    up together with ``lo``, and gets a default route via ``gateway``.
    On failure half-way the pair is deleted (deleting one end deletes both).
    """
    fd = _open_netns(netns)
    try:
        with _iproute() as ipr:
            bridge_index = None
            with _op("bridge lookup", bridge):
                bridge_index = _index(ipr, bridge)
            if bridge_index is None:
                raise NotFound("the network's bridge is missing", op="attach", field="bridge", value=bridge,
                               hint="the network was removed, or the host rebooted; create it again")
            peer: dict[str, Any] = {"ifname": peer_ifname, "net_ns_fd": fd}
            if mac:
                peer["address"] = mac
            with _op("create veth", host_ifname):
                # One request: create, enslave to the bridge, up (rtnl_newlink
                # applies IFLA_MASTER and the flags to the new device).
                ipr.link("add", ifname=host_ifname, kind="veth", peer=peer, master=bridge_index, state="up")
            try:
                with _iproute(netns) as nsr, _op("configure container interface", peer_ifname):
                    pindex = _need_index(nsr, peer_ifname)
                    ip, prefix = address.split("/")
                    nsr.addr("add", index=pindex, address=ip, prefixlen=int(prefix))
                    nsr.link("set", index=pindex, state="up")
                    nsr.link("set", index=_need_index(nsr, "lo"), state="up")
                    nsr.route("add", dst="0.0.0.0/0", gateway=gateway)
                    peer_mac: str = nsr.get_links(pindex)[0].get_attr("IFLA_ADDRESS")
                return peer_mac
            except BaseException:
                with _op("delete link", host_ifname, ok=(errno.ENODEV,)):
                    idx = _index(ipr, host_ifname)
                    if idx is not None:
                        ipr.link("del", index=idx)
                raise
    finally:
        os.close(fd)


# -- counters and traffic control --------------------------------------------


@_off_loop
def link_counters(ifname: str, netns: NetnsRef | None = None) -> dict[str, int]:
    """The interface's own counters: rx/tx bytes and packets (IFLA_STATS64)."""
    with _iproute(netns) as ipr, _op("read counters", ifname):
        index = _need_index(ipr, ifname)
        stats = ipr.get_links(index)[0].get_attr("IFLA_STATS64")
    return {k: int(stats[k]) for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}


def _burst(rate_bytes: int) -> int:
    # The bucket must hold what arrives in one timer tick (tc-tbf(8): "at
    # least rate/HZ"); 4 ms worth covers HZ=250. Never under 32 KiB, so a
    # GSO burst of a fast veth is not split needlessly.
    return max(32 * 1024, rate_bytes // 250)


@_off_loop
def set_rate(ifname: str, rate_bits: int, netns: NetnsRef | None = None) -> None:
    """Shape what ``ifname`` sends to ``rate_bits`` bits/s: a root tbf qdisc.

    Replaces whatever root qdisc was there. 50 ms of queue: more is dropped.
    """
    rate_bytes = rate_bits // 8
    with _iproute(netns) as ipr, _op("set tbf qdisc", ifname):
        index = _need_index(ipr, ifname)
        ipr.tc("replace", "tbf", index, handle="1:", rate=rate_bytes, burst=_burst(rate_bytes),
               latency="50ms")


@_off_loop
def clear_root_qdisc(ifname: str, netns: NetnsRef | None = None) -> bool:
    """Delete ``ifname``'s root qdisc (back to the default); False if none was set."""
    with _iproute(netns) as ipr:
        with _op("link lookup", ifname):
            index = _index(ipr, ifname)
        if index is None:
            return False
        with _op("delete root qdisc", ifname, ok=(errno.ENOENT, errno.EINVAL)):
            ipr.tc("del", index=index, parent=TC_H_ROOT)
            return True
        return False


@_off_loop
def qdiscs(ifname: str, netns: NetnsRef | None = None) -> list[str]:
    """The kinds of the qdiscs on ``ifname`` (e.g. ``["tbf"]`` or ``["noqueue"]``)."""
    with _iproute(netns) as ipr, _op("dump qdiscs", ifname):
        index = _need_index(ipr, ifname)
        return [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index)]


@_off_loop
def tc_filters(ifname: str, parent: int, netns: NetnsRef | None = None) -> list[str]:
    """The kinds of the tc filters attached under ``parent`` on ``ifname``."""
    with _iproute(netns) as ipr, _op("dump filters", ifname):
        index = _need_index(ipr, ifname)
        return [f.get_attr("TCA_KIND") for f in ipr.get_filters(index=index, parent=parent)
                if f.get_attr("TCA_KIND")]


@_off_loop
def tc_classes(ifname: str, netns: NetnsRef | None = None) -> list[int]:
    """The handles of the tc classes on ``ifname``."""
    with _iproute(netns) as ipr, _op("dump classes", ifname):
        index = _need_index(ipr, ifname)
        return [int(c["handle"]) for c in ipr.get_classes(index)]


@_off_loop
def htb_classid_shaping(ifname: str, classid: int, rate_bits: int, prog_fd: int,
                        netns: NetnsRef | None = None) -> None:
    """An htb root ``major:`` with class ``classid`` at ``rate_bits`` and a bpf filter.

    ``prog_fd`` is a loaded SCHED_CLS program that returns the socket's
    cgroup classid (the work cls_cgroup does, which this kernel may lack);
    in cls_bpf's classic mode a non-zero return value *is* the class
    (``tc-bpf(8)``: "the return code is the classid"). Unclassified traffic
    goes to htb's default (unlimited, direct).
    """
    major = classid >> 16
    rate_bytes = rate_bits // 8
    burst = _burst(rate_bytes)
    with _iproute(netns) as ipr:
        with _op("dump qdiscs", ifname):
            index = _need_index(ipr, ifname)
            roots = [(q.get_attr("TCA_KIND"), q["handle"]) for q in ipr.get_qdiscs(index) if q["parent"] == TC_H_ROOT]
        if ("htb", major << 16) not in roots:
            with _op("add htb qdisc", ifname):
                ipr.tc("replace", "htb", index, handle=major << 16, default=0)
        with _op("set htb class", ifname):
            ipr.tc("replace-class", "htb", index, handle=classid, parent=major << 16,
                   rate=rate_bytes, ceil=rate_bytes, burst=burst, cburst=burst)
        with _op("dump filters", ifname):
            kinds = {f.get_attr("TCA_KIND") for f in ipr.get_filters(index=index, parent=major << 16)}
        if "bpf" not in kinds:
            with _op("add bpf classid filter", ifname):
                ipr.tc("add-filter", "bpf", index, handle=1, parent=major << 16, prio=1,
                       protocol=ETH_P_ALL, fd=prog_fd, name="pycontain_classid")
