"""The stop button's SIGINT handling in %%container, without a kernel.

Kernel side (:class:`StopButton`): a press is held outside the output pump
and raised where the magic can handle it. Cell-server side
(:class:`_StopButton`): one KeyboardInterrupt per press, only in user code.
The integration test (test_magic_interrupt.py) shows both through a real kernel.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pycontain.notebook.cell import CellEvents, StopButton, _StopButton, check_stop


def press() -> None:
    # The handler runs in the main thread at the next bytecode.
    os.kill(os.getpid(), signal.SIGINT)


def test_a_press_is_held_until_the_block_ends() -> None:
    before = signal.getsignal(signal.SIGINT)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with StopButton():
            press()
            steps.append("after the press")
            time.sleep(0.05)
            steps.append("still going")
    assert steps == ["after the press", "still going"]
    assert signal.getsignal(signal.SIGINT) is before


def test_check_stop_delivers_a_held_press_once() -> None:
    with StopButton():
        check_stop()  # nothing pressed
        press()
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            check_stop()
        check_stop()  # delivered already


def test_no_press_no_interrupt() -> None:
    with StopButton():
        pass
    check_stop()  # no active button: nothing happens


def test_the_pump_is_interrupted_at_once() -> None:
    fds = [os.pipe() for _ in range(3)]
    timer = threading.Timer(0.2, press)
    try:
        with StopButton():
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                CellEvents(fds[0][0], fds[1][0], fds[2][0]).pump(print, print, lambda *a: None, tick=5.0)
            assert time.monotonic() - t0 < 2.0, "raised while waiting, not at the next tick"
    finally:
        timer.cancel()
        for r, w in fds:
            os.close(r)
            os.close(w)


def test_a_press_held_before_the_pump_raises_when_it_starts() -> None:
    fds = [os.pipe() for _ in range(3)]
    try:
        with StopButton():
            press()
            time.sleep(0.01)
            with pytest.raises(KeyboardInterrupt):
                CellEvents(fds[0][0], fds[1][0], fds[2][0]).pump(print, print, lambda *a: None, tick=5.0)
    finally:
        for r, w in fds:
            os.close(r)
            os.close(w)


def test_cell_server_raises_once_per_press_and_only_in_the_cell() -> None:
    stop = _StopButton()
    stop.handler(signal.SIGINT, None)  # between cells: dropped
    with stop.armed():
        with pytest.raises(KeyboardInterrupt):
            stop.handler(signal.SIGINT, None)
        stop.handler(signal.SIGINT, None)  # a copy of the same press
        stop._last -= stop.SAME_PRESS_S  # a later press interrupts again
        with pytest.raises(KeyboardInterrupt):
            stop.handler(signal.SIGINT, None)
    stop._last = float("-inf")
    stop.handler(signal.SIGINT, None)  # the cell is over: dropped
