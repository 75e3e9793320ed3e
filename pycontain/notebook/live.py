"""The live monitor of a ``%%container`` cell: memory and CPU while it runs.

A sampler thread (:meth:`pycontain.Container.monitor`) reads the container's
cgroup every :data:`MONITOR_SAMPLE_S`; :class:`LiveView` redraws from the
kernel's main thread, called by the magic's pump loop (``on_tick``), every
:data:`MONITOR_REDRAW_S`. Where it shows:

* In a Jupyter kernel with ipywidgets (JupyterLab, the classic notebook): an
  ipywidgets ``VBox`` of a ``Label`` (memory, CPU and pids now against their
  limits) and an ``Image`` (a PNG rendered with matplotlib's Agg by
  :func:`pycontain.plot`). Setting a widget's value sends a ``comm_msg`` on
  IOPub from the calling thread at once, so the frontend redraws while the
  cell still runs. Messages *from* the frontend wait until the cell ends, and
  this view needs none: the model's whole state travels in ``comm_open``.
* When the cell ends, the widget's output is replaced (``update_display_data``
  on its display id) by the final plot as a static PNG, and the widgets are
  closed. The saved notebook then holds a plain image that renders anywhere
  (nbconvert, GitHub, a kernel-less viewer), and the widget's ``text/plain``
  is the static plot's, so nbval (which keeps the first ``display_data`` and
  ignores updates) compares the same text as the stored notebook holds.
* Without ipywidgets, or outside a kernel: the PNG itself is displayed and
  updated in place through the display handle.
"""

from __future__ import annotations

import base64
import io
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pycontain.units import format_size

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

#: How long a cell runs before the live monitor appears (unless ``--monitor``).
MONITOR_DELAY_S = 1.0
#: The redraw period: 2.5 updates a second, so at least two even when the
#: pump's tick or a busy host makes one late.
MONITOR_REDRAW_S = 0.4
#: How often the pump loop must call :meth:`LiveView.tick` for that rate.
MONITOR_TICK_S = 0.1
#: The sampler's period (rows of the frame ``--stats`` stores).
MONITOR_SAMPLE_S = 0.1

