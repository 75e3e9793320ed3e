"""``pycontain doctor``: what this host can isolate, and why not where it can't."""

from __future__ import annotations

import argparse
from typing import Any

ORDER = 90  # near the end of --help: a diagnostic, not a daily command


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="report what this host can isolate, and why not",
        description="Probe this host (namespaces, cgroups, overlayfs, btrfs, seccomp, pyroute2) "
        "and report what works, what is limited and what to do about it.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the child process that really unshares namespaces and mounts an overlay")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any item is missing or unknown (for CI runners)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from pycontain.doctor import doctor

    report = doctor(probe=not args.no_probe)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=False))
    else:
        print(report)
    if args.strict and any(c.status in ("missing", "unknown") for c in report):
        return 1
    return 0
