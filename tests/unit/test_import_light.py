"""`import pycontain` stays light: no thread, no pandas/IPython/matplotlib/numpy.

The engine process imports pycontain too and its start-up is on the critical
path of every container (DESIGN.md §2), so this runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("pandas", "IPython", "matplotlib", "numpy", "ipywidgets", "ipykernel")

PROLOGUE = "import json, os, sys, threading, time\nt0 = time.perf_counter()\n"
EPILOGUE = (
    "elapsed = time.perf_counter() - t0\n"
    "print(json.dumps({'threads': threading.active_count(),\n"
    "                  'tasks': len(os.listdir('/proc/self/task')),\n"
    f"                  'heavy': [m for m in {HEAVY!r} if m in sys.modules],\n"
    "                  'seconds': elapsed}))\n"
)


def _fresh(body: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROLOGUE + body + EPILOGUE], capture_output=True,
                         text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_pycontain_is_light() -> None:
    r = _fresh("import pycontain\n")
    print(f"import pycontain: {r['seconds'] * 1000:.1f} ms")  # informative, not asserted
    assert r["threads"] == 1
    assert r["tasks"] == 1  # no native threads either (e.g. OpenBLAS)
    assert r["heavy"] == []


def test_doctor_text_and_cgroup_version_need_no_pandas() -> None:
    # The CLI prints the report as text: that path must not import pandas.
    r = _fresh(
        "import pycontain\n"
        "pycontain.cgroup_version() if os.path.exists('/sys/fs/cgroup') else None\n"
        "str(pycontain.doctor(probe=False))\n"
    )
    print(f"import + doctor(probe=False): {r['seconds'] * 1000:.1f} ms")
    assert r["threads"] == 1 and r["tasks"] == 1
    assert r["heavy"] == []
