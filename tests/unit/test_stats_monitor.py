"""The sampler and the plot, driven by a fake counter source."""

from __future__ import annotations

import threading
import time

import matplotlib
import pytest

from pycontain.errors import InvalidArgument
from pycontain.kernel.proc import parse_net_dev
from pycontain.stats import COLUMNS, Monitor, stream, to_row

matplotlib.use("Agg")


class FakeSource:
    def __init__(self, cpu_per_call: float = 0.01, fail_after: int | None = None) -> None:
        self.calls = 0
        self.cpu = 0.0
        self.cpu_per_call = cpu_per_call
        self.fail_after = fail_after

    def __call__(self) -> dict[str, float]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise FileNotFoundError("cgroup gone")
        self.cpu += self.cpu_per_call
        return {"cpu_s": self.cpu, "mem_bytes": 1000 * self.calls, "mem_limit_bytes": 64 << 20, "pids": 1}


def test_rows_have_units_and_cpu_percent() -> None:
    first = to_row({"cpu_s": 1.0, "mem_bytes": 5}, 0.0, None)
    second = to_row({"cpu_s": 1.5, "mem_bytes": 6}, 1.0, first)
    assert list(second) == ["t_s", *[c for c in COLUMNS[1:] if c != "cpu_percent"], "cpu_percent"]
    assert second["cpu_percent"] == pytest.approx(50.0)
    assert second["net_rx_bytes"] != second["net_rx_bytes"]  # nan when unknown


def test_monitor_samples_in_background_and_grows() -> None:
    src = FakeSource()
    mon = Monitor(src, interval=0.02).start()
    time.sleep(0.3)
    mon.stop()
    frame = mon.frame
    assert list(frame.columns) == list(COLUMNS)
    assert 5 <= len(frame) <= 30
    assert frame["t_s"].is_monotonic_increasing
    assert not mon.running
    assert threading.active_count() >= 1


def test_monitor_ends_quietly_when_source_vanishes() -> None:
    mon = Monitor(FakeSource(fail_after=3), interval=0.01).start()
    time.sleep(0.2)
    assert not mon.running
    assert len(mon.rows) == 3
    assert isinstance(mon.error, FileNotFoundError)
    mon.stop()


@pytest.mark.parametrize("interval", [0, -1, True, "0.1", float("nan")])
def test_bad_interval(interval: object) -> None:
    with pytest.raises(InvalidArgument):
        Monitor(FakeSource(), interval=interval)  # type: ignore[arg-type]


def test_stream_stops_with_source() -> None:
    rows = list(stream(FakeSource(fail_after=4), interval=0.001))
    assert len(rows) == 4


def test_plot_has_title_units_legend_and_limit() -> None:
    from pycontain.notebook.plot import plot

    mon = Monitor(FakeSource(), interval=0.01).start()
    time.sleep(0.05)
    ax = plot(mon.stop().frame, cpu_limit=0.5)
    assert ax.get_title()
    assert "MiB" in ax.get_ylabel() and "(s)" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "memory limit" in labels and "CPU limit" in labels


def test_plot_rejects_other_frames() -> None:
    import pandas as pd

    from pycontain.notebook.plot import plot

    with pytest.raises(InvalidArgument):
        plot(pd.DataFrame({"x": [1]}))


def test_parse_net_dev() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        "    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n"
        "  eth0: 5000 10 0 0 0 0 0 0 7000 20 0 0 0 0 0 0\n"
    )
    dev = parse_net_dev(text)
    assert dev["eth0"] == {"rx_bytes": 5000, "rx_packets": 10, "tx_bytes": 7000, "tx_packets": 20}
    assert dev["lo"]["rx_bytes"] == 100
