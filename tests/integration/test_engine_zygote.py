"""The engine tests again, with children forked by a zygote instead of the caller."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterator

import pytest

from pycontain.engine import ChildSpec, Zygote
from pycontain.engine import start as real_start
from pycontain.engine.zygote import SPARE_NAME
from pycontain.errors import KernelError
from tests.integration import test_engine as engine_tests
from tests.integration.test_engine import *  # noqa: F403 - the same tests, collected here again
from tests.leaks import processes

# Not about the fork source: it starts its own intermediate process.
del test_pdeathsig_child_dies_with_creator  # noqa: F821
# 200 starts against 4 spinning threads cost ~40 s here (every blocking call
# waits for the GIL); the short version below covers the zygote path.
del test_many_starts_with_busy_threads  # noqa: F821


@pytest.fixture(scope="module", autouse=True)
def zygote() -> Iterator[Zygote]:
    # Module scope: made before each test's leak snapshot, so it is not a leak.
    with Zygote() as z:
        yield z


@pytest.fixture(autouse=True)
def _through_zygote(zygote: Zygote, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_tests, "start", functools.partial(real_start, zygote=zygote))


def test_children_are_the_zygotes(zygote: Zygote) -> None:
    child = real_start(ChildSpec(argv=["sleep", "10"]), zygote=zygote)
    try:
        with open(f"/proc/{child.pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        assert ppid == zygote.pid
    finally:
        child.kill()
        assert child.wait() == -signal.SIGKILL


def test_pass_fds_keep_their_numbers(zygote: Zygote) -> None:
    r, w = os.pipe()
    high = os.dup2(w, 57)
    os.close(w)
    try:
        child = real_start(ChildSpec(argv=["sh", "-c", "echo via-57 >/proc/self/fd/57"], pass_fds=[high]),
                           zygote=zygote)
    finally:
        os.close(high)
    with os.fdopen(r) as f:
        assert f.read() == "via-57\n"
    assert child.wait() == 0


def test_big_arguments_cross(zygote: Zygote) -> None:
    blob = os.urandom(8 << 20)
    assert real_start(ChildSpec(target=len, args=(blob,)), zygote=zygote).result() == len(blob)


def test_dead_zygote_is_reported() -> None:
    z = Zygote()
    try:
        child = real_start(ChildSpec(argv=["sleep", "30"]), zygote=z)
        os.kill(z.pid, signal.SIGKILL)
        with pytest.raises(KernelError):
            child.wait(timeout=10)
        with pytest.raises(KernelError):
            real_start(ChildSpec(argv=["true"]), zygote=z)
        assert engine_tests.wait_gone(child.pid)  # killed with the zygote (pdeathsig)
    finally:
        z.close()
    z.close()  # idempotent


def test_preload() -> None:
    import sys

    with Zygote(preload=["json", "no_such_module_xyz"]) as z:
        assert real_start(ChildSpec(target=lambda: "json" in sys.modules), zygote=z).result()


def test_starts_with_busy_threads(zygote: Zygote) -> None:
    import threading

    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(40):
            assert real_start(ChildSpec(argv=["true"], new={"uts"} if i % 2 else set()), zygote=zygote).wait() == 0
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_cwd_follows_the_caller(zygote: Zygote, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert real_start(ChildSpec(target=os.getcwd), zygote=zygote).result() == str(tmp_path)


def test_unpicklable_target_is_invalid(zygote: Zygote) -> None:
    import threading

    from pycontain.errors import InvalidArgument

    lock = threading.Lock()
    with pytest.raises(InvalidArgument) as info:
        real_start(ChildSpec(target=lambda: lock), zygote=zygote)
    assert info.value.field == "target"


@pytest.fixture
def own_shared_zygote(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These tests close the process-wide zygote: give them their own, and
    put back the one the session's containers use."""
    from pycontain.engine import zygote as zygote_module

    monkeypatch.setattr(zygote_module, "_shared", None)
    yield


