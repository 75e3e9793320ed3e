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


#: Modules a `pycontain run` of a command never needs: each costs milliseconds
#: of every CLI start (issue #5). cloudpickle: the container's init never
#: returns a value; the zygote (socket): the CLI forks its containers itself;
#: tarfile, hashlib (OpenSSL): layers are read or written only when one is
#: made; pyseccomp and the seccomp parser: the program is kept on disk;
#: secrets, platform, decimal, datetime, shlex: cheaper equivalents do;
#: ctypes.util: find_library runs ldconfig; argparse (and the other topics'
#: commands): `run`'s usual arguments are read without it.
NOT_ON_THE_RUN_PATH = (
    "pandas", "numpy", "pyroute2", "IPython", "matplotlib", "ipywidgets",
    "cloudpickle", "pycontain.engine.zygote", "socket", "tarfile", "pycontain.backends.storage_tar",
    "secrets", "platform", "decimal", "datetime", "shlex", "ctypes.util", "subprocess", "pyseccomp",
    "pycontain.backends.seccomp", "hashlib", "pycontain.backends.tarsafe", "argparse", "pycontain.cli.images",
    "tempfile",
    "pycontain.network", "pycontain.stats", "pycontain.build", "pycontain.namespace",
)


def test_run_imports_only_what_it_needs_and_forks_itself(tmp_path: Path) -> None:
    # Twice, in the same store: the first run may make the init layer and the
    # seccomp program (tarfile, pyseccomp); the second must find them.
    env = {**os.environ, "PYCONTAIN_STATE_DIR": str(tmp_path / "state"), "PYCONTAIN_STORE": str(tmp_path / "store")}
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(os.path.realpath(shutil.which("busybox") or "/bin/busybox"), rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    setup = f"from pycontain import Image; Image.from_rootfs({str(rootfs)!r}, tag='launcher-test/busybox')"
    made = subprocess.run([sys.executable, "-c", setup], capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(REPO))
    assert made.returncode == 0, made.stderr
    code = (
        "import sys\n"
        "from pycontain.cli import main\n"
        "code = main(['run', '--rm', 'launcher-test/busybox', 'sh', '-c', 'exit 4'])\n"
        f"unwanted = sorted(m for m in {NOT_ON_THE_RUN_PATH!r} if m in sys.modules)\n"
        "print(code, ','.join(unwanted) or '-')\n"
    )
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                             cwd=str(REPO))
        assert out.returncode == 0, out.stderr
    # exit code 4 passed on; nothing it does not need (no zygote either: the CLI forks itself)
    assert out.stdout.split() == ["4", "-"], out.stdout
