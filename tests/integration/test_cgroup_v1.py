"""Cgroups on this cgroup v1 (hybrid) host: the shared cases, plus what only v1 has."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from pycontain.cgroup import Cgroup
from pycontain.errors import Unsupported
from pycontain.kernel import cgroupfs
from tests.integration._cgroup_cases import *  # noqa: F403  (the shared cases run here under the v1 mark)

pytestmark = pytest.mark.v1


# -- v1 only: net_cls and net_prio ---------------------------------------------------------------------

_SEND = ("import socket\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "for _ in range({n}): s.sendto(b'x' * 64, ('10.231.7.2', 9))\n")
_NET_MOUNTS = ("/sys/fs/cgroup/net_cls", "/sys/fs/cgroup/net_prio")


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _class_packets(dev: str) -> dict[str, int]:
    out = _sh("tc", "-s", "class", "show", "dev", dev)
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"class htb (\S+) .*?\n\s*Sent \d+ bytes (\d+) pkt", out)}


def _send(n: int) -> list[str]:
    return [sys.executable, "-c", _SEND.format(n=n)]


def test_net_cls_and_net_prio_classify_real_traffic() -> None:
    layout = cgroupfs.layout()
    for ctrl in ("net_cls", "net_prio"):
        info = layout.kernel_controllers.get(ctrl)
        if info is None or not info.enabled:
            pytest.skip(f"the kernel has no {ctrl}")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    from pyroute2 import IPRoute

    from pycontain.kernel.bpf import load_cgroup_classid_program

    tag = uuid.uuid4().hex[:6]
    ns_b, dev = f"pcg-b-{tag}", f"pcg{tag}"
    mounted_before = [cgroupfs.is_mount_point(p) for p in _NET_MOUNTS]
    # `ip netns add` makes /run/netns a mount point the first time; undo that below.
    netns_dir_was_mount = cgroupfs.is_mount_point("/run/netns")
    _sh("ip", "netns", "add", ns_b)
    try:
        # net_prio.ifpriomap only knows interfaces of the initial network
        # namespace (net/core/netprio_cgroup.c looks names up in init_net), so
        # our end of the veth is here; the peer is in a namespace of our own
        # and 10.231.7.0/24 exists only between the two: nothing leaves.
        _sh("ip", "link", "add", dev, "type", "veth", "peer", "name", "vb", "netns", ns_b)
        _sh("ip", "addr", "add", "10.231.7.1/24", "dev", dev)
        _sh("ip", "-n", ns_b, "addr", "add", "10.231.7.2/24", "dev", "vb")
        _sh("ip", "link", "set", dev, "up")
        _sh("ip", "-n", ns_b, "link", "set", "vb", "up")
        _sh("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
        for cls in ("1:10", "1:20", "1:30"):
            _sh("tc", "class", "add", "dev", dev, "parent", "1:", "classid", cls, "htb", "rate", "1gbit")
        # The tc filter on classid. This kernel lacks cls_cgroup ("tc filter
        # ... cgroup"); a cls_bpf filter whose program returns
        # bpf_get_cgroup_classid(skb) is the same filter.
        prog = load_cgroup_classid_program()
        try:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=dev)[0]
                ipr.tc("add-filter", "bpf", idx, ":1", fd=prog, name="pyc_classid", parent=0x10000, prio=10,
                       protocol=0x0003)
        finally:
            os.close(prog)
        with Cgroup(f"cls-{tag}", net_classid="1:10") as cls_cg:
            assert cgroupfs.is_mount_point(_NET_MOUNTS[0])
            assert cls_cg.run(_send(200), wait=True, timeout=60).returncode == 0
        with Cgroup(f"prio-{tag}", net_prio={dev: 0x10030}) as prio_cg:
            assert cgroupfs.is_mount_point(_NET_MOUNTS[1])
            assert prio_cg.run(_send(300), wait=True, timeout=60).returncode == 0
        assert subprocess.run(_send(100)).returncode == 0  # in neither cgroup
        packets = _class_packets(dev)
    finally:
        _sh("ip", "netns", "del", ns_b)  # takes the veth pair with it
        if not netns_dir_was_mount and cgroupfs.is_mount_point("/run/netns") and not os.listdir("/run/netns"):
            subprocess.run(["umount", "/run/netns"], check=False)
    # net_cls: the classid process's 200 packets, and only those, hit 1:10.
    assert 200 <= packets["1:10"] <= 205, packets
    # net_prio: ifpriomap set skb->priority to 0x10030, which HTB takes as class 1:30.
    assert 300 <= packets["1:30"] <= 305, packets
    # The process in neither cgroup fell to the default class.
    assert packets["1:20"] >= 100, packets
    # pycontain unmounted what it had mounted.
    # (Its mount point directory goes too, unless another tool put files there meanwhile.)
    assert [cgroupfs.is_mount_point(p) for p in _NET_MOUNTS] == mounted_before


def test_net_limits_need_creation_time() -> None:
    with Cgroup(f"t-{uuid.uuid4().hex[:8]}") as cg:
        with pytest.raises(Unsupported, match="net_cls"):
            cg.update(net_classid=0x10001)


def test_v2_only_choice_is_refused_here() -> None:
    with pytest.raises(Unsupported, match="v1|hybrid"):
        Cgroup(f"t-{uuid.uuid4().hex[:8]}", version="v2")


@pytest.mark.v1
def test_nested_parent_goes_with_its_last_cgroup() -> None:
    """pycontain/<sub>/NAME: the sub-parent stays while a cgroup uses it and is
    removed with the last one; the top parent pycontain stays."""
    tag = uuid.uuid4().hex[:6]
    parent = f"pycontain/nest-{tag}"
    a = Cgroup("a", parent=parent)
    b = Cgroup("b", parent=parent)
    sub = f"/sys/fs/cgroup/memory/{parent}"
    a.remove()
    assert os.path.isdir(sub)
    b.remove()
    assert not os.path.exists(sub)
    assert os.path.isdir("/sys/fs/cgroup/memory/pycontain")
    with Cgroup("c", parent=parent):  # and it is made again on demand
        assert os.path.isdir(sub)
    assert not os.path.exists(sub)


def test_concurrent_create_and_remove_under_a_nested_parent() -> None:
    """One thread removes the last cgroup of a nested parent (pruning it)
    while another makes a new one there: the maker retries, never fails
    (a read of the dying parent's cpuset.cpus gives ENODEV)."""
    import threading

    tag = uuid.uuid4().hex[:6]
    parent = f"pycontain/race-{tag}"
    errors: list[BaseException] = []

    def churn(who: str) -> None:
        try:
            for i in range(60):
                Cgroup(f"{who}-{i}", parent=parent).remove()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(w,)) for w in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not os.path.exists(f"/sys/fs/cgroup/memory/{parent}")
