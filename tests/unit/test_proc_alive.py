"""Is a process alive? A zombie is not (pycontain.kernel.proc)."""

from __future__ import annotations

import os
import time

import pytest

from pycontain.kernel import proc


@pytest.mark.parametrize(("line", "state"), [
    ("42 (sleep) S 1 42 42 0 -1", "S"),
    ("42 (a) Z (b) R 1 42", "R"),  # a command name holding ") Z ("
    ("42 (true) Z 1 42", "Z"),
    ("", ""),
])
def test_stat_state_reads_the_field_after_the_last_parenthesis(line: str, state: str) -> None:
    assert proc.stat_state(line) == state


def test_a_zombie_exists_but_is_not_alive() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while proc.process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.process_exists(pid)  # not reaped yet: the pid is still taken
        assert not proc.process_alive(pid)
    finally:
        os.waitpid(pid, 0)
    assert not proc.process_exists(pid)


@pytest.mark.parametrize("junk", [None, 0, -1, True, "1", 1.0])
def test_junk_pids_are_not_alive(junk: object) -> None:
    assert not proc.process_alive(junk)


def test_this_process_is_alive() -> None:
    assert proc.process_alive(os.getpid())
