"""The machine a run measured: kernel, CPUs, memory, cgroup mode, peer versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

from benchmarks.peers import cgroup_mode

VERSION_COMMANDS = {
    "crun": ["crun", "--version"],
    "runc": ["runc", "--version"],
    "podman": ["podman", "--version"],
    "conmon": ["conmon", "--version"],
    "bwrap": ["bwrap", "--version"],
    "busybox": ["busybox"],
    "systemd-nspawn": ["systemd-nspawn", "--version"],
}


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None and not (argv[0] == "busybox" and os.path.exists("/bin/busybox")):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def versions() -> dict[str, str | None]:
    return {name: _first_line(argv) for name, argv in VERSION_COMMANDS.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def info() -> dict[str, Any]:
    """A JSON-able description of this machine."""
    return {
        "os": _os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "cgroup_mode": cgroup_mode(),
        "python": sys.version.split()[0],
        "versions": versions(),
    }
