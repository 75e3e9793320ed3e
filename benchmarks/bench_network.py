"""What networking costs: start time of a bridge network vs "none", and TCP throughput.

Groups:

* ``net-start`` (ms): a child in a new network namespace, from fork to exit,
  with its network made and taken away again:
  ``none`` (new netns, ``lo`` up; the baseline), ``bridge`` (the same netns
  persisted, a veth pair on a pycontain bridge with an address, a default
  route and an /etc/hosts entry, then detached and released).
* ``net-throughput`` (Gbit/s, higher is better): 200 MB over one TCP
  connection between two Python processes: ``host loopback`` (both on the
  host, 127.0.0.1; the baseline), ``container to container`` (two netns on
  one bridge, through veth + bridge + veth), ``published port`` (host to a
  container through the userspace proxy on 127.0.0.1).

No peer runtime is measured here: podman's and Docker's bridges add NAT
rules, which this project must not create on a shared host.

    sudo python3 benchmarks/run.py --only net          # through the harness
    sudo python3 benchmarks/bench_network.py           # standalone, prints a table
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # standalone: make `benchmarks` and `pycontain` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import Case

SUBNET = "10.213.250.0/24"
NBYTES = 200_000_000
PORT = 7500


def _idle() -> None:
    return None


def _sink(port: int, nbytes: int, bind: str) -> float:
    """Receive ``nbytes`` on ``bind:port``; return Gbit/s from first to last byte."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(1)
    srv.settimeout(30)
    conn, _ = srv.accept()
    got, t0 = 0, 0.0
    buf = bytearray(1 << 20)
    with conn:
        while got < nbytes:
            n = conn.recv_into(buf)
            if not n:
                break
            if not got:
                t0 = time.perf_counter()
            got += n
        elapsed = time.perf_counter() - t0
        conn.sendall(b"k")
    srv.close()
    return got * 8 / elapsed / 1e9


