"""pycontain's own cases, beside the peers'.

What exists is measured; what does not yet is listed as skipped with "not
implemented yet", so a later session only fills in the function named in the
reason (same group names as the peers, so the runner interleaves them and
takes ratios pair by pair):

* start-warm / start-idle: ``pycontain engine (no rootfs)``: fork, 5 new
  namespaces (pid net ipc uts mnt), exec /bin/true, wait: an early lower
  bound while no rootfs, overlay or cgroup is set up; ``pycontain engine +
  cgroup (no rootfs)``: the same in a cgroup made and removed per run (as
  crun and runc do per container); ``pycontain`` (a full
  container: busybox rootfs, 5 namespaces, cgroup) once ``pycontain.Container``
  exists; ``pycontain run (CLI)``: the same container through the installed
  ``pycontain`` command, a new process per container as runc's case, served
  by a warm CLI server (started in the case's setup, stopped in its
  teardown; timed once the server has built its C client, which the
  launcher's shell line then execs); ``pycontain run (CLI, no server)``: the same with
  PYCONTAIN_CLI_SERVER=0 (a fresh interpreter imports pycontain each time).
* exec, memory, build-cold, build-cached: once Container / Image exist.
* stats: ``pycontain.Cgroup(...).stats()`` (pandas Series) and
  ``stats_dict()`` (the sampler's hot path) on a cgroup of this run.
* cell: a plain cell through a real Jupyter kernel (jupyter_client +
  ipykernel) as the reference, and the same cell under ``%%container`` once
  the magic exists: the difference is the magic's overhead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.measure import Case, skipped
from benchmarks.peers import Workspace

NOT_YET = "not implemented yet"
FIVE = frozenset({"pid", "net", "ipc", "uts", "mnt"})


def _has(module: str, name: str | None = None) -> bool:
    try:
        if importlib.util.find_spec(module) is None:
            return False
        if name is None:
            return True
        return hasattr(importlib.import_module(module), name)
    except Exception:
        return False


def _gap_for(group: str) -> Callable[[], None] | None:
    from benchmarks.bench_start import _gap

    return _gap if group == "start-idle" else None


def _engine_case(group: str) -> Case:
    from pycontain.engine import ChildSpec, start

    spec = ChildSpec(argv=["/bin/true"], new=FIVE)

    def run() -> None:
        status = start(spec).wait()
        if status != 0:
            raise RuntimeError(f"/bin/true exited {status}")

    return Case("pycontain engine (no rootfs)", group, run=run, before=_gap_for(group), warmup=3,
                note="pycontain.engine.start(ChildSpec(argv=['/bin/true'], new=5 namespaces)).wait(); in-process")


def _engine_cgroup_case(ws: Workspace, group: str) -> Case:
    from pycontain import Cgroup

    counter = [0]
    parent = ws.cgroup_parent.lstrip("/")

    def run() -> None:
        # A fresh cgroup per run, as crun/runc make one per container: create,
        # the child joins it before exec, wait, remove.
        counter[0] += 1
        cg = Cgroup(f"engine-{group}-{counter[0]}", parent=parent)
        try:
            child = cg.run(["/bin/true"], wait=True, new=FIVE)
            if child.returncode != 0:
                raise RuntimeError(f"/bin/true exited {child.returncode}")
        finally:
            cg.remove()

    return Case("pycontain engine + cgroup (no rootfs)", group, run=run, before=_gap_for(group), warmup=2,
                note="Cgroup(new) + cg.run(['/bin/true'], new=5 namespaces, wait) + remove(); in-process")


def _pycontain_env(ws: Workspace) -> None:
    """pycontain's state and image store inside the workspace (removed with it)."""
    os.environ["PYCONTAIN_STATE_DIR"] = os.path.join(ws.root, "pycontain-state")
    os.environ["PYCONTAIN_STORE"] = os.path.join(ws.root, "pycontain-store")


_IMAGE: dict[str, Any] = {}


def _busybox_image(ws: Workspace) -> Any:
    """The peers' busybox rootfs as a pycontain image (one layer), made once."""
    from pycontain import Image

    if "img" not in _IMAGE:
        _IMAGE["img"] = Image.from_rootfs(ws.rootfs, tag="pycontain-bench/busybox:latest")
    return _IMAGE["img"]


