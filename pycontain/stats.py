"""Live resource monitoring: a sampler thread that reads a container's (or any
cgroup's) counters at a fixed interval into a growing table.

The sampler reads only the cgroup's own files (and the container's network
namespace counters), never host-wide figures, which lie inside containers.
Column names carry their units (DESIGN.md §10).

Example::

    mon = Monitor(cgroup.stats_dict, interval=0.1).start()
    ...
    mon.stop()
    mon.frame        # a pandas DataFrame: t_s, cpu_s, cpu_percent, mem_bytes, ...
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pycontain.errors import InvalidArgument

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Monitor columns, in order, with their units in the name.
COLUMNS: tuple[str, ...] = (
    "t_s",
    "cpu_s",
    "cpu_percent",
    "mem_bytes",
    "mem_limit_bytes",
    "pids",
    "io_read_bytes",
    "io_write_bytes",
    "net_rx_bytes",
    "net_tx_bytes",
)

Reader = Callable[[], Mapping[str, Any]]


def to_row(raw: Mapping[str, Any], t_s: float, prev: dict[str, float] | None) -> dict[str, float]:
    """One monitor row from a raw stats dict (cgroup keys such as ``cpu_s``,
    ``mem_bytes``, plus optional ``net_rx_bytes``), with ``cpu_percent``
    computed from the previous row (100 = one full CPU)."""
    row: dict[str, float] = {"t_s": t_s}
    for key in COLUMNS[1:]:
        if key == "cpu_percent":
            continue
        value = raw.get(key)
        row[key] = float(value) if value is not None else float("nan")
    if prev is not None and t_s > prev["t_s"]:
        row["cpu_percent"] = max(0.0, 100.0 * (row["cpu_s"] - prev["cpu_s"]) / (t_s - prev["t_s"]))
    else:
        row["cpu_percent"] = 0.0
    return row


class Monitor:
    """Samples ``read()`` every ``interval`` seconds in a daemon thread.

    ``read`` returns a mapping with cgroup-style keys; when it raises
    (the container is gone) sampling ends quietly. ``frame`` is a pandas
    DataFrame of the rows so far (columns :data:`COLUMNS`); ``rows`` is the
    same as a list of dicts, cheap to read from another thread.

    Raises:
        InvalidArgument: for an interval that is not a positive number.
    """

    def __init__(self, read: Reader, interval: float = 0.1, *, on_sample: Callable[[dict[str, float]], None] | None = None):
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
            raise InvalidArgument("interval must be a positive number of seconds", field="interval", value=interval)
        self.interval = float(interval)
        self._read = read
        self._on_sample = on_sample
        self.rows: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.error: BaseException | None = None

    def start(self) -> Monitor:
        """Start sampling (takes one sample at once). Returns ``self``."""
        if self._thread is not None:
            return self
        self._t0 = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="pycontain-monitor", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> dict[str, float] | None:
        """Take one sample now; returns the row, or None when the source is gone."""
        try:
            raw = self._read()
        except Exception as e:  # the source vanished (container exited): stop quietly
            self.error = e
            self._stop.set()
            return None
        row = to_row(raw, time.monotonic() - self._t0, self.rows[-1] if self.rows else None)
        self.rows.append(row)
        if self._on_sample is not None:
            self._on_sample(row)
        return row

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += self.interval
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (suspended, busy host): skip, don't burst
                next_t = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                break
            self.sample()

    def stop(self) -> Monitor:
        """Stop sampling, taking a last sample if the source is still there."""
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sample()
        self._stop.set()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def frame(self) -> pd.DataFrame:
        """The samples so far as a DataFrame with :data:`COLUMNS`."""
        import pandas as pd

        return pd.DataFrame(list(self.rows), columns=list(COLUMNS))

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stream(read: Reader, interval: float = 0.5) -> Iterator[dict[str, float]]:
    """Yield monitor rows every ``interval`` s until ``read`` fails (the source is gone)."""
    mon = Monitor(read, interval)
    mon._t0 = time.monotonic()
    while True:
        row = mon.sample()
        if row is None:
            return
        yield row
        time.sleep(interval)
