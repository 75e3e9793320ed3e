"""Strict parsing of sizes, CPUs, cpusets and weights (pycontain.units)."""

from __future__ import annotations

import pytest

from pycontain.errors import InvalidArgument
from pycontain.units import (
    format_cpuset,
    format_size,
    parse_cpus,
    parse_cpuset,
    parse_int,
    parse_size,
    parse_weight,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        (4096, 4096),
        ("512M", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("512MB", 512 * 2**20),
        ("512MiB", 512 * 2**20),
        ("1.5G", 3 * 2**29),
        ("1.5K", 1536),
        ("2T", 2 * 2**40),
        ("1k", 1024),
        ("100b", 100),
        ("0.1K", 102),  # rounded down to whole bytes
    ],
)
def test_size_good(text: object, expected: int) -> None:
    assert parse_size(text, "memory") == expected


@pytest.mark.parametrize(
    "bad",
    ["32bm", "1e9", "nan", "inf", "-5", -5, "", " 5", "5 ", "5_000", "+5", "0x10", "1.5", "1..5G", "G",
     True, False, 1.5, 2.0, None, [1], "9999999E", 2**63, "1,5G", "5\0"],
)
def test_size_bad(bad: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_size(bad, "memory")
    err = info.value
    assert err.field == "memory"
    assert err.value == bad or (bad != bad)  # nan compares unequal
    assert "memory" in str(err) and repr(bad) in str(err)
    assert err.hint


def test_size_zero_and_minimum() -> None:
    with pytest.raises(InvalidArgument):
        parse_size(0, "memory")
    assert parse_size(0, "memory_swap", minimum=0) == 0
    with pytest.raises(InvalidArgument, match="at least"):
        parse_size("1K", "memory", minimum=4096)


def test_size_max() -> None:
    assert parse_size(2**63 - 1, "x") == 2**63 - 1
    with pytest.raises(InvalidArgument, match="too large"):
        parse_size("8E", "x")


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(64 * 2**20) == "64.0 MiB"


@pytest.mark.parametrize("text, expected", [("1.5", 1.5), ("0.5", 0.5), (2, 2.0), (0.25, 0.25), ("2", 2.0)])
def test_cpus_good(text: object, expected: float) -> None:
    assert parse_cpus(text) == expected


@pytest.mark.parametrize(
    "bad", [0, "0", 0.0, -1, "-0.5", "1e9", "nan", "inf", float("nan"), float("inf"), True, False, "1.5x",
            "", ".5", "1.", 0.001, 10**9, None, "1,5"]
)
def test_cpus_bad(bad: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_cpus(bad)
    assert info.value.field == "cpus"
    assert "cpus" in str(info.value)


def test_cpuset() -> None:
    assert parse_cpuset("0-1,3") == frozenset({0, 1, 3})
    assert parse_cpuset("0") == frozenset({0})
    assert parse_cpuset(1) == frozenset({1})
    assert parse_cpuset([0, 1]) == frozenset({0, 1})
    assert parse_cpuset("0-1", available={0, 1}) == frozenset({0, 1})
    assert format_cpuset({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpuset(parse_cpuset("3,0-1")) == "0-1,3"


@pytest.mark.parametrize("bad", ["3-1", "", "0-", "-1", "a", "0,,1", "0-1-2", " 0", True, -1, [], [True],
                                 ["0"], 1.0, "1e3", "99999999"])
def test_cpuset_bad(bad: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_cpuset(bad, "cpuset")
    assert info.value.field == "cpuset"


def test_cpuset_not_available() -> None:
    with pytest.raises(InvalidArgument, match="not available") as info:
        parse_cpuset("0-99", "cpuset", available={0, 1})
    assert info.value.value == "0-99"
    assert "0-1" in (info.value.hint or "")


def test_int_and_weight() -> None:
    assert parse_int("32", "pids", minimum=1) == 32
    assert parse_weight(100) == 100
    for bad in (True, 0, 10001, "1e3", "x", -5, 1.0, "nan"):
        with pytest.raises(InvalidArgument) as info:
            parse_weight(bad, "cpu_weight")
        assert info.value.field == "cpu_weight"
