"""The public Namespace API on the real kernel (root)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

import pycontain
from pycontain import Namespace
from pycontain.engine import ChildSpec, start
from pycontain.errors import AlreadyExists, InvalidArgument, KernelError, Unsupported
from pycontain.kernel import constants as C
from pycontain.kernel import nsfs, syscalls

KINDS = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time")
PERSISTABLE = ("net", "uts", "ipc", "mnt", "user", "cgroup", "time")


def _sleeper(**kw: object) -> pycontain.engine.Child:
    return pycontain.spawn(["sleep", "30"], **kw)  # type: ignore[arg-type]


def _stop(*children: pycontain.engine.Child) -> None:
    for c in children:
        c.kill()
        c.wait()


def _capture(argv: list[str], **kw: object) -> str:
    r, w = os.pipe()
    try:
        child = pycontain.spawn(argv, stdout=w, **kw)  # type: ignore[arg-type]
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    assert child.wait() == 0
    return out


# -- lsns ---------------------------------------------------------------------------


def _lsns() -> dict[tuple[int, str], dict[str, object]]:
    out = subprocess.run(["lsns", "-J"], check=True, capture_output=True, text=True).stdout
    rows: dict[tuple[int, str], dict[str, object]] = {}

    def walk(items: list[dict[str, object]]) -> None:
        # lsns nests a namespace under the one its process's parent is in ("children").
        for row in items:
            rows[(int(row["ns"]), str(row["type"]))] = row  # type: ignore[call-overload]
            walk(row.get("children", []))  # type: ignore[arg-type]

    walk(json.loads(out)["namespaces"])
    return rows


def _ours() -> dict[tuple[int, str], dict[str, object]]:
    df = pycontain.namespaces()
    return {(int(r["ns"]), str(r["type"])): r for r in df.to_dict("records")}


def _still_there(ns: int, kind: str, pid: object) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == ns
    except OSError:
        return False


def _compare_with_lsns() -> list[str]:
    before = _ours()
    theirs = _lsns()
    after = _ours()
    problems = []
    stable = before.keys() & after.keys()
    # A namespace kept by a bind mount may have had no process at the instant
    # lsns looked (others' tests enter and leave such netns all the time).
    persisted = {(ino, kind) for _, kind, ino in nsfs.nsfs_mounts()}
    for key in stable:
        if key not in theirs and key not in persisted:
            problems.append(f"lsns lacks {key}")
    for key, row in theirs.items():
        if key not in before and key not in after and _still_there(key[0], key[1], row["pid"]):
            problems.append(f"we lack {key} ({row['command']})")
    for key in stable:
        b, a = before[key], after[key]
        if key not in theirs or (b["nprocs"], b["pid"]) != (a["nprocs"], a["pid"]):
            continue  # processes came or went meanwhile (other tests, lsns itself)
        t = theirs[key]
        if t["pid"] != b["pid"]:
            problems.append(f"{key}: pid {b['pid']} != lsns {t['pid']}")
        # lsns counts itself in the namespaces it runs in.
        if t["nprocs"] not in (b["nprocs"], b["nprocs"] + 1):
            problems.append(f"{key}: nprocs {b['nprocs']} != lsns {t['nprocs']}")
        if (t["user"], t["command"]) != (b["user"], b["command"]):
            problems.append(f"{key}: user/command {b['user']!r} {b['command']!r} != lsns {t['user']!r} {t['command']!r}")
    return problems


def test_namespaces_match_lsns() -> None:
    children = [_sleeper(new=["net", "uts"]), _sleeper(new=["ipc", "pid", "mnt"])]
    try:
        problems: list[str] = []
        for _ in range(3):  # other processes on the host come and go; retry a race
            problems = _compare_with_lsns()
            if not problems:
                break
        assert not problems, problems
        df = pycontain.namespaces()
        assert list(df.columns) == ["ns", "type", "nprocs", "pid", "user", "command"]
        assert list(df["ns"]) == sorted(df["ns"])
        for child, kinds in zip(children, (("net", "uts"), ("ipc", "pid", "mnt"))):
            for kind in kinds:
                row = df[(df["ns"] == Namespace.of(child.pid, kind).inode) & (df["type"] == kind)]
                assert list(row["nprocs"]) == [1] and list(row["pid"]) == [child.pid]
                assert list(row["command"]) == ["sleep 30"]
    finally:
        _stop(*children)


def test_namespaces_filter_and_persisted() -> None:
    with Namespace.create("net") as ns:
        df = pycontain.namespaces("net")
        assert set(df["type"]) == {"net"}
        assert ns.inode not in set(df["ns"])  # no process in it: lsns does not list it either
        df = pycontain.namespaces("net", persisted=True)
        row = df[df["ns"] == ns.inode]
        assert list(row["nprocs"]) == [0] and list(row["nsfs"]) == [ns.persisted_path]
    with pytest.raises(InvalidArgument):
        pycontain.namespaces("network")


# -- of / current / open ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_of_and_current_agree(kind: str) -> None:
    mine = Namespace.current(kind)
    assert mine == Namespace.of(os.getpid(), kind)
    assert hash(mine) == hash(Namespace.of(os.getpid(), kind))
    assert mine.inode == os.stat(f"/proc/self/ns/{kind}").st_ino
    assert mine == Namespace.open(f"/proc/{os.getpid()}/ns/{kind}")
    assert Namespace.open(mine.path).kind == kind
    child = _sleeper(new=[kind])
    try:
        theirs = Namespace.of(child.pid, kind)
        assert theirs != mine
        assert theirs.kind == kind and theirs.pid == child.pid
        assert len({mine, theirs, Namespace.current(kind)}) == 2
    finally:
        _stop(child)


def test_open_checks_kind() -> None:
    with pytest.raises(InvalidArgument):
        Namespace.open("/proc/self/ns/net", kind="uts")
    with pytest.raises(KernelError):
        Namespace.open("/etc/hostname")
    with pytest.raises(KernelError):
        Namespace.open("/nonexistent")


def test_of_gone_process() -> None:
    child = _sleeper()
    pid = child.pid
    _stop(child)
    with pytest.raises(pycontain.NotFound):
        Namespace.of(pid, "net")


def test_processes() -> None:
    a = _sleeper(new=["uts"])
    try:
        ns = Namespace.of(a.pid, "uts")
        assert ns.processes() == [a.pid]
        b = _sleeper(join=[ns])
        try:
            assert ns.processes() == sorted([a.pid, b.pid])
            assert Namespace.of(b.pid, "uts") == ns
        finally:
            _stop(b)
        assert ns.processes() == [a.pid]
        assert os.getpid() in Namespace.current("uts").processes()
    finally:
        _stop(a)


# -- create / persist / join / release --------------------------------------------------


@pytest.mark.parametrize("kind", PERSISTABLE)
def test_create_join_release(kind: str, _private_state: str) -> None:
    ns = Namespace.create(kind)
    path = ns.persisted_path
    assert path is not None and path.startswith(os.path.join(_private_state, "state", "ns"))
    try:
        assert ns.path == path
        assert ns != Namespace.current(kind)
        assert Namespace.open(path) == ns
        assert any(point == path and k == kind for point, k, _ in nsfs.nsfs_mounts())
        assert ns.processes() == []
        child = _sleeper(join=[ns])
        try:
            assert Namespace.of(child.pid, kind) == ns
        finally:
            _stop(child)
    finally:
        ns.release()
    assert not os.path.exists(path)
    assert not any(point == path for point, _, _ in nsfs.nsfs_mounts())
    ns.release()  # idempotent
    assert ns.persisted_path is None


def test_persisted_uts_keeps_state_between_processes() -> None:
    with Namespace.create("uts") as ns:
        assert pycontain.spawn(["true"], join=[ns], hostname="kept-name").wait() == 0
        assert _capture(["hostname"], join=[ns]) == "kept-name\n"
        assert _capture(["hostname"]) != "kept-name\n"


def test_persisted_net_like_ip_netns() -> None:
    with Namespace.create("net") as ns:
        # a fresh netns has only a down loopback
        out = _capture(["cat", "/proc/net/dev"], join=[ns])
        assert [ln.split(":")[0].strip() for ln in out.splitlines()[2:]] == ["lo"]
        ip = subprocess.run(["ip", "-n", ns.persisted_path or "", "-br", "link"], capture_output=True, text=True)
        if ip.returncode == 0:  # ip accepts a path for -n? (older iproute2 wants a name under /run/netns)
            assert ip.stdout.split()[0] == "lo"


def _mount_in_ns(target: str) -> None:
    # Inside the persisted mount namespace: private first, so nothing
    # propagates back to the host, then a tmpfs that must stay there.
    syscalls.mount(None, "/", None, C.MS_REC | C.MS_PRIVATE)
    syscalls.mount("tmpfs", target, "tmpfs", 0, "size=64k")


def test_persisted_mnt_keeps_mounts(_private_state: str) -> None:
    target = tempfile.mkdtemp(dir=_private_state)
    with Namespace.create("mnt") as ns:
        assert pycontain.spawn(target=_mount_in_ns, args=(target,), join=[ns]).result() is None
        inside = _capture(["cat", "/proc/self/mountinfo"], join=[ns])
        assert f" {target} " in inside
        with open("/proc/self/mountinfo") as f:
            assert f" {target} " not in f.read()


def test_create_user_with_maps() -> None:
    with Namespace.create("user", uid_map="0 200000 1000", gid_map="0 200000 1000") as ns:
        child = _sleeper(join=[ns])
        try:
            with open(f"/proc/{child.pid}/uid_map") as f:
                assert f.read().split() == ["0", "200000", "1000"]
            assert Namespace.of(child.pid, "user") == ns
        finally:
            _stop(child)


def test_create_pid_unsupported() -> None:
    with pytest.raises(Unsupported) as info:
        Namespace.create("pid")
    assert info.value.field == "kind"


def test_create_on_taken_path(_private_state: str) -> None:
    taken = os.path.join(_private_state, "taken")
    with open(taken, "w"):
        pass
    with pytest.raises(AlreadyExists):
        Namespace.create("net", taken)
    assert os.path.isfile(taken) and not any(p == taken for p, _, _ in nsfs.nsfs_mounts())


def _mnt_on_shared_mount(base: str) -> tuple[object, ...]:
    # Runs in a private mount namespace of its own: make a shared tmpfs (as
    # / is under systemd), where a mount namespace file cannot be bound
    # directly (the bind would propagate into the namespace it names).
    syscalls.mount(None, "/", None, C.MS_REC | C.MS_PRIVATE)
    syscalls.mount("tmpfs", base, "tmpfs", 0, "size=64k")
    syscalls.mount(None, base, None, C.MS_SHARED)
    os.mkdir(base + "/ns")
    path = base + "/ns/m"
    direct = None
    try:
        start(ChildSpec(target=lambda: None, new={"mnt"}, persist={"mnt": path})).result()
    except KernelError as e:
        direct = e.errno
    ns = Namespace.create("mnt", path)
    during = (nsfs.is_mount_point(base + "/ns"), nsfs.mount_propagation(path), os.path.exists(path))
    joined = start(ChildSpec(target=os.getpid, join=[("mnt", path)])).result() > 0
    ns.release()
    after = (nsfs.is_mount_point(base + "/ns"), sorted(os.listdir(base + "/ns")))
    return direct, during, joined, after


def test_create_mnt_on_shared_mount_uses_private_bind(_private_state: str) -> None:
    base = tempfile.mkdtemp(dir=_private_state)
    direct, during, joined, after = start(ChildSpec(target=_mnt_on_shared_mount, args=(base,),
                                                     new={"mnt"})).result()
    assert direct == 22  # EINVAL: the kernel refuses the propagating bind
    assert during == (True, "private", True)
    assert joined
    assert after == (False, [])  # the private bind is undone with the last namespace


# -- spawn ----------------------------------------------------------------------------


def test_spawn_new_and_join_by_pairs() -> None:
    assert _capture(["hostname"], new=["uts"], hostname="spawned") == "spawned\n"
    a = _sleeper(new=["net"])
    try:
        b = _sleeper(join=[("net", f"/proc/{a.pid}/ns/net")])
        assert Namespace.of(b.pid, "net") == Namespace.of(a.pid, "net")
        _stop(b)
    finally:
        _stop(a)


def test_spawn_target_and_pid1() -> None:
    assert pycontain.spawn(target=os.getpid, new=["pid"]).result() == 1


def test_spawn_rejects_bad_join() -> None:
    with pytest.raises(InvalidArgument):
        pycontain.spawn(["true"], join=["net"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        pycontain.spawn(["true"], new="net")


def test_spawn_through_a_zygote() -> None:
    with pycontain.engine.Zygote() as z, Namespace.create("uts") as ns:
        child = pycontain.spawn(["sleep", "10"], join=[ns], zygote=z)
        try:
            assert Namespace.of(child.pid, "uts") == ns
        finally:
            _stop(child)


def test_open_a_persisted_file_can_release_it(_private_state: str) -> None:
    path = os.path.join(_private_state, "kept-net")
    made = Namespace.create("net", path)
    again = Namespace.open(path)
    assert again == made and again.persisted_path == path
    assert Namespace.open(f"/proc/{os.getpid()}/ns/net").persisted_path is None
    again.release()  # e.g. from another process, after a restart
    assert not os.path.exists(path)
    made.release()  # nothing left to do: idempotent
