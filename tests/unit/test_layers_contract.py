"""The layering of DESIGN.md §2, checked by import-linter (config in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_layers_are_kept() -> None:
    tool = shutil.which("lint-imports")
    if tool is None:
        pytest.skip("lint-imports (import-linter) is not installed; pip install import-linter")
    out = subprocess.run([tool, "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
