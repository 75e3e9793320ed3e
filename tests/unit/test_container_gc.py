"""Garbage-collection rules that need no kernel: keys, and what counts as garbage."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from pycontain import container_gc
from pycontain.container_gc import container_key, parse_key


def test_key_round_trip():
    key = container_key("my-box", "0123456789abcdef", 4242, False)
    assert key == "my-box-01234567.4242"
    assert parse_key(key) == ("my-box", "01234567", 4242)
    assert parse_key(container_key("x", "ffffffffffffffff", 1, True)) == ("x", "ffffffff", None)


@pytest.mark.parametrize("bad", ["", "pycontain", "name-1234567.1", "name-12345678", "name-12345678.x",
                                 "-12345678.1", "name-12345678.-1"])
def test_not_a_key(bad):
    assert parse_key(bad) is None


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_garbage_rules():
    alive, dead = os.getpid(), _dead_pid()
    states: dict[str, tuple[dict[str, Any] | None, bool]] = {
        "live": ({"id": "aaaaaaaa00", "creator_pid": alive}, False),
        "orphan": ({"id": "bbbbbbbb00", "creator_pid": dead}, True),
    }
    garbage = container_gc._key_is_garbage
    assert not garbage(container_key("live", "aaaaaaaa00", alive, False), states)
    assert garbage(container_key("orphan", "bbbbbbbb00", dead, False), states)
    # not one of our states: judged by the creator in the key
    assert garbage(container_key("other", "cccccccc00", dead, False), states)
    assert not garbage(container_key("other", "cccccccc00", alive, False), states)
    # detached and unknown: another state directory's; never ours to remove
    assert not garbage(container_key("other", "cccccccc00", dead, True), states)
    # a reused name with another id is judged by its own key
    assert garbage(container_key("live", "dddddddd00", dead, False), states)
    assert not garbage("not-a-key", states)


def test_state_rules():
    alive, dead = os.getpid(), _dead_pid()
    rule = container_gc._is_garbage_state
    assert not rule({"creator_pid": alive})
    assert rule({"creator_pid": dead})
    assert rule({"creator_pid": dead, "detach": True, "pid": None})  # never started
    assert not rule({"creator_pid": dead, "detach": True, "pid": 123})  # detached: kept like docker ps -a


def test_collect_on_an_empty_state_dir_is_cheap(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCONTAIN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PYCONTAIN_STORE", str(tmp_path / "store"))
    monkeypatch.setattr(container_gc, "_cgroup_names", lambda: set())
    t0 = time.perf_counter()
    report = container_gc.collect()
    assert not report and (time.perf_counter() - t0) < 0.05
    assert report.as_dict() == {"containers": [], "cgroups": [], "rootfs": [], "netns": [], "errors": []}
