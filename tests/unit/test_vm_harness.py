"""The cgroup v2 VM harness's host-side logic (tests/vm), without booting anything."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm import initramfs, kernel, run


def test_newc_archive_lists_back_with_cpio(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.skip("busybox not installed")
    cpio = initramfs._Newc()
    cpio.dir("bin")
    cpio.file("bin/hello", b"hello\n", 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.chardev("console", 5, 1)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio.finish())
    res = subprocess.run([busybox, "cpio", "-tv"], stdin=archive.open("rb"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    listing = res.stdout.splitlines()
    assert [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing] == [
        "bin",
        "bin/hello",
        "bin/sh",
        "console",
    ]
    assert listing[1].startswith("-rwxr-xr-x") and listing[3].startswith("crw-------")


def test_only_a_static_binary_counts_as_static() -> None:
    if Path("/bin/busybox").is_file():
        assert initramfs._is_static(Path("/bin/busybox")) == ("statically linked" in _file("/bin/busybox"))
    assert not initramfs._is_static(Path(os.path.realpath(sys.executable)))


def _file(path: str) -> str:
    tool = shutil.which("file")
    return (
        subprocess.run([tool, "-L", path], capture_output=True, text=True).stdout
        if tool
        else "statically linked"
    )


def test_module_closure_puts_dependencies_first() -> None:
    cached = kernel.cached_kernel()
    if cached is None:
        pytest.skip("no guest kernel in tests/vm/cache (./dev setup fetches it)")
    names = [p.name for p in kernel.module_closure(cached, ["9p", "virtio_pci"])]
    assert names.index("9pnet.ko") < names.index("9p.ko")
    assert names.index("virtio.ko") < names.index("virtio_pci.ko")
    assert len(names) == len(set(names))
    with pytest.raises(kernel.VMSetupError, match="no module"):
        kernel.module_closure(cached, ["no_such_module"])


def test_guest_command_quotes_args_and_passes_only_project_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCONTAIN_FOO", "a b")
    monkeypatch.setenv("PYCONTAIN_VM_TIMEOUT", "5")
    argv = shlex.split(run.guest_command("/venv/bin/python", ["-k", "x and not y", "tests/a b.py"]))
    assert argv[:3] == [f"{run.GUEST_RUN}/busybox", "env", "-i"]
    assert "PYCONTAIN_FOO=a b" in argv and not any(a.startswith("PYCONTAIN_VM_") for a in argv)
    assert "PATH=/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in argv
    start = argv.index("/venv/bin/python")
    assert argv[start : start + 5] == ["/venv/bin/python", "-m", "pytest", "-m", "v2"]
    assert argv[-3:] == ["-k", "x and not y", "tests/a b.py"]
    assert "no:nbval" in argv


def test_names_a_path_tells_paths_from_options() -> None:
    assert not run.names_a_path([])
    assert not run.names_a_path(["-x", "-k", "memory"])
    assert run.names_a_path(["tests/unit"])
    assert run.names_a_path(["tests/integration/test_v2_smoke.py::test_pids_max_is_enforced"])


def test_bad_numbers_in_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("0", "-3", "nan", "ten"):
        monkeypatch.setenv("PYCONTAIN_VM_TIMEOUT", bad)
        with pytest.raises(kernel.VMSetupError, match="PYCONTAIN_VM_TIMEOUT"):
            run._env_number("PYCONTAIN_VM_TIMEOUT", 1)
    monkeypatch.setenv("PYCONTAIN_VM_TIMEOUT", "90")
    assert run._env_number("PYCONTAIN_VM_TIMEOUT", 1) == 90