def _source(addr: tuple[str, int], nbytes: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection(addr, timeout=10)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    block = memoryview(b"\0" * (1 << 20))
    with s:
        sent = 0
        while sent < nbytes:
            n = min(len(block), nbytes - sent)
            s.sendall(block[:n])
            sent += n
        s.recv(1)


class _Env:
    """A private state dir and one network, made in setup, removed in teardown."""

    def __init__(self) -> None:
        self.tmp = ""
        self.net: Any = None
        self.saved_env: str | None = None
        self.users = 0
        self.ns: dict[str, str] = {}
        self.counter = 0

    def up(self) -> None:
        self.users += 1
        if self.net is not None:
            return
        from pycontain.network import Network

        self.tmp = tempfile.mkdtemp(prefix="pycontain-bench-net-")
        self.saved_env = os.environ.get("PYCONTAIN_STATE_DIR")
        os.environ["PYCONTAIN_STATE_DIR"] = os.path.join(self.tmp, "state")
        self.net = Network.create("bench", subnet=SUBNET)

    def down(self) -> None:
        self.users -= 1
        if self.users > 0 or self.net is None:
            return
        from pycontain.kernel import nsfs

        for path in self.ns.values():
            nsfs.unbind_namespace(path)
        self.ns.clear()
        self.net.remove(force=True)
        self.net = None
        if self.saved_env is None:
            os.environ.pop("PYCONTAIN_STATE_DIR", None)
        else:
            os.environ["PYCONTAIN_STATE_DIR"] = self.saved_env
        shutil.rmtree(self.tmp, ignore_errors=True)

    def netns(self, name: str) -> str:
        from pycontain.engine import ChildSpec, start

        if name not in self.ns:
            path = os.path.join(self.tmp, f"{name}.netns")
            start(ChildSpec(target=_idle, new={"net"}, persist={"net": path})).result(timeout=10)
            self.ns[name] = path
        return self.ns[name]


def cases(ws: Any = None) -> list[Case]:
    from pycontain.engine import ChildSpec, start
    from pycontain.network import PortForward, setup_loopback

    env = _Env()
    eps: dict[str, Any] = {}

    def start_none() -> None:
        path = os.path.join(env.tmp, "start-none.netns")
        child = start(ChildSpec(target=_idle, new={"net"}, persist={"net": path}))
        from pycontain.kernel import nsfs

        try:
            child.result(timeout=10)
            setup_loopback(path)
        finally:
            nsfs.unbind_namespace(path)

    def start_bridge() -> None:
        from pycontain.kernel import nsfs

        env.counter += 1
        path = os.path.join(env.tmp, "start-bridge.netns")
        child = start(ChildSpec(target=_idle, new={"net"}, persist={"net": path}))
        try:
            child.result(timeout=10)
            ep = env.net.attach(path, name=f"s{env.counter}")
            try:
                env.net.hosts_file()
            finally:
                env.net.detach(ep)
        finally:
            # Even when a step fails, the namespace file goes: no nsfs mount is left.
            nsfs.unbind_namespace(path)

    def tp_setup() -> None:
        env.up()
        if not eps:
            eps["a"] = env.net.attach(env.netns("a"), name="a")
            eps["b"] = env.net.attach(env.netns("b"), name="b")

    def tp_loopback() -> float:
        sink = start(ChildSpec(target=_sink, args=(PORT, NBYTES, "127.0.0.1")))
        src = start(ChildSpec(target=_source, args=(("127.0.0.1", PORT), NBYTES)))
        src.result(timeout=60)
        return float(sink.result(timeout=60))

    def tp_containers() -> float:
        sink = start(ChildSpec(target=_sink, args=(PORT, NBYTES, "0.0.0.0"), join=[("net", eps["b"].netns)]))
        src = start(ChildSpec(target=_source, args=((eps["b"].ip, PORT), NBYTES), join=[("net", eps["a"].netns)]))
        src.result(timeout=60)
        return float(sink.result(timeout=60))

    def tp_published() -> float:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            host_port = probe.getsockname()[1]
        with PortForward(host_port, eps["b"].ip, PORT):
            sink = start(ChildSpec(target=_sink, args=(PORT, NBYTES, "0.0.0.0"), join=[("net", eps["b"].netns)]))
            src = start(ChildSpec(target=_source, args=(("127.0.0.1", host_port), NBYTES)))
            src.result(timeout=60)
            return float(sink.result(timeout=60))

    def teardown() -> None:
        eps.clear()
        env.down()

    return [
        Case("none", "net-start", run=start_none, setup=env.up, teardown=env.down,
             note="fork, new netns (persisted), lo up, exit, release"),
        Case("bridge", "net-start", run=start_bridge, setup=env.up, teardown=env.down,
             note="the same + veth pair on a bridge, address, route, hosts; detach"),
        Case("host loopback", "net-throughput", run=tp_loopback, setup=tp_setup, teardown=teardown,
             unit="Gbit/s", repeat=5, note="200 MB, one TCP stream, 127.0.0.1 on the host"),
        Case("container to container", "net-throughput", run=tp_containers, setup=tp_setup, teardown=teardown,
             unit="Gbit/s", repeat=5, note="200 MB, veth -> bridge -> veth"),
        Case("published port", "net-throughput", run=tp_published, setup=tp_setup, teardown=teardown,
             unit="Gbit/s", repeat=5, note="200 MB, 127.0.0.1:port -> userspace proxy -> container"),
    ]


def main() -> None:
    from benchmarks.measure import run_groups

    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    outcomes = run_groups(cases(), repeat, log=lambda m: None)
    for o in outcomes:
        vals = o.values()
        if vals:
            print(f"{o.case.group:16} {o.case.name:24} median {statistics.median(vals):8.2f} {o.case.unit:7}"
                  f" n={len(vals)}  {o.case.note}")
        else:
            print(f"{o.case.group:16} {o.case.name:24} error: {o.error}")


if __name__ == "__main__":
    main()
