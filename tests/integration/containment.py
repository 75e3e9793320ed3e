"""Helpers for the rootfs / hardening / seccomp tests: a busybox rootfs and a
way to run a script (or Python probes) inside a container built from the
backends, through the engine.

Two configurations are used everywhere: ``HARDENED`` (what a container gets by
default: Docker's capabilities, no_new_privs, the default seccomp filter,
fds closed) and ``WEAKENED`` (every capability, no seccomp, no no_new_privs,
fds kept): each attack test runs its probe under both, so it is shown to
succeed where the defence is missing -- the test can fail.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pycontain.backends import capabilities, seccomp
from pycontain.backends.rootfs import RootfsPlan, enter_rootfs
from pycontain.engine import ChildSpec, start
from pycontain.errors import PycontainError
from pycontain.kernel import syscalls
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
NAMESPACES = frozenset({"mnt", "pid", "uts", "ipc", "net"})
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


def make_busybox_rootfs(path: str) -> str:
    """A minimal image: /bin/busybox (static) and a relative symlink per applet."""
    os.makedirs(f"{path}/bin")
    for d in ("tmp", "etc", "mnt", "root"):
        os.makedirs(f"{path}/{d}")
    shutil.copy2(os.path.realpath(BUSYBOX), f"{path}/bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", f"{path}/bin/{name}")
    with open(f"{path}/etc/passwd", "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    return path


@dataclass(frozen=True)
class Config:
    """How hardened the container is."""

    caps: tuple[str, ...] = DOCKER_DEFAULT_CAPS
    no_new_privs: bool = True
    seccomp: Any = "default"
    close_fds: bool = True


HARDENED = Config()
# "Every capability" = every one this session has (a VM's root may lack some,
# e.g. CAP_SYS_RESOURCE): asking for more is refused by drop_capabilities.
_HELD = tuple(syscalls.cap_names(syscalls.capget()[1]))
WEAKENED = Config(caps=_HELD, no_new_privs=False, seccomp="unconfined", close_fds=False)


@dataclass
class Run:
    returncode: int
    output: str
    value: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _harden(config: Config, program: bytes | None, uid: int | None = None) -> None:
    capabilities.drop_capabilities(keep=config.caps)
    if uid is not None:  # like a USER line: switch after the capability drop, before no_new_privs
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if config.no_new_privs:
        capabilities.set_no_new_privs()
    seccomp.apply_seccomp(program)


def run_script(root: str, script: str, config: Config = HARDENED, *, plan: dict[str, Any] | None = None,
               before: Callable[[], None] | None = None, new: Iterable[str] = NAMESPACES,
               enter: bool = True, uid: int | None = None, id_map: str | None = None, timeout: float = 30) -> Run:
    """Run ``busybox sh -c script`` in a container on ``root``; stdout+stderr captured."""
    program = seccomp.compile_bpf(seccomp.load_profile(config.seccomp), config.caps)
    plan_obj = RootfsPlan(root, **(plan or {}))
    with tempfile.TemporaryFile() as out:

        def target() -> None:
            if before is not None:
                before()
            if enter:
                enter_rootfs(plan_obj)
            _harden(config, program, uid)
            if config.close_fds:
                capabilities.close_fds((0, 1, 2))
            os.execv("/bin/busybox", ["sh", "-c", script])

        child = start(ChildSpec(target=target, new=frozenset(new), stdout=out.fileno(), stderr=out.fileno(),
                                uid_map=id_map, gid_map=id_map))
        try:
            code = child.wait(timeout)
        finally:
            if child.returncode is None:
                child.kill()
                child.wait()
        try:
            child.result()  # re-raises what the target raised before exec
        except PycontainError as e:
            if "without a result" not in str(e):
                raise
        out.seek(0)
        return Run(code, out.read().decode(errors="replace"))


def run_probes(root: str, probes: Callable[[], Any], config: Config = HARDENED, *,
               plan: dict[str, Any] | None = None, new: Iterable[str] = NAMESPACES,
               before: Callable[[], None] | None = None, timeout: float = 30) -> Any:
    """Enter the container, harden per ``config``, run ``probes()`` in Python
    (already imported: the rootfs has no Python) and return its value."""
    program = seccomp.compile_bpf(seccomp.load_profile(config.seccomp), config.caps)
    plan_obj = RootfsPlan(root, **(plan or {}))

    def target() -> Any:
        if before is not None:
            before()
        enter_rootfs(plan_obj)
        _harden(config, program)
        return probes()

    child = start(ChildSpec(target=target, new=frozenset(new)))
    try:
        return child.result(timeout)
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()


def in_fork(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child (so its side effects -- a new user
    namespace, a personality -- stay there) and return the errno it reports
    (0 = the call succeeded)."""
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 254
        os._exit(code & 0xFF)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def errno_of(ret: int) -> int:
    """0 for a successful libc/syscall return, else the errno."""
    return 0 if ret != -1 else ctypes.get_errno()


def name(err: int) -> str:
    return "ok" if err == 0 else errno.errorcode.get(err, str(err))
