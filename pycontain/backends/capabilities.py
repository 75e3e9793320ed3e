"""Capabilities, no_new_privs and fd hygiene for the container's last setup steps.

These run in the single-threaded child right before exec (DESIGN.md §3):
``drop_capabilities`` -> ``set_no_new_privs`` -> seccomp -> ``close_fds`` -> exec.

Why both the bounding set and capset: for a root process, execve(2) recomputes
the permitted set from the bounding set (a root program counts as having every
file capability, capabilities(7) "Capabilities and execution of programs by
root"), so only the bounding set limits what the workload gets after exec;
capset limits what the setup code itself can still do until then. Inheritable
and ambient are emptied so nothing is handed on outside the bounding set.

Example (in a child)::

    drop_capabilities()              # Docker's 14 default capabilities
    set_no_new_privs()
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from pycontain.errors import InvalidArgument, PermissionDenied
from pycontain.kernel import constants as C
from pycontain.kernel import syscalls

__all__ = [
    "DOCKER_DEFAULT_CAPS",
    "resolve_capabilities",
    "drop_capabilities",
    "drop_to_mask",
    "set_no_new_privs",
    "close_fds",
]

#: Docker's default capability set (moby oci/caps/defaults.go).
DOCKER_DEFAULT_CAPS: tuple[str, ...] = C.DOCKER_DEFAULT_CAPS

def _canonical(name: object, fieldname: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument("a capability is a non-empty string", field=fieldname, value=name,
                              hint="e.g. 'CAP_NET_ADMIN' or 'NET_ADMIN'")
    key = name.strip().upper()
    if key == "ALL":
        return "ALL"
    if not key.startswith("CAP_"):
        key = "CAP_" + key
    if key not in C.CAP_NUMBERS:
        raise InvalidArgument("unknown capability", field=fieldname, value=name,
                              hint="names as in capabilities(7), e.g. CAP_NET_ADMIN, or ALL")
    return key


def _names(values: Iterable[str], fieldname: str) -> set[str]:
    if isinstance(values, (str, bytes)):
        raise InvalidArgument(f"{fieldname} is a list of capability names, not one string",
                              field=fieldname, value=values, hint=f"e.g. {fieldname}=['NET_ADMIN']")
    out: set[str] = set()
    for v in values:
        key = _canonical(v, fieldname)
        out |= set(C.CAPABILITIES) if key == "ALL" else {key}
    return out


def resolve_capabilities(keep: Iterable[str] = DOCKER_DEFAULT_CAPS, add: Iterable[str] = (),
                         drop: Iterable[str] = ()) -> tuple[str, ...]:
    """The capability names a container ends up with: ``keep + add - drop``.

    Names are accepted with or without ``CAP_`` and in any case; ``"ALL"``
    means every capability (``drop=["ALL"], add=["NET_BIND_SERVICE"]`` keeps
    only that one: ``drop`` wins over ``keep``, ``add`` over ``drop`` except
    for ``ALL``, as in ``docker run --cap-drop ALL --cap-add ...``).
    Pure validation, no kernel access.

    Raises:
        InvalidArgument: an unknown name or a non-list argument.

    Example::

        resolve_capabilities(add=["NET_ADMIN"], drop=["MKNOD"])
    """
    kept = _names(keep, "keep")
    added = _names(add, "add")
    dropped = _names(drop, "drop")
    final = (kept - dropped) | added
    return tuple(name for name in C.CAPABILITIES if name in final)


def drop_capabilities(keep: Iterable[str] = DOCKER_DEFAULT_CAPS, add: Iterable[str] = (),
                      drop: Iterable[str] = ()) -> tuple[str, ...]:
    """Reduce the calling process to ``keep + add - drop`` (see :func:`resolve_capabilities`).

    Drops every other capability from the bounding set (needs CAP_SETPCAP,
    so this happens first), clears the ambient set, then capset(2)s
    effective = permitted = the kept set and inheritable = empty. Run it in
    the container's child, after the mounts (which need CAP_SYS_ADMIN).

    Returns the kept names, in kernel order.

    Raises:
        InvalidArgument: an unknown capability name (before anything changes).
        PermissionDenied: a kept capability is not in this process's
            permitted set (asking for more than we have is refused, not
            silently ignored), or the kernel refused a step.

    Example::

        drop_capabilities(drop=["NET_RAW"])
    """
    names = resolve_capabilities(keep, add, drop)
    drop_to_mask(syscalls.cap_mask(names))
    return names


def drop_to_mask(want: int) -> None:
    """:func:`drop_capabilities` for capabilities already resolved, as a bit
    mask (``syscalls.cap_mask(resolve_capabilities(...))``): what a
    container's child runs, with the names checked in the caller.

    Raises:
        PermissionDenied: as :func:`drop_capabilities`.
    """
    _eff, permitted, _inh = syscalls.capget()
    missing = want & ~permitted
    if missing:
        raise PermissionDenied("cannot keep capabilities this process does not have",
                               op="capset", field="capabilities", value=syscalls.cap_names(missing),
                               errno=errno.EPERM,
                               hint="the caller's own bounding/permitted set lacks them "
                                    "(see CapPrm in /proc/self/status); drop them from the request")
    # Bounding set first (needs CAP_SETPCAP, which capset may take away).
    syscalls.capbset_drop_all_but(want)
    syscalls.ambient_clear_all()
    syscalls.capset(want, want, 0)


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: setuid/setgid bits and file capabilities stop working
    across execve, for this process and all its descendants (irreversible).

    Also what lets an unprivileged process install a seccomp filter.
    """
    syscalls.set_no_new_privs()


def close_fds(keep: Iterable[int] = (0, 1, 2)) -> None:
    """Close every file descriptor of the calling process except ``keep``.

    Fds leaked into a container are a classic escape (an open directory of
    the host is a way out of any mount namespace: CVE-2024-21626), so the
    child closes everything it was not asked to pass on. Uses
    ``os.closerange``, which is close_range(2) on this kernel.

    Raises:
        InvalidArgument: ``keep`` holds something that is not an fd number.

    Example::

        close_fds(keep=(0, 1, 2, 5))
    """
    fds: set[int] = set()
    for fd in keep:
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
            raise InvalidArgument("keep holds fd numbers (ints >= 0)", field="keep", value=fd)
        fds.add(fd)
    low = 0
    for fd in sorted(fds):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    # Past the highest fd any process here can hold (fs.nr_open defaults to 2**20).
    os.closerange(low, max(1 << 20, os.sysconf("SC_OPEN_MAX")))
