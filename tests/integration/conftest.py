"""Integration tests run as root against the real kernel.

Every test here is wrapped in a leak check: mounts, pycontain cgroups,
network namespaces, links (veth, bridges), loop devices, child processes and
the caller's fds must be the same after the test as before it.
"""

from __future__ import annotations

import os

import pytest

from tests.leaks import Snapshot


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session", autouse=True)
def container_zygote() -> object:
    """The process-wide zygote containers fork from, started once before any
    leak snapshot: it lives as long as the test process, like in any user's."""
    from pycontain.container import _fork_source

    if os.geteuid() == 0:
        _fork_source()
    yield


@pytest.fixture(autouse=True)
def no_leaks(container_zygote: object) -> object:
    # Local escape hatch for developers whose machine runs other pycontain
    # work at the same time (the check sees the whole host). CI never sets it.
    if os.environ.get("PYCONTAIN_TEST_SKIP_LEAK_CHECK") == "1" and not os.environ.get("CI"):
        yield
        return
    before = Snapshot.take()
    yield
    after = Snapshot.take(settle=before)
    problems = before.leaks(after)
    assert not problems, "the test left things behind:\n" + "\n".join(problems)
