"""Interleaved rounds, medians, p95 and pair-by-pair ratios.

The machine is shared and noisy, so no measurement is trusted alone:

* every case is repeated, and reported as a median (and p95);
* the cases of one *group* run interleaved: round 1 runs each case of the group
  once, in a shuffled order, then round 2, ... so slow drift of the machine
  (another job starting, the page cache filling) hits every case alike;
* a ratio against the group's baseline (crun, where crun has the case) is taken
  *pair by pair*: case sample of round r / baseline sample of round r, and the
  median of those ratios is reported. That cancels noise common to a round,
  which a ratio of two medians would not.

Nothing here asserts a timing.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# A case's run() returns None (the harness times the call, in ms), a number
# (a value in the case's unit, e.g. MiB or ms it timed itself), or a mapping
# {"value": number, <extra name>: number, ...} whose extras are reported too.
# Any other return value (no "value" key, a Series, ...) is ignored and the
# call is timed.
RunResult = float | int | Mapping[str, float] | None | Any


@dataclass
class Case:
    """One thing to measure, e.g. ``Case("crun", "start-warm", run=...)``.

    name      peer or variant, unique within its group ("crun", "podman", ...)
    group     what is measured; cases of a group run interleaved and are compared
    run       one measured repetition (see ``RunResult``)
    setup     called once before the first round (not timed)
    teardown  called once at the end, always, even after an error or Ctrl-C
    before    called before every repetition, not timed (e.g. an idle gap)
    unit      "ms" for timings; anything else for values run() returns
    skip      a reason: the case is listed in the results but never run
    repeat    at most this many repetitions (for slow cases), None = the run's
    warmup    untimed repetitions before the first round
    note      one line for the table (what exactly the command is)
    """

    name: str
    group: str
    run: Callable[[], RunResult]
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    before: Callable[[], None] | None = None
    unit: str = "ms"
    skip: str | None = None
    repeat: int | None = None
    warmup: int = 1
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"


def skipped(name: str, group: str, reason: str, note: str = "", unit: str = "ms") -> Case:
    """A case that is reported as skipped with ``reason`` and never run."""
    return Case(name, group, run=lambda: None, skip=reason, note=note, unit=unit)


# Baselines, best first: the ratio column of a group is against the first of
# these that has a measured case in the group.
BASELINE_ORDER = ("crun", "runc", "podman", "bwrap")


@dataclass
class Outcome:
    case: Case
    samples: list[float | None] = field(default_factory=list)  # index = round; None = not run that round
    extras: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    def values(self) -> list[float]:
        return [s for s in self.samples if s is not None]


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def pairwise_ratio(samples: list[float | None], baseline: list[float | None]) -> float | None:
    """Median over rounds of sample[r] / baseline[r], rounds where both ran."""
    ratios = [s / b for s, b in zip(samples, baseline) if s is not None and b is not None and b > 0]
    return statistics.median(ratios) if ratios else None


def pick_baseline(outcomes: list[Outcome]) -> Outcome | None:
    measured = {o.case.name: o for o in outcomes if o.values()}
    for name in BASELINE_ORDER:
        if name in measured:
            return measured[name]
    return next(iter(measured.values()), None)


def _one(case: Case) -> tuple[float, dict[str, float]]:
    if case.before is not None:
        case.before()
    t0 = time.perf_counter()
    result = case.run()
    elapsed_ms = (time.perf_counter() - t0) * 1000.0
    if isinstance(result, bool) or result is None:
        return elapsed_ms, {}
    if isinstance(result, int | float):
        return float(result), {}
    if isinstance(result, Mapping) and "value" in result:
        extras = {k: float(v) for k, v in result.items() if k != "value"}
        return float(result["value"]), extras
    # Anything else (a stats Series, a CompletedProcess...) is the call's own
    # result, not a measurement: the call is timed, so `run=cg.stats` works.
    return elapsed_ms, {}


def run_groups(
    cases: list[Case],
    repeat: int,
    *,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run every case ``repeat`` times, interleaved within each group.

    Setups run first (a failing setup marks its case as errored, the others go
    on); teardowns always run, in reverse order, even on KeyboardInterrupt.
    """
    rng = random.Random(seed)
    outcomes = [Outcome(c) for c in cases]
    ready: list[Outcome] = []
    set_up: list[Case] = []
    try:
        for o in outcomes:
            if o.case.skip:
                continue
            try:
                if o.case.setup is not None:
                    set_up.append(o.case)
                    o.case.setup()
                for _ in range(o.case.warmup):
                    _one(o.case)
                ready.append(o)
            except Exception as exc:  # a broken peer must not stop the others
                o.error = f"setup: {exc!r}"
                log(f"  ! {o.case.key}: {o.error}")
                log("".join(traceback.format_exception(exc)[-3:]).rstrip())
        groups: dict[str, list[Outcome]] = {}
        for o in ready:
            groups.setdefault(o.case.group, []).append(o)
        for r in range(repeat):
            for _group, members in groups.items():
                order = [o for o in members if o.error is None and (o.case.repeat is None or r < o.case.repeat)]
                rng.shuffle(order)
                for o in order:
                    while len(o.samples) < r:
                        o.samples.append(None)
                    try:
                        value, extras = _one(o.case)
                    except Exception as exc:
                        o.error = f"round {r}: {exc!r}"
                        log(f"  ! {o.case.key}: {o.error}")
                        continue
                    o.samples.append(value)
                    for k, v in extras.items():
                        o.extras.setdefault(k, []).append(v)
            log(f"  round {r + 1}/{repeat} done")
    finally:
        for case in reversed(set_up):
            if case.teardown is not None:
                try:
                    case.teardown()
                except Exception as exc:
                    log(f"  ! teardown of {case.key} failed: {exc!r}")
    for o in outcomes:
        while len(o.samples) < repeat and o.values():
            o.samples.append(None)
    return outcomes


def summarize(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One row per case: median, p95, n, ratio to the group's baseline."""
    rows: list[dict[str, Any]] = []
    by_group: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_group.setdefault(o.case.group, []).append(o)
    for group, members in by_group.items():
        base = pick_baseline(members)
        for o in members:
            vals = o.values()
            row: dict[str, Any] = {
                "group": group,
                "name": o.case.name,
                "unit": o.case.unit,
                "note": o.case.note,
                "n": len(vals),
                "median": statistics.median(vals) if vals else None,
                "p95": percentile(vals, 95) if vals else None,
                "min": min(vals) if vals else None,
                "baseline": base.case.name if base is not None else None,
                "ratio": None,
                "samples": [None if s is None else round(s, 4) for s in o.samples],
                "extras": {k: statistics.median(v) for k, v in o.extras.items()},
                "status": "skipped" if o.case.skip else ("error" if o.error and not vals else "ok"),
                "reason": o.case.skip or o.error,
            }
            if base is not None and vals:
                row["ratio"] = 1.0 if base is o else pairwise_ratio(o.samples, base.samples)
            rows.append(row)
    return rows