def _container_start(ws: Workspace, group: str) -> Case:
    """The peers' work: /bin/true in the busybox rootfs, with pid/net/ipc/uts/mnt
    (and cgroup) namespaces, a cgroup, an overlay root and the hardening;
    everything removed after each run."""
    from pycontain import Container

    def run() -> None:
        c = Container(image=_busybox_image(ws), command=["/bin/true"])
        try:
            c.start()
            status = c.wait()
        finally:
            c.remove(force=True)
        if status != 0:
            raise RuntimeError(f"/bin/true exited {status}")

    return Case("pycontain", group, run=run, setup=lambda: _busybox_image(ws), before=_gap_for(group), warmup=2,
                note="Container(image=busybox, command=['/bin/true']).start(); wait(); remove() - in-process")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_CASE = "pycontain run (CLI)"


def cli_command() -> str | None:
    """The installed ``pycontain`` command: beside this interpreter (a venv's
    bin), else the repository's .venv (./dev setup); None when neither has one."""
    for path in (os.path.join(os.path.dirname(sys.executable), "pycontain"),
                 os.path.join(REPO, ".venv", "bin", "pycontain")):
        if os.access(path, os.X_OK):
            return path
    return None


CLI_NO_SERVER_CASE = "pycontain run (CLI, no server)"


class CliServer:
    """A warm CLI server (pycontain/cli/server.py) of this benchmark's own, in
    a socket directory inside the workspace: started the way a user gets one
    (a first command runs in-process and leaves a server behind), checked
    before every repetition (a server that went away, e.g. because
    pycontain's source changed under it, is started again, untimed, and
    counted), stopped at the end."""

    def __init__(self, ws: Workspace, command: str, group: str) -> None:
        self.ws = ws
        self.command = command
        self.sockdir = os.path.join(ws.root, f"cli-{group}")
        self.restarts = 0
        self.pids: set[int] = set()

    def env(self) -> dict[str, str]:
        # state dir and store: the environment _pycontain_env() set for this run
        return dict(os.environ, PYCONTAIN_CLI_SERVER="1", PYCONTAIN_CLI_SERVER_DIR=self.sockdir)

    def _answering(self) -> int | None:
        from pycontain.cli import server

        for path in server.server_sockets(self.sockdir):
            answer = server.ask(path, b"S", timeout=2)
            if answer is not None:
                self.pids.add(answer[0])
                return answer[0]
        return None

    def _client_built(self) -> bool:
        """Whether the server is done building its C client (ready, or none)."""
        from pycontain.cli import server

        for path in server.server_sockets(self.sockdir):
            answer = server.ask(path, b"S", timeout=2)
            if answer is not None and "\nclient building\n" in answer[1]:
                return False
        return True

    def ensure(self) -> None:
        import time

        if self._answering() is not None:
            return
        if self.pids:
            self.restarts += 1
        self.ws.run([self.command, "--version"], env=self.env())
        deadline = time.monotonic() + 30
        while self._answering() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no CLI server answered in {self.sockdir}")
            time.sleep(0.02)
        # A new server builds its C client (once per client.c) at low priority:
        # not while the runs are timed.
        while not self._client_built() and time.monotonic() < deadline + 60:
            time.sleep(0.05)

    def stop(self) -> None:
        import signal
        import time

        from pycontain.cli import server

        for path in server.server_sockets(self.sockdir):
            answer = server.ask(path, b"S", timeout=2)
            if answer is not None:
                fields = dict(line.split(" ", 1) for line in answer[1].splitlines() if " " in line)
                print(f"note: the warm CLI server {answer[0]} served {fields.get('served', '?')} commands "
                      f"(its C client: {fields.get('client', '?')})", file=sys.stderr)
        self.ws.run([self.command, "server", "stop"], env=self.env(), check=False)
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
            else:
                os.kill(pid, signal.SIGKILL)  # our own server, by pid
        if self.restarts:
            print(f"note: the CLI server of {self.sockdir} was restarted {self.restarts} times "
                  "(pycontain's source changed during the run?)", file=sys.stderr)


