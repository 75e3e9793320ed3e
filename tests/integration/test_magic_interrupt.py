"""The notebook's stop button during a ``%%container`` cell (issue #7).

Jupyter's stop button is ``KernelManager.interrupt_kernel()``: SIGINT to the
kernel's process group. Through a real kernel (jupyter_client) we interrupt
a cell while it sleeps in a C call and while it spins in a Python loop, and
check what DESIGN.md §6 promises: the cell ends at once with
KeyboardInterrupt, the container's processes, cgroups and state are gone
(a ``--name`` container instead keeps running with its state, and
``%container stop`` removes it), and the kernel lives on: a plain cell and
a new ``%%container`` cell both work afterwards.

Each process of the cell renames itself (``prctl(PR_SET_NAME)``) to a
marker, so the test finds it from outside the container's pid namespace.

A press can also come while the magic starts or removes the container; the
last tests slow those steps down (from inside the kernel) and press then:
the cell still ends with KeyboardInterrupt and nothing is left behind.

The interrupted cells go with ``stop_on_error=False``: with True, ipykernel
aborts requests that reach it shortly after an error, a race of its own
(plain cells show it too) that would make the "kernel alive" check flaky.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import queue
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

#: How long the execute_reply may take after the stop button.
REPLY_WITHIN_S = 5.0

# The cell's body: mark the process, say it is ready, then block.
_MARK = (
    "import ctypes, time\n"
    "ctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)  # PR_SET_NAME\n"
    "print('ready', flush=True)\n"
)
_BLOCK = {
    # a blocking C call: the signal interrupts the syscall
    "sleep": "time.sleep(60)\n",
    # pure Python: the signal is seen between bytecodes
    "loop": "t_end = time.monotonic() + 60\nn = 0\nwhile time.monotonic() < t_end:\n    n += 1\n",
}


@dataclass
class Kernel:
    km: KernelManager
    kc: BlockingKernelClient

    def execute(self, code: str) -> str:
        return str(self.kc.execute(code, store_history=False, stop_on_error=False))

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)  # type: ignore[union-attr]

    def outputs_until(self, msg_id: str, until: Any = None, timeout: float = 60) -> list[dict[str, Any]]:
        """IOPub messages of ``msg_id`` until ``until(msg)`` (or until idle)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no end of cell output within {timeout} s: {got}")
            try:
                msg = self.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            got.append(msg)
            if until is not None and until(msg):
                return got
            if until is None and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return got

    def reply(self, msg_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no execute_reply within {timeout} s")
            try:
                msg = self.kc.get_shell_msg(timeout=left)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return dict(msg["content"])

    def run(self, code: str, timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run a cell to its end: (execute_reply content, iopub messages)."""
        msg_id = self.execute(code)
        reply = self.reply(msg_id, timeout)
        return reply, self.outputs_until(msg_id, timeout=timeout)


def stdout(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in msgs
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")


def stderr(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in msgs
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")


def results(msgs: list[dict[str, Any]]) -> list[str]:
    return [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"]


@contextlib.contextmanager
def open_kernel() -> Iterator[Kernel]:
    """A real ipykernel with pycontain loaded, shut down (not killed) at the end.

    It inherits the environment, so a test's private state dir too.
    """
    # Its own ZMQ context, terminated at the end: the global one would keep
    # an epoll fd and a socket pair open in this process (the leak check).
    context = zmq.Context()
    km = KernelManager(kernel_name="python3", context=context)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        k = Kernel(km, kc)
        reply, _ = k.run("%load_ext pycontain")
        assert reply["status"] == "ok", reply
        yield k
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        context.term()
        _close_event_loop()


@pytest.fixture
def kernel(_private_state: str) -> Iterator[Kernel]:
    """A kernel with no container waiting for the next cell (pycontain.notebook.warm):
    after a stop, nothing at all may be left (test_magic_warm.py covers the pool)."""
    with open_kernel() as k:
        reply, _ = k.run("%container warm off")
        assert reply["status"] == "ok", reply
        yield k


def _close_event_loop() -> None:
    # jupyter_client's blocking calls run on an asyncio loop it makes and
    # keeps for the thread (an epoll fd and a socket pair); a later call
    # makes a new one when this one is closed.
    policy = asyncio.get_event_loop_policy()
    loop = policy.get_event_loop()
    if not loop.is_running():
        loop.close()
        policy.set_event_loop(None)


def marked(marker: str) -> list[int]:
    """Host pids whose name is ``marker`` (zombies count: not yet gone)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                if f.read().strip() == marker:
                    out.append(int(name))
        except OSError:
            continue
    return out


def cgroup_dirs(pid: int) -> list[Path]:
    """The pycontain cgroup directories ``pid`` is in, on every mounted hierarchy."""
    dirs = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "/pycontain/" not in path + "/":
                continue
            mount = {"": "unified"}.get(controllers, controllers.replace("name=", ""))
            d = Path("/sys/fs/cgroup") / mount / path.lstrip("/")
            if d.is_dir():
                dirs.append(d)
    return dirs


def running_containers() -> list[dict[str, Any]]:
    import pycontain

    df = pycontain.containers()
    return list(df.to_dict("records"))


def state_entries() -> list[str]:
    """What the state dir and the store hold for containers (records, writable layers).
    A spare state directory a live kernel keeps for its next container
    (pycontain.container._StateSpares) is none."""
    from pycontain.statedir import state_dir, store_dir

    out = []
    for d in (state_dir() / "containers", store_dir() / "rootfs", store_dir() / "containers"):
        if d.is_dir():
            out += [f"{d}/{n}" for n in os.listdir(d) if not n.startswith(".spare-")]
    return sorted(out)


def kernel_cgroups(k: Kernel) -> list[str]:
    """Container cgroups the kernel made (their names end in .<creator pid>)."""
    return sorted(glob.glob(f"/sys/fs/cgroup/*/pycontain/**/*.{k.pid}", recursive=True))


@dataclass
class Running:
    msg_id: str
    marker: str
    pids: list[int]
    container: dict[str, Any]
    cgroups: list[Path]


def start_blocking_cell(k: Kernel, options: str, block: str, prefix: str = "") -> Running:
    marker = "pcint-" + uuid.uuid4().hex[:8]
    code = f"%%container --quiet --no-monitor {options}\n{prefix}{_MARK.format(marker=marker)}{_BLOCK[block]}"
    msg_id = k.execute(code)
    msgs = k.outputs_until(msg_id, until=lambda m: "ready" in stdout([m]))
    assert stdout(msgs) == "ready\n", msgs
    pids = marked(marker)
    assert len(pids) == 1, f"one process of the cell named {marker}: {pids}"
    rows = [r for r in running_containers() if r["status"] == "running"]
    assert len(rows) == 1, rows
    cgroups = cgroup_dirs(pids[0])
    assert cgroups, "the cell runs in pycontain cgroups"
    assert all(str(pids[0]) in (d / "cgroup.procs").read_text().split() for d in cgroups)
    return Running(msg_id, marker, pids, rows[0], cgroups)


def press_stop(k: Kernel, run: Running, burst: float = 0) -> tuple[dict[str, Any], float]:
    """The stop button, once the cell has been running for a second; then,
    for ``burst`` seconds, SIGINTs straight at the cell's process, nonstop."""
    time.sleep(1.0)
    t0 = time.monotonic()
    k.km.interrupt_kernel()
    while time.monotonic() - t0 < burst:
        try:
            os.kill(run.pids[0], signal.SIGINT)
        except ProcessLookupError:  # it died of them: the test fails below
            break
    reply = k.reply(run.msg_id, timeout=30)
    elapsed = time.monotonic() - t0
    k.outputs_until(run.msg_id, timeout=30)  # the rest of the cell's output, up to idle
    return reply, elapsed


def assert_interrupted(reply: dict[str, Any], elapsed: float) -> None:
    print(f"the cell stopped {elapsed:.2f} s after the press")
    assert reply["status"] == "error", reply
    assert reply["ename"] == "KeyboardInterrupt", reply
    assert elapsed < REPLY_WITHIN_S, f"the cell took {elapsed:.1f} s to stop"


def assert_nothing_left(k: Kernel) -> None:
    assert running_containers() == []
    assert state_entries() == []
    assert kernel_cgroups(k) == []


def assert_all_gone(k: Kernel, run: Running) -> None:
    alive = [p for p in run.pids if os.path.exists(f"/proc/{p}")]
    assert not alive, f"processes of the cell left: {alive}"
    assert not os.path.exists(f"/proc/{run.container['pid']}"), "the container's PID 1 is left"
    assert not marked(run.marker)
    left = [d for d in run.cgroups if d.exists()]
    assert not left, f"cgroups left: {left}"
    assert_nothing_left(k)


def assert_kernel_alive(k: Kernel) -> None:
    reply, msgs = k.run("1+1")
    assert reply["status"] == "ok", reply
    assert results(msgs) == ["2"]
    reply, msgs = k.run("%%container --quiet --no-monitor\nprint('again', 6 * 7)")
    assert reply["status"] == "ok", (reply, msgs)
    assert stdout(msgs) == "again 42\n"


@pytest.mark.parametrize("block", sorted(_BLOCK))
@pytest.mark.parametrize("mode", ["default", "snapshot"])
def test_stop_button_stops_the_container(kernel: Kernel, mode: str, block: str) -> None:
    options = "--snapshot" if mode == "snapshot" else ""
    run = start_blocking_cell(kernel, options, block)
    reply, elapsed = press_stop(kernel, run)
    assert_interrupted(reply, elapsed)
    assert_all_gone(kernel, run)
    assert_kernel_alive(kernel)
    assert_nothing_left(kernel)


@pytest.mark.parametrize(("block", "burst"), [("sleep", 0), ("loop", 0), ("sleep", 0.05)])
def test_stop_button_keeps_a_named_container(kernel: Kernel, block: str, burst: float) -> None:
    """A ``--name`` container outlives the interrupted cell (only the cell stops),
    with its variables, press after press; ``%container stop`` then removes everything.

    One press reaches the cell server as two or three SIGINTs (the kernel's
    process group, the container's PID 1 passing it on, the magic), a few
    ms apart; the ``burst`` case adds a stream of them for 50 ms, so a
    server that takes each for a new KeyboardInterrupt dies every time, not
    only now and then."""
    reply, _ = kernel.run("%%container --name lab --quiet --no-monitor\nkept = 0")
    assert reply["status"] == "ok", reply
    pid1 = None
    for presses in range(1, 4):
        run = start_blocking_cell(kernel, "--name lab", block, prefix="kept += 1\n")
        pid1 = pid1 or run.container["pid"]
        reply, elapsed = press_stop(kernel, run, burst)
        assert_interrupted(reply, elapsed)
        # The container and its cell server (the marked process) live on.
        assert marked(run.marker) == run.pids, f"the cell server died at press {presses}"
        rows = running_containers()
        assert [(r["name"], r["status"], r["pid"]) for r in rows] == [("lab", "running", pid1)]
        assert all(d.exists() for d in run.cgroups)
        reply, msgs = kernel.run("%%container --name lab --quiet --no-monitor\nprint('kept', kept)")
        assert reply["status"] == "ok", (reply, msgs)
        assert stdout(msgs) == f"kept {presses}\n", msgs
    assert_kernel_alive(kernel)
    reply, msgs = kernel.run("%container stop lab")
    assert reply["status"] == "ok", reply
    assert "stopped lab" in stdout(msgs)
    assert_all_gone(kernel, run)


# Slow steps of the magic, patched in from a kernel cell: each prints when it
# is reached, then sleeps, so the test can press the stop button right there.
_SLOW = {
    # the container's PID 1 runs, its state is not yet "running"
    "start": (
        "import time, pycontain.container as _pc\n"
        "assert callable(_pc._fault)\n"
        "_fault = _pc._fault\n"
        "def _slow(point):\n"
        "    if point == 'after_engine_start':\n"
        "        print('slow step', flush=True)\n"
        "        time.sleep(2)\n"
        "    _fault(point)\n"
        "_pc._fault = _slow\n"
    ),
    # the cell is over; its container is being removed
    "remove": (
        "import time, pycontain.container as _pc\n"
        "_remove = _pc.Container.remove\n"
        "def _slow(self, force=False):\n"
        "    print('slow step', flush=True)\n"
        "    time.sleep(2)\n"
        "    _remove(self, force)\n"
        "_pc.Container.remove = _slow\n"
    ),
}
_RESTORE = {"start": "_pc._fault = _fault", "remove": "_pc.Container.remove = _remove"}


@pytest.mark.parametrize(("step", "options"), [("start", ""), ("start", "--snapshot"), ("start", "--name lab"),
                                               ("remove", "")])
def test_stop_button_during_start_or_removal(kernel: Kernel, step: str, options: str) -> None:
    """A press while the magic starts or removes the container is held until
    that step is done, then ends the cell: no container is left half made."""
    reply, _ = kernel.run(_SLOW[step])
    assert reply["status"] == "ok", reply
    body = "time.sleep(60)" if step == "start" else "print('ran')"
    msg_id = kernel.execute(f"%%container --quiet --no-monitor {options}\nimport time\n{body}")
    kernel.outputs_until(msg_id, until=lambda m: "slow step" in stdout([m]))
    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = kernel.reply(msg_id, timeout=30)
    elapsed = time.monotonic() - t0
    kernel.outputs_until(msg_id, timeout=30)
    # 2 s of the slow step, then the stop takes effect
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    assert elapsed < 2 + REPLY_WITHIN_S, f"the cell took {elapsed:.1f} s to stop"
    reply, _ = kernel.run(_RESTORE[step])
    assert reply["status"] == "ok", reply
    if options == "--name lab":
        # The press came before the cell started: the named container runs, idle.
        assert [(r["name"], r["status"]) for r in running_containers()] == [("lab", "running")]
        reply, msgs = kernel.run("%%container --name lab --quiet --no-monitor\nprint('lab ok')")
        assert reply["status"] == "ok" and stdout(msgs) == "lab ok\n", msgs
        reply, _ = kernel.run("%container stop lab")
        assert reply["status"] == "ok", reply
    assert_nothing_left(kernel)
    assert_kernel_alive(kernel)
    assert_nothing_left(kernel)
