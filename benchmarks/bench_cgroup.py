"""Cgroup costs: create/remove, moving a process in (cold and warm), one stats() read.

Groups (each against a floor of raw system calls, so the ratio column is
pycontain's overhead):

* ``cgroup-lifecycle``: ``Cgroup(name, memory=, cpus=, pids=)`` then
  ``remove()``, vs raw ``mkdir``+``rmdir`` of the same directories.
* ``cgroup-add``: the *cold first move* of a process into a freshly created
  cgroup (DESIGN.md §4: an RCU grace period, ~5-20 ms on this kernel), the
  warm move right after (~0.02 ms), and ``cg.run(["/bin/true"])`` which
  places the child before exec.
* ``cgroup-stats``: one ``stats()`` (a pandas Series; the issue's budget is
  < 1 ms median), ``stats_dict()`` and ``pycontain.cgroups()``.

Run alone (root): ``python3 benchmarks/bench_cgroup.py [rounds]``; it is also
picked up by ``benchmarks/run.py`` through :func:`cases`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.measure import Case, run_groups, summarize  # noqa: E402


def _name(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def _raw_dirs(name: str) -> list[str]:
    """The directories a pycontain cgroup uses, for the raw-syscall floor."""
    from pycontain.kernel.cgroupfs import layout

    lay = layout()
    if lay.mode == "v2":
        return [f"{lay.v2_mount}/pycontain/{name}"]
    return sorted({f"{m}/pycontain/{name}" for c, m in lay.v1_mounts.items()
                   if c in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")})


class _State:
    """What the cases keep between repetitions; everything is removed in teardown."""

    def __init__(self) -> None:
        self.cgroups: list[Any] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def cleanup(self) -> None:
        for cg in self.cgroups:
            try:
                cg.remove()
            except Exception:  # teardown must go on
                pass
        self.cgroups.clear()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()


def cases(ws: object = None) -> list[Case]:
    from pycontain.cgroup import Cgroup, cgroups

    out: list[Case] = []

    # -- create + remove ----------------------------------------------------------------
    def raw_lifecycle() -> None:
        dirs = _raw_dirs(_name("raw"))
        for d in dirs:
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.mkdir(d)
        for d in reversed(dirs):
            os.rmdir(d)

    def py_lifecycle() -> None:
        cg = Cgroup(_name("life"), memory="64M", cpus=1, pids=64)
        cg.remove()

    out.append(Case("raw-mkdir-rmdir", "cgroup-lifecycle", run=raw_lifecycle,
                    note="os.mkdir + os.rmdir in every hierarchy (the floor)"))
    out.append(Case("pycontain", "cgroup-lifecycle", run=py_lifecycle,
                    note='Cgroup(name, memory="64M", cpus=1, pids=64) + remove()'))

    # -- moving processes --------------------------------------------------------------
    cold = _State()

    def cold_before() -> None:
        cold.cleanup()
        cold.cgroups.append(Cgroup(_name("cold")))
        cold.procs.append(subprocess.Popen(["sleep", "60"]))

    def cold_move() -> None:
        cold.cgroups[0].add(cold.procs[0].pid)

    # (a setup, even a no-op, is what makes the harness call the teardown)
    out.append(Case("cold-first-move", "cgroup-add", run=cold_move, before=cold_before, setup=lambda: None,
                    teardown=cold.cleanup,
                    note="cg.add(pid): first move into a new cgroup (RCU grace period)"))

    warm = _State()

    def warm_setup() -> None:
        warm.cgroups[:] = [Cgroup(_name("warm-a")), Cgroup(_name("warm-b"))]
        warm.procs.append(subprocess.Popen(["sleep", "3600"]))
        warm.cgroups[0].add(warm.procs[0].pid)
        warm.cgroups[1].add(warm.procs[0].pid)
        warm.flip = 0  # type: ignore[attr-defined]

    def warm_move() -> None:
        warm.flip ^= 1  # type: ignore[attr-defined]
        warm.cgroups[warm.flip].add(warm.procs[0].pid)  # type: ignore[attr-defined]

    out.append(Case("warm-move", "cgroup-add", run=warm_move, setup=warm_setup, teardown=warm.cleanup,
                    note="cg.add(pid) between two warm cgroups"))

    run_state = _State()

    def run_setup() -> None:
        run_state.cgroups.append(Cgroup(_name("run")))

    def run_true() -> None:
        run_state.cgroups[0].run(["/bin/true"], wait=True)

    out.append(Case("run-true", "cgroup-add", run=run_true, setup=run_setup, teardown=run_state.cleanup,
                    note='cg.run(["/bin/true"], wait=True): the child joins before exec'))

    # -- stats ---------------------------------------------------------------------------
    st = _State()

    def stats_setup() -> None:
        cg = Cgroup(_name("stats"), memory="256M", cpus=1, pids=64)
        st.cgroups.append(cg)
        st.procs.append(subprocess.Popen(["sleep", "3600"]))
        cg.add(st.procs[0].pid)

    def stats_dict() -> None:
        st.cgroups[0].stats_dict()

    def stats() -> None:
        st.cgroups[0].stats()

    def listing() -> None:
        cgroups()

    out.append(Case("stats_dict", "cgroup-stats", run=stats_dict, setup=stats_setup, teardown=st.cleanup,
                    note="cg.stats_dict(): the raw dict (samplers)"))
    out.append(Case("stats", "cgroup-stats", run=stats, note="cg.stats(): a pandas Series (budget: < 1 ms median)"))
    out.append(Case("cgroups()", "cgroup-stats", run=listing, note="pycontain.cgroups(): the DataFrame of the subtree"))
    return out


def main(argv: list[str]) -> int:
    rounds = int(argv[1]) if len(argv) > 1 else 30
    if os.geteuid() != 0:
        print("bench_cgroup: needs root", file=sys.stderr)
        return 1
    rows = summarize(run_groups(cases(), rounds))
    print(f"{'group':18} {'case':18} {'median ms':>10} {'p95 ms':>9} {'x floor':>8}  note")
    for r in rows:
        med = "-" if r["median"] is None else f"{r['median']:.3f}"
        p95 = "-" if r["p95"] is None else f"{r['p95']:.3f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['group']:18} {r['name']:18} {med:>10} {p95:>9} {ratio:>8}  {r['note']}"
              + (f"  [{r['status']}: {r['reason']}]" if r["status"] != "ok" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
