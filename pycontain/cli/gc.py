"""``pycontain gc`` (alias ``pycontain container prune``): remove what
containers of crashed creators left behind (state, cgroups, writable layers,
network namespaces). See :mod:`pycontain.container_gc`."""

from __future__ import annotations

import argparse
from typing import Any

ORDER = 80


def register(subparsers: Any) -> None:
    help_text = "remove leftovers of containers whose creator died"
    description = ("Remove the state directories, cgroups (below pycontain/containers), writable layers and "
                   "network namespaces of containers whose creating process died without cleaning up. "
                   "Running containers and detached ones are left alone.")
    p = subparsers.add_parser("gc", help=help_text, description=description)
    _options(p)
    group = subparsers.add_parser("container", help="container maintenance (prune)")
    sub = group.add_subparsers(dest="container_command", metavar="COMMAND")
    prune = sub.add_parser("prune", help=help_text, description=description)
    _options(prune)
    group.set_defaults(handler=lambda args: (group.print_help(), 2)[1])


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", "-n", action="store_true", help="only list what would be removed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from pycontain.container_gc import collect

    report = collect(dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 1 if report.errors else 0
    verb = "would remove" if args.dry_run else "removed"
    for kind, label in (("containers", "container"), ("cgroups", "cgroup"), ("rootfs", "writable layer"),
                        ("netns", "network namespace")):
        for item in getattr(report, kind):
            print(f"{verb} {label} {item}")
    for err in report.errors:
        print(f"error: {err}")
    if not report:
        print("nothing to remove")
    return 1 if report.errors else 0
