"""`pycontain run`'s arguments read without argparse (pycontain.cli.containers.quick_run_args).

Whatever the quick reader accepts, it must read exactly as argparse does;
whatever it is unsure of, it must leave to argparse (None).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pycontain.cli import build_parser
from pycontain.cli.containers import RUN_OPTIONS, quick_run_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

READ_QUICKLY = [
    ["img"],
    ["host", "sh", "-c", "echo hi; exit 3"],
    ["--rm", "busybox", "/bin/true"],
    ["--rm", "-d", "--name", "web", "img", "--rm", "-e", "X=1"],  # options after the image: the command's
    ["-m", "512M", "--cpus", "0.5", "--pids-limit", "10", "--cpuset-cpus", "0-1", "img"],
    ["--memory=1G", "--name=a=b", "--env=", "img"],
    ["--net", "host", "--network=bridge", "img", "cmd"],
    ["-e", "A=1", "--env", "B=2", "-v", "/src:/dst:ro", "img"],
    ["-w", "/tmp", "-u", "1000:1000", "--hostname", "box", "-p", "8080:80", "--publish", "81:81", "img"],
    ["--read-only", "--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--security-opt", "seccomp=unconfined",
     "--storage-opt", "size=64M", "--userns", "auto", "img", "true"],
    ["--name", "", "img"],
    ["-"],
]

LEFT_TO_ARGPARSE = [
    [],  # no image
    ["--rm"],
    ["-h"],
    ["--help", "img"],
    ["--debug", "img"],
    ["--detac", "img"],  # an abbreviation
    ["-dimg"],
    ["-eX=1", "img"],
    ["-e=X", "img"],
    ["--rm=yes", "img"],
    ["--name"],
    ["--name", "--rm", "img"],
    ["--cpus", "-1", "img"],
    ["--", "img", "cmd"],
    ["img", "--", "x"],  # argparse drops the "--" from the command
    ["--no-such-option", "img"],
]


def _argparse(argv: list[str]) -> dict[str, object]:
    return vars(build_parser().parse_args(["run", *argv]))


@pytest.mark.parametrize("argv", READ_QUICKLY, ids=" ".join)
def test_read_exactly_as_argparse_reads_it(argv: list[str]) -> None:
    quick = quick_run_args(argv)
    assert quick is not None
    assert vars(quick) == _argparse(argv)


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_unusual_forms_are_left_to_argparse(argv: list[str]) -> None:
    assert quick_run_args(argv) is None


def test_the_table_is_the_parser() -> None:
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    options = {flag for a in run._actions for flag in a.option_strings} - {"-h", "--help"}
    assert options == {flag for flags, *_ in RUN_OPTIONS for flag in flags}


def test_lists_are_not_shared_between_calls() -> None:
    first = quick_run_args(["-e", "A=1", "img"])
    second = quick_run_args(["img"])
    assert first is not None and second is not None
    assert first.env == ["A=1"] and second.env == []


def test_run_without_argparse() -> None:
    code = (
        "import sys\n"
        "from pycontain.cli import main\n"
        "main(['run', '--rm', '--memory', 'nonsense', 'host', 'true'])\n"
        "print('argparse' in sys.modules, 'pycontain.cli.images' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert "memory" in out.stderr  # the handler ran (and refused the size) ...
    assert out.stdout.split() == ["False", "False"]  # ... with no argparse and no other topic
