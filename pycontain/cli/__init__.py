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

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["main", "build_parser", "topic_modules"]

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
    from pycontain import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Linux containers from namespaces, cgroups and union filesystems.",
        epilog=f"Run '{PROG} doctor' to see what this host can isolate.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    loaded: list[tuple[int, str, Any]] = []
    for name in topic_modules() if modules is None else modules:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # one broken topic must not break the others
            print(f"{PROG}: warning: commands of {name} unavailable: {type(e).__name__}: {e}",
                  file=sys.stderr)
            continue
        register = getattr(module, "register", None)
        if callable(register):
            loaded.append((int(getattr(module, "ORDER", 100)), name, register))
    for _order, name, register in sorted(loaded, key=lambda t: (t[0], t[1])):
        before = set(subparsers.choices)
        try:
            register(subparsers)
        except Exception as e:  # e.g. an argparse option conflict in one topic
            print(f"{PROG}: warning: commands of {name} unavailable: {type(e).__name__}: {e}",
                  file=sys.stderr)
            # Drop what the topic half-registered, so its commands fail as unknown
            # rather than run without a handler.
            for cmd in set(subparsers.choices) - before:
                del subparsers.choices[cmd]
            # argparse keeps the --help listing apart (a private list of pseudo actions).
            subparsers._choices_actions[:] = [
                a for a in subparsers._choices_actions if a.dest in subparsers.choices
            ]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Example::

        >>> from pycontain.cli import main
        >>> main(["--version"])
        pycontain 0.1.0
        0
    """
    from pycontain.errors import InvalidArgument, PycontainError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: return, don't exit
        return _exit_code(e.code)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
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
