"""Namespace API argument checks: rejected before anything touches the kernel (no root)."""

from __future__ import annotations

import pytest

import pycontain
from pycontain import Namespace
from pycontain.errors import InvalidArgument, Unsupported


@pytest.mark.parametrize("pid", [0, -1, True, "1", 1.0, None])
def test_of_bad_pid(pid: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        Namespace.of(pid, "net")  # type: ignore[arg-type]
    assert info.value.field == "pid" and info.value.value == pid


BAD_KINDS = ["network", "NET", "", "pid_for_children", 3]


@pytest.mark.parametrize("kind", [*BAD_KINDS, None])
def test_bad_kind_of_current_create(kind: object) -> None:
    for call in (Namespace.current, Namespace.create, lambda k: Namespace.of(1, k)):
        with pytest.raises(InvalidArgument) as info:
            call(kind)
        assert info.value.field == "kind" and info.value.value == kind


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_kind_open_and_list(kind: object) -> None:
    # None is fine here: "any kind"
    with pytest.raises(InvalidArgument):
        Namespace.open("/proc/self/ns/net", kind=kind)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        pycontain.namespaces(kind)  # type: ignore[arg-type]


def test_create_pid_is_unsupported() -> None:
    with pytest.raises(Unsupported) as info:
        Namespace.create("pid")
    assert info.value.field == "kind" and "spawn" in (info.value.hint or "")


def test_create_maps_only_for_user() -> None:
    with pytest.raises(InvalidArgument) as info:
        Namespace.create("net", uid_map="0 1000 1")
    assert info.value.field == "uid_map"


@pytest.mark.parametrize("path", ["relative/file", "", "/a\0b"])
def test_create_bad_path(path: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Namespace.create("net", path)
    assert info.value.field == "path"


def test_equality_and_hash_by_device_and_inode() -> None:
    a = Namespace("net", 4, 4026531833, pid=10)
    b = Namespace("net", 4, 4026531833, path="/run/x")
    c = Namespace("net", 4, 4026531999)
    d = Namespace("net", 5, 4026531833)
    assert a == b and hash(a) == hash(b)
    assert a != c and a != d
    assert len({a, b, c, d}) == 3
    assert a != "net:[4026531833]"
    assert repr(a) == "<Namespace net:[4026531833] pid=10>"
    assert b.path == "/run/x"


def test_release_without_persist_is_a_noop() -> None:
    ns = Namespace("uts", 4, 1)
    ns.release()
    with ns:
        pass
    assert ns.persisted_path is None


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"join": ["net"]}, "join"),
        ({"join": [("net",)]}, "join"),
        ({"join": [("nett", "/x")]}, "join"),
        ({"new": "net"}, "new"),
        ({"new": ["bogus"]}, "new"),
        ({"hostname": "box"}, "hostname"),
        ({"uid_map": "0 1 1"}, "uid_map"),
        ({"env": {"A=B": "1"}}, "env key"),
    ],
)
def test_spawn_rejects_bad_options(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        pycontain.spawn(["true"], **kw)  # type: ignore[arg-type]
    assert info.value.field == field


def test_spawn_needs_something_to_run() -> None:
    with pytest.raises(InvalidArgument):
        pycontain.spawn()
    with pytest.raises(InvalidArgument):
        pycontain.spawn("ls -l")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        pycontain.spawn(["true"], target=print)


def test_spawn_join_accepts_namespace_objects() -> None:
    from pycontain.namespace import _join_pairs

    ns = Namespace("net", 4, 7, path="/run/netns/x")
    assert _join_pairs([ns, ("uts", "/proc/1/ns/uts")]) == [("net", "/run/netns/x"), ("uts", "/proc/1/ns/uts")]
