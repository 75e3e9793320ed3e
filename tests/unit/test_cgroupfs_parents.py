"""make_dir_in_parents retries when a concurrent remover prunes the parent."""

from __future__ import annotations

import errno
import os

import pytest

from pycontain.errors import KernelError
from pycontain.kernel import cgroupfs


@pytest.mark.parametrize("code", [errno.ENODEV, errno.ENOENT])
def test_parent_pruned_while_making_parents_is_retried(tmp_path, code) -> None:
    calls = []

    def make_parents(path: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            # the parent was rmdir'd between our isdir and our read of cpuset.cpus
            raise KernelError("read failed", op="read", errno=code)
        os.makedirs(os.path.dirname(path), exist_ok=True)

    target = str(tmp_path / "pycontain" / "containers" / "c1")
    assert cgroupfs.make_dir_in_parents(target, make_parents) is True
    assert len(calls) == 2 and os.path.isdir(target)


def test_other_errors_are_not_retried(tmp_path) -> None:
    def make_parents(path: str) -> None:
        raise KernelError("no", op="mkdir", errno=errno.EACCES)

    with pytest.raises(KernelError):
        cgroupfs.make_dir_in_parents(str(tmp_path / "x" / "y"), make_parents)
