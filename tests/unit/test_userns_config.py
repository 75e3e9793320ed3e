"""The ``userns`` option of Container/run: parsing and validation (no kernel)."""

from __future__ import annotations

import pytest

from pycontain.backends.storage_driver import MountStep
from pycontain.backends.userns import overlay_dirs
from pycontain.container_config import DEFAULT_USERNS_MAP, UsernsMap, make_config, parse_userns
from pycontain.errors import InvalidArgument


@pytest.mark.parametrize("off", [None, False])
def test_off_by_default(off: object) -> None:
    assert parse_userns(off) is None
    assert make_config(command=["true"]).userns is None


@pytest.mark.parametrize("on", [True, "auto"])
def test_auto_is_the_default_range(on: object) -> None:
    m = parse_userns(on)
    assert m == UsernsMap(DEFAULT_USERNS_MAP + "\n", DEFAULT_USERNS_MAP + "\n")
    assert (m.root_uid, m.root_gid) == (100000, 100000)


def test_map_strings_are_normalized() -> None:
    m = parse_userns("  0   200000 1000 ;1000 300000 5\n")
    assert m is not None
    assert m.uid_map == m.gid_map == "0 200000 1000\n1000 300000 5\n"
    assert m.root_uid == 200000


def test_separate_maps_and_round_trip() -> None:
    m = parse_userns({"uid_map": "0 100000 10", "gid_map": "5 1 1\n0 7000 5"})
    assert m is not None and (m.root_uid, m.root_gid) == (100000, 7000)
    assert parse_userns(m.record()) == m
    assert parse_userns(("0 100000 10", "0 7000 5")) == UsernsMap("0 100000 10\n", "0 7000 5\n")
    assert make_config(command=["true"], userns=m.record()).userns == m


@pytest.mark.parametrize("bad, field, words", [
    ("0 0 65536", "userns", "host's root"),
    ("1 100000 10", "userns", "inside id 0"),
    ("0 100000", "userns", "three numbers"),
    ("0 -1 5", "userns", "three numbers"),
    ("0 100000 0", "userns", "empty"),
    ("0 4294967290 10", "userns", "last id"),
    ("0 100000 10;5 200000 10", "userns", "overlap on the inside"),
    ("0 100000 10;20 100005 10", "userns", "overlap on the outside"),
    (";".join(f"{i * 10} {100000 + i * 10} 10" for i in range(341)), "userns", "340"),
    ("", "userns", "lines"),
    ("yes", "userns", "three numbers"),
    (1, "userns", "must be None"),
    ({"uid_map": "0 100000 10"}, "userns", "uid_map and gid_map"),
    ({"uid_map": "0 100000 10", "gid_map": "0 0 1"}, "userns.gid_map", "host's root"),
    (("0 100000 10", 5), "userns.gid_map", "string"),
])
def test_bad_maps_name_the_field(bad: object, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_userns(bad)
    assert info.value.field == field
    assert words in str(info.value)
    with pytest.raises(InvalidArgument):
        make_config(command=["true"], userns=bad)


def test_overlay_option_parsing_handles_escapes() -> None:
    step = MountStep("overlay", "", "overlay", 0,
                     "lowerdir=a\\:b:/l2:/,upperdir=/c\\,d/upper,workdir=/c\\,d/work,index=off")
    assert overlay_dirs(step) == (["a:b", "/l2", "/"], "/c,d/upper")


def test_host_root_lower_is_replaced_only_where_it_is_slash() -> None:
    from pycontain.backends.userns import _replace_lower

    step = MountStep("overlay", "/c/host", "overlay", 1, "lowerdir=/c/host-empty:/,index=off")
    out = _replace_lower(step, "/", "/c/idmapped-root")
    assert out.data == "lowerdir=/c/host-empty:/c/idmapped-root,index=off"
    assert (out.source, out.target, out.flags) == (step.source, step.target, step.flags)
