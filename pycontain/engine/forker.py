"""The fork itself, shared by the direct path and the zygote.

When a spec's pid namespace can be set by the forking thread
(:attr:`ChildSpec.pid_by_forker`), the thread switches the pid namespace
its children go into, forks, and switches back at once. The child is then
PID 1 of its new namespace (or a member of the joined one) from its first
instruction, and its parent is the forker: no relay process in between,
and ``waitpid`` gives the workload's own status.

Every step that can fail runs before the fork, so a refusal is a typed
error in the caller and nothing is left behind.
"""

from __future__ import annotations

import errno
import os

from pycontain.engine.spec import ChildSpec
from pycontain.errors import KernelError, kernel_error
from pycontain.kernel import constants as C
from pycontain.kernel import nsfs, syscalls

__all__ = ["fork"]

def fork(spec: ChildSpec) -> tuple[int, int | None]:
    """``os.fork()`` for ``spec``; returns ``(pid, parent_pidfd)``.

    ``pid`` is 0 in the child, as for os.fork. ``parent_pidfd`` is, in the
    child, a pidfd of the forker when the child was placed in a pid
    namespace (its getppid() is 0 there, so this is how it can check that
    its parent is still alive after PR_SET_PDEATHSIG); None otherwise, and
    always None in the parent.

    Raises:
        KernelError / PermissionDenied: switching the pid namespace or fork failed.
    """
    if not spec.pid_by_forker:
        try:
            return os.fork(), None
        except OSError as e:
            raise kernel_error("fork", e.errno or errno.EAGAIN) from None
    # Our own pid namespace, to switch back to (opened per fork: no fd is
    # kept open in the caller between containers).
    own = nsfs.open_namespace(nsfs.proc_ns_path(os.getpid(), "pid"))
    joined = dict(spec.join).get("pid")
    target: int | None = None
    parent_fd: int | None = None
    switched = False
    try:
        target = nsfs.open_namespace(joined) if joined is not None else None
        parent_fd = syscalls.pidfd_open(os.getpid()) if spec.pdeathsig else None
        if target is not None:
            try:
                syscalls.setns(target, C.NAMESPACE_FLAGS["pid"])
            except KernelError as e:
                raise kernel_error("setns pid", e.errno or errno.EINVAL, path=joined,
                                   hint=f"is {joined} a pid namespace of this host (or one below ours)?") from None
        else:
            syscalls.unshare(C.NAMESPACE_FLAGS["pid"])
        switched = True
        try:
            pid = os.fork()
        except OSError as e:
            raise kernel_error("fork", e.errno or errno.EAGAIN) from None
    except BaseException:
        if switched:
            _restore(own)
        else:
            os.close(own)
        if parent_fd is not None:
            os.close(parent_fd)
        raise
    finally:
        if target is not None:
            os.close(target)
    if pid == 0:
        os.close(own)
        return 0, parent_fd
    _restore(own)
    if parent_fd is not None:
        os.close(parent_fd)
    return pid, None


def _restore(own: int) -> None:
    """Children of this thread go into our own pid namespace again."""
    try:
        syscalls.setns(own, C.NAMESPACE_FLAGS["pid"])
    finally:
        os.close(own)
