"""The %%container live monitor's logic: the plot and its limits, the caption,
the redraw schedule, and the widget surface (with a fake display).

The real kernel, comm messages and nbconvert/nbval live in
tests/integration/test_live_monitor.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from pycontain.notebook import live
from pycontain.stats import COLUMNS

MIB = 1 << 20


def frame(n: int = 20, mem_limit: float = 256 * MIB, pids: float = 3.0) -> pd.DataFrame:
    rows = [{"t_s": i * 0.1, "cpu_s": i * 0.05, "cpu_percent": 48.0, "mem_bytes": float(i * 4 * MIB),
             "mem_limit_bytes": mem_limit, "pids": pids} for i in range(n)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def lines_by_label(fig: Any) -> dict[str, Any]:
    return {str(line.get_label()): (ax, line) for ax in fig.axes for line in ax.lines}


def test_plot_draws_both_limits_as_visible_horizontal_lines() -> None:
    fig = live.monitor_figure(frame(), title="container pc-abc: memory and CPU", cpu_limit=0.5)
    lines = lines_by_label(fig)
    mem_ax, mem_limit = lines["memory limit"]
    cpu_ax, cpu_limit = lines["CPU limit"]
    assert list(mem_limit.get_ydata()) == [256.0, 256.0]  # MiB, across the whole width
    assert list(cpu_limit.get_ydata()) == [50.0, 50.0]  # % of one CPU
    assert mem_limit.get_linestyle() == cpu_limit.get_linestyle() == "--"
    assert mem_ax is not cpu_ax and "MiB" in mem_ax.get_ylabel() and "CPU" in cpu_ax.get_ylabel()
    # Both inside their axes, and not on top of each other (the CPU line,
    # drawn on the twin axes, would hide the memory line).
    mem_h = 256.0 / mem_ax.get_ylim()[1]
    cpu_h = 50.0 / cpu_ax.get_ylim()[1]
    assert 0 < mem_h < 1 and 0 < cpu_h < 1
    assert abs(mem_h - cpu_h) > 0.05
    assert mem_ax.get_title() == "container pc-abc: memory and CPU"
    legend = [t.get_text() for t in mem_ax.get_legend().get_texts()]
    assert legend == ["memory (MiB)", "memory limit", "CPU (% of one CPU)", "CPU limit"]


@pytest.mark.parametrize("limit", [float(2**63), float("nan")])
def test_plot_has_no_memory_limit_line_without_a_limit(limit: float) -> None:
    fig = live.monitor_figure(frame(mem_limit=limit), title="t")
    assert set(lines_by_label(fig)) == {"memory (MiB)", "CPU (% of one CPU)"}


def test_plot_of_an_empty_frame() -> None:
    # The first redraw may come before the first sample.
    png = live.png_bytes(live.monitor_figure(frame(0), title="t", cpu_limit=1.0))
    assert png.startswith(b"\x89PNG")


def test_png_bytes_is_a_png_of_the_figure_size() -> None:
    import struct

    png = live.png_bytes(live.monitor_figure(frame(), title="t"))
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (700, 320)


def pixels(png: bytes) -> Any:
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_live_plot_blits_frames_over_a_background_built_rarely() -> None:
    plot = live.LivePlot("container pc-abc: memory and CPU", cpu_limit=0.5)
    first = plot.png(frame(10))
    assert plot.builds == 1
    lines = lines_by_label(plot._fig)
    assert {"memory limit", "CPU limit"} <= set(lines)  # the limits are in the background
    # Growing data within the room left: same background, new lines.
    second = plot.png(frame(20))
    assert plot.builds == 1
    a, b = pixels(first), pixels(second)
    assert a.shape == b.shape == (320, 700, 3)
    assert (a != b).any()
    # The same data give the same picture: nothing accumulates between frames.
    assert (pixels(plot.png(frame(10))) == a).all()
    # A run of 60 s, memory growing 40 MiB/s past everything:
    # a rebuild per time step (5, 10, 20, 30, 60 s) or 1.3x growth, not per frame.
    for n in range(20, 600, 12):
        plot.png(frame(n))
    assert plot.builds <= 12
    t_end, mem_top, cpu_top, _limit = plot._key
    assert t_end >= 59.9 and mem_top >= 599 * 4 and cpu_top >= 48


def test_live_plot_rebuilds_when_the_limit_changes() -> None:
    plot = live.LivePlot("t")
    plot.png(frame(10))
    plot.png(frame(10, mem_limit=512 * MIB))
    assert plot.builds == 2
    assert list(lines_by_label(plot._fig)["memory limit"][1].get_ydata()) == [512.0, 512.0]


def test_live_plot_of_an_empty_frame() -> None:
    assert live.LivePlot("t").png(frame(0)).startswith(b"\x89PNG")


def test_caption_now_against_limits() -> None:
    text = live.caption(frame(), memory=128 * MIB, cpus=0.5, pids=64)
    # The kernel's limit in the frame wins over the configured one.
    assert text == "memory 76.0 MiB / 256.0 MiB · CPU 48 % / 50 % · pids 3 / 64 · 1.9 s"
    text = live.caption(frame(mem_limit=float(2**63), pids=float("nan")))
    assert text == "memory 76.0 MiB (no limit) · CPU 48 % (no limit) · pids ? (no limit) · 1.9 s"
    assert live.caption(frame(mem_limit=float(2**63)), memory=128 * MIB).startswith("memory 76.0 MiB / 128.0 MiB")
    assert live.caption(frame(0)) == "waiting for the first sample"


class FakeMonitor:
    def __init__(self) -> None:
        self.frame = frame()
        self.stopped = False

    def stop(self) -> FakeMonitor:
        self.stopped = True
        return self


class FakeContainer:
    name = "pc-0123456789ab"
    config = SimpleNamespace(memory=128 * MIB, cpus=0.5, pids=64)

    def monitor(self, interval: float) -> FakeMonitor:
        assert interval == live.MONITOR_SAMPLE_S
        return FakeMonitor()


class Recorder:
    def __init__(self, text: str) -> None:
        self.text = text
        self.shown: list[str] = []
        self.finished: list[bytes] = []

    def show(self, png: bytes, line: str) -> None:
        assert png.startswith(b"\x89PNG")
        self.shown.append(line)

    def finish(self, png: bytes) -> None:
        self.finished.append(png)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def surfaces(monkeypatch: pytest.MonkeyPatch) -> list[Recorder]:
    made: list[Recorder] = []
    warm = live.threading.Event()
    warm.set()  # this process has preloaded (test_preload_* start cold)
    monkeypatch.setattr(live, "_WARM", warm)

    def make(text: str) -> Recorder:
        made.append(Recorder(text))
        return made[-1]

    monkeypatch.setattr(live, "_surface", make)
    # Rendering is tested above; the schedule tests only count draws.
    monkeypatch.setattr(live, "png_bytes", lambda fig: b"\x89PNG fake")
    monkeypatch.setattr(live, "monitor_figure", lambda frame, **kw: kw)
    monkeypatch.setattr(live, "LivePlot", FakePlot)
    return made


class FakePlot:
    def __init__(self, title: str, cpu_limit: float | None = None) -> None:
        assert title == "container pc-0123456789ab: memory and CPU" and cpu_limit == 0.5

    def png(self, frame: pd.DataFrame) -> bytes:
        return b"\x89PNG fake"


def run(view: live.LiveView, clock: Clock, seconds: float, step: float = live.MONITOR_TICK_S) -> list[float]:
    """Tick like the pump loop does; returns the times at which it drew."""
    view.start()
    times = []
    end = clock.now + seconds
    while clock.now < end:
        before = view.draws
        view.tick()
        if view.draws > before:
            times.append(clock.now)
        clock.now += step
    return times


def test_monitor_flag_shows_at_once_and_redraws_at_least_twice_a_second(surfaces: list[Recorder]) -> None:
    clock = Clock()
    view = live.LiveView(FakeContainer(), True, clock=clock)
    times = run(view, clock, 3.0)
    assert times[0] == 100.0
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= 0.5 + 1e-9 and min(gaps) >= live.MONITOR_REDRAW_S - 1e-9
    assert len(times) >= 2 * 3.0
    (surface,) = surfaces
    assert surface.text == "<Figure: container pc-0123456789ab: memory and CPU>"
    assert surface.shown[-1].startswith("memory 76.0 MiB / 256.0 MiB · CPU 48 % / 50 % · pids 3 / 64")
    view.stop()
    assert view.monitor.stopped and len(surface.finished) == 1


def test_cadence_survives_a_coarse_tick(surfaces: list[Recorder]) -> None:
    # Ticks every 0.25 s (the pump's default) still give 1/MONITOR_REDRAW_S
    # on average: a late draw does not push the next one back.
    clock = Clock()
    times = run(live.LiveView(FakeContainer(), True, clock=clock), clock, 10.0, step=0.25)
    assert len(times) >= 10.0 / live.MONITOR_REDRAW_S - 1


def test_default_waits_for_the_delay(surfaces: list[Recorder]) -> None:
    clock = Clock()
    view = live.LiveView(FakeContainer(), None, clock=clock)
    times = run(view, clock, 0.95)
    assert times == [] and surfaces == []
    view.stop()  # a short cell leaves no plot
    assert surfaces == []
    clock = Clock()
    times = run(live.LiveView(FakeContainer(), None, clock=clock), clock, 2.0)
    assert times and times[0] - 100.0 >= live.MONITOR_DELAY_S - 1e-9


class Preload:
    def __init__(self) -> None:
        self.threads: list[live.threading.Thread] = []
        self.release = live.threading.Event()

    def warm_up(self) -> None:
        self.threads.append(live.threading.current_thread())
        self.release.wait(10)


@pytest.fixture
def cold(monkeypatch: pytest.MonkeyPatch, surfaces: list[Recorder]) -> Preload:
    """A process that has not preloaded yet; its preload waits for ``release``."""
    preload = Preload()
    monkeypatch.setattr(live, "_WARM", live.threading.Event())
    monkeypatch.setattr(live, "_preload_thread", None)
    monkeypatch.setattr(live, "_warm_up", preload.warm_up)
    return preload


def test_preload_runs_in_a_thread_then_the_plot_shows(cold: Preload, surfaces: list[Recorder]) -> None:
    clock = Clock()
    view = live.LiveView(FakeContainer(), True, clock=clock)
    view.start()
    assert view._loader is not None and view._loader.is_alive()
    for _ in range(5):  # the pump goes on; no draw until the preload is done
        view.tick()
        clock.now += 0.1
    assert view.draws == 0 and surfaces == []
    cold.release.set()
    view._loader.join()
    assert cold.threads == [view._loader] and live._WARM.is_set()
    view.tick()
    assert view.draws == 1
    # Once per process: the next cell starts no thread.
    other = live.LiveView(FakeContainer(), True, clock=clock)
    other.start()
    assert other._loader is None


def test_short_cells_do_not_preload(cold: Preload, surfaces: list[Recorder]) -> None:
    clock = Clock()
    view = live.LiveView(FakeContainer(), None, clock=clock)
    run(view, clock, live.MONITOR_DELAY_S / 2 - 0.05)
    view.stop()
    assert cold.threads == [] and view._loader is None
    # A longer one starts it half-way to the delay, and stop() waits for it
    # (no thread of ours survives the cell into a later fork).
    view = live.LiveView(FakeContainer(), None, clock=clock)
    run(view, clock, live.MONITOR_DELAY_S / 2 + 0.15)
    loader = view._loader
    assert loader is not None and loader.is_alive()
    cold.release.set()
    view.stop()
    assert not loader.is_alive() and surfaces == []


def test_no_monitor_never_draws_but_samples(surfaces: list[Recorder]) -> None:
    clock = Clock()
    view = live.LiveView(FakeContainer(), False, clock=clock)
    assert run(view, clock, 3.0) == []
    view.stop()
    assert surfaces == [] and view._loader is None
    assert len(view.frame()) == 20  # --stats still gets the frame


def test_monitor_flag_leaves_a_plot_even_for_an_instant_cell(surfaces: list[Recorder]) -> None:
    view = live.LiveView(FakeContainer(), True, clock=Clock())
    view.start()
    view.stop()
    (surface,) = surfaces
    assert surface.shown == [] and len(surface.finished) == 1


def test_a_failing_plot_turns_the_view_off_not_the_cell(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(live, "monitor_figure", broken)
    monkeypatch.setattr(live.LivePlot, "png", broken)
    clock = Clock()
    view = live.LiveView(FakeContainer(), True, clock=clock)
    run(view, clock, 1.0)
    view.stop()
    assert view.failed and view.draws == 0
    assert capsys.readouterr().err.count("live monitor off: RuntimeError: no fonts") == 1


def test_frame_before_start_has_the_columns() -> None:
    view = live.LiveView(FakeContainer(), None)
    assert list(view.frame().columns) == list(COLUMNS)


class FakeHandle:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    def update(self, obj: Any, raw: bool = False) -> None:
        self.calls.append(("update", obj))


def test_widget_surface_updates_then_leaves_a_static_png(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    calls: list[tuple[str, Any]] = []

    def display(obj: Any, raw: bool = False, display_id: Any = None) -> FakeHandle:
        assert raw and display_id is True
        calls.append(("display", obj))
        return FakeHandle(calls)

    monkeypatch.setattr(IPython.display, "display", display)
    surface = live._WidgetSurface("<Figure: x>")
    surface.show(b"\x89PNG one", "line one")
    box, label, image = surface.widgets
    (kind, bundle), = calls
    assert kind == "display" and bundle["text/plain"] == "<Figure: x>"
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == box.model_id
    assert (label.value, image.value, image.format) == ("line one", b"\x89PNG one", "png")
    assert list(box.children) == [label, image]
    surface.show(b"\x89PNG two", "line two")
    assert (label.value, image.value) == ("line two", b"\x89PNG two")
    assert len(calls) == 1  # updated through the widget, not displayed again
    surface.finish(b"\x89PNG end")
    kind, final = calls[-1]
    assert kind == "update" and set(final) == {"image/png", "text/plain"}
    assert final["text/plain"] == "<Figure: x>"  # what nbval saw first, it sees last
    import base64

    assert base64.b64decode(final["image/png"]) == b"\x89PNG end"
    assert image.value == b"" and box.comm is None and label.comm is None and image.layout.comm is None


def test_outside_a_kernel_the_surface_is_the_png(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(live._surface("t")) is live._PngSurface
    monkeypatch.setattr(live, "_in_kernel", lambda: True)
    assert type(live._surface("t")) is live._WidgetSurface
    import sys

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    assert type(live._surface("t")) is live._PngSurface
