"""Integration tests run as root against the real kernel.

Every test here is wrapped in a leak check: mounts, pycontain cgroups,
network namespaces, links (veth, bridges), loop devices, child processes and
the caller's fds must be the same after the test as before it.
"""

from __future__ import annotations

import pytest

from tests.leaks import Snapshot


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture(autouse=True)
def no_leaks() -> object:
    before = Snapshot.take()
    yield
    after = Snapshot.take(settle=before)
    problems = before.leaks(after)
    assert not problems, "the test left things behind:\n" + "\n".join(problems)
