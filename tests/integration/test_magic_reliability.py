"""500 %%container cells in a row in one real kernel: no hang, no leak, no
lost output, while a background thread of the kernel prints throughout.
Half the cells use --snapshot (a fork of the busy, threaded kernel)."""

from __future__ import annotations

import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.integration.test_magic_interrupt import _close_event_loop

CELLS = int(os.environ.get("PYCONTAIN_RELIABILITY_CELLS", "500"))


@pytest.mark.slow
def test_many_cells_with_a_busy_thread() -> None:
    nb = nbformat.v4.new_notebook()
    setup = (
        "%load_ext pycontain\n"
        "import threading, time, sys, os\n"
        "stop = threading.Event()\n"
        "def chatter():\n"
        "    while not stop.is_set():\n"
        "        print('.', end='', file=sys.stderr, flush=True)\n"
        "        time.sleep(0.005)\n"
        "t = threading.Thread(target=chatter, daemon=True)\n"
        "t.start()"
    )
    # The baseline and the final count are taken with no container waiting
    # for the next cell (its pipes and the thread starting it are not leaks).
    baseline = ("%container warm off\n"
                "fds0 = len(os.listdir('/proc/self/fd'))\n"
                "threads0 = threading.active_count()\n"
                "get_ipython().run_line_magic('container', 'warm on')")
    cells = [setup, baseline]
    for i in range(CELLS):
        flag = " --snapshot" if i % 2 else ""
        cells.append(f"%%container --quiet --no-monitor{flag}\nprint('cell', {i}, sum(range({i})))")
    cells.append("%container warm off\n"
                 "grown = len(os.listdir('/proc/self/fd')) - fds0, threading.active_count() - threads0\n"
                 "stop.set(); t.join()\nprint(*grown)")
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    t0 = time.monotonic()
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    elapsed = time.monotonic() - t0
    # nbclient leaves the thread's asyncio loop open (an epoll fd and a socket pair).
    _close_event_loop()
    for i, cell in enumerate(nb.cells[2:-1]):
        out = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
        assert out == f"cell {i} {sum(range(i))}\n", (i, cell.outputs)
    final = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout").split()
    assert final[-2:] == ["0", "0"], "the kernel gained fds or threads"
    print(f"{CELLS} cells in {elapsed:.1f} s ({1000 * elapsed / CELLS:.0f} ms per cell)")
