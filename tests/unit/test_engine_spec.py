"""ChildSpec validation: bad input is rejected, naming field and value, before any fork."""

from __future__ import annotations

import signal

import pytest

from pycontain.engine import ChildSpec
from pycontain.errors import InvalidArgument


def _bad(**kw: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        ChildSpec(**kw)  # type: ignore[arg-type]
    return info.value


def test_minimal_specs_are_normalized() -> None:
    spec = ChildSpec(argv=["true"], new=["net", "uts"], join=[["ipc", "/proc/1/ns/ipc"]], pass_fds=[5, 4, 5])
    assert spec.argv == ("true",)
    assert spec.new == frozenset({"net", "uts"})
    assert spec.join == (("ipc", "/proc/1/ns/ipc"),)
    assert spec.pass_fds == (4, 5)
    assert spec.pdeathsig == signal.SIGKILL
    assert not spec.needs_fork and not spec.needs_parent
    assert ChildSpec(argv=["true"], new={"pid"}).needs_fork
    assert ChildSpec(argv=["true"], join=[("pid", "/x")]).needs_fork
    assert ChildSpec(argv=["true"], new={"user"}, uid_map="0 1000 1").needs_parent


def test_target_spec() -> None:
    spec = ChildSpec(target=print, args=[1], kwargs={"end": ""})
    assert spec.args == (1,)


@pytest.mark.parametrize("kind", ["network", "NET", "", "pid_for_children", 3])
def test_bad_kinds(kind: object) -> None:
    err = _bad(argv=["true"], new={kind})
    assert err.field == "new" and err.value == kind
    err = _bad(argv=["true"], join=[(kind, "/proc/1/ns/net")])
    assert err.field == "join" and err.value == kind


def test_new_as_one_string_rejected() -> None:
    err = _bad(argv=["true"], new="net")
    assert err.field == "new"


def test_hostname_needs_uts() -> None:
    err = _bad(argv=["true"], hostname="box")
    assert err.field == "hostname" and err.value == "box"
    assert "uts" in (err.hint or "")
    ChildSpec(argv=["true"], hostname="box", join=[("uts", "/run/x")])  # a joined one is fine


def test_hostname_too_long_or_bad() -> None:
    assert _bad(argv=["true"], new={"uts"}, hostname="x" * 65).field == "hostname"
    assert _bad(argv=["true"], new={"uts"}, hostname="").field == "hostname"
    assert _bad(argv=["true"], new={"uts"}, hostname="a\0b").field == "hostname"


def test_empty_argv() -> None:
    assert _bad(argv=[]).field == "argv"
    assert _bad(argv=[""]).field == "argv"


def test_argv_one_string() -> None:
    err = _bad(argv="ls -l")
    assert err.field == "argv" and err.value == "ls -l"


def test_argv_and_target_both() -> None:
    err = _bad(argv=["true"], target=print)
    assert err.field == "argv"


def test_nothing_to_run() -> None:
    assert _bad().field == "argv"


def test_target_not_callable() -> None:
    assert _bad(target=42).field == "target"


def test_args_with_argv() -> None:
    assert _bad(argv=["true"], args=(1,)).field == "args"


def test_nul_in_argv() -> None:
    err = _bad(argv=["echo", "a\0b"])
    assert err.field == "argv" and err.value == "a\0b"


def test_nul_in_env_key_and_value() -> None:
    err = _bad(argv=["true"], env={"A\0B": "1"})
    assert err.field == "env key" and err.value == "A\0B"
    err = _bad(argv=["true"], env={"A": "1\0"})
    assert err.field == "env[A]" and err.value == "1\0"


def test_equals_in_env_key() -> None:
    err = _bad(argv=["true"], env={"A=B": "1"})
    assert err.field == "env key" and err.value == "A=B"
    assert _bad(argv=["true"], env={"": "1"}).field == "env key"


def test_env_value_type() -> None:
    assert _bad(argv=["true"], env={"A": 1}).field == "env[A]"


def test_id_maps() -> None:
    assert ChildSpec(argv=["true"], new={"user"}, uid_map=" 0  100000 65536 ").uid_map == "0 100000 65536\n"
    assert _bad(argv=["true"], uid_map="0 100000 65536").field == "uid_map"  # no user namespace
    for bad in ("0 100000", "a b c", "0 1 0", "-1 0 1", "", "0 1 99999999999"):
        err = _bad(argv=["true"], new={"user"}, gid_map=bad)
        assert err.field == "gid_map" and err.value == bad


def test_persist_rules() -> None:
    assert _bad(argv=["true"], persist={"net": "/run/x"}).field == "persist"  # not new
    assert _bad(argv=["true"], new={"net"}, persist={"net": "rel/path"}).field == "persist[net]"
    assert _bad(argv=["true"], new={"net", "uts"}, persist={"net": "/a", "uts": "/a"}).field == "persist"
    assert _bad(argv=["true"], new={"nett"}).field == "new"


def test_join_shape() -> None:
    assert _bad(argv=["true"], join=["net"]).field == "join"
    assert _bad(argv=["true"], join=[("net", "")]).field == "join[net]"
    assert _bad(argv=["true"], join=[("net", "/a"), ("net", "/b")]).field == "join"


def test_fds() -> None:
    assert _bad(argv=["true"], stdout=-1).field == "stdout"
    assert _bad(argv=["true"], stdin="0").field == "stdin"
    assert _bad(argv=["true"], stderr=True).field == "stderr"
    assert _bad(argv=["true"], pass_fds=[3, -2]).field == "pass_fds"
    assert _bad(argv=["true"], pass_fds=3).field == "pass_fds"


def test_cgroup_procs_absolute() -> None:
    assert _bad(argv=["true"], cgroup_procs=["cgroup.procs"]).field == "cgroup_procs"
    assert _bad(argv=["true"], cgroup_procs="/sys/fs/cgroup/x/cgroup.procs").field == "cgroup_procs"


def test_pdeathsig() -> None:
    assert _bad(argv=["true"], pdeathsig=999).field == "pdeathsig"
    assert ChildSpec(argv=["true"], pdeathsig=None).pdeathsig is None


def test_cwd() -> None:
    assert _bad(argv=["true"], cwd="").field == "cwd"
    assert _bad(argv=["true"], cwd="/a\0").field == "cwd"


def test_start_rejects_non_spec() -> None:
    from pycontain.engine import start

    with pytest.raises(InvalidArgument):
        start(["true"])  # type: ignore[arg-type]


def test_affinity() -> None:
    assert ChildSpec(argv=["true"], affinity=[1, 0, 1]).affinity == frozenset({0, 1})
    assert ChildSpec(argv=["true"]).affinity is None
    for bad in (0, [], [-1], [True], ["0"]):
        assert _bad(argv=["true"], affinity=bad).field == "affinity"


def test_pid_by_forker_when_no_user_or_time_namespace() -> None:
    # The forking thread can switch its children's pid namespace itself,
    # unless a new user namespace must own it (or time, or a persisted pid).
    assert ChildSpec(argv=["true"], new={"pid", "net"}).pid_by_forker
    assert ChildSpec(argv=["true"], join=[("pid", "/proc/1/ns/pid")]).pid_by_forker
    assert not ChildSpec(argv=["true"], new={"net"}).pid_by_forker
    assert not ChildSpec(argv=["true"], new={"pid", "user"}, uid_map="0 1000 1").pid_by_forker
    assert not ChildSpec(argv=["true"], new={"pid", "time"}).pid_by_forker
    assert not ChildSpec(argv=["true"], new={"pid"}, persist={"pid": "/run/x"}).pid_by_forker
    spec = ChildSpec(argv=["true"], new={"pid"}, cgroup_procs=["/sys/fs/cgroup/pids/x/cgroup.procs"])
    assert spec.needs_fork and not spec.needs_relay and not spec.needs_parent
    relay = ChildSpec(argv=["true"], new={"pid", "time"}, cgroup_procs=["/sys/fs/cgroup/pids/x/cgroup.procs"])
    assert relay.needs_relay and relay.needs_parent
