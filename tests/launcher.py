"""The `pycontain` command's source (bin/pycontain) loaded as a module, for tests of its Python part."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

LAUNCHER = Path(__file__).resolve().parents[1] / "bin" / "pycontain"


def load_launcher() -> ModuleType:
    """A fresh module object of bin/pycontain each call (not put in sys.modules)."""
    loader = importlib.machinery.SourceFileLoader("pycontain_launcher", str(LAUNCHER))
    spec = importlib.util.spec_from_loader("pycontain_launcher", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