_FIGSIZE_IN = (7.0, 3.2)
_DPI = 100
_NO_LIMIT = 2**60  # cgroup v1 reports "no memory limit" as a huge number
_MIB = 1 << 20
#: The live plot's time axis ends at the first of these that leaves room (s).
_TIME_STEPS_S = (5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


def monitor_figure(frame: pd.DataFrame, *, title: str, cpu_limit: float | None = None) -> Figure:
    """The monitor plot of ``frame`` as a matplotlib Figure (not registered with pyplot).

    Memory (MiB) and CPU (% of one CPU) over time, with the memory limit (from
    the frame's ``mem_limit_bytes``) and ``cpu_limit`` (CPUs) as dashed lines;
    drawn by :func:`pycontain.plot`. A bare Figure renders with Agg on
    ``savefig`` without touching pyplot, so the kernel's own matplotlib
    backend and its open figures are left alone.

    Raises:
        InvalidArgument: if ``frame`` lacks a monitor column.

    >>> monitor_figure(c.monitor().stop().frame, title="c", cpu_limit=0.5)   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    from pycontain.notebook.plot import plot

    fig = Figure(figsize=_FIGSIZE_IN, dpi=_DPI)
    plot(frame, ax=fig.add_subplot(), title=title, cpu_limit=cpu_limit)
    # Fixed margins with room for 5-digit ticks on both sides, not a tight
    # layout (which lays out every text twice, doubling the cost of a draw):
    # the live image and the final one have the same size and frame, so
    # nothing jumps when the cell ends.
    fig.subplots_adjust(left=0.11, right=0.88, bottom=0.14, top=0.9)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _png_of_rgba(rgba: Any, size: tuple[int, int]) -> bytes:
    from PIL import Image  # matplotlib's own PNG writer (a dependency of it)

    buf = io.BytesIO()
    # Fastest zlib level: a live frame is sent once and thrown away.
    Image.frombuffer("RGBA", size, bytes(rgba), "raw", "RGBA", 0, 1).save(buf, format="png", compress_level=1)
    return buf.getvalue()


class LivePlot:
    """Renders successive frames of one run cheaply, by blitting.

    A full :func:`monitor_figure` costs ~0.1 s of CPU, mostly matplotlib's
    text layout, which on a loaded 2-core host stretches past the redraw
    period. So the axes, ticks, limits and legend are rendered once, with
    room to grow (time to the next step of :data:`_TIME_STEPS_S`, values to
    1.3x the largest so far), and each frame only draws the two data lines
    over that background, as matplotlib's own animations do. The scale is
    rebuilt when the data leave it or the memory limit changes.

    >>> png = LivePlot("c", cpu_limit=0.5).png(monitor.frame)   # doctest: +SKIP
    """

    def __init__(self, title: str, cpu_limit: float | None = None) -> None:
        self.title = title
        self.cpu_limit = cpu_limit
        self.builds = 0
        self._fig: Any = None
        self._canvas: Any = None
        self._key: tuple[float, ...] = ()
        self._mem: Any = None
        self._cpu: Any = None
        self._background: Any = None
        self._legend: Any = None

    def png(self, frame: pd.DataFrame) -> bytes:
        """``frame`` drawn as PNG bytes (the size of :func:`monitor_figure`'s)."""
        t = frame["t_s"].to_numpy(dtype=float)
        mem = frame["mem_bytes"].to_numpy(dtype=float) / _MIB
        cpu = frame["cpu_percent"].to_numpy(dtype=float)
        limit = frame["mem_limit_bytes"].iloc[-1] if "mem_limit_bytes" in frame.columns and len(frame) else None
        limit = float(limit) if limit is not None and limit == limit else -1.0
        if not self._fits(t, mem, cpu, limit):
            self._build(frame, t, mem, cpu, limit)
        canvas = self._canvas
        canvas.restore_region(self._background)
        self._mem.set_data(t, mem)
        self._cpu.set_data(t, cpu)
        self._mem.axes.draw_artist(self._mem)
        self._cpu.axes.draw_artist(self._cpu)
        if self._legend is not None:
            canvas.restore_region(self._legend)
        return _png_of_rgba(canvas.buffer_rgba(), canvas.get_width_height())

    def _fits(self, t: Any, mem: Any, cpu: Any, limit: float) -> bool:
        if self._fig is None:
            return False
        t_end, mem_top, cpu_top, old_limit = self._key
        return (limit == old_limit and _peak(t) <= t_end and _peak(mem) <= mem_top and _peak(cpu) <= cpu_top)

    def _build(self, frame: pd.DataFrame, t: Any, mem: Any, cpu: Any, limit: float) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = monitor_figure(frame, title=self.title, cpu_limit=self.cpu_limit)
        canvas = FigureCanvasAgg(fig)
        mem_ax, cpu_ax = fig.axes
        lines = {str(line.get_label()): line for ax in fig.axes for line in ax.lines}
        self._mem, self._cpu = lines["memory (MiB)"], lines["CPU (% of one CPU)"]
        # Room to grow, so most frames reuse this background.
        t_end = next((s for s in _TIME_STEPS_S if s >= _peak(t) * 1.2), _peak(t) * 1.5)
        mem_ax.set_xlim(0, t_end)
        mem_ax.set_ylim(0, max(mem_ax.get_ylim()[1], _peak(mem) * 1.3))
        cpu_ax.set_ylim(0, max(cpu_ax.get_ylim()[1], _peak(cpu) * 1.3))
        for line in (self._mem, self._cpu):
            line.set_animated(True)  # left out of the background
        canvas.draw()
        self._background = canvas.copy_from_bbox(fig.bbox)
        # The legend goes back over the lines as saved pixels: drawing its
        # text again would cost more than the rest of the frame.
        legend = mem_ax.get_legend()
        self._legend = canvas.copy_from_bbox(legend.get_window_extent()) if legend is not None else None
        self._fig, self._canvas = fig, canvas
        self._key = (t_end, mem_ax.get_ylim()[1], cpu_ax.get_ylim()[1], limit)
        self.builds += 1


def _peak(values: Any) -> float:
    import numpy as np

    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def caption(frame: pd.DataFrame, *, memory: int | None = None, cpus: float | None = None,
            pids: int | None = None) -> str:
    """One line of the latest sample against the limits, e.g.
    ``memory 41.2 MiB / 128.0 MiB · CPU 49 % / 50 % · pids 1 / 64 · 1.5 s``.

    ``memory`` (bytes), ``cpus`` (CPUs) and ``pids`` are the configured
    limits; the frame's own ``mem_limit_bytes`` (what the kernel enforces)
    wins over ``memory`` when finite.
    """
    if not len(frame):
        return "waiting for the first sample"
    row = frame.iloc[-1]
    mem_limit = row.get("mem_limit_bytes")
    if not (mem_limit == mem_limit and mem_limit is not None and mem_limit < _NO_LIMIT):
        mem_limit = memory
    parts = [
        _against("memory", _size(row.get("mem_bytes")), format_size(int(mem_limit)) if mem_limit else None),
        _against("CPU", _number(row.get("cpu_percent"), "{:.0f} %"), f"{cpus * 100:.0f} %" if cpus else None),
        _against("pids", _number(row.get("pids"), "{:.0f}"), str(pids) if pids else None),
    ]
    return " · ".join(parts) + f" · {row['t_s']:.1f} s"


def _size(value: Any) -> str:
    return format_size(int(value)) if value == value and value is not None else "?"


def _number(value: Any, fmt: str) -> str:
    return fmt.format(value) if value == value and value is not None else "?"


def _against(name: str, now: str, limit: str | None) -> str:
    return f"{name} {now} / {limit}" if limit else f"{name} {now} (no limit)"


def _in_kernel() -> bool:
    """True in a Jupyter kernel (where widgets have a frontend to talk to)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - the notebook face needs IPython
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class _PngSurface:
    """The plot as a PNG output updated in place through its display handle."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.handle: Any = None

    def bundle(self, png: bytes) -> dict[str, str]:
        return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": self.text}

    def show(self, png: bytes, line: str) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display(self.bundle(png), raw=True, display_id=True)
        else:
            self.handle.update(self.bundle(png), raw=True)

    def finish(self, png: bytes) -> None:
        _PngSurface.show(self, png, "")


class _WidgetSurface(_PngSurface):
    """An ipywidgets VBox(Label, Image), replaced by the static PNG at the end."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.widgets: list[Any] = []

    def show(self, png: bytes, line: str) -> None:
        if self.handle is None:
            self._display(png, line)
            return
        label, image = self.widgets[1:3]
        image.value = png
        label.value = line

    def _display(self, png: bytes, line: str) -> None:
        import ipywidgets
        from IPython.display import display

        # The first values go with comm_open, so the frontend's first view is complete.
        label = ipywidgets.Label(value=line)
        image = ipywidgets.Image(value=png, format="png")
        box = ipywidgets.VBox([label, image])
        self.widgets = [box, label, image]
        bundle = dict(box._repr_mimebundle_())
        # The static plot's text: nbval keeps this first display, the saved
        # notebook holds the final PNG; both must compare equal.
        bundle["text/plain"] = self.text
        self.handle = display(bundle, raw=True, display_id=True)

    def finish(self, png: bytes) -> None:
        if self.handle is None:
            super().finish(png)
            return
        self.handle.update(self.bundle(png), raw=True)
        label, image = self.widgets[1:3]
        # nbclient (nbconvert) keeps a closed widget's last state in the saved
        # notebook's metadata: drop the image first so it does not carry a
        # second, invisible copy of the plot.
        image.value = b""
        for w in self.widgets:
            for part in (getattr(w, "style", None), getattr(w, "layout", None), w):
                if part is not None:
                    part.close()
        self.widgets = []


#: Set once this process has done :func:`_preload`.
_WARM = threading.Event()
_preload_thread: threading.Thread | None = None


def _start_preload() -> threading.Thread | None:
    """Start :func:`_preload` in a thread, once per process; the thread, or
    None if it was started before."""
    global _preload_thread
    if _preload_thread is not None:
        return None
    _preload_thread = threading.Thread(target=_preload, name="pycontain-live-preload", daemon=True)
    _preload_thread.start()
    return _preload_thread


def _preload() -> None:
    """Imports and a throwaway plot: loads fonts and fills matplotlib's text
    caches, the bulk of the first draw's cost (~2 s cold)."""
    try:
        _warm_up()
    finally:
        _WARM.set()


def _warm_up() -> None:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:  # optional: the PNG surface does without
        pass
    try:
        import pandas as pd

        from pycontain.stats import COLUMNS

        LivePlot("warm-up", cpu_limit=1.0).png(pd.DataFrame(columns=list(COLUMNS), dtype=float))
    except Exception:  # a real failure shows (once) at the first draw
        pass


def _surface(text: str) -> _PngSurface:
    if _in_kernel():
        try:
            import ipywidgets  # noqa: F401  (optional: the PNG surface does without)
        except ImportError:
            pass
        else:
            return _WidgetSurface(text)
    return _PngSurface(text)


class LiveView:
    """The live memory/CPU plot of a running container, for the magic's pump loop.

    ``show`` is the magic's ``--monitor`` flag: ``True`` shows the plot at
    once, ``None`` only once the cell ran :data:`MONITOR_DELAY_S`, ``False``
    never (the frame is still sampled for ``--stats``). Call :meth:`start`
    once the container runs, :meth:`tick` at least every
    :data:`MONITOR_TICK_S` from the thread that runs the cell, :meth:`stop`
    when it ended (it leaves the final plot as a static PNG).

    >>> view = LiveView(container, show=True); view.start()   # doctest: +SKIP
    """

    def __init__(self, container: Any, show: bool | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.container = container
        self.show = show
        self.clock = clock
        self.monitor: Any = None
        self.surface: _PngSurface | None = None
        self.plot: LivePlot | None = None
        self.t_start = 0.0
        self.next_draw = 0.0
        self.draws = 0
        self.failed = False
        self._loader: threading.Thread | None = None

    @property
    def title(self) -> str:
        return f"container {self.container.name}: memory and CPU"

    def start(self) -> None:
        """Start sampling the container's cgroup."""
        self.t_start = self.clock()
        self.monitor = self.container.monitor(interval=MONITOR_SAMPLE_S)
        if self.show is True:
            self._preload()

    def _preload(self) -> None:
        # The first plot of a kernel imports pandas, matplotlib and ipywidgets
        # and loads fonts (~2 s cold): a thread does it while the pump loop
        # goes on forwarding the cell's output; tick() draws once it is done.
        # A cell without --monitor starts it only once it ran half the delay,
        # so short cells never pay for it.
        if not _WARM.is_set() and self._loader is None:
            self._loader = _start_preload()

    def tick(self) -> None:
        """Redraw if one is due (cheap when not)."""
        if self.show is False or self.monitor is None or self.failed:
            return
        now = self.clock()
        if self.show is not True and now - self.t_start < MONITOR_DELAY_S:
            if now - self.t_start >= MONITOR_DELAY_S / 2:
                self._preload()
            return
        if now < self.next_draw:
            return
        if not _WARM.is_set():
            self._preload()  # (a no-op unless no cell started it yet)
            return
        # Keep a fixed cadence: a late draw does not push the next one back
        # (unless a whole period was missed), so the rate stays 1/period.
        on_time = self.next_draw > 0 and now - self.next_draw < MONITOR_REDRAW_S
        self.next_draw = (self.next_draw if on_time else now) + MONITOR_REDRAW_S
        self._draw(final=False)

    def stop(self) -> None:
        """Stop sampling; leave the final plot (if one was shown, or ``show`` is True)."""
        if self.monitor is None:
            return
        self.monitor.stop()
        if self._loader is not None:
            # No thread of ours outlives the cell: a fork (--snapshot) while
            # it holds an import lock would leave the lock held in the child.
            self._loader.join()
        if (self.surface is not None or self.show is True) and not self.failed:
            _WARM.wait(30)  # (another cell's preload, cut short by an error there)
            self._draw(final=True)

    def frame(self) -> pd.DataFrame:
        """The samples so far (columns :data:`pycontain.stats.COLUMNS`)."""
        if self.monitor is None:
            import pandas as pd

            from pycontain.stats import COLUMNS

            return pd.DataFrame(columns=list(COLUMNS))
        frame: pd.DataFrame = self.monitor.frame
        return frame

    def _draw(self, final: bool) -> None:
        config = getattr(self.container, "config", None)
        cpus = getattr(config, "cpus", None)
        try:
            frame = self.frame()
            if final:  # the picture that stays: pycontain.plot of the whole run, fitted to it
                png = png_bytes(monitor_figure(frame, title=self.title, cpu_limit=cpus))
            else:
                if self.plot is None:
                    self.plot = LivePlot(self.title, cpu_limit=cpus)
                png = self.plot.png(frame)
            if self.surface is None:
                self.surface = _surface(f"<Figure: {self.title}>")
            if final:
                self.surface.finish(png)
            else:
                self.surface.show(png, caption(frame, memory=getattr(config, "memory", None), cpus=cpus,
                                               pids=getattr(config, "pids", None)))
            self.draws += 1
        except Exception as e:  # the plot must never break the cell it watches
            self.failed = True
            print(f"pycontain: live monitor off: {type(e).__name__}: {e}", file=sys.stderr)
