#!/usr/bin/env python3
"""One command: measure pycontain against crun, runc, podman and bubblewrap.

    sudo python3 benchmarks/run.py                 # full run (~5 min), writes results + docs page
    sudo python3 benchmarks/run.py --quick         # 3 rounds: a smoke run
    sudo python3 benchmarks/run.py --only start    # only groups/cases whose name contains "start"
    sudo python3 benchmarks/run.py --repeat 50

It installs missing peers from Debian (crun runc podman bubblewrap
busybox-static), builds a busybox rootfs, OCI bundles and a podman image in a
workspace under /var/tmp, discovers every ``benchmarks/bench_*.py`` module
that has a ``cases(ws)`` function, runs all cases interleaved group by group,
removes everything it made (also on Ctrl-C or an error), and writes
``results.json``, ``table.md`` and ``plot.png`` to ``benchmarks/results/latest/``
(or ``--out``) and the page ``docs/benchmarks.md``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import math
import os
import pkgutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run as a script: make `benchmarks` and `pycontain` importable
    sys.path.insert(0, str(REPO))

from benchmarks import machine  # noqa: E402
from benchmarks.measure import Case, Outcome, run_groups, summarize  # noqa: E402
from benchmarks.peers import Workspace, cgroup_dirs, ensure_installed, reap_stale  # noqa: E402

DEFAULT_OUT = HERE / "results" / "latest"
DOCS_PAGE = REPO / "docs" / "benchmarks.md"
GROUP_ORDER = ["start-warm", "start-idle", "exec", "stats", "memory", "build-cold", "build-cached", "cell",
               "cell-in", "cell-snapshot", "cell-podman", "sampler", "rootfs-create", "pull"]
GROUP_TITLES = {
    "start-warm": "Container start-to-exit, warm (/bin/true in busybox)",
    "start-idle": "Container start-to-exit after a 0.3 s idle gap",
    "exec": "Exec /bin/true into a running container",
    "stats": "One stats sample of a running container",
    "memory": "Memory per running container (Pss, MiB)",
    "build-cold": "Image build, 3 steps, no cache",
    "build-cached": "Image build, 3 steps, all cached",
    "cell": "Notebook cell through a real Jupyter kernel",
    "cell-in": "A cell sending a 100 MiB DataFrame in (`%%container --in df`)",
    "cell-snapshot": "A trivial `%%container --snapshot` cell, with 1 GiB in the kernel and without",
    "cell-podman": "A trivial cell run through `podman run --rm` (python3 -c pass) beside `%%container`",
    "sampler": "CPU cost of the live sampler, Container.monitor(interval=0.1), % of one CPU",
    "rootfs-create": "A container's rootfs from a 10 MB and a 1 GB image (prepare + release)",
    "pull": "Pull busybox + a 32 MB layer from a registry on 127.0.0.1",
}


def log(msg: str) -> None:
    print(msg, flush=True)


def discover(ws: Workspace) -> list[Case]:
    """Cases from every benchmarks/bench_*.py module that defines ``cases(ws)``."""
    out: list[Case] = []
    for mod in sorted(pkgutil.iter_modules([str(HERE)]), key=lambda m: m.name):
        if not mod.name.startswith("bench_"):
            continue
        try:
            module = importlib.import_module(f"benchmarks.{mod.name}")
        except Exception as exc:
            log(f"  ! {mod.name}: import failed: {exc!r}")
            continue
        make: Callable[[Workspace], list[Case]] | None = getattr(module, "cases", None)
        if make is None:
            log(f"  - {mod.name}: no cases(ws); not part of the harness")
            continue
        try:
            out.extend(make(ws))
        except Exception as exc:
            log(f"  ! {mod.name}.cases() failed: {exc!r}")
    return out


def select(cases: list[Case], only: list[str] | None) -> list[Case]:
    if not only:
        return cases
    return [c for c in cases if any(word in c.group or word in c.key for word in only)]


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "MiB":
        return f"{value:.2f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def _group_key(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def table_markdown(rows: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for group in sorted({r["group"] for r in rows}, key=_group_key):
        members = [r for r in rows if r["group"] == group]
        unit = members[0]["unit"]
        base = members[0]["baseline"]
        lines.append(f"### {GROUP_TITLES.get(group, group)} (`{group}`)\n")
        lines.append(f"| case | median {unit} | p95 {unit} | n | ratio vs {base or '-'} | what |")
        lines.append("|---|---:|---:|---:|---:|---|")
        measured = sorted((r for r in members if r["median"] is not None), key=lambda r: r["median"])
        others = [r for r in members if r["median"] is None]
        for r in measured:
            ratio = "-" if r["ratio"] is None else _ratio(r["ratio"])
            what = r["note"]
            if r["extras"]:
                what += " (" + ", ".join(f"{k} {_fmt(v, 'MiB')}" for k, v in sorted(r["extras"].items())) + ")"
            lines.append(f"| {r['name']} | {_fmt(r['median'], unit)} | {_fmt(r['p95'], unit)} | {r['n']} | {ratio} | {what} |")
        for r in others:
            lines.append(f"| {r['name']} | - | - | 0 | - | {r['status']}: {r['reason']} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in sorted({r["group"] for r in rows}, key=_group_key)
              if any(r["median"] is not None for r in rows if r["group"] == g)]
    if not groups:
        return
    heights = [max(1, sum(1 for r in rows if r["group"] == g and r["median"] is not None)) for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 1.0 + 0.42 * sum(heights) + 0.55 * len(groups)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        members = sorted((r for r in rows if r["group"] == group and r["median"] is not None),
                         key=lambda r: r["median"], reverse=True)
        names = [r["name"] for r in members]
        med = [r["median"] for r in members]
        err = [max(0.0, r["p95"] - r["median"]) for r in members]
        colors = ["#d62728" if r["name"].startswith(("pycontain", "%%container")) else
                  "#1f77b4" if r["name"] == r["baseline"] else "#7f7f7f" for r in members]
        ax.barh(names, med, xerr=[[0] * len(err), err], color=colors, capsize=3)
        unit = members[0]["unit"]
        ax.set_title(f"{GROUP_TITLES.get(group, group)}: {unit}, bar = median, whisker = p95", fontsize=9, loc="left")
        ax.tick_params(axis="both", labelsize=8)
        if max(med) / max(min(med), 1e-9) > 30:
            ax.set_xscale("log")
        for y, r in enumerate(members):
            label = _fmt(r["median"], unit)
            if r["ratio"] is not None and r["name"] != r["baseline"]:
                label += f"  ({_ratio(r['ratio'])} {r['baseline']})"
            ax.text(max(r["p95"], r["median"]), y, "  " + label, va="center", fontsize=7)
        ax.margins(x=0.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def docs_page(results: dict[str, Any], table: str, out_dir: Path) -> str:
    m = results["machine"]
    rel = os.path.relpath(out_dir, DOCS_PAGE.parent)
    vers = "\n".join(f"| {k} | {v or 'not installed'} |" for k, v in m["versions"].items())
    return f"""# Benchmarks

