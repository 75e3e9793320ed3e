"""What a test may not leave behind, read straight from the kernel."""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass

from pycontain.engine.zygote import SPARE_NAME


def _mounts() -> frozenset[tuple[str, str, str]]:
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            r = right.split()
            out.add((fields[4], r[0], r[1] if len(r) > 1 else ""))
    return frozenset(out)


def _pycontain_cgroups() -> frozenset[str]:
    out = set()
    for parent in glob.glob("/sys/fs/cgroup/*/pycontain") + glob.glob("/sys/fs/cgroup/pycontain"):
        for dirpath, _dirs, _files in os.walk(parent):
            # Nested parents go with their last cgroup, so they count too;
            # /pycontain stays, and the containers' standing parent until
            # the process that ran them exits.
            if dirpath not in (parent, f"{parent}/containers"):
                out.add(dirpath)
    return frozenset(out)


def _netns() -> frozenset[str]:
    try:
        return frozenset(os.listdir("/run/netns"))
    except FileNotFoundError:
        return frozenset()


def _links() -> frozenset[str]:
    return frozenset(os.listdir("/sys/class/net"))


def _loops() -> frozenset[str]:
    out = set()
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        with open(path) as f:
            out.add(f"{path.split('/')[3]} -> {f.read().strip()}")
    return frozenset(out)


def processes() -> list[tuple[int, int, str]]:
    """(pid, ppid, comm) of every process in /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rparen = stat.rfind(")")
        out.append((int(name), int(stat[rparen + 2 :].split()[1]), stat[stat.find("(") + 1 : rparen]))
    return out


def _descendants() -> frozenset[tuple[int, str]]:
    me = os.getpid()
    children: dict[int, list[int]] = {}
    comm: dict[int, str] = {}
    for pid, ppid, name in processes():
        comm[pid] = name
        children.setdefault(ppid, []).append(pid)
    out = set()
    stack = list(children.get(me, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        if comm.get(pid) == SPARE_NAME:
            continue  # a zygote's spare child: replaced after each container start, part of its zygote
        out.add((pid, comm.get(pid, "?")))
    return frozenset(out)


def _fds() -> frozenset[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return frozenset(out)


@dataclass(frozen=True)
class Snapshot:
    mounts: frozenset[tuple[str, str, str]]
    cgroups: frozenset[str]
    netns: frozenset[str]
    links: frozenset[str]
    loops: frozenset[str]
    processes: frozenset[tuple[int, str]]
    fds: frozenset[str]

    @classmethod
    def take(cls, settle: Snapshot | None = None) -> Snapshot:
        snap = cls._read()
        # Reaping and lazy unmounts finish asynchronously: give a leak a
        # short grace period before calling it one.
        deadline = time.monotonic() + 3.0
        while settle is not None and settle.leaks(snap) and time.monotonic() < deadline:
            time.sleep(0.05)
            snap = cls._read()
        return snap

    @classmethod
    def _read(cls) -> Snapshot:
        return cls(_mounts(), _pycontain_cgroups(), _netns(), _links(), _loops(), _descendants(), _fds())

    def leaks(self, after: Snapshot) -> list[str]:
        problems = []
        for name in ("mounts", "cgroups", "netns", "links", "loops", "processes"):
            extra = getattr(after, name) - getattr(self, name)
            if extra:
                problems.append(f"{name}: {sorted(extra)}")
        # fds: only count growth of the caller's table, not reuse of numbers.
        fd_extra = after.fds - self.fds
        if len(after.fds) > len(self.fds):
            problems.append(f"fds: {sorted(fd_extra)}")
        return problems
