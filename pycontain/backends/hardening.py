"""The last steps of a container's setup, in its single-threaded child, in
DESIGN.md §3's order: (mounts, pivot_root: :mod:`pycontain.backends.rootfs`)
-> capabilities -> user -> no_new_privs -> seccomp -> working directory.

:func:`prepare` runs in the caller (it compiles the seccomp filter there, so
no libseccomp work happens between fork and exec); :func:`confine` runs in
the child.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from pycontain.backends import capabilities, seccomp_cache
from pycontain.errors import InvalidArgument, NotFound, PycontainError, kernel_error
from pycontain.kernel import syscalls
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS


@dataclass(frozen=True)
class Confinement:
    """What :func:`confine` applies, computed ahead in the caller."""

    caps: tuple[str, ...]
    bpf: bytes | None  # the compiled seccomp program, None = unconfined
    workdir: str
    user: str | None
    #: ``caps`` as a bit mask, computed from them here in the caller (also by
    #: dataclasses.replace), so the child applies it without the names
    cap_mask: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cap_mask", syscalls.cap_mask(self.caps))


def prepare(cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (), seccomp_spec: str = "default",
            workdir: str = "/", user: str | None = None) -> Confinement:
    """Resolve capabilities and compile the seccomp filter (in the caller).

    Raises:
        InvalidArgument: unknown capabilities or a bad seccomp profile.
    """
    add = [c for c in cap_add if c != "ALL"]
    drop = [c for c in cap_drop if c != "ALL"]
    keep: Iterable[str] = DOCKER_DEFAULT_CAPS
    if "ALL" in cap_add:
        # Every capability this process holds (a VM's or a container's root
        # may lack some, e.g. CAP_SYS_RESOURCE): asking for more is refused.
        keep = tuple(syscalls.cap_names(syscalls.capget()[1]))
    if "ALL" in cap_drop:
        keep = ()
    caps = capabilities.resolve_capabilities(keep, add, drop)
    if seccomp_spec == "default":
        # From the state dir, usually: pycontain.backends.seccomp (its parser,
        # ~4 ms to import) loads only to compile.
        bpf: bytes | None = seccomp_cache.default_program(caps)
    else:
        from pycontain.backends import seccomp

        bpf = seccomp.compile_bpf(seccomp.load_profile(seccomp_spec), caps)
    return Confinement(caps, bpf, workdir, user)


def _lookup_user(user: str) -> tuple[int, int, list[int]]:
    """uid, gid and supplementary groups for "name|uid[:group|gid]", read from
    the container's own /etc/passwd and /etc/group (we are inside the root)."""
    name, _, group = user.partition(":")

    def table(path: str) -> list[list[str]]:
        try:
            with open(path) as f:
                return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
        except OSError:
            return []

    passwd = table("/etc/passwd")
    groups = table("/etc/group")
    if name.isdigit():
        uid = int(name)
        entry = next((p for p in passwd if len(p) > 3 and p[2] == name), None)
        gid = int(entry[3]) if entry else uid
        login = entry[0] if entry else None
    else:
        entry = next((p for p in passwd if p[0] == name and len(p) > 3), None)
        if entry is None:
            raise NotFound("no such user in the container's /etc/passwd", field="user", value=user)
        uid, gid, login = int(entry[2]), int(entry[3]), name
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((g for g in groups if g[0] == group and len(g) > 2), None)
            if g is None:
                raise NotFound("no such group in the container's /etc/group", field="user", value=user)
            gid = int(g[2])
    extra = sorted({int(g[2]) for g in groups if len(g) > 3 and login and login in g[3].split(",")} - {gid})
    return uid, gid, extra


def _switch_user(user: str) -> None:
    uid, gid, extra = _lookup_user(user)
    try:
        os.setgroups(extra)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise kernel_error("setresuid", e.errno or 0, detail=f"user={user}") from None


def confine(c: Confinement) -> None:
    """In the container's child, after the mounts: drop capabilities, switch
    user, set no_new_privs, install seccomp, enter the working directory."""
    # Names resolved and checked by prepare(): only the mask is applied here.
    capabilities.drop_to_mask(c.cap_mask)
    if c.user is not None:
        _switch_user(c.user)
    capabilities.set_no_new_privs()
    try:
        os.chdir(c.workdir)
    except FileNotFoundError:
        os.makedirs(c.workdir, exist_ok=True)
        os.chdir(c.workdir)
    except OSError as e:
        raise kernel_error("chdir", e.errno or 0, path=c.workdir) from None
    # Seccomp last: it may forbid what the steps above needed.
    if c.bpf is not None:
        # What seccomp.apply_seccomp does with a program, without that module.
        try:
            syscalls.seccomp_load_bpf(c.bpf)
        except PycontainError as e:
            if e.errno == errno.EACCES:
                raise kernel_error("prctl(PR_SET_SECCOMP)", errno.EACCES,
                                   hint="set no_new_privs first, or keep CAP_SYS_ADMIN") from None
            raise


def check_workdir(workdir: str) -> str:
    if not workdir.startswith("/"):
        raise InvalidArgument("workdir must be absolute", field="workdir", value=workdir)
    return workdir
