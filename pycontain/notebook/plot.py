"""Plots of monitor frames (see :mod:`pycontain.stats`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pycontain.errors import InvalidArgument

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.axes import Axes

_MIB = 1024 * 1024


def plot(frame: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None, cpu_limit: float | None = None) -> Axes:
    """Plot memory (MiB, left axis) and CPU (% of one CPU, right axis) over time.

    ``frame`` is a monitor frame (columns ``t_s``, ``mem_bytes``,
    ``cpu_percent``, optionally ``mem_limit_bytes``). The memory limit, when
    finite, is drawn as a dashed line; ``cpu_limit`` (CPUs) likewise. Returns
    the memory Axes; the CPU Axes is its twin.

    Raises:
        InvalidArgument: if a needed column is missing.

    >>> ax = plot(container.monitor().stop().frame)   # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    for column in ("t_s", "mem_bytes", "cpu_percent"):
        if column not in frame.columns:
            raise InvalidArgument("frame lacks a monitor column", field="frame", value=column,
                                  hint="pass Container.monitor().frame or a DataFrame with the same columns")
    if ax is None:
        _fig, ax = plt.subplots(figsize=(7, 3.2))
    t = frame["t_s"]
    lines: list[Any] = []
    lines += ax.plot(t, frame["mem_bytes"] / _MIB, color="tab:blue", label="memory (MiB)")
    mem_top = [frame["mem_bytes"].max() / _MIB]
    if "mem_limit_bytes" in frame.columns and len(frame):
        limit = frame["mem_limit_bytes"].iloc[-1]
        if limit == limit and limit < 2**60:  # finite: v1 reports "no limit" as a huge number
            lines.append(ax.axhline(limit / _MIB, color="tab:blue", linestyle="--", label="memory limit"))
            mem_top.append(limit / _MIB)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("memory (MiB)")
    cpu_ax = ax.twinx()
    lines += cpu_ax.plot(t, frame["cpu_percent"], color="tab:orange", label="CPU (% of one CPU)")
    cpu_top = [frame["cpu_percent"].max()]
    if cpu_limit is not None:
        lines.append(cpu_ax.axhline(cpu_limit * 100, color="tab:orange", linestyle="--", label="CPU limit"))
        cpu_top.append(cpu_limit * 100)
    cpu_ax.set_ylabel("CPU (% of one CPU)")
    # Different headroom on each axis: a limit is usually the top of its
    # axis, and with equal margins both limit lines would fall on the same
    # height, the CPU one hiding the memory one.
    ax.set_ylim(0, _top(mem_top) * 1.12)
    cpu_ax.set_ylim(0, _top(cpu_top) * 1.3)
    ax.set_title(title or "memory and CPU over time")
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left", fontsize="small")
    return ax


def _top(values: list[Any]) -> float:
    finite = [float(v) for v in values if v == v and v is not None]
    return max(finite) if finite and max(finite) > 0 else 1.0