def test_shared_zygote_restarts_after_death(own_shared_zygote: None) -> None:
    from pycontain.engine import shared_zygote

    first = shared_zygote()
    try:
        assert shared_zygote() is first
        assert real_start(ChildSpec(argv=["true"]), zygote=first).wait() == 0
        first.close()
        second = shared_zygote()
        assert second is not first
        assert real_start(ChildSpec(argv=["true"]), zygote=second).wait() == 0
    finally:
        shared_zygote().close()


def test_a_forked_copy_gets_its_own_shared_zygote(own_shared_zygote: None) -> None:
    from pycontain.engine import shared_zygote

    mine = shared_zygote()
    try:
        pid = os.fork()
        if pid == 0:  # a copy of the caller, as multiprocessing's fork makes
            code = 1
            try:
                try:
                    real_start(ChildSpec(argv=["true"]), zygote=mine)
                except KernelError:
                    theirs = shared_zygote()
                    if theirs is not mine and real_start(ChildSpec(argv=["true"]), zygote=theirs).wait() == 0:
                        theirs.close()
                        code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        assert real_start(ChildSpec(argv=["true"]), zygote=mine).wait() == 0
    finally:
        mine.close()


def _is_loaded(name: str) -> bool:
    import sys

    return name in sys.modules


def test_preload_keeps_modules_loaded_for_later_children(zygote: Zygote) -> None:
    module = "xml.dom.minidom"
    assert real_start(ChildSpec(target=_is_loaded, args=(module,)), zygote=zygote).result(10) is False
    failed = zygote.preload([module, "no_such_module_pycontain_test"])
    assert [name for name, _ in failed] == ["no_such_module_pycontain_test"]
    assert "ModuleNotFoundError" in failed[0][1]
    assert real_start(ChildSpec(target=_is_loaded, args=(module,)), zygote=zygote).result(10) is True


def test_zygote_has_its_own_process_group_children_join_ours(zygote: Zygote) -> None:
    # Signals to our group (ipykernel's shutdown SIGTERMs it) must not kill
    # the zygote; its children are ours to signal, as direct children would be.
    assert os.getpgid(zygote.pid) == zygote.pid != os.getpgrp()
    child = real_start(ChildSpec(argv=["sleep", "10"]), zygote=zygote)
    try:
        assert os.getpgid(child.pid) == os.getpgrp()
    finally:
        child.kill()
        child.wait()


# -- the spare child (a child in a new pid namespace, forked ahead of its request) --------------


def _spares(zygote: Zygote) -> list[int]:
    return [pid for pid, ppid, comm in processes() if comm == SPARE_NAME and ppid == zygote.pid]


