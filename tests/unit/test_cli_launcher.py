"""bin/pycontain, the command's launcher: a shell line that runs Python with
-I -S, and Python that puts the install's site-packages on sys.path itself.

Fake venvs under tmp_path (a symlink to this interpreter, pyvenv.cfg,
site-packages with .pth files and a stand-in ``pycontain`` package) prove it
end to end without installing anything and without root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher import LAUNCHER, load_launcher

REPO = Path(__file__).resolve().parents[2]
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"

# A stand-in for pycontain.cli: reports how it was started, exits 7.
FAKE_CLI = """
import json, os, sys
def main():
    mods = {}
    for name in ("extramod", "editable_demo"):
        try:
            mods[name] = __import__(name).WHERE
        except ImportError:
            mods[name] = None
    print(json.dumps({"argv": sys.argv[1:], "isolated": sys.flags.isolated, "no_site": sys.flags.no_site,
                      "prefix": sys.prefix,
                      "hook_ran": os.environ.get("OTHER_HOOK_RAN"), "mods": mods, "path": sys.path}))
    return 7
"""


def fake_venv(root: Path, *, system_site: bool = False, with_cli: bool = True) -> Path:
    """A venv-like tree: bin/python3 -> this interpreter, pyvenv.cfg, site-packages."""
    real = os.path.realpath(sys.executable)
    (root / "bin").mkdir(parents=True)
    os.symlink(real, root / "bin" / "python3")
    (root / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(real)}\n"
        f"include-system-site-packages = {'true' if system_site else 'false'}\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}\n")
    site = root / "lib" / PYVER / "site-packages"
    site.mkdir(parents=True)
    if with_cli:
        (site / "pycontain" / "cli").mkdir(parents=True)
        (site / "pycontain" / "__init__.py").write_text("")
        (site / "pycontain" / "cli" / "__init__.py").write_text(FAKE_CLI)
    shutil.copy2(LAUNCHER, root / "bin" / "pycontain")
    return site


def run(cmd: list[str] | str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYCONTAIN_PYTHON"}
    return subprocess.run(cmd if isinstance(cmd, list) else [cmd], capture_output=True, text=True, timeout=60,
                          env=env, **kw)  # type: ignore[call-overload]


# -- the path logic, in this process --------------------------------------------------------------


def test_pth_entries_reads_paths_and_keeps_only_editable_hooks(tmp_path: Path) -> None:
    launcher = load_launcher()
    (tmp_path / "here").mkdir()
    (tmp_path / "abs").mkdir()
    (tmp_path / "a.pth").write_text(f"# a comment\n\nhere\n{tmp_path / 'abs'}\nmissing\nhere\n")
    (tmp_path / "b.pth").write_text("import os; os.environ['X'] = '1'\n")
    (tmp_path / "__editable__.demo-1.0.pth").write_text(
        "import __editable___demo_finder; __editable___demo_finder.install()\n")
    (tmp_path / ".hidden.pth").write_text("abs\n")
    (tmp_path / "c.txt").write_text("abs\n")
    dirs, hooks = launcher.pth_entries(str(tmp_path))
    assert dirs == [str(tmp_path / "here"), str(tmp_path / "abs")]
    assert hooks == ["import __editable___demo_finder; __editable___demo_finder.install()"]
    assert launcher.pth_entries(str(tmp_path / "no-such-dir")) == ([], [])


def test_venv_prefix(tmp_path: Path) -> None:
    launcher = load_launcher()
    (tmp_path / "bin").mkdir()
    exe = str(tmp_path / "bin" / "python3")
    assert launcher.venv_prefix(exe) is None
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    assert launcher.venv_prefix(exe) == (str(tmp_path), False)
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nInclude-System-Site-Packages = True\n")
    assert launcher.venv_prefix(exe) == (str(tmp_path), True)


# -- the script, as a user runs it -------------------------------------------------------------------


def test_launcher_runs_python_isolated_without_site(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = fake_venv(venv)
    (site / "extra").mkdir()
    (site / "extra" / "extramod.py").write_text("WHERE = 'extra'\n")
    (site / "extra.pth").write_text("extra\n")
    # an editable install's hook (setuptools' __editable__ finder) runs ...
    elsewhere = tmp_path / "src"
    elsewhere.mkdir()
    (elsewhere / "editable_demo.py").write_text("WHERE = 'editable'\n")
    (site / "__editable___demo_finder.py").write_text(
        f"import sys\ndef install():\n    sys.path.append({str(elsewhere)!r})\n")
    (site / "__editable__.demo-1.0.pth").write_text(
        "import __editable___demo_finder; __editable___demo_finder.install()\n")
    # ... other hooks (coverage, distutils shims) do not
    (site / "other.pth").write_text("import os; os.environ['OTHER_HOOK_RAN'] = '1'\n")

    out = run([str(venv / "bin" / "pycontain"), "run", "--rm", "x y"], cwd=str(tmp_path))
    assert out.returncode == 7, out.stderr
    info = json.loads(out.stdout)
    assert info["argv"] == ["run", "--rm", "x y"]
    assert (info["isolated"], info["no_site"]) == (1, 1)
    assert info["prefix"] == str(venv)
    assert info["mods"] == {"extramod": "extra", "editable_demo": "editable"}
    assert info["hook_ran"] is None
    assert str(site) in info["path"] and str(tmp_path) not in info["path"][:1]


def test_launcher_through_a_symlink_finds_its_venv(tmp_path: Path) -> None:
    # pipx links ~/.local/bin/pycontain to the script inside its venv
    venv = tmp_path / "venv"
    fake_venv(venv)
    (tmp_path / "links").mkdir()
    os.symlink(venv / "bin" / "pycontain", tmp_path / "links" / "pycontain")
    out = run([str(tmp_path / "links" / "pycontain"), "ps"])
    assert out.returncode == 7, out.stderr
    assert json.loads(out.stdout)["prefix"] == str(venv)


def test_launcher_falls_back_on_site(tmp_path: Path) -> None:
    # pycontain reachable only through a .pth hook the quick path skips: site runs.
    venv = tmp_path / "venv"
    site = fake_venv(venv, with_cli=False)
    hidden = tmp_path / "hidden"
    (hidden / "pycontain" / "cli").mkdir(parents=True)
    (hidden / "pycontain" / "__init__.py").write_text("")
    (hidden / "pycontain" / "cli" / "__init__.py").write_text(FAKE_CLI)
    (site / "hook.pth").write_text(f"import sys; sys.path.append({str(hidden)!r})\n")
    out = run([str(venv / "bin" / "pycontain"), "images"])
    assert out.returncode == 7, out.stderr
    assert json.loads(out.stdout)["argv"] == ["images"]


def test_launcher_without_pycontain_says_what_to_do(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    fake_venv(venv, with_cli=False)
    out = run([str(venv / "bin" / "pycontain"), "ps"])
    assert out.returncode == 1
    assert "cannot import pycontain" in out.stderr and "PYCONTAIN_PYTHON" in out.stderr


@pytest.mark.skipif(not os.access(LAUNCHER, os.X_OK), reason="bin/pycontain is not executable")
def test_repository_launcher_runs_python_dash_m_equivalent() -> None:
    # The real script, run by this interpreter (as PYCONTAIN_PYTHON), on the real package.
    env = {**os.environ, "PYCONTAIN_PYTHON": sys.executable}
    out = subprocess.run([str(LAUNCHER), "--version"], capture_output=True, text=True, timeout=60, env=env)
    installed = out.returncode == 0
    if not installed:
        pytest.skip(f"pycontain is not installed for {sys.executable}: {out.stderr.strip()[-200:]}")
    import pycontain

    assert out.stdout.strip() == f"pycontain {pycontain.__version__}"
