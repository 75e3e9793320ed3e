"""What a process is confined by, read from outside through /proc.

:func:`read_posture` gathers, for one pid: its capability sets (as names),
no_new_privs, seccomp mode and filter count, its namespaces (and which of
them differ from the caller's), and its mounts. This is what
``Container.posture()`` shows, and what the tests compare with Docker's
defaults: measured from the kernel, not read back from the configuration.

Example::

    p = read_posture(child.pid)
    p.capabilities["effective"]      # ('CAP_CHOWN', 'CAP_DAC_OVERRIDE', ...)
    p.seccomp                        # 'filter'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pycontain.errors import InvalidArgument, PycontainError
from pycontain.kernel import proc, syscalls

__all__ = ["Posture", "read_posture", "SECCOMP_MODES"]

#: /proc/PID/status "Seccomp" values (proc(5)).
SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}
_CAP_FIELDS = (("effective", "CapEff"), ("permitted", "CapPrm"), ("inheritable", "CapInh"),
               ("bounding", "CapBnd"), ("ambient", "CapAmb"))


@dataclass(frozen=True)
class Posture:
    """The confinement of one process (see :func:`read_posture`).

    Fields: ``pid``; ``capabilities``: set name -> capability names;
    ``no_new_privs``; ``seccomp``: "disabled", "strict" or "filter";
    ``seccomp_filters``: how many filters are stacked; ``namespaces``: kind
    -> inode; ``own_namespaces``: kinds that differ from the reference process's;
    ``mounts``: (mount point, fs type, options) as the process sees them.
    """

    pid: int
    capabilities: dict[str, tuple[str, ...]]
    no_new_privs: bool
    seccomp: str
    seccomp_filters: int
    namespaces: dict[str, int]
    own_namespaces: tuple[str, ...]
    mounts: tuple[tuple[str, str, str], ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able), e.g. for ``pycontain inspect``."""
        return {
            "pid": self.pid,
            "capabilities": {k: list(v) for k, v in self.capabilities.items()},
            "no_new_privs": self.no_new_privs,
            "seccomp": self.seccomp,
            "seccomp_filters": self.seccomp_filters,
            "namespaces": dict(self.namespaces),
            "own_namespaces": list(self.own_namespaces),
            "mounts": [list(m) for m in self.mounts],
        }


def parse_posture(pid: int, status: dict[str, str]) -> dict[str, Any]:
    """The capability/no_new_privs/seccomp part of a posture from parsed
    /proc/PID/status fields (pure: for tests and for status text read elsewhere)."""
    caps = {}
    for name, key in _CAP_FIELDS:
        if key in status:
            caps[name] = tuple(syscalls.cap_names(int(status[key], 16)))
    return {
        "capabilities": caps,
        "no_new_privs": status.get("NoNewPrivs", "0") == "1",
        "seccomp": SECCOMP_MODES.get(status.get("Seccomp", ""), "unknown"),
        "seccomp_filters": int(status.get("Seccomp_filters", "0") or 0),
    }


def read_posture(pid: int, reference: int | str = "self") -> Posture:
    """Read the confinement of process ``pid`` from /proc.

    ``own_namespaces`` are the kinds where ``pid`` differs from ``reference``
    (default: the caller, i.e. the container's creator; /proc/1 is not
    always readable).

    Raises:
        InvalidArgument: ``pid`` is not a positive int.
        NotFound / KernelError: the process is gone or cannot be inspected.

    Example::

        read_posture(os.getpid()).seccomp      # 'disabled' in a notebook
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidArgument("pid is a positive int", field="pid", value=pid)
    part = parse_posture(pid, proc.status(pid))
    mine = proc.namespace_ids(pid)
    try:
        host = proc.namespace_ids(reference)
    except PycontainError:  # pragma: no cover - reference gone
        host = {}
    own = tuple(sorted(k for k, v in mine.items() if k in host and host[k] != v))
    mounts = tuple((m.mount_point, m.fstype, ",".join(m.options)) for m in proc.mountinfo(pid))
    return Posture(
        pid=pid,
        capabilities=part["capabilities"],
        no_new_privs=part["no_new_privs"],
        seccomp=part["seccomp"],
        seccomp_filters=part["seccomp_filters"],
        namespaces={k: v.inode for k, v in mine.items()},
        own_namespaces=own,
        mounts=mounts,
    )
