"""A matplotlib backend for code running inside a container: figures render
with Agg, and ``plt.show()`` sends them to the notebook as PNG displays (like
the inline backend), through the cell's event pipe."""

from __future__ import annotations

import os
from typing import Any

from matplotlib.backend_bases import _Backend
from matplotlib.backends.backend_agg import FigureCanvasAgg, _BackendAgg

#: set by pycontain.notebook.cell before the user's code runs
EVENT_FD: int | None = int(os.environ["PYCONTAIN_EVENT_FD"]) if "PYCONTAIN_EVENT_FD" in os.environ else None


def flush() -> None:
    from matplotlib import pyplot
    from matplotlib._pylab_helpers import Gcf

    from pycontain.notebook.cell import _PipePublisher, figure_bundle

    if EVENT_FD is None:
        return
    for manager in Gcf.get_all_fig_managers():
        _PipePublisher(EVENT_FD).publish(figure_bundle(manager.canvas.figure))
    pyplot.close("all")


@_Backend.export
class _BackendPycontain(_BackendAgg):
    FigureCanvas = FigureCanvasAgg

    @staticmethod
    def show(*args: Any, **kwargs: Any) -> None:
        flush()