pycontain measured against crun, runc, podman and bubblewrap on the same machine, in one run,
interleaved (each round runs every case of a group once, in a shuffled order). Medians and p95
over the repetitions; the ratio column is the median of per-round ratios against the group's
baseline (crun where crun has the case), which cancels noise common to a round. The machine is
shared and noisy: read ratios, not absolute numbers. Nothing in the test suite asserts a timing.

Reproduce (as root; installs missing peers from Debian):

```bash
python3 benchmarks/run.py                 # full run, rewrites this page and benchmarks/results/latest/
python3 benchmarks/run.py --quick         # smoke run, 3 rounds
python3 benchmarks/run.py --only start    # one group (any part of a group or case name)
```

How the peers run (details in `benchmarks/README.md`): crun and podman (which runs crun) run in a
private mount namespace whose `/sys/fs/cgroup` shows the v1 hierarchies only (a tmpfs covers
`unified`), because crun 1.8 refuses this host's hybrid cgroups; every container gets
pid/net/ipc/uts/mnt namespaces and a cgroup under `/pycontain/bench-<pid>`; podman has a private
store, `--network=none`, cgroupfs and file events. Every command is started the same way
(vfork + `nsenter` + exec), so the launch cost is shared; the `launcher: /bin/true` row shows
it. Groups other than the peers' come from other `bench_*.py` modules (cgroups, networking) and
have their own baselines.

## Latest results

Run {results['started']} ({results['repeat']} rounds{', quick' if results['quick'] else ''}, {results['duration_s']:.0f} s;
load average {results['load'][0]} at the start, {results['load'][1]} at the end, on {m['cpus']} CPUs).
For scale, the yardsticks of `DESIGN.md` §9, measured on a quiet machine of this kind
(median ms, warm): crun run 8, runc run 24, podman run --rm ~170, bwrap --unshare-all 5,
`python3 -I -S -c pass` 9, `python3 -c pass` 39. Where this run is slower across the board, the
machine was busy: the ratios still hold.

