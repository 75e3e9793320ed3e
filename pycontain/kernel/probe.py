"""Host probes for :func:`pycontain.doctor`: what this kernel and machine allow.

Two kinds of probe live here, both on the kernel side of the layering:

* Readers of plain facts (sysctls under ``/proc/sys``, ``/proc/filesystems``,
  seccomp support, access to cgroup directories). They never raise: a fact
  that cannot be read is ``None``.
* :class:`ProbeChild`, which starts ONE short-lived interpreter
  (``python -I -S``) that tries, each in its own forked process,
  ``unshare(CLONE_NEW<kind>)`` for every namespace kind and an overlay mount
  inside a private mount namespace, and prints the results as JSON.

Why a separate process: unsharing changes the caller for good, and some
kinds (user, mnt) fail in a multi-threaded process such as a Jupyter kernel
(unshare(2), EINVAL). Why forks inside it: each probe must start from the
same clean state, and a fork of a tiny single-threaded interpreter costs
about a millisecond.

Nothing the probes do is visible outside: namespaces die with the forked
process, the overlay and its tmpfs are mounted in a private mount namespace
whose mounts were first made private (so nothing propagates back to the host),
and the only host-side trace, an empty temp directory, is removed before the
child exits.

Example::

    child = ProbeChild.start()
    ...                                 # read other facts meanwhile
    result = child.result(timeout=5.0)  # {"namespaces": {...}, "overlay": {...}}
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from pycontain.errors import PycontainError
from pycontain.kernel import constants as C
from pycontain.kernel.proc import read_all

PROC_SYS = "/proc/sys"

#: sysctls that decide whether unprivileged users may create user namespaces.
USERNS_SYSCTLS: dict[str, str] = {
    # Upstream limit; 0 disables user namespaces for everyone (user_namespaces(7)).
    "max_user_namespaces": f"{PROC_SYS}/user/max_user_namespaces",
    # Debian's and Ubuntu's older out-of-tree switch; absent on upstream kernels.
    "unprivileged_userns_clone": f"{PROC_SYS}/kernel/unprivileged_userns_clone",
    # Ubuntu 23.10+: AppArmor may forbid unprivileged user namespaces.
    "apparmor_restrict_unprivileged_userns": f"{PROC_SYS}/kernel/apparmor_restrict_unprivileged_userns",
}


# -- plain facts (never raise) -------------------------------------------------


def read_sysctl_int(path: str) -> int | None:
    """The integer in a /proc/sys file, or None if it is absent or unreadable."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def userns_sysctls() -> dict[str, int | None]:
    """The user-namespace sysctls of :data:`USERNS_SYSCTLS` (None where absent)."""
    return {name: read_sysctl_int(path) for name, path in USERNS_SYSCTLS.items()}


def filesystems() -> frozenset[str]:
    """Filesystem types the running kernel has registered (/proc/filesystems).

    A type built as a module appears only once the module is loaded; see
    :func:`module_available` for the rest.
    """
    try:
        with open("/proc/filesystems") as f:
            return frozenset(line.split()[-1] for line in f if line.strip())
    except OSError:
        return frozenset()


def module_available(name: str, release: str | None = None) -> bool:
    """Whether kernel module ``name`` is built in or installed for this kernel.

    Reads ``modules.builtin`` and ``modules.dep`` under
    ``/lib/modules/<release>`` (what modprobe reads); False when they are
    missing, e.g. on kernels booted without their module tree.
    """
    release = release or os.uname().release
    base = f"/lib/modules/{release}"
    needle = f"/{name}.ko"
    for index in ("modules.builtin", "modules.dep"):
        try:
            with open(f"{base}/{index}") as f:
                for line in f:
                    path = line.split(":", 1)[0]
                    if path.endswith(needle) or needle + "." in path:
                        return True
        except OSError:
            continue
    return False


def seccomp_kernel_support() -> bool:
    """Whether the kernel was built with seccomp filters (CONFIG_SECCOMP_FILTER).

    The filter actions list (seccomp(2), ``/proc/sys/kernel/seccomp``)
    exists only then.
    """
    return os.path.exists(f"{PROC_SYS}/kernel/seccomp/actions_avail")


def seccomp_actions() -> tuple[str, ...]:
    """Filter return actions this kernel knows (``kill_process``, ``errno``, ...)."""
    try:
        with open(f"{PROC_SYS}/kernel/seccomp/actions_avail") as f:
            return tuple(f.read().split())
    except OSError:
        return ()


#: Where distributions put shared libraries; checked before asking ldconfig.
_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
             "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib")


def find_libseccomp() -> str | None:
    """The file name of libseccomp's shared library if installed, else None.

    Looks in the usual library directories first (a directory listing);
    only if that fails asks ctypes.util.find_library, which runs ldconfig
    and costs tens of milliseconds.
    """
    for directory in _LIB_DIRS:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        found = sorted(e for e in entries if e.startswith("libseccomp.so."))
        if found:
            return found[0]
    import ctypes.util  # lazy and last: find_library spawns ldconfig

    try:
        return ctypes.util.find_library("seccomp")
    except OSError:
        return None


