"""Container commands in the manner of docker and podman: ``run``, ``ps``,
``exec``, ``stop``, ``kill``, ``pause``, ``unpause``, ``rm``, ``logs``,
``stats`` and ``inspect``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

ORDER = 10

#: ``pycontain run``'s options: (flags, dest, action, default, help), action
#: "store", "store_true" or "append" (default: a new empty list). register()
#: gives them to argparse, and :func:`quick_run_args` reads the usual forms
#: without argparse: one table, so the two cannot drift apart.
RUN_OPTIONS: tuple[tuple[tuple[str, ...], str, str, str | None, str], ...] = (
    (("--rm",), "rm", "store_true", None, "remove the container when it exits"),
    (("-d", "--detach"), "detach", "store_true", None, "run in the background; print the name"),
    (("--name",), "name", "store", None, "container name"),
    (("-m", "--memory"), "memory", "store", None, "memory limit, e.g. 512M"),
    (("--cpus",), "cpus", "store", None, "CPU limit, e.g. 0.5"),
    (("--pids-limit",), "pids", "store", None, "process limit"),
    (("--cpuset-cpus",), "cpuset", "store", None, "CPUs allowed, e.g. 0-1"),
    (("--network", "--net"), "network", "store", "none", "none (default), host, bridge, NAME"),
    (("-e", "--env"), "env", "append", None, "KEY=VALUE (repeatable)"),
    (("-v", "--volume"), "volume", "append", None, "SRC:DST[:ro] (repeatable)"),
    (("-w", "--workdir"), "workdir", "store", None, "working directory inside"),
    (("-u", "--user"), "user", "store", None, "user[:group] inside"),
    (("--hostname",), "hostname", "store", None, "hostname inside"),
    (("-p", "--publish"), "publish", "append", None, "HOSTPORT:CONTAINERPORT on 127.0.0.1"),
    (("--read-only",), "read_only", "store_true", None, "mount the root read-only"),
    (("--cap-add",), "cap_add", "append", None, "add a capability"),
    (("--cap-drop",), "cap_drop", "append", None, "drop a capability"),
    (("--security-opt",), "security_opt", "append", None, "seccomp=unconfined|PROFILE.json"),
    (("--storage-opt",), "storage_opt", "append", None, "size=64M: bound the writable layer"),
    (("--userns",), "userns", "store", None,
     "auto (root inside is host uid 100000..) or a map 'INSIDE OUTSIDE COUNT[;...]'; host (the default): none"),
)


def quick_run_args(argv: Sequence[str]) -> SimpleNamespace | None:
    """``pycontain run``'s arguments (``argv`` after ``run``) as argparse would
    parse them, for the usual forms only; None for anything else (help, an
    unknown or abbreviated option, ``-xVALUE`` or combined short flags, a
    value that starts with ``-``, a ``--`` anywhere (argparse drops one from
    the command), no image): then argparse parses, and reports what is wrong.

    Why: importing argparse and building the parser costs every CLI start
    ~5 ms (argparse looks up message catalogs for each help string).
    """
    if "--" in argv:
        return None
    by_flag = {flag: (dest, action) for flags, dest, action, _default, _help in RUN_OPTIONS for flag in flags}
    values: dict[str, Any] = {}
    for _flags, dest, action, default, _help in RUN_OPTIONS:
        values[dest] = False if action == "store_true" else [] if action == "append" else default
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            # The image; everything after it is the command (argparse.REMAINDER).
            return SimpleNamespace(debug=False, **values, image=arg, command=list(argv[i + 1:]),
                                   handler=cmd_run)
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        known = by_flag.get(flag)
        if known is None:
            return None
        dest, action = known
        if action == "store_true":
            if eq:
                return None
            values[dest] = True
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 2
        if value.startswith("-"):
            return None
        if action == "append":
            values[dest].append(value)
        else:
            values[dest] = value
    return None


def register(subparsers: Any) -> None:
    import argparse

    p = subparsers.add_parser("run", help="run a command in a new container",
                              description="Run COMMAND in a new container from IMAGE ('host' = the host's "
                                          "root, copy-on-write). The exit code is the container's.")
    for flags, dest, action, default, helptext in RUN_OPTIONS:
        kw: dict[str, Any] = {"dest": dest, "help": helptext}
        if action != "store":
            kw["action"] = action
        if action == "append":
            kw["default"] = []
        elif default is not None:
            kw["default"] = default
        p.add_argument(*flags, **kw)
    p.add_argument("image", help="image tag, or 'host'")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
    p.set_defaults(handler=cmd_run)

    p = subparsers.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="also exited ones")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=cmd_ps)

    p = subparsers.add_parser("exec", help="run a command in a running container")
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE")
    p.add_argument("-w", "--workdir", help="working directory inside")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_exec)

    p = subparsers.add_parser("stop", help="stop containers (SIGTERM, then SIGKILL)")
    p.add_argument("-t", "--time", type=float, default=10, help="seconds before SIGKILL (default 10)")
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=cmd_stop)

    p = subparsers.add_parser("kill", help="send a signal to containers")
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=cmd_kill)

    for verb, helptext in (("pause", "freeze every process of containers"), ("unpause", "thaw paused containers")):
        p = subparsers.add_parser(verb, help=helptext)
        p.add_argument("names", nargs="+")
        p.set_defaults(handler=cmd_pause if verb == "pause" else cmd_unpause)

    p = subparsers.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=cmd_rm)

    p = subparsers.add_parser("logs", help="print a detached container's output")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing while it runs")
    p.add_argument("name")
    p.set_defaults(handler=cmd_logs)

    p = subparsers.add_parser("stats", help="resource usage of running containers")
    p.add_argument("--no-stream", action="store_true", help="print once (the default is once too)")
    p.add_argument("names", nargs="*")
    p.set_defaults(handler=cmd_stats)

    p = subparsers.add_parser("inspect", help="a container's state and configuration as JSON")
    p.add_argument("names", nargs="+")
    p.set_defaults(handler=cmd_inspect)


def _err(msg: str) -> None:
    print(f"pycontain: {msg}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from pycontain.cli import fork_containers_here
    from pycontain.container import Container
    from pycontain.errors import InvalidArgument

    fork_containers_here()

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    seccomp = "default"
    for opt in args.security_opt:
        key, _, value = opt.partition("=")
        if key != "seccomp" or not value:
            raise InvalidArgument("unsupported --security-opt", field="security-opt", value=opt,
                                  hint="seccomp=unconfined or seccomp=/path/profile.json")
        seccomp = value
    storage_size = None
    for opt in args.storage_opt:
        key, _, value = opt.partition("=")
        if key != "size" or not value:
            raise InvalidArgument("unsupported --storage-opt", field="storage-opt", value=opt, hint="size=64M")
        storage_size = value
    ports: dict[str, str] = {}
    for spec in args.publish:
        host, sep, inside = spec.rpartition(":")
        if not sep:
            raise InvalidArgument("--publish is HOSTPORT:CONTAINERPORT", field="publish", value=spec)
        ports[host] = inside
    c = Container(
        image=args.image, command=command or None, name=args.name, memory=args.memory, cpus=args.cpus,
        pids=args.pids, cpuset=args.cpuset, network=args.network, hostname=args.hostname, env=args.env or None,
        volumes=args.volume or None, workdir=args.workdir, user=args.user, read_only=args.read_only,
        cap_add=args.cap_add, cap_drop=args.cap_drop, seccomp=seccomp, detach=args.detach, storage_size=storage_size,
        userns=None if args.userns in (None, "host") else args.userns,
        ports={int(k) if k.isdigit() else k: int(v) if v.isdigit() else v for k, v in ports.items()} or None,
    )
    if args.detach:
        try:
            c.start(log=True)
        except BaseException:
            c.remove(force=True)
            raise
        print(c.name)
        return 0
    try:
        tty_in = sys.stdin.fileno() if sys.stdin is not None and not sys.stdin.closed else None
        c.start(stdin=tty_in)
        code = c.wait()
        if c.oom_killed:
            _err(f"{c.name}: OOM-killed (memory limit {args.memory})")
        return code
    except KeyboardInterrupt:
        c.kill("TERM")
        return c.wait()
    finally:
        if args.rm:
            c.remove(force=True)
        elif c.status == "exited":
            # The cgroup goes now, like docker's; the record and the writable
            # layer stay for ps -a, logs, commit and rm.
            c._release_cgroup()


def cmd_ps(args: argparse.Namespace) -> int:
    # Records, not containers()' DataFrame: importing pandas would be most
    # of the command's time (~0.3 s).
    from pycontain.container import container_records

    records = container_records(all=args.all)
    if args.quiet:
        for r in records:
            print(r["name"])
        return 0
    if args.format == "json":
        import datetime

        for r in records:
            if isinstance(r["created"], (int, float)):  # ISO 8601 in UTC, as pandas' to_json wrote it
                r["created"] = datetime.datetime.fromtimestamp(r["created"], datetime.UTC).isoformat(
                    timespec="milliseconds").replace("+00:00", "Z")
        print(json.dumps(records))
        return 0
    from pycontain.cli._table import ago, shorten, table

    rows = []
    for r in records:
        status = r["status"]
        if status == "exited" and r["exit_code"] is not None:
            status = f"exited ({int(r['exit_code'])})"
        running = r["status"] in ("running", "paused")
        rows.append((r["name"], status, r["pid"] if running else None, r["image"],
                     shorten(f'"{r["command"]}"', 32) if r["command"] else "", ago(r["created"])))
    print(table(["NAME", "STATUS", "PID", "IMAGE", "COMMAND", "CREATED"], rows))
    return 0


def _open(name: str) -> Any:
    from pycontain.container import Container

    return Container.open(name)


def cmd_exec(args: argparse.Namespace) -> int:
    from pycontain.errors import InvalidArgument

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise InvalidArgument("exec needs a command", field="command", value=command)
    c = _open(args.name)
    return int(c.exec(command, env=args.env or None, workdir=args.workdir))


def _each(names: list[str], action: Any) -> int:
    from pycontain.errors import PycontainError

    code = 0
    for name in names:
        try:
            action(_open(name))
            print(name)
        except PycontainError as e:
            _err(str(e))
            code = 1
    return code


def cmd_stop(args: argparse.Namespace) -> int:
    return _each(args.names, lambda c: c.stop(timeout=args.time))


def cmd_kill(args: argparse.Namespace) -> int:
    from pycontain.container_config import parse_signal

    sig = parse_signal(args.signal)
    return _each(args.names, lambda c: c.kill(sig))


def cmd_pause(args: argparse.Namespace) -> int:
    return _each(args.names, lambda c: c.pause())


def cmd_unpause(args: argparse.Namespace) -> int:
    return _each(args.names, lambda c: c.resume())


def cmd_rm(args: argparse.Namespace) -> int:
    return _each(args.names, lambda c: c.remove(force=args.force))


def cmd_logs(args: argparse.Namespace) -> int:
    import time

    c = _open(args.name)
    path = c._state_path / "output.log"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        while True:
            data = f.read()
            if data:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            elif not args.follow or c.status not in ("running", "paused"):
                break
            else:
                time.sleep(0.1)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from pycontain.cli._table import table
    from pycontain.container import container_records
    from pycontain.units import format_size

    names = args.names or [r["name"] for r in container_records(all=False)]
    rows = []
    for name in names:
        c = _open(name)
        u = c.usage()
        rows.append({
            "NAME": name,
            "CPU s": f"{u.get('cpu_s', float('nan')):.2f}",
            "MEM": format_size(int(u["mem_bytes"])) if u.get("mem_bytes") == u.get("mem_bytes") and
            "mem_bytes" in u else "-",
            "PIDS": int(u["pids"]) if "pids" in u and u["pids"] == u["pids"] else "-",
            "NET RX/TX": f"{int(u.get('net_rx_bytes', 0))}/{int(u.get('net_tx_bytes', 0))}",
        })
    print(table(["NAME", "CPU s", "MEM", "PIDS", "NET RX/TX"], [list(r.values()) for r in rows]))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pycontain.container import get

    print(json.dumps([get(name) for name in args.names], indent=2, default=str))
    return 0
