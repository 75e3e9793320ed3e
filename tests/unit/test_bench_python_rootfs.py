"""The benchmark's python image rootfs (benchmarks/bench_notebook.py): built from
the host's own files, self-contained, and written only under its root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_notebook import _host_python, build_python_rootfs


def _resolve_inside(root: str, path: str, depth: int = 0) -> str:
    """``path`` resolved as if ``root`` were /: symlinks followed inside root."""
    assert depth < 40, f"symlink loop at {path}"
    cur = "/"
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        nxt = os.path.join(cur, part)
        host = root + nxt
        if os.path.islink(host):
            target = os.readlink(host)
            base = target if target.startswith("/") else os.path.join(cur, target)
            rest = "/".join(parts[i + 1:])
            return _resolve_inside(root, os.path.normpath(os.path.join(base, rest)), depth + 1)
        cur = nxt
    return cur


def test_python_rootfs_holds_interpreter_loader_and_stdlib(tmp_path: Path) -> None:
    python = _host_python()
    root = str(tmp_path / "rootfs")
    before = set(os.listdir(tmp_path))
    build_python_rootfs(root, python)
    assert set(os.listdir(tmp_path)) - before == {"rootfs"}

    exe = _resolve_inside(root, python)
    assert os.path.isfile(root + exe) and not os.path.islink(root + exe)
    with open(root + exe, "rb") as f:
        elf = f.read(4096)
    assert elf[:4] == b"\x7fELF"
    # The program interpreter named in the ELF header (PT_INTERP) is inside.
    loader = next(p for p in elf.split(b"\0") if p.startswith(b"/") and b"ld-linux" in p).decode()
    assert os.path.isfile(root + _resolve_inside(root, loader)), loader
    # Every symlink resolves inside the root (none dangles, none escapes to the host).
    dangling = []
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(base, name)
            if os.path.islink(full) and not os.path.exists(root + _resolve_inside(root, full[len(root):])):
                dangling.append(full[len(root):])
    assert all(p.endswith("sitecustomize.py") for p in dangling), dangling  # Debian's points into /etc
    stdlib = [p for p in Path(root).rglob("os.py") if "python3" in str(p)]
    assert stdlib, "no standard library in the image"
    assert list(stdlib[0].parent.glob("lib-dynload/*.so")), "no lib-dynload extension modules"
    assert not (stdlib[0].parent / "test").exists() and not (stdlib[0].parent / "site-packages").exists()


def test_python_rootfs_rejects_a_missing_interpreter(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        build_python_rootfs(str(tmp_path / "rootfs"), str(tmp_path / "no-python"))
