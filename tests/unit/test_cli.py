"""The command line skeleton: discovery of topic modules, exit codes, start-up weight."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
import types
from typing import Any

import pytest

import pycontain
import pycontain.cli as cli
from pycontain.errors import InvalidArgument, KernelError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": REPO}


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycontain", *args], capture_output=True, text=True,
                          timeout=60, env=ENV, cwd=REPO)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pycontain {pycontain.__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: pycontain" in err and "doctor" in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out


def test_doctor_command_without_probe(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pycontain doctor: Linux")
    assert "cgroup mode" in out


def test_doctor_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--json", "--no-probe"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"cgroup_mode", "checks", "controllers", "summary"} <= set(data)


def test_doctor_strict_fails_on_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    # Without the probe, namespace rows are "unknown": --strict must say so by its exit code.
    assert cli.main(["doctor", "--no-probe", "--strict"]) == 1


def test_topic_modules_are_discovered() -> None:
    names = cli.topic_modules()
    assert "pycontain.cli.doctor" in names
    assert all(not n.rsplit(".", 1)[1].startswith("_") for n in names)


# -- a fake topic, registered the way other engineers add theirs ------------------------------

CALLS: list[Any] = []


def _fake_topic(name: str, order: int, behaviour: Any) -> types.ModuleType:
    mod = types.ModuleType(name)

    def register(subparsers: Any) -> None:
        p = subparsers.add_parser(name.rsplit(".", 1)[1], help=f"{name} help")
        p.add_argument("--flag", action="store_true")
        p.set_defaults(handler=behaviour)

    mod.register = register  # type: ignore[attr-defined]
    mod.ORDER = order  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def fake_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    def ok(args: argparse.Namespace) -> int:
        CALLS.append(args.flag)
        return 7

    def bad_input(args: argparse.Namespace) -> int:
        raise InvalidArgument("bad memory limit", field="memory", value="lots", hint="like 512M")

    def kernel_refused(args: argparse.Namespace) -> int:
        raise KernelError("mount failed", op="mount", errno=1)

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    topics = {
        "pycontain.cli.zz_ok": _fake_topic("pycontain.cli.zz_ok", 1, ok),
        "pycontain.cli.zz_bad": _fake_topic("pycontain.cli.zz_bad", 2, bad_input),
        "pycontain.cli.zz_kernel": _fake_topic("pycontain.cli.zz_kernel", 3, kernel_refused),
        "pycontain.cli.zz_int": _fake_topic("pycontain.cli.zz_int", 4, interrupted),
    }
    for name, mod in topics.items():
        monkeypatch.setitem(sys.modules, name, mod)
    def register_badly(subparsers: Any) -> None:
        p = subparsers.add_parser("zz_half", help="registers half, then fails")
        p.add_argument("-h", "--hostname")  # conflicts with -h/--help: argparse raises

    half = types.ModuleType("pycontain.cli.zz_half")
    half.register = register_badly  # type: ignore[attr-defined]
    topics["pycontain.cli.zz_half"] = half
    for name, mod in topics.items():
        monkeypatch.setitem(sys.modules, name, mod)
    names = [*topics, "pycontain.cli.zz_missing_module", "pycontain.cli.doctor"]
    monkeypatch.setattr(cli, "topic_modules", lambda: names)
    CALLS.clear()


def test_topic_handler_runs_and_its_code_is_returned(fake_topics: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["zz_ok", "--flag"]) == 7
    assert CALLS == [True]


def test_topic_order_in_help(fake_topics: None, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["--help"])
    out = capsys.readouterr().out
    # ORDER decides the listing: the fake topics (1..4) before doctor (90).
    assert out.index("zz_ok") < out.index("zz_bad") < out.index("zz_int") < out.index("doctor")


def test_broken_topic_does_not_take_the_cli_down(fake_topics: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--no-probe"]) == 0
    err = capsys.readouterr().err
    assert "warning: commands of pycontain.cli.zz_missing_module unavailable" in err
    # The half-registered command is gone, not left without a handler. (Only
    # the command asked for is built: zz_half's topic fails when it is asked
    # for, and the quick parser and the full one warn once between them.)
    assert cli.main(["zz_half"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err
    assert err.count("warning: commands of pycontain.cli.zz_half unavailable: ArgumentError") == 1
    cli.main(["--help"])
    assert "zz_half" not in capsys.readouterr().out


def test_errors_become_messages_and_exit_codes(fake_topics: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["zz_bad"]) == 2
    err = capsys.readouterr().err
    assert "pycontain: error: bad memory limit" in err and "hint: like 512M" in err
    assert "Traceback" not in err
    assert cli.main(["zz_kernel"]) == 1
    assert "pycontain: error: mount failed" in capsys.readouterr().err
    assert cli.main(["zz_int"]) == 130


def test_debug_shows_the_traceback(fake_topics: None) -> None:
    with pytest.raises(InvalidArgument):
        cli.main(["--debug", "zz_bad"])


# -- as a program ------------------------------------------------------------------------------


def test_python_dash_m_version() -> None:
    out = run_module("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pycontain {pycontain.__version__}"


def test_command_is_the_launcher_script() -> None:
    # `pycontain` is bin/pycontain (Python with -I -S, see test_cli_launcher),
    # not a console-script entry point that would start Python with site.
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "pycontain" not in project["project"].get("scripts", {})
    assert project["tool"]["setuptools"]["script-files"] == ["bin/pycontain"]
    assert os.access(os.path.join(REPO, "bin", "pycontain"), os.X_OK)


def test_only_the_command_asked_for_is_built() -> None:
    parser, found = cli._build(None, only="run")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert found and set(sub.choices) == {"run"}
    assert cli._build(None, only="no-such-command")[1] is False
    # nested commands (gc registers `container prune`) build too
    parser, found = cli._build(None, only="container")
    assert found and parser.parse_args(["container", "prune", "-n"]).dry_run is True


@pytest.mark.parametrize("argv, word", [
    (["run", "--rm", "img", "true"], "run"),
    (["--debug", "ps", "-a"], "ps"),
    (["--help"], None),
    (["--vers"], None),   # argparse takes prefixes: build everything
    (["-h", "run"], None),  # help of the whole command line
    ([], None),
])
def test_command_word(argv: list[str], word: str | None) -> None:
    assert cli._command_word(argv) == word


def test_run_usage_error_matches_the_full_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run"]) == 2
    quick = capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run"])
    assert quick == capsys.readouterr().err
    assert "usage: pycontain run" in quick and "required: image" in quick


def test_cli_start_up_stays_light() -> None:
    # Building the parser imports every topic module: none of them may pull
    # in the heavy libraries at import time (they belong inside handlers).
    code = (
        "import sys, threading\n"
        "from pycontain.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('pandas', 'numpy', 'IPython', 'matplotlib', 'ipywidgets', 'pyroute2')"
        " if m in sys.modules)\n"
        "print(','.join(heavy) or 'light', threading.active_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=ENV, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["light", "1"], out.stdout
