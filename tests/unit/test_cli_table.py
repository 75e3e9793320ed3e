"""The CLI's terminal tables (pycontain.cli._table): docker's layout and words."""

from __future__ import annotations

import pytest

from pycontain.cli._table import ago, shorten, table


def test_columns_are_left_aligned_under_their_headers() -> None:
    out = table(["NAME", "STATUS", "PID"], [["web", "running", 42], ["a-long-name", "exited (3)", None]])
    assert out.splitlines() == [
        "NAME          STATUS       PID",
        "web           running      42",
        "a-long-name   exited (3)",
    ]


def test_an_empty_table_is_its_header() -> None:
    assert table(["NAME", "STATUS"], []) == "NAME   STATUS"


@pytest.mark.parametrize(("seconds", "words"), [
    (0.2, "Less than a second ago"),
    (1, "1 second ago"),
    (59.9, "59 seconds ago"),
    (60, "About a minute ago"),
    (150, "2 minutes ago"),
    (3600, "About an hour ago"),
    (3 * 3600, "3 hours ago"),
    (86400, "1 day ago"),
    (15 * 86400, "2 weeks ago"),
    (400 * 86400, "1 year ago"),
    (-5, "Less than a second ago"),  # a clock step back: not "in the future"
])
def test_ago_speaks_as_docker_does(seconds: float, words: str) -> None:
    assert ago(1_000_000.0 - seconds, now=1_000_000.0) == words


def test_ago_of_nothing_is_blank() -> None:
    assert ago(None) == "" and ago(float("nan")) == ""


def test_shorten() -> None:
    assert shorten("sleep 100", 32) == "sleep 100"
    assert shorten("x" * 40, 10) == "x" * 9 + "…"