def writable(path: str) -> bool:
    """Whether the caller may create entries in directory ``path`` (access(2) W_OK|X_OK).

    access(2) also says no on a read-only mount (EROFS), which is how
    ``/sys/fs/cgroup`` appears inside unprivileged containers.
    """
    try:
        return os.access(path, os.W_OK | os.X_OK)
    except OSError:
        return False


def cgroup_parent_writable(hierarchy: str, parent: str = "pycontain") -> bool:
    """Whether the caller may create cgroups for pycontain in ``hierarchy``.

    pycontain's cgroups live under ``<hierarchy>/<parent>``: once that
    directory exists it is the one that must be writable, else the
    hierarchy's root (where the parent would be created).
    """
    path = os.path.join(hierarchy, parent)
    return writable(path if os.path.isdir(path) else hierarchy)


# -- the probe child --------------------------------------------------------------

#: How a namespace kind's own file shows that unshare took effect. pid and
#: time namespaces apply to children only, so the caller's *_for_children
#: link changes instead (pid_namespaces(7), time_namespaces(7)).
_NS_LINK = {kind: kind for kind in C.NAMESPACE_KINDS} | {
    "pid": "pid_for_children",
    "time": "time_for_children",
}


def _fork_probe(fn: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """Start ``fn`` in a forked process; return (pid, read end of its result pipe).

    Only called inside the single-threaded probe interpreter, never in a
    caller's process (forking a threaded process is unsafe). Results are a few
    hundred bytes, far below a pipe's buffer, so a probe never blocks on its
    write and all probes can run at once.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        code = 0
        try:
            os.close(r)
            # A stuck probe must neither outlive the probe interpreter (killed
            # on timeout) nor hold its stdout open, which the caller reads to EOF.
            from pycontain.kernel import syscalls

            syscalls.set_pdeathsig(signal.SIGKILL)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            try:
                result = fn()
            except PycontainError as e:
                result = {"ok": False, "errno": e.errno, "error": getattr(e, "message", str(e)),
                          "op": e.op}
            except BaseException as e:  # report, never crash the probe run
                result = {"ok": False, "errno": getattr(e, "errno", None), "error": repr(e)}
            os.write(w, json.dumps(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _collect(pid: int, r: int) -> dict[str, Any]:
    """Read a forked probe's result and reap it."""
    try:
        data = read_all(r)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    try:
        return dict(json.loads(data))
    except ValueError:
        return {"ok": False, "errno": None, "error": f"probe process died (wait status {status})"}


def _run_forked(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` in a forked process and return the dict it produced."""
    return _collect(*_fork_probe(fn))


def _ns_inode(kind: str) -> int:
    return os.stat(f"/proc/self/ns/{_NS_LINK[kind]}").st_ino


def _took_effect(kind: str, before: int) -> bool:
    if kind == "pid":
        # pid_for_children cannot be read until a process exists in the new
        # namespace (pid_namespaces(7)); the proof is a child that is PID 1.
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.getpid() == 1 else 1)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0
    return _ns_inode(kind) != before


def _probe_namespace(kind: str) -> dict[str, Any]:
    """In a throw-away process: does ``unshare(CLONE_NEW<kind>)`` work and take effect?"""
    from pycontain.errors import KernelError
    from pycontain.kernel import syscalls

    flag = C.NAMESPACE_FLAGS[kind]
    if not os.path.exists(f"/proc/self/ns/{_NS_LINK[kind]}"):
        return {"ok": False, "in_kernel": False, "errno": errno.ENOENT,
                "error": f"/proc/self/ns/{_NS_LINK[kind]} does not exist"}
    before = _ns_inode(kind)
    try:
        syscalls.unshare(flag)
    except KernelError as e:
        result: dict[str, Any] = {"ok": False, "in_kernel": e.errno != errno.EINVAL, "errno": e.errno,
                                  "error": e.message}
        if kind != "user" and e.errno == errno.EPERM:
            # Unprivileged: the same kind may still work inside a new user
            # namespace, which grants CAP_SYS_ADMIN over it (user_namespaces(7)).
            try:
                syscalls.unshare(C.CLONE_NEWUSER | flag)
                result["in_userns"] = _took_effect(kind, before)
            except KernelError as e2:
                result["in_userns"] = False
                result["userns_errno"] = e2.errno
        return result
    changed = _took_effect(kind, before)
    return {"ok": changed, "in_kernel": True,
            "error": None if changed else "unshare returned 0 but the namespace did not change"}


def _write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _probe_overlay(tmp: str) -> dict[str, Any]:
    """In a throw-away process: mount an overlay in a private mount namespace and use it.

    As root the process unshares a mount namespace; otherwise a user plus mount
    namespace (overlay is mountable in a user namespace since Linux 5.11).
    The overlay sits on a fresh tmpfs so the host filesystem under ``tmp``
    (which may itself be an overlay, and cannot be an upper dir then) stays
    untouched.
    """
    from pycontain.kernel import syscalls

    step = "unshare"
    userns = os.geteuid() != 0
    try:
        if userns:
            uid, gid = os.geteuid(), os.getegid()
            syscalls.unshare(C.CLONE_NEWUSER | C.CLONE_NEWNS)
            step = "uid_map"
            # setgroups must be denied before an unprivileged gid_map write
            # (user_namespaces(7), "The /proc/[pid]/setgroups file").
            _write_proc("/proc/self/setgroups", "deny")
            _write_proc("/proc/self/uid_map", f"0 {uid} 1")
            _write_proc("/proc/self/gid_map", f"0 {gid} 1")
        else:
            syscalls.unshare(C.CLONE_NEWNS)
        step = "make / private"
        # Without this, mounts below would propagate to the host's peer group.
        syscalls.mount(None, "/", None, C.MS_REC | C.MS_PRIVATE)
        step = "mount tmpfs"
        syscalls.mount("tmpfs", tmp, "tmpfs", C.MS_NOSUID | C.MS_NODEV, "size=1m,mode=0700")
        dirs = {name: os.path.join(tmp, name) for name in ("lower", "upper", "work", "merged")}
        for path in dirs.values():
            os.mkdir(path)
        with open(os.path.join(dirs["lower"], "probe"), "w") as f:
            f.write("lower")
        step = "mount overlay"
        syscalls.mount("overlay", dirs["merged"], "overlay", 0,
                       f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}")
        step = "read through overlay"
        with open(os.path.join(dirs["merged"], "probe")) as f:
            if f.read() != "lower":
                return {"ok": False, "step": step, "userns": userns, "error": "lower file not visible"}
        step = "copy-up"
        with open(os.path.join(dirs["merged"], "probe"), "a") as f:
            f.write("+upper")
        with open(os.path.join(dirs["upper"], "probe")) as f:
            copied = f.read() == "lower+upper"
        with open(os.path.join(dirs["lower"], "probe")) as f:
            lower_intact = f.read() == "lower"
        if not (copied and lower_intact):
            return {"ok": False, "step": step, "userns": userns, "error": "copy-up did not happen"}
    except PycontainError as e:
        return {"ok": False, "step": step, "userns": userns, "errno": e.errno,
                "error": getattr(e, "message", str(e))}
    except OSError as e:
        return {"ok": False, "step": step, "userns": userns, "errno": e.errno, "error": str(e)}
    return {"ok": True, "userns": userns}


def _child_main() -> None:
    """Entry point of the probe interpreter: run every probe, print JSON to stdout."""
    import functools
    import tempfile

    out: dict[str, Any] = {"namespaces": {}, "overlay": None}
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix="pycontain-doctor-")
    except OSError as e:
        out["overlay"] = {"ok": False, "step": "temp dir", "errno": e.errno, "error": str(e)}
    # All probes run at once: they are independent processes, and the doctor's
    # answer time is then the slowest probe, not the sum of them.
    running = {kind: _fork_probe(functools.partial(_probe_namespace, kind)) for kind in C.NAMESPACE_KINDS}
    if tmp is not None:
        running["overlay"] = _fork_probe(functools.partial(_probe_overlay, tmp))
    try:
        for name, (pid, r) in running.items():
            result = _collect(pid, r)
            if name == "overlay":
                out["overlay"] = result
            else:
                out["namespaces"][name] = result
    finally:
        if tmp is not None:
            # Empty on the host side: everything was made inside the tmpfs of
            # the probe's private mount namespace, which died with it.
            try:
                os.rmdir(tmp)
            except OSError:
                pass
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()


class ProbeChild:
    """The one probe interpreter, started early so callers can work meanwhile.

    Example::

        child = ProbeChild.start()
        facts = child.result(timeout=5.0)
    """

    def __init__(self, proc: Any, error: str | None = None) -> None:
        self._proc = proc
        self._error = error

    @classmethod
    def start(cls, executable: str | None = None) -> ProbeChild:
        """Start ``python -I -S`` running :func:`_child_main`; never raises."""
        import subprocess  # lazy: keeps `import pycontain.kernel.probe` cheap in the child

        exe = executable or sys.executable
        if not exe:
            return cls(None, "no Python interpreter to run the probe (sys.executable is empty)")
        # -I -S: no site, no user paths, no PYTHON* variables, so start-up is
        # ~10 ms; pycontain is found through its own directory instead.
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (
            f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from pycontain.kernel.probe import _child_main; _child_main()"
        )
        try:
            proc = subprocess.Popen(
                [exe, "-I", "-S", "-c", code],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
                cwd="/",
            )
        except OSError as e:
            return cls(None, f"cannot start {exe}: {e.strerror or e}")
        return cls(proc)

    def result(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the child's JSON. On failure: ``{"error": "why"}``; never raises."""
        if self._proc is None:
            return {"error": self._error or "probe not started"}
        import subprocess

        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            # Don't read the pipes to EOF: a descendant might still hold them.
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
            return {"error": f"probe did not finish within {timeout:g} s"}
        if self._proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return {"error": f"probe exited with status {self._proc.returncode}: {tail[0]}"}
        try:
            return dict(json.loads(out))
        except ValueError:
            return {"error": "probe printed no valid JSON"}
