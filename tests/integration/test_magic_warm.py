"""Cells in fresh containers from the cell zygote, the next one started while
the user reads (pycontain.notebook.warm), through a real kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.test_magic_interrupt import Kernel, open_kernel, results, stdout


@pytest.fixture
def kernel(_private_state: str) -> Iterator[Kernel]:
    with open_kernel() as k:
        yield k


def _containers() -> list[dict]:
    import pycontain

    return list(pycontain.containers().to_dict("records"))


def _settled(expected: int, timeout: float = 15) -> list[dict]:
    """The containers once the background work after a cell is done: the
    finished cell's container removed, ``expected`` of them running."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        rows = _containers()
        if len(rows) == expected and all(r["status"] == "running" for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected} running containers, got {rows}")
        time.sleep(0.05)


def _cell(kernel: Kernel, body: str, options: str = "--quiet --no-monitor") -> str:
    reply, msgs = kernel.run(f"%%container {options}\n{body}")
    assert reply["status"] == "ok", (reply, msgs)
    return stdout(msgs)


def test_each_cell_gets_a_fresh_container_and_one_waits(kernel: Kernel, _private_state: str) -> None:
    first = _cell(kernel, "import os, socket\nopen('/tmp/left-by-cell-1', 'w').write('x')\n"
                          "print(socket.gethostname(), os.getpid())")
    second = _cell(kernel, "import os, socket\nprint(socket.gethostname(), os.getpid(), "
                           "os.path.exists('/tmp/left-by-cell-1'))")
    host1, pid1 = first.split()
    host2, pid2, seen = second.split()
    # Two containers (hostnames are their names), each PID 2 under its own
    # init, and the second does not see the first one's writable layer.
    assert host1 != host2 and pid1 == pid2 == "2" and seen == "False"
    assert not os.path.exists("/tmp/left-by-cell-1")
    # Between cells: WarmPool.depth containers wait, started with the last options.
    waiting = _settled(2)
    assert not {w["name"] for w in waiting} & {host1, host2}
    # Changed options: the waiting container does not fit; one with the new limit runs the cell.
    out = _cell(kernel, "import os\nprint(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip()"
                        " if os.path.exists('/sys/fs/cgroup/memory/memory.limit_in_bytes')"
                        " else open('/sys/fs/cgroup/memory.max').read().strip())",
                "--quiet --no-monitor --memory 96M")
    assert out.strip() == str(96 << 20)


def test_cells_follow_the_kernels_imports_and_path(kernel: Kernel, tmp_path) -> None:
    pkg = tmp_path / "mylib_for_cells"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 42\n")
    os.chmod(tmp_path, 0o755)
    reply, _ = kernel.run(f"import sys, pandas\nsys.path.append({str(tmp_path)!r})")
    assert reply["status"] == "ok", reply
    # pandas: imported in the kernel, so preloaded in the cell zygote for the
    # containers forked from now on (the one already waiting came before);
    # the notebook's sys.path change reaches the cell at once.
    _cell(kernel, "pass")
    out = _cell(kernel, "import sys\nprint('pandas' in sys.modules)\nimport mylib_for_cells\n"
                        "print(mylib_for_cells.VALUE)")
    assert out.split() == ["True", "42"]


def test_warm_off_and_kernel_exit_leave_nothing(kernel: Kernel, _private_state: str) -> None:
    assert _cell(kernel, "print('hi')") == "hi\n"
    reply, msgs = kernel.run("%container warm off")
    assert reply["status"] == "ok" and "warm cell containers: off" in stdout(msgs)
    assert [c for c in _containers() if c["status"] == "running"] == []
    assert _cell(kernel, "print('still works')") == "still works\n"
    assert [c for c in _containers() if c["status"] == "running"] == []
    reply, msgs = kernel.run("%container warm on")
    assert reply["status"] == "ok"
    assert _cell(kernel, "x = 1") == ""
    reply, msgs = kernel.run("1 + 1")
    assert results(msgs) == ["2"]


def test_kernel_shutdown_removes_the_waiting_container(_private_state: str) -> None:
    from pycontain.statedir import state_dir

    with open_kernel() as k:
        assert _cell(k, "print(1)") == "1\n"
        _settled(2)
    # ipykernel's shutdown SIGTERMs its process group and waits for it to be
    # empty; our atexit then removes the waiting containers.
    assert _containers() == []
    assert not os.listdir(state_dir() / "containers") if (state_dir() / "containers").exists() else True


def test_big_inputs_go_by_a_fork_of_the_kernel(kernel: Kernel) -> None:
    # Above _FRESH_MAX_INPUT_BYTES the pickled --in variables are handed to a
    # fork of the kernel instead of being copied through the waiting container's pipe.
    reply, _ = kernel.run("big = bytes(range(256)) * (10 << 12)  # 10 MiB")
    assert reply["status"] == "ok", reply
    out = _cell(kernel, "import os\nprint(len(big), big[:3] == bytes([0, 1, 2]), os.getppid() == 1)",
                options="--quiet --no-monitor --in big")
    assert out.split() == [str(10 << 20), "True", "True"]