![benchmark plot]({rel}/plot.png)

{table}
## Machine

| | |
|---|---|
| OS | {m['os']} |
| kernel | {m['kernel']} ({m['arch']}) |
| CPU | {m['cpu']}, {m['cpus']} CPUs |
| memory | {m['memory_gib']} GiB |
| cgroups | {m['cgroup_mode']} |
| Python | {m['python']} |
{vers}

Raw samples: [`results.json`]({rel}/results.json).
Left behind by the run (should be empty): `{json.dumps(results['leftovers'])}`.
"""


def _loadavg() -> float | None:
    """The 1-minute load average: how busy the shared machine was."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class _Interrupted(BaseException):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="3 rounds (CI smoke)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="only cases whose group or group/name contains NAME (repeatable)")
    ap.add_argument("--repeat", type=int, help="rounds (default 30; 3 with --quick)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    ap.add_argument("--docs", type=Path, default=None,
                    help="docs page to write (default: docs/benchmarks.md when --out is the default)")
    ap.add_argument("--no-docs", action="store_true", help="do not write the docs page")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing peers")
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-round shuffle")
    ap.add_argument("--list", action="store_true", help="list the cases (after --only) and exit")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("benchmarks/run.py needs root (containers, cgroups, mounts)")
        return 2
    repeat = args.repeat or (3 if args.quick else 30)
    signal.signal(signal.SIGTERM, _on_term)
    # Also when started in the background by a shell, which ignores SIGINT there.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    t0 = time.monotonic()
    reap_stale(log)
    cg_before = cgroup_dirs()
    load_start = _loadavg()
    missing = ensure_installed(install=not args.no_install, log=log)
    for peer, reason in missing.items():
        log(f"  - {peer}: {reason}")
    ws = Workspace(quick=args.quick, missing=missing, log=log)
    outcomes: list[Outcome] = []
    info: dict[str, Any] = {}
    interrupted = None
    try:
        ws.open()
        # After open(): `crun --version` makes /run/crun, which close() then removes.
        info = machine.info()
        log(f"workspace {ws.root}, cgroups under {ws.cgroup_parent}, host cgroups: {ws.mode}")
        cases = select(discover(ws), args.only)
        if args.list:
            for c in cases:
                log(f"{c.key:50s} {'skipped: ' + c.skip if c.skip else c.note}")
            return 0
        log(f"{len(cases)} cases in {len({c.group for c in cases})} groups, {repeat} rounds")
        outcomes = run_groups(cases, repeat, seed=args.seed, log=log)
    except (KeyboardInterrupt, _Interrupted) as exc:
        interrupted = repr(exc) or "interrupted"
        log(f"interrupted ({interrupted}): cleaning up")
    finally:
        ws.close()
    cg_after = cgroup_dirs()
    ours = ws.cgroup_parent.lstrip("/")
    new_cgroups = sorted(d for d in cg_after - cg_before if ours and ours in d)
    leftovers = dict(ws.leftovers)
    leftovers["cgroups"] = sorted(set(leftovers.get("cgroups", [])) | set(new_cgroups))
    for kind, items in leftovers.items():
        if items:
            log(f"  ! left behind ({kind}): {items}")
    if interrupted:
        return 130
    rows = summarize(outcomes)
    results = {
        "started": started.isoformat(),
        "duration_s": round(time.monotonic() - t0, 1),
        "quick": args.quick,
        "repeat": repeat,
        "only": args.only,
        "machine": info,
        "load": [load_start, _loadavg()],
        "cgroup_parent": ws.cgroup_parent,
        "leftovers": leftovers,
        "cases": rows,
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = table_markdown(rows)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(table)
    plot(rows, out / "plot.png", f"pycontain benchmarks, {started:%Y-%m-%d %H:%M} UTC, {results['machine']['kernel']}")
    docs = args.docs if args.docs is not None else (DOCS_PAGE if out.resolve() == DEFAULT_OUT.resolve() else None)
    if docs is not None and not args.no_docs:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(docs_page(results, table, out.resolve()))
        log(f"wrote {docs}")
    log(f"wrote {out}/results.json, table.md, plot.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