def _wait_for_spare(zygote: Zygote, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [p for p in _spares(zygote) if p != not_pid]
        if found:
            assert len(found) == 1
            return found[0]
        time.sleep(0.01)
    raise AssertionError("no spare child")


def test_a_new_pid_namespace_child_is_the_spare_and_another_waits(zygote: Zygote) -> None:
    spare = _wait_for_spare(zygote)
    # Forked into its own pid namespace already, and it made net, ipc and uts ones.
    for kind in ("pid", "net", "ipc", "uts"):
        assert _ns(spare, kind) != _ns(os.getpid(), kind), kind
    assert _ns(spare, "mnt") == _ns(zygote.pid, "mnt")  # (a mount namespace would miss later host mounts)
    made = {kind: _ns(spare, kind) for kind in ("net", "ipc", "uts")}
    child = real_start(ChildSpec(argv=["sleep", "10"], new={"pid", "net", "ipc", "uts"}), zygote=zygote)
    try:
        assert child.pid == spare
        with open(f"/proc/{child.pid}/comm") as f:
            assert f.read().strip() == "sleep"
        assert {kind: _ns(child.pid, kind) for kind in made} == made  # used, not made again
        next_spare = _wait_for_spare(zygote, not_pid=spare)
        assert next_spare != child.pid
    finally:
        child.kill()
        assert child.wait() == -signal.SIGKILL
    # Children that want the host's net namespace (or no new pid namespace)
    # are forked as before; the spare stays.
    for new in ({"pid", "uts", "ipc"}, {"uts"}):
        child = real_start(ChildSpec(argv=["sleep", "10"], new=new), zygote=zygote)
        try:
            assert child.pid != next_spare
            assert _ns(child.pid, "net") == _ns(os.getpid(), "net")
        finally:
            child.kill()
            child.wait()
    assert _spares(zygote) == [next_spare]


def test_a_spares_loopback_is_up_and_its_namespaces_are_fresh(zygote: Zygote) -> None:
    out_r, out_w = os.pipe()
    child = real_start(ChildSpec(argv=["sh", "-c", "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags; "
                                       "ls /sys/class/net | wc -l; hostname"],
                                 new={"pid", "net", "ipc", "uts", "mnt"}, hostname="spare-test", stdout=out_w),
                       zygote=zygote)
    os.close(out_w)
    with os.fdopen(out_r) as f:
        lines = f.read().split()
    assert child.wait() == 0
    assert int(lines[1], 16) & 1  # IFF_UP (operstate says "unknown" for lo)
    assert lines[3] == "spare-test"


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_preload_replaces_the_spare(zygote: Zygote) -> None:
    # A spare forked before a preload lacks the module: it makes way for one that has it.
    module = "xml.sax.saxutils"
    spec = ChildSpec(target=_is_loaded, args=(module,), new={"pid", "net", "ipc", "uts"})
    assert real_start(spec, zygote=zygote).result(10) is False
    zygote.preload([module])
    assert real_start(spec, zygote=zygote).result(10) is True


def test_a_dead_spare_is_replaced(zygote: Zygote) -> None:
    spare = _wait_for_spare(zygote)
    os.kill(spare, signal.SIGKILL)
    # (A spare killed while its request is on the way dies as a child killed
    # during its setup would: start() returns, wait() says SIGKILL.)
    _wait_until_dead(spare)
    child = real_start(ChildSpec(argv=["true"], new={"pid", "net", "ipc", "uts"}), zygote=zygote)
    assert child.pid != spare
    assert child.wait() == 0
    _wait_for_spare(zygote, not_pid=spare)


def _wait_until_dead(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive")


def test_the_spare_ends_with_its_zygote() -> None:
    with Zygote() as z:
        spare = _wait_for_spare(z)
    _wait_until_dead(spare)


def test_the_spare_ends_when_its_zygote_is_killed() -> None:
    z = Zygote()
    try:
        spare = _wait_for_spare(z)
        os.kill(z.pid, signal.SIGKILL)
        _wait_until_dead(spare)
    finally:
        z.close()


def test_a_local_spare_serves_one_start_then_the_caller_forks() -> None:
    from pycontain.engine.zygote import local_spare, make_local_spare

    shape = ChildSpec(argv=["true"], new={"pid", "net", "ipc", "uts"})
    spare = make_local_spare()
    try:
        assert local_spare() is spare
        made = spare._spares.pid
        assert made is not None and spare.fits(shape)
        assert not spare.fits(ChildSpec(argv=["true"], new={"uts"}))  # no new pid namespace: not for it
        child = real_start(shape, zygote=spare)
        assert child.pid == made and child.wait() == 0
        assert not spare.fits(shape)  # one use
        child = real_start(shape, zygote=spare)  # forked from the caller, as without a spare
        assert child.pid != made and child.wait() == 0
    finally:
        spare.close()


def test_an_unused_local_spare_goes_with_close() -> None:
    from pycontain.engine.zygote import make_local_spare

    spare = make_local_spare()
    made = spare._spares.pid
    assert made is not None
    spare.close()
    assert not os.path.exists(f"/proc/{made}")  # exited and reaped
