"""The installed ``pycontain`` command (bin/pycontain) running real containers.

The launcher runs Python with -I -S and sets sys.path itself; these tests
prove it on the real kernel: from the project's venv, from a fresh venv-like
layout, and that ``pycontain run`` pulls in nothing it does not need and
forks its container itself (no zygote helper).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALLED = Path(sys.executable).parent / "pycontain"


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ.copy(),
                          **kw)  # type: ignore[call-overload]


def test_installed_command_returns_the_containers_exit_code() -> None:
    if not INSTALLED.exists():
        pytest.skip(f"no pycontain command beside {sys.executable} (pip install -e .)")
    with open(INSTALLED, "rb") as f:
        assert f.readline() == b"#!/bin/sh\n", f"{INSTALLED} is not the launcher: reinstall (./dev setup)"
    out = run([str(INSTALLED), "run", "--rm", "host", "sh", "-c", "echo hi; exit 3"])
    assert (out.returncode, out.stdout) == (3, "hi\n"), out.stderr
    assert run([str(INSTALLED), "ps", "-a", "-q"]).stdout == ""


def test_fresh_venv_layout(tmp_path: Path) -> None:
    # A venv made by hand (what `python -m venv` + `pip install -e .` lay out):
    # bin/python3, pyvenv.cfg, site-packages whose .pth names where the
    # package and its dependencies are; the launcher copied into bin/.
    venv = tmp_path / "venv"
    real = os.path.realpath(sys.executable)
    (venv / "bin").mkdir(parents=True)
    os.symlink(real, venv / "bin" / "python3")
    (venv / "pyvenv.cfg").write_text(f"home = {os.path.dirname(real)}\ninclude-system-site-packages = false\n")
    packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    packages.mkdir(parents=True)
    here = [p for p in site.getsitepackages() if os.path.isdir(p)]
    (packages / "deps.pth").write_text("\n".join([str(REPO), *here]) + "\n")
    shutil.copy2(REPO / "bin" / "pycontain", venv / "bin" / "pycontain")

    out = run([str(venv / "bin" / "pycontain"), "run", "--rm", "host", "sh", "-c", "echo from-venv; exit 5"],
              cwd=str(tmp_path))
    assert (out.returncode, out.stdout) == (5, "from-venv\n"), out.stderr
    out = run([str(venv / "bin" / "pycontain"), "run", "--rm", "--memory", "nonsense", "host", "true"])
    assert out.returncode == 2 and "memory" in out.stderr and "Traceback" not in out.stderr


def test_run_imports_only_what_it_needs_and_forks_itself() -> None:
    code = (
        "import sys\n"
        "from pycontain.cli import main\n"
        "code = main(['run', '--rm', 'host', 'sh', '-c', 'exit 4'])\n"
        "heavy = sorted(m for m in ('pandas', 'numpy', 'pyroute2', 'IPython', 'matplotlib', 'ipywidgets')"
        " if m in sys.modules)\n"
        "zygote = sys.modules.get('pycontain.engine.zygote')\n"
        "print(code, ','.join(heavy) or '-', getattr(zygote, '_shared', None))\n"
    )
    out = run([sys.executable, "-c", code], cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    # exit code 4 passed on; no heavy module; no zygote started (the CLI forks itself)
    assert out.stdout.split() == ["4", "-", "None"], out.stdout
