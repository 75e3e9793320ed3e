"""Shared test setup.

* ``root`` tests skip with a reason when not run as root.
* ``v2`` tests run only on a pure cgroup v2 host (the VM harness, tests/vm);
  ``v1`` tests only where v1 controllers are mounted.
* Every test gets its own state directory and image store under a temp dir,
  removed afterwards, so a run leaves no state behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

IS_ROOT = os.geteuid() == 0

# No warm CLI server (pycontain/cli/server.py) starts from a test run: it would
# outlive the test. tests/integration/test_cli_server.py turns it on for itself.
os.environ["PYCONTAIN_CLI_SERVER"] = "0"


def _cgroup_mode() -> str:
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return "unknown"
    root_fs = next((ln.split(" - ")[1].split()[0] for ln in lines if ln.split()[4] == "/sys/fs/cgroup"), None)
    if root_fs == "cgroup2":
        return "v2"
    has_v1 = any(ln.split(" - ")[1].split()[0] == "cgroup" for ln in lines)
    return "v1" if has_v1 else "unknown"


CGROUP_MODE = _cgroup_mode()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root on the real kernel"))
        if "v2" in item.keywords and CGROUP_MODE != "v2":
            item.add_marker(pytest.mark.skip(reason="needs cgroup v2; runs in the VM harness (./dev test-v2)"))
        if "v1" in item.keywords and CGROUP_MODE != "v1":
            item.add_marker(pytest.mark.skip(reason="needs cgroup v1 controllers on this host"))


@pytest.fixture(autouse=True)
def _private_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh state dir and store per test; removed after (nothing left behind)."""
    base = tempfile.mkdtemp(prefix="pycontain-test-")
    monkeypatch.setenv("PYCONTAIN_STATE_DIR", os.path.join(base, "state"))
    monkeypatch.setenv("PYCONTAIN_STORE", os.path.join(base, "store"))
    yield base
    shutil.rmtree(base, ignore_errors=True)
