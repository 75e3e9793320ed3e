"""Memory per running container: what each peer leaves resident.

For each peer, N=5 containers running ``sleep`` are started; the processes the
peer left behind for them (runtime shims such as conmon or bwrap's monitor,
plus the container processes) are found by walking the process tree from
each container's root process, and their Pss and Rss are summed from
``/proc/PID/smaps_rollup``. The value is Pss per container (MiB): Pss splits
shared pages among the processes that map them, so five identical containers
are not counted five times for what they share. Rss per container and the
process count per container are reported beside it. Kernel memory (page
tables, namespaces, cgroups) is not in smaps and not counted.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from benchmarks.measure import Case, RunResult, skipped
from benchmarks.peers import IMAGE, Workspace, descendants, memory_of

N = 5
SLEEP = ["/bin/sleep", "100000"]
MAX_REPEAT = 5


def _wait_for_sleep(roots: list[int], timeout: float = 10.0) -> None:
    """Until every root has a ``sleep`` in its tree (the container has exec'd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = 0
        for root in roots:
            for pid in descendants(root):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        if f.read().strip() == "sleep":
                            ready += 1
                            break
                except OSError:
                    pass
        if ready == len(roots):
            return
        time.sleep(0.02)
    raise TimeoutError("containers did not reach sleep within 10 s")


def _measure(roots: list[int]) -> dict[str, float]:
    _wait_for_sleep(roots)
    pids = sorted({p for r in roots for p in descendants(r)})
    m = memory_of(pids)
    return {
        "value": m["pss_kib"] / 1024 / N,
        "rss_mib": m["rss_kib"] / 1024 / N,
        "processes": m["processes"] / N,
    }


def _runtime(ws: Workspace, runtime: str) -> Callable[[], RunResult]:
    ids = [f"pcb-{runtime}-mem{i}" for i in range(N)]
    view = ws.runtime_view(runtime)

    def run() -> RunResult:
        try:
            for cid in ids:
                bundle = ws.bundle(runtime, cid, SLEEP)
                ws.run(ws.runtime_argv(runtime, "run", "--detach", "--bundle", bundle, cid), view=view, detached=True)
            return _measure([ws.container_pid(runtime, cid) for cid in ids])
        finally:
            for cid in ids:
                ws.run(ws.runtime_argv(runtime, "delete", "--force", cid), view=view, check=False)

    return run


def _podman(ws: Workspace) -> Callable[[], RunResult]:
    names = [f"pcb-podman-mem{i}" for i in range(N)]

    def run() -> RunResult:
        try:
            for name in names:
                ws.podman("run", "-d", "--name", name, *ws.podman_run_flags(), IMAGE, *SLEEP, detached=True)
            out = ws.podman("inspect", "--format", "{{.State.ConmonPid}}", *names, capture=True).stdout
            return _measure([int(x) for x in out.split()])
        finally:
            ws.podman("rm", "--force", "--time", "0", *names, check=False)

    return run


def _bwrap(ws: Workspace) -> Callable[[], RunResult]:
    def run() -> RunResult:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(N):
                procs.append(ws.spawn(ws.bwrap_argv(*SLEEP)))
            return _measure([p.pid for p in procs])
        finally:
            for p in procs:
                ws.stop(p)

    return run


def cases(ws: Workspace) -> list[Case]:
    out: list[Case] = []
    makers: dict[str, Callable[[], Callable[[], RunResult]]] = {
        "crun": lambda: _runtime(ws, "crun"),
        "runc": lambda: _runtime(ws, "runc"),
        "podman": lambda: _podman(ws),
        "bwrap": lambda: _bwrap(ws),
    }
    notes = {
        "crun": "crun run -d: the container's sleep only (crun leaves no shim)",
        "runc": "runc run -d: the container's sleep only (runc leaves no shim)",
        "podman": "podman run -d: conmon + sleep",
        "bwrap": "bwrap --unshare-all: bwrap (outside) + bwrap (pid 1 inside) + sleep",
    }
    for peer, make in makers.items():
        if peer in ws.missing:
            out.append(skipped(peer, "memory", ws.missing[peer], unit="MiB"))
            continue
        setup = ws.ensure_podman if peer == "podman" else None
        out.append(Case(peer, "memory", run=make(), setup=setup, unit="MiB", repeat=MAX_REPEAT, warmup=0,
                        note=f"Pss per container, {N} running; " + notes[peer]))
    return out