def _cli_start(ws: Workspace, group: str, server: bool = True) -> Case:
    """The peers' work through the command line, as runc's case: a new
    process per container, ``pycontain run --rm IMAGE /bin/true``, started by
    the same launcher (vfork + nsenter) as crun and runc. ``server``: through
    a warm CLI server (the default for users), else in-process
    (PYCONTAIN_CLI_SERVER=0: a fresh interpreter imports pycontain each time)."""
    name = CLI_CASE if server else CLI_NO_SERVER_CASE
    command = cli_command()
    if command is None:
        return skipped(name, group, "no installed pycontain command (./dev setup: pip install -e .)")
    with open(command, "rb") as f:
        head = f.read(1 << 16)
    how = "console script"
    if head.startswith(b"#!/bin/sh"):
        how = "-I -S launcher"
        if server and b"pycontain-client-" in head:
            how = "launcher's shell line execs the server's C client"
    argv = [command, "run", "--rm", "pycontain-bench/busybox:latest", "/bin/true"]
    gap = _gap_for(group)
    if not server:
        def run_in_process() -> None:
            ws.run(argv, view="host", env=dict(os.environ, PYCONTAIN_CLI_SERVER="0"))

        return Case(name, group, run=run_in_process, setup=lambda: _busybox_image(ws), before=gap, warmup=2,
                    note=f"`pycontain run --rm busybox /bin/true` ({how}: {command}), PYCONTAIN_CLI_SERVER=0: "
                         "a fresh interpreter imports pycontain; 5 namespaces, cgroup")
    warm = CliServer(ws, command, group)
    env = warm.env()

    def setup() -> None:
        _busybox_image(ws)
        warm.ensure()

    def before() -> None:
        if gap is not None:
            gap()
        warm.ensure()

    def run() -> None:
        ws.run(argv, view="host", env=env)

    return Case(name, group, run=run, setup=setup, teardown=warm.stop, before=before, warmup=2,
                note=f"`pycontain run --rm busybox /bin/true` ({how}: {command}) through the warm CLI server "
                     "(started in setup, stopped in teardown); 5 namespaces, cgroup")


