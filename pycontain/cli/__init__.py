"""The ``pycontain`` command line (also ``python -m pycontain``).

Each topic adds its subcommands from its own module, so adding one touches
no shared file: ``pycontain/cli/<topic>.py`` defines ::

    ORDER = 50                          # optional: position in --help (default 100)

    def register(subparsers) -> None:   # subparsers: argparse's _SubParsersAction
        p = subparsers.add_parser("ps", help="list containers")
        p.add_argument("--all", action="store_true")
        p.set_defaults(handler=run)

    def run(args: argparse.Namespace) -> int:
        from pycontain.container import containers   # heavy imports here, not at the top
        ...
        return 0

Modules are found by listing this package (names starting with ``_`` are
skipped). Start-up matters (``pycontain ps`` in a shell loop), so topic
modules import only argparse-level things at the top and the library inside
their handlers.

Exit codes: the handler's return value; 1 for a pycontain error, 2 for bad
usage, 130 for Ctrl-C.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

__all__ = ["main", "build_parser", "topic_modules", "fork_containers_here"]

PROG = "pycontain"


def topic_modules() -> list[str]:
    """Names of the modules in this package that may add subcommands."""
    names = []
    for directory in __path__:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            stem, ext = os.path.splitext(entry)
            if entry.startswith(("_", ".")):
                continue
            if ext == ".py" or (not ext and os.path.isfile(os.path.join(directory, entry, "__init__.py"))):
                names.append(f"{__name__}.{stem}")
    return sorted(set(names))


def build_parser(modules: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every topic's subcommands registered.

    ``modules`` defaults to :func:`topic_modules`. A topic module that fails to
    import is reported on stderr and left out, so one broken topic does not
    take the whole command line down.
    """
    return _build(modules, only=None)[0]


def _build(modules: Iterable[str] | None, only: str | None,
           warned: set[str] | None = None) -> tuple[argparse.ArgumentParser, bool]:
    """The parser, and whether command ``only`` is in it.

    With ``only``, topics register through :class:`_OnlyCommand`, so just that
    command's parser is built: argparse spends ~1 ms per subcommand parser
    (gettext look-ups included), which `pycontain run` would pay for the
    two dozen others on every start. ``warned``: warnings printed already (by
    an earlier build in this process), not to print twice.
    """
    warned = set() if warned is None else warned

    def warn(text: str) -> None:
        if text not in warned:
            warned.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr)

    import argparse

    from pycontain import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Linux containers from namespaces, cgroups and union filesystems.",
        epilog=f"Run '{PROG} doctor' to see what this host can isolate.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    target: Any = subparsers if only is None else _OnlyCommand(subparsers, only)

    loaded: list[tuple[int, str, Any]] = []
    for name in topic_modules() if modules is None else modules:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # one broken topic must not break the others
            warn(f"commands of {name} unavailable: {type(e).__name__}: {e}")
            continue
        register = getattr(module, "register", None)
        if callable(register):
            loaded.append((int(getattr(module, "ORDER", 100)), name, register))
    for _order, name, register in sorted(loaded, key=lambda t: (t[0], t[1])):
        before = set(subparsers.choices)
        try:
            register(target)
        except Exception as e:  # e.g. an argparse option conflict in one topic
            warn(f"commands of {name} unavailable: {type(e).__name__}: {e}")
            # Drop what the topic half-registered, so its commands fail as unknown
            # rather than run without a handler.
            for cmd in set(subparsers.choices) - before:
                del subparsers.choices[cmd]
            # argparse keeps the --help listing apart (a private list of pseudo actions).
            subparsers._choices_actions[:] = [
                a for a in subparsers._choices_actions if a.dest in subparsers.choices
            ]
    return parser, only is not None and only in subparsers.choices


class _Ignored:
    """Swallows what a topic does with a parser of a command not asked for."""

    def __getattr__(self, name: str) -> Any:
        return self._call

    def _call(self, *args: Any, **kwargs: Any) -> _Ignored:
        return self


class _OnlyCommand:
    """argparse's subparsers action, passing on only the command ``name``:
    every other ``add_parser`` returns an :class:`_Ignored`."""

    def __init__(self, subparsers: Any, name: str) -> None:
        self._subparsers = subparsers
        self._name = name

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name == self._name or self._name in kwargs.get("aliases", ()):
            return self._subparsers.add_parser(name, **kwargs)
        return _Ignored()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._subparsers, name)


def _command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, when the parser needs no other command to
    parse it; None for help, version, or anything unusual (then the whole
    parser is built, and argparse says what is wrong)."""
    for arg in argv:
        if arg == "--debug":
            continue
        # -h, --help, --version (argparse also takes prefixes like --vers)
        # print or check every command: build them all.
        return None if arg.startswith("-") else arg
    return None


def fork_containers_here() -> None:
    """Make the containers this command starts forks of this process.

    The library forks containers from a zygote by default (a helper process
    started once per caller, worth it for a big notebook kernel). The CLI is
    small and single-threaded, and lives for one container: starting a
    zygote (a second interpreter) would cost it more than it saves.
    Topic handlers call this before they start a container.
    """
    from pycontain import container

    container.FORK_SOURCE = "caller"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Example::

        >>> from pycontain.cli import main
        >>> main(["--version"])
        pycontain 0.1.0
        0
    """
    from pycontain.errors import InvalidArgument, PycontainError

    argv = sys.argv[1:] if argv is None else list(argv)
    args: Any = None
    if argv[:1] == ["run"]:
        # The common case, read without argparse (see quick_run_args).
        from pycontain.cli.containers import quick_run_args

        args = quick_run_args(argv[1:])
    if args is None:
        command = _command_word(argv)
        warned: set[str] = set()
        parser, found = _build(None, only=command, warned=warned) if command is not None else (None, False)
        if parser is None or not found:
            parser = _build(None, only=None, warned=warned)[0]
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version and usage errors: return, don't exit
            return _exit_code(e.code)
        if getattr(args, "handler", None) is None:
            parser.print_help(sys.stderr)
            return 2
    handler = args.handler
    try:
        return int(handler(args) or 0)
    except SystemExit as e:
        return _exit_code(e.code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `pycontain doctor | head`: the reader left; stop quietly (Python's
        # signal docs: point stdout at devnull so the exit flush cannot fail).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except PycontainError as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InvalidArgument) else 1


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
