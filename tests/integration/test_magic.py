"""%%container through a real Jupyter kernel (nbclient), as a notebook user sees it."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient


def run_notebook(*sources: str, timeout: int = 180) -> list[list[dict]]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in ("%load_ext pycontain", *sources)]
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True).execute()
    return [list(c.outputs) for c in nb.cells[1:]]


def text(outputs: list[dict], name: str = "stdout") -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def plain(outputs: list[dict]) -> list[str]:
    return [o["data"]["text/plain"] for o in outputs if "data" in o and "text/plain" in o["data"]]


@pytest.fixture(scope="module")
def session() -> list[list[dict]]:
    return run_notebook(
        "import pandas as pd\ndf = pd.DataFrame({'a': range(5)})\nsecret = 7",
        # 1: variables in and out, output in order, rich display, summary line
        "%%container --in df --out total\nprint('rows', len(df))\nimport sys\nprint('warn', file=sys.stderr)\n"
        "total = int(df.a.sum())\ndf.head(2)",
        "total",
        # 3: matplotlib figure comes back as a PNG
        "%%container --quiet --no-monitor\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);",
        # 4: exception with the container's traceback
        "%%container --quiet\ndef f():\n    return 1 / 0\nf()",
        # 5: OOM in one line with the peak
        "%%container --memory 64M --quiet --no-monitor\nb = bytearray(512 << 20)",
        # 6: snapshot sees every variable
        "%%container --snapshot --quiet\nprint(len(df), secret)",
        # 7: without --in or --snapshot the notebook's variables are not there
        "%%container --quiet\nprint('secret' in globals())",
        # 8: timeout
        "%%container --timeout 1 --quiet --no-monitor\nimport time\ntime.sleep(20)",
        # 9: what cannot be sent is named
        "import threading\nlock = threading.Lock()",
        "%%container --in lock\npass",
        # 11: no network inside
        "%%container --quiet\nimport socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
        "except OSError as e:\n    print('no network:', type(e).__name__)",
        # 12: persistent container
        "%%container --name lab --quiet\nx = 41",
        "%%container --name lab --out x --quiet\nx += 1\nprint(x)",
        "x",
        "%container stop lab",
        # 16: the kernel's files are untouched by writes inside
        "%%container --quiet\nopen('/tmp/pycontain-magic-probe', 'w').write('x')",
        "import os\nos.path.exists('/tmp/pycontain-magic-probe')",
        # 18: --stats stores the usage frame
        "%%container --stats usage --quiet --no-monitor\nsum(range(10**6))",
        "list(usage.columns)[:4], len(usage) >= 1",
        "%containers",
    )


def test_variables_in_and_out(session: list[list[dict]]) -> None:
    out = session[1]
    assert text(out) .startswith("rows 5\n")
    assert text(out, "stderr") == "warn\n"
    assert any("text/html" in o.get("data", {}) for o in out), "the DataFrame's rich repr"
    assert "container:" in text(out) and "exit 0" in text(out)
    assert plain(session[2]) == ["10"]


def test_figure_comes_back_as_png(session: list[list[dict]]) -> None:
    assert any("image/png" in o.get("data", {}) for o in session[3])


def test_exception_shows_remote_traceback(session: list[list[dict]]) -> None:
    errors = [o for o in session[4] if o["output_type"] == "error"]
    assert len(errors) == 1
    tb = "\n".join(errors[0]["traceback"])
    assert "ZeroDivisionError" in tb and "return 1 / 0" in tb


def test_oom_is_one_clear_line(session: list[list[dict]]) -> None:
    line = text(session[5], "stderr")
    assert line.startswith("OOM: killed at") and "(peak)" in line


def test_snapshot_and_isolation_of_namespace(session: list[list[dict]]) -> None:
    assert text(session[6]) == "5 7\n"
    assert text(session[7]) == "False\n"


def test_timeout_reported(session: list[list[dict]]) -> None:
    assert text(session[8], "stderr").startswith("timeout: stopped after 1 s")


def test_unsendable_variable_is_named(session: list[list[dict]]) -> None:
    # IPython shows a UsageError as one line on stderr, without a traceback.
    message = text(session[10], "stderr") + "".join(o.get("evalue", "") for o in session[10])
    assert "could not send in: lock" in message and "pickle" in message


def test_no_network(session: list[list[dict]]) -> None:
    assert text(session[11]).startswith("no network:")


def test_persistent_container_keeps_state(session: list[list[dict]]) -> None:
    assert text(session[13]) == "42\n"
    assert plain(session[14]) == ["42"]
    assert "stopped lab" in text(session[15])


def test_host_files_untouched(session: list[list[dict]]) -> None:
    assert plain(session[17]) == ["False"]


def test_stats_variable(session: list[list[dict]]) -> None:
    assert plain(session[19]) == ["(['t_s', 'cpu_s', 'cpu_percent', 'mem_bytes'], True)"]
