"""The Binder path: every notebook runs to the end where nothing can be isolated.

tests/binder/run_degraded.py runs pytest --nbval-lax on notebooks/ as
``nobody`` under a seccomp filter that refuses unshare, mount and setns
(as Docker's default profile does). Outputs are not compared there: the
point is that no cell fails, and that the notebooks say (through doctor)
what they cannot show.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))

pytestmark = [pytest.mark.slow]


def _degraded(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "binder", "run_degraded.py"), "--", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_launcher_really_degrades() -> None:
    code = ("import os, ctypes; print(os.getuid()); libc = ctypes.CDLL(None, use_errno=True); "
            "print(libc.unshare(0x40000000), ctypes.get_errno())")
    proc = _degraded(sys.executable, "-c", code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    uid, (ret, err) = proc.stdout.split("\n")[0], proc.stdout.split("\n")[1].split()
    assert uid == "65534"
    assert (ret, err) == ("-1", "1")  # EPERM


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks")
def test_every_notebook_runs_to_the_end_without_isolation() -> None:
    proc = _degraded(sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                     "-q", "-o", "addopts=", *NOTEBOOKS, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
