"""The %%container live monitor through a real Jupyter kernel: the widget and
its comm messages on IOPub while the cell runs, the static PNG it leaves
behind (what nbconvert saves), nbval on such a notebook, and the fallback
without ipywidgets."""

from __future__ import annotations

import base64
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from pycontain.notebook.live import MONITOR_DELAY_S

ROOT = Path(__file__).resolve().parents[2]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MIB = 1 << 20

pytestmark = pytest.mark.slow

# A data scientist's kernel has pandas and matplotlib loaded; the first plot
# of a cold kernel waits ~2 s for those imports (in a thread, see live.py).
WARM = "%load_ext pycontain\nimport pandas, matplotlib.figure, ipywidgets"
BUSY = "import time\nt = time.time()\nwhile time.time() - t < {s}:\n    pass"
# 3 s of work at the CPU limit: long enough to measure the redraw rate on a
# busy shared host, where starting the container takes a good part of a second.
MONITORED = "%%container --monitor --quiet --memory 128M --cpus 0.5 --pids 64 --stats usage\n" + BUSY.format(s=3.0)


class RecordingClient(NotebookClient):
    """nbclient (what ``jupyter nbconvert --execute`` runs) that also keeps
    every IOPub message, by cell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: dict[int, list[dict[str, Any]]] = {}

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.messages.setdefault(cell_index, []).append(msg)
        return super().process_message(msg, cell, cell_index)


def execute(*sources: str) -> tuple[Any, RecordingClient]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    client = RecordingClient(nb, timeout=180, kernel_name="python3", allow_errors=True)
    client.execute()
    return nb, client


def sent_at(msg: dict[str, Any]) -> float:
    date = msg["header"]["date"]  # set by the kernel when it sent the message
    return (date if isinstance(date, datetime) else datetime.fromisoformat(date)).timestamp()


def of_type(msgs: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m["msg_type"] in types]


def models(msgs: list[dict[str, Any]]) -> dict[str, str]:
    """comm id -> widget model name, from the comm_open messages."""
    return {m["content"]["comm_id"]: m["content"]["data"]["state"].get("_model_name", "")
            for m in of_type(msgs, "comm_open")}


def updates(msgs: list[dict[str, Any]], comm_id: str) -> list[dict[str, Any]]:
    return [m for m in of_type(msgs, "comm_msg")
            if m["content"]["comm_id"] == comm_id and m["content"]["data"].get("method") == "update"]


@pytest.fixture(scope="module")
def run() -> tuple[Any, RecordingClient]:
    return execute(
        WARM,
        # 1: the widget, live
        MONITORED,
        "int(usage.mem_limit_bytes.iloc[-1]), len(usage) >= 20",
        # 3: no flag, a short cell: no plot
        "%%container --quiet\npass",
        # 4: no flag, a long cell: the plot appears after MONITOR_DELAY_S
        "%%container --quiet\n" + BUSY.format(s=2.0),
        # 5: --no-monitor: never
        "%%container --quiet --no-monitor\n" + BUSY.format(s=1.5),
        # 7: without ipywidgets: the PNG updated through its display handle
        "import sys\nsaved_ipywidgets = sys.modules.pop('ipywidgets')\nsys.modules['ipywidgets'] = None",
        "%%container --monitor --quiet\n" + BUSY.format(s=1.0),
        "sys.modules['ipywidgets'] = saved_ipywidgets",
    )


def test_widget_is_displayed_and_updated_at_least_twice_a_second(run: tuple[Any, RecordingClient]) -> None:
    _nb, client = run
    msgs = client.messages[1]
    comms = models(msgs)
    assert sorted(set(comms.values()) - {"LayoutModel", "LabelStyleModel"}) == ["ImageModel", "LabelModel", "VBoxModel"]
    (shown,) = of_type(msgs, "display_data")
    view = shown["content"]["data"][WIDGET_VIEW]
    assert comms[view["model_id"]] == "VBoxModel"
    assert shown["content"]["transient"]["display_id"]

    image = next(c for c, name in comms.items() if name == "ImageModel")
    opened = next(m for m in of_type(msgs, "comm_open") if m["content"]["comm_id"] == image)
    assert opened["buffers"] and bytes(opened["buffers"][0]).startswith(b"\x89PNG")  # complete at once
    (final,) = of_type(msgs, "update_display_data")
    # New pictures while the cell runs: comm updates of the Image's value
    # (sent from the kernel's main thread during the pump loop, on IOPub).
    live = [sent_at(m) for m in updates(msgs, image)
            if m["buffers"] and bytes(m["buffers"][0]).startswith(b"\x89PNG") and sent_at(m) < sent_at(final)]
    times = [sent_at(shown), *live]
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]
    assert len(live) >= 4, f"only {len(live)} updates of the plot during a 3 s cell: {gaps}"
    rate = len(live) / (times[-1] - times[0])
    assert rate >= 2.0, f"{rate:.2f} updates/s: {gaps}"
    assert max(gaps) < 1.0, gaps  # no long stall (one late tick on a loaded host is tolerated)


def test_label_shows_usage_against_the_limits(run: tuple[Any, RecordingClient]) -> None:
    _nb, client = run
    msgs = client.messages[1]
    label = next(c for c, name in models(msgs).items() if name == "LabelModel")
    texts = [m["content"]["data"]["state"]["value"] for m in updates(msgs, label)]
    assert texts
    assert all(" / 128.0 MiB" in t and "CPU " in t and " / 50 %" in t and " / 64 " in t for t in texts), texts


def test_the_plot_gets_the_kernel_limit(run: tuple[Any, RecordingClient]) -> None:
    nb, _client = run
    # The frame drawn (and kept by --stats) carries the cgroup's limit, which
    # pycontain.plot draws as the "memory limit" line (tests/unit/test_live_monitor.py).
    assert nb.cells[2].outputs[0]["data"]["text/plain"] == f"({128 * MIB}, True)"


def test_the_saved_notebook_keeps_a_static_png(run: tuple[Any, RecordingClient]) -> None:
    nb, client = run
    msgs = client.messages[1]
    (shown,) = of_type(msgs, "display_data")
    (out,) = nb.cells[1].outputs
    assert out["output_type"] == "display_data" and set(out["data"]) == {"image/png", "text/plain"}
    assert base64.b64decode(out["data"]["image/png"]).startswith(b"\x89PNG")
    # nbval compares the first display_data's text with the saved one.
    assert out["data"]["text/plain"] == shown["content"]["data"]["text/plain"]
    assert out["data"]["text/plain"].startswith("<Figure: container pc-")
    # The widgets are closed, the last image dropped from the saved widget state.
    closed = {m["content"]["comm_id"] for m in of_type(msgs, "comm_close")}
    assert closed == set(models(msgs))
    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert all(not base64.b64decode(b["data"]) for s in state.values() for b in s.get("buffers", []))


def test_short_cell_shows_no_plot_long_cell_after_the_delay(run: tuple[Any, RecordingClient]) -> None:
    nb, client = run
    assert nb.cells[3].outputs == [] and not of_type(client.messages[3], "comm_open", "display_data")
    msgs = client.messages[4]
    (shown,) = of_type(msgs, "display_data")
    started = sent_at(of_type(msgs, "execute_input")[0])
    assert sent_at(shown) - started >= MONITOR_DELAY_S
    (out,) = nb.cells[4].outputs
    assert "image/png" in out["data"]


def test_no_monitor_shows_nothing(run: tuple[Any, RecordingClient]) -> None:
    nb, client = run
    assert nb.cells[5].outputs == []
    assert not of_type(client.messages[5], "comm_open", "display_data", "update_display_data")


def test_without_ipywidgets_the_png_updates_in_place(run: tuple[Any, RecordingClient]) -> None:
    nb, client = run
    msgs = client.messages[7]
    assert not of_type(msgs, "comm_open", "comm_msg")
    (shown,) = of_type(msgs, "display_data")
    assert set(shown["content"]["data"]) == {"image/png", "text/plain"}
    assert of_type(msgs, "update_display_data")
    (out,) = nb.cells[7].outputs
    assert "image/png" in out["data"] and out["data"]["text/plain"] == shown["content"]["data"]["text/plain"]


def test_nbval_passes_on_the_saved_notebook(run: tuple[Any, RecordingClient], tmp_path: Path) -> None:
    # A notebook with a monitored cell, saved as nbconvert --execute saves it,
    # then checked by nbval as CI checks notebooks/ (its sanitizers hide the
    # container's name).
    nb, _client = execute(WARM, MONITORED)
    path = tmp_path / "monitored.ipynb"
    nbformat.write(nb, path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(path), "--nbval-current-env",
         "--nbval-sanitize-with", str(ROOT / "tests/nbval_sanitize.cfg"), "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
