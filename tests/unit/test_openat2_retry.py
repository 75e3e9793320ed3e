"""openat2 retries EAGAIN: a ".." of a RESOLVE_IN_ROOT walk raced a mount elsewhere on the host."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from pycontain.errors import KernelError
from pycontain.kernel import syscalls


def _flaky(fails: int):  # type: ignore[no-untyped-def]
    real = syscalls._c_syscall
    calls = []

    def fake(*args):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) <= fails:
            ctypes.set_errno(errno.EAGAIN)
            return -1
        return real(*args)

    return fake, calls


def test_eagain_is_retried(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f").write_text("x")
    fake, calls = _flaky(2)
    monkeypatch.setattr(syscalls, "_c_syscall", fake)
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = syscalls.openat2(root, "f", os.O_RDONLY, syscalls.RESOLVE_IN_ROOT)
        os.close(fd)
    finally:
        os.close(root)
    assert len(calls) == 3


def test_eagain_that_persists_is_the_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake, calls = _flaky(10_000)
    monkeypatch.setattr(syscalls, "_c_syscall", fake)
    with pytest.raises(KernelError) as info:
        syscalls.openat2(-100, str(tmp_path), os.O_RDONLY, 0)
    assert info.value.errno == errno.EAGAIN
    assert len(calls) == syscalls._OPENAT2_ATTEMPTS