class RunningContainer:
    """A busybox container running ``sleep``, started by the first ``setup()``
    and removed by ``teardown()`` (and when the workspace closes)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.c: Any = None
        ws.on_close(self.teardown)

    def setup(self) -> None:
        if self.c is None:
            from pycontain import Container

            self.c = Container(image=_busybox_image(self.ws), command=["sleep", "3600"]).start()

    def teardown(self) -> None:
        c, self.c = self.c, None
        if c is not None:
            c.remove(force=True)


def _exec_case(ws: Workspace) -> Case:
    running = RunningContainer(ws)

    def run() -> None:
        status = running.c.exec(["/bin/true"])
        if status != 0:
            raise RuntimeError(f"exec /bin/true exited {status}")

    return Case("pycontain", "exec", run=run, setup=running.setup, teardown=running.teardown, warmup=2,
                note="Container.exec(['/bin/true']) into a running busybox container - in-process")


def _memory_case(ws: Workspace) -> Case:
    """Pss per running container, as bench_memory measures the peers: the
    container's PID 1 (pycontain's init, forked from the zygote: no relay) and
    the workload."""
    from benchmarks.bench_memory import SLEEP, N, _measure
    from pycontain import Container

    def run() -> Any:
        containers = [Container(image=_busybox_image(ws), command=SLEEP) for _ in range(N)]
        try:
            roots: list[int] = []
            for c in containers:
                c.start()
                assert c._child is not None
                roots.append(c._child.relay_pid)
            return _measure(roots)
        finally:
            for c in containers:
                c.remove(force=True)

    return Case("pycontain", "memory", run=run, setup=lambda: _busybox_image(ws), unit="MiB", repeat=5,
                note="Container(command=sleep) x5: PID 1 (init, a fork of the zygote) + sleep; Pss per container")


def _build_case(ws: Workspace, cold: bool) -> Case:
    from benchmarks.bench_build import write_context
    from pycontain.build import build

    ctx: list[str] = []

    def setup() -> None:
        _busybox_image(ws)
        if not ctx:
            path = write_context(ws) + "-pycontain"
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "Containerfile"), "w") as f:
                f.write("FROM pycontain-bench/busybox:latest\nRUN echo built > /built.txt\n"
                        "COPY payload.txt /payload.txt\n")
            with open(os.path.join(path, "payload.txt"), "w") as f:
                f.write("payload\n" * 64)
            ctx.append(path)

    def run() -> None:
        build(ctx[0], tag="pycontain-bench/built:latest", progress=False, no_cache=cold)

    return Case("pycontain", "build-cold" if cold else "build-cached", run=run, setup=setup, repeat=10,
                note="pycontain.build (" + ("no_cache: 3 steps run" if cold else "3 steps cached") + ")")


def _stats_cases(ws: Workspace) -> list[Case]:
    from pycontain import Cgroup

    holder: dict[str, Any] = {}

    def setup() -> None:
        if "cg" not in holder:
            holder["cg"] = Cgroup(f"stats-{os.getpid()}", parent=ws.cgroup_parent.lstrip("/"))

    def teardown() -> None:
        cg = holder.pop("cg", None)
        if cg is not None:
            cg.remove()

    def series() -> None:
        holder["cg"].stats()

    def plain() -> None:
        holder["cg"].stats_dict()

    ws.on_close(teardown)
    return [
        Case("pycontain Cgroup.stats()", "stats", run=series, setup=setup, teardown=teardown, warmup=3,
             note="pandas Series from the cgroup's own files"),
        Case("pycontain Cgroup.stats_dict()", "stats", run=plain, setup=setup, warmup=3,
             note="plain dict, the live sampler's hot path"),
    ]


class _Kernel:
    """A real Jupyter kernel (ipykernel) driven by jupyter_client."""

    def __init__(self) -> None:
        self.km: Any = None
        self.kc: Any = None

    def start(self) -> None:
        if self.km is not None:
            return
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str) -> None:
        reply = self.kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")

    def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None:
            self.km.shutdown_kernel(now=True)
        self.km = self.kc = None


def _cell_cases(ws: Workspace) -> list[Case]:
    if not _has("jupyter_client") or not _has("ipykernel"):
        return [skipped("plain cell", "cell", "jupyter_client/ipykernel not installed")]
    kernel = _Kernel()
    ws.on_close(kernel.stop)
    out = [
        Case("plain cell", "cell", run=lambda: kernel.execute("pass"), setup=kernel.start, teardown=kernel.stop,
             warmup=3, note="reference: `pass` executed by a real ipykernel, round trip through jupyter_client"),
    ]
    if _has("pycontain.notebook.magics"):
        def setup_magic() -> None:
            kernel.start()
            kernel.execute("%load_ext pycontain")

        out.append(Case("%%container cell", "cell", run=lambda: kernel.execute("%%container\npass"),
                        setup=setup_magic, warmup=2,
                        note="`%%container` + `pass` in the same kernel; minus `plain cell` = the magic's overhead"))

        def gap() -> None:
            # A person reads a cell's output before running the next: the
            # container for the next cell is started (and the last one
            # removed) meanwhile, as pycontain.notebook.warm intends.
            import time

            time.sleep(0.3)

        out.append(Case("%%container cell, 0.3 s after the last", "cell",
                        run=lambda: kernel.execute("%%container\npass"), setup=setup_magic, before=gap, warmup=2,
                        note="the same after 0.3 s of idle (untimed): the next cell's container is ready"))
    else:
        out.append(skipped("%%container cell", "cell", f"{NOT_YET}: pycontain.notebook.magics is missing"))
    return out


def cases(ws: Workspace) -> list[Case]:
    # Set before any case runs: every pycontain object of this run (other
    # modules' networks and cgroups too) must see one state dir and store.
    _pycontain_env(ws)
    out: list[Case] = []
    has_engine = _has("pycontain.engine", "start") and _has("pycontain.engine", "ChildSpec")
    has_container = _has("pycontain.container", "Container")
    for group in ("start-warm", "start-idle"):
        out.append(_engine_case(group) if has_engine else skipped(
            "pycontain engine (no rootfs)", group, f"{NOT_YET}: pycontain.engine is missing"))
        out.append(_engine_cgroup_case(ws, group) if has_engine and _has("pycontain.cgroup", "Cgroup") else skipped(
            "pycontain engine + cgroup (no rootfs)", group, f"{NOT_YET}: pycontain.engine or Cgroup is missing"))
        out.append(_container_start(ws, group) if has_container else skipped(
            "pycontain", group, f"{NOT_YET}: pycontain.Container is missing"))
        out.append(_cli_start(ws, group) if has_container else skipped(
            CLI_CASE, group, f"{NOT_YET}: pycontain.Container is missing"))
        out.append(_cli_start(ws, group, server=False) if has_container else skipped(
            CLI_NO_SERVER_CASE, group, f"{NOT_YET}: pycontain.Container is missing"))
    if has_container:
        out.append(_exec_case(ws))
        out.append(_build_case(ws, cold=True))
        out.append(_build_case(ws, cold=False))
        out.append(_memory_case(ws))
    if _has("pycontain.cgroup", "Cgroup"):
        out.extend(_stats_cases(ws))
    else:
        out.append(skipped("pycontain Cgroup.stats()", "stats", f"{NOT_YET}: pycontain.Cgroup is missing"))
    out.extend(_cell_cases(ws))
    return out
