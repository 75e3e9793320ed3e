"""Seccomp filters: Docker's default profile, "unconfined", or a Docker-format JSON file.

A profile is data in the format of Docker's ``seccomp.json`` (``defaultAction``,
``architectures``/``archMap``, ``syscalls`` with ``names``, ``action``,
``errnoRet``, ``args``, ``includes``/``excludes``). :func:`parse_profile`
checks it strictly (unknown keys, wrong types, bad actions or operators raise
:class:`~pycontain.errors.InvalidArgument`); :func:`build_filter` compiles it
with libseccomp (through pyseccomp) for the capabilities the container keeps;
:func:`apply_seccomp` loads it. The filter goes on last, right before exec
(DESIGN.md §3), because it also forbids what the setup itself does (mount).

The built-in default (:func:`default_profile`) has the effect of Docker's
default profile, built the same way Docker's is: an allow-list with
``SCMP_ACT_ERRNO(EPERM)`` as default, so system calls newer than the list are
refused too (libseccomp 2.5 does not know every call of a 6.x kernel; a deny
list would let those through). What it refuses, for a container with Docker's
default capabilities:

* mount API and namespaces: mount umount umount2 pivot_root fsopen fsconfig
  fsmount fspick move_mount open_tree mount_setattr setns; unshare and clone
  with any CLONE_NEW* flag (flags masked as Docker does); clone3 gets ENOSYS,
  so the C library falls back to clone, whose flags the filter can see.
* kernel state: reboot kexec_load kexec_file_load init_module finit_module
  delete_module swapon swapoff acct settimeofday stime clock_settime
  clock_adjtime adjtimex syslog sethostname setdomainname quotactl
  lookup_dcookie iopl ioperm vhangup, NUMA policy calls.
* introspection of other processes: ptrace process_vm_readv process_vm_writev
  kcmp pidfd_getfd process_madvise (stricter than Docker, which allows
  ptrace on kernels >= 4.8), bpf perf_event_open, name_to_handle_at and
  open_by_handle_at (the "shocker" escape).
* never namespaced or risky: keyctl add_key request_key userfaultfd
  io_uring_* (as Docker 25+), personality other than the Linux ones,
  vm86 vm86old uselib nfsservctl sysfs _sysctl ustat and other obsolete calls.
* pycontain's additions: ``ioctl(TIOCSTI)`` and ``ioctl(TIOCLINUX)`` (typing
  into the caller's terminal: CVE-2017-5226 in bubblewrap) and mknod of block
  devices (no container needs one; with CAP_MKNOD and no device cgroup it
  would open the host's disks).

Capability-gated groups come back when the container keeps the capability
(``includes.caps``, as in Docker): with CAP_SYS_ADMIN, mount and unshare are
allowed again, with CAP_SYS_PTRACE, ptrace.

Example::

    program = compile_bpf(load_profile("default"))   # in the parent, once
    ...                                               # in the child, last:
    apply_seccomp(program)
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from pycontain.errors import InvalidArgument, KernelError, PycontainError, Unsupported, kernel_error
from pycontain.kernel import constants as C
from pycontain.kernel import syscalls

__all__ = [
    "ArgCondition",
    "SyscallRule",
    "Profile",
    "SeccompSpec",
    "parse_profile",
    "load_profile",
    "default_profile",
    "build_filter",
    "compile_bpf",
    "apply_seccomp",
    "complement_cover",
]

_DEFAULT_CAPS: tuple[str, ...] = C.DOCKER_DEFAULT_CAPS

# -- the profile model -----------------------------------------------------------

ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
)
OPERATORS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)
#: libseccomp's architecture names -> pyseccomp.Arch attribute.
ARCHITECTURES = {
    "SCMP_ARCH_X86": "X86",
    "SCMP_ARCH_X86_64": "X86_64",
    "SCMP_ARCH_X32": "X32",
    "SCMP_ARCH_ARM": "ARM",
    "SCMP_ARCH_AARCH64": "AARCH64",
    "SCMP_ARCH_MIPS": "MIPS",
    "SCMP_ARCH_MIPS64": "MIPS64",
    "SCMP_ARCH_MIPS64N32": "MIPS64N32",
    "SCMP_ARCH_MIPSEL": "MIPSEL",
    "SCMP_ARCH_MIPSEL64": "MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32": "MIPSEL64N32",
    "SCMP_ARCH_PPC": "PPC",
    "SCMP_ARCH_PPC64": "PPC64",
    "SCMP_ARCH_PPC64LE": "PPC64LE",
    "SCMP_ARCH_S390": "S390",
    "SCMP_ARCH_S390X": "S390X",
    "SCMP_ARCH_PARISC": "PARISC",
    "SCMP_ARCH_PARISC64": "PARISC64",
    "SCMP_ARCH_RISCV64": "RISCV64",
}
# The architectures a process of this machine can make system calls as.
# Others in a profile (Docker's lists every one) are left out of the filter.
_ARCH_FAMILIES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}
# Names Docker profiles use in includes/excludes "arches" (Go's GOARCH).
_GOARCH = {"x86_64": ("amd64", "x86_64"), "aarch64": ("arm64", "aarch64")}

_U64 = (1 << 64) - 1
_MAX_ERRNO = 4095
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class ArgCondition:
    """One argument comparison: ``args[index] <op> value`` (for MASKED_EQ:
    ``args[index] & value == value_two``), as in Docker's profile format."""

    index: int
    op: str
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class SyscallRule:
    """An action for some system calls, when all ``args`` conditions hold.

    ``includes_caps``: applies only if the container keeps all of them;
    ``excludes_caps``: not if it keeps any; the same for ``*_arches`` (GOARCH
    names such as ``amd64``) and ``min_kernel`` (major, minor).
    """

    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[ArgCondition, ...] = ()
    includes_caps: tuple[str, ...] = ()
    excludes_caps: tuple[str, ...] = ()
    includes_arches: tuple[str, ...] = ()
    excludes_arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None

    def applies(self, caps: Iterable[str], machine: str | None = None,
                kernel: tuple[int, int] | None = None) -> bool:
        """Whether this rule is in force for a container keeping ``caps``."""
        have = {_cap_key(c) for c in caps}
        if any(c not in have for c in self.includes_caps):
            return False
        if any(c in have for c in self.excludes_caps):
            return False
        goarch = _GOARCH.get(machine or os.uname().machine, (machine or os.uname().machine,))
        if self.includes_arches and not set(goarch) & set(self.includes_arches):
            return False
        if self.excludes_arches and set(goarch) & set(self.excludes_arches):
            return False
        if self.min_kernel is not None and (kernel or _kernel_version()) < self.min_kernel:
            return False
        return True


@dataclass(frozen=True)
class Profile:
    """A validated seccomp profile (see :func:`parse_profile`)."""

    default_action: str
    default_errno: int | None
    architectures: tuple[str, ...]
    rules: tuple[SyscallRule, ...]


#: What ``seccomp=`` accepts: "default", "unconfined", a JSON file path, a
#: profile dict, or an already parsed :class:`Profile`.
SeccompSpec = Union[str, "os.PathLike[str]", Mapping[str, Any], Profile]


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _cap_key(name: str) -> str:
    key = name.upper()
    return key if key.startswith("CAP_") else "CAP_" + key


# -- strict parsing ------------------------------------------------------------------


def _bad(msg: str, where: str, value: Any, hint: str | None = None) -> InvalidArgument:
    return InvalidArgument(msg, field=f"seccomp.{where}", value=value, hint=hint)


def _mapping(obj: Any, where: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _bad("expected a JSON object", where, obj)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise _bad("unknown key", where, unknown[0], hint="known keys: " + ", ".join(sorted(allowed)))
    return obj


def _int(obj: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or not lo <= obj <= hi:
        raise _bad(f"expected an integer from {lo} to {hi}", where, obj)
    return obj


def _str_list(obj: Any, where: str) -> tuple[str, ...]:
    if not isinstance(obj, list) or not all(isinstance(x, str) and x for x in obj):
        raise _bad("expected a list of non-empty strings", where, obj)
    return tuple(obj)


def _action(obj: Any, where: str) -> str:
    if obj not in ACTIONS:
        hint = "SCMP_ACT_NOTIFY needs a listener, which pycontain does not run" \
            if obj == "SCMP_ACT_NOTIFY" else "one of " + ", ".join(ACTIONS)
        raise _bad("unsupported action", where, obj, hint=hint)
    return str(obj)


def _errno_name(obj: Any, where: str) -> int | None:
    # containers-common's profiles also spell the errno out ("errno": "EPERM").
    if obj is None:
        return None
    value = getattr(errno, obj, None) if isinstance(obj, str) and obj.startswith("E") else None
    if not isinstance(value, int):
        raise _bad("unknown errno name", where, obj, hint='e.g. "EPERM"')
    return value


def _errno_ret(action: str, obj: Any, where: str, name: Any = None) -> int | None:
    by_name = _errno_name(name, where.replace("errnoRet", "errno").replace("ErrnoRet", "Errno"))
    if obj is None:
        obj = by_name
    elif by_name is not None and by_name != obj:
        raise _bad("errno and errnoRet disagree", where, [obj, name])
    if obj is None:
        return None
    if action not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        raise _bad("errnoRet goes only with SCMP_ACT_ERRNO or SCMP_ACT_TRACE", where, obj)
    return _int(obj, where, 0, _MAX_ERRNO)


def _caps(obj: Any, where: str) -> tuple[str, ...]:
    names = _str_list(obj, where)
    for n in names:
        if _cap_key(n) not in C.CAP_NUMBERS:
            raise _bad("unknown capability", where, n, hint="names as in capabilities(7)")
    return tuple(_cap_key(n) for n in names)


def _filter_cond(obj: Any, where: str) -> dict[str, Any]:
    m = _mapping(obj, where, ("caps", "arches", "minKernel"))
    out: dict[str, Any] = {"caps": (), "arches": (), "min_kernel": None}
    if "caps" in m:
        out["caps"] = _caps(m["caps"], f"{where}.caps")
    if "arches" in m:
        out["arches"] = tuple(a.lower() for a in _str_list(m["arches"], f"{where}.arches"))
    if "minKernel" in m:
        mk = m["minKernel"]
        match = re.fullmatch(r"(\d+)\.(\d+)", mk) if isinstance(mk, str) else None
        if not match:
            raise _bad("minKernel is 'major.minor'", f"{where}.minKernel", mk, hint='e.g. "4.8"')
        out["min_kernel"] = (int(match.group(1)), int(match.group(2)))
    return out


def _arg(obj: Any, where: str) -> ArgCondition:
    m = _mapping(obj, where, ("index", "value", "valueTwo", "op"))
    for key in ("index", "value", "op"):
        if key not in m:
            raise _bad(f"an argument condition needs {key!r}", where, dict(m))
    op = m["op"]
    if op not in OPERATORS:
        raise _bad("unknown comparison", f"{where}.op", op, hint="one of " + ", ".join(OPERATORS))
    return ArgCondition(
        index=_int(m["index"], f"{where}.index", 0, 5),
        op=op,
        value=_int(m["value"], f"{where}.value", 0, _U64),
        value_two=_int(m.get("valueTwo", 0), f"{where}.valueTwo", 0, _U64),
    )


def _rule(obj: Any, where: str) -> SyscallRule:
    m = _mapping(obj, where, ("names", "name", "action", "errnoRet", "errno", "args", "comment", "includes",
                              "excludes"))
    if "names" in m and "name" in m:
        raise _bad("give names or name, not both", where, dict(m))
    if "names" in m:
        names = _str_list(m["names"], f"{where}.names")
    elif "name" in m:
        names = _str_list([m["name"]], f"{where}.name")
    else:
        raise _bad("a syscalls entry needs 'names'", where, dict(m))
    for n in names:
        if not _NAME_RE.fullmatch(n):
            raise _bad("not a system call name", f"{where}.names", n)
    if "action" not in m:
        raise _bad("a syscalls entry needs 'action'", where, dict(m))
    action = _action(m["action"], f"{where}.action")
    args = m.get("args") or []
    if not isinstance(args, list) or len(args) > 6:
        raise _bad("args is a list of at most 6 conditions", f"{where}.args", args)
    if "comment" in m and not isinstance(m["comment"], str):
        raise _bad("comment is a string", f"{where}.comment", m["comment"])
    inc = _filter_cond(m.get("includes") or {}, f"{where}.includes")
    exc = _filter_cond(m.get("excludes") or {}, f"{where}.excludes")
    if exc["min_kernel"] is not None:
        raise _bad("excludes.minKernel is not supported", f"{where}.excludes.minKernel", exc["min_kernel"])
    return SyscallRule(
        names=names,
        action=action,
        errno_ret=_errno_ret(action, m.get("errnoRet"), f"{where}.errnoRet", m.get("errno")),
        args=tuple(_arg(a, f"{where}.args[{i}]") for i, a in enumerate(args)),
        includes_caps=inc["caps"],
        excludes_caps=exc["caps"],
        includes_arches=inc["arches"],
        excludes_arches=exc["arches"],
        min_kernel=inc["min_kernel"],
    )


def parse_profile(data: Any) -> Profile:
    """Validate a Docker-format profile (a dict, as ``json.load`` gives it).

    Accepted keys: ``defaultAction``, ``defaultErrnoRet`` (or the name,
    ``defaultErrno``, as containers-common writes it), ``architectures``,
    ``archMap`` (``[{"architecture", "subArchitectures"}]``), ``syscalls``
    (entries: ``names`` (or legacy ``name``), ``action``, ``errnoRet``/``errno``,
    ``args`` (``index value valueTwo op``), ``includes``/``excludes``
    (``caps arches minKernel``), ``comment``), ``flags`` (ignored) and
    ``comment``. Anything else is refused rather than silently ignored.

    Raises:
        InvalidArgument: naming the JSON path (``seccomp.syscalls[3].action``) and value.

    Example::

        parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}]})
    """
    m = _mapping(data, "profile", ("defaultAction", "defaultErrnoRet", "defaultErrno", "architectures", "archMap",
                                   "syscalls", "flags", "comment"))
    if "defaultAction" not in m:
        raise _bad("a profile needs defaultAction", "defaultAction", None, hint='e.g. "SCMP_ACT_ERRNO"')
    default = _action(m["defaultAction"], "defaultAction")
    default_errno = _errno_ret(default, m.get("defaultErrnoRet"), "defaultErrnoRet", m.get("defaultErrno"))
    arches: list[str] = []
    if "architectures" in m:
        arches.extend(_str_list(m["architectures"], "architectures"))
    if "archMap" in m:
        amap = m["archMap"]
        if not isinstance(amap, list):
            raise _bad("archMap is a list", "archMap", amap)
        for i, entry in enumerate(amap):
            e = _mapping(entry, f"archMap[{i}]", ("architecture", "subArchitectures"))
            if not isinstance(e.get("architecture"), str):
                raise _bad("archMap entries need 'architecture'", f"archMap[{i}]", entry)
            arches.append(e["architecture"])
            arches.extend(_str_list(e.get("subArchitectures") or [], f"archMap[{i}].subArchitectures"))
    for a in arches:
        if a not in ARCHITECTURES:
            raise _bad("unknown architecture", "architectures", a, hint="e.g. SCMP_ARCH_X86_64")
    if "flags" in m:
        _str_list(m["flags"], "flags")
    syscalls = m.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise _bad("syscalls is a list", "syscalls", syscalls)
    rules = tuple(_rule(entry, f"syscalls[{i}]") for i, entry in enumerate(syscalls))
    return Profile(default, default_errno, tuple(dict.fromkeys(arches)), rules)


def load_profile(spec: SeccompSpec) -> Profile | None:
    """``"default"`` -> :func:`default_profile`, ``"unconfined"`` -> None (no
    filter), a path -> the parsed JSON file, a dict -> parsed, a Profile as is.

    Raises:
        InvalidArgument: bad JSON, a bad profile, a missing file, or a bad ``spec``.

    Example::

        load_profile("/etc/containers/seccomp.json")
    """
    if isinstance(spec, Profile):
        return spec
    if isinstance(spec, Mapping):
        return parse_profile(spec)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise InvalidArgument("seccomp is 'default', 'unconfined', a JSON file path or a profile dict",
                              field="seccomp", value=spec)
    if spec == "default":
        return default_profile()
    if spec == "unconfined":
        return None
    try:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidArgument(f"cannot read seccomp profile: {e.strerror}", field="seccomp", value=spec,
                              hint="give 'default', 'unconfined' or the path of a Docker-format JSON file") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile is not valid JSON: {e}", field="seccomp", value=spec) from None
    return parse_profile(data)


# -- the default profile ---------------------------------------------------------------

# Allowed for every container: Docker's default allow-list in spirit, minus
# what pycontain refuses on top (see the module docstring). Calls the local
# libseccomp does not know are skipped when the filter is built.
_ALLOWED = """
_llseek _newselect accept accept4 access alarm arch_prctl arm_fadvise64_64 arm_sync_file_range bind
breakpoint brk cacheflush cachestat capget capset chdir chmod chown chown32 clock_getres
clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range
connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2
epoll_wait eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64
fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync
fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
get_robust_list get_thread_area get_tls getcpu getcwd getdents getdents64 getegid getegid32 geteuid
geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid
getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname
getsockopt gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit
ioprio_get ioprio_set ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
lchown32 lgetxattr link linkat listen listxattr llistxattr lremovexattr lseek lsetxattr lstat lstat64
madvise map_shadow_stack membarrier memfd_create mincore mkdir mkdirat mlock mlock2 mlockall mmap mmap2
modify_ldt mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
nanosleep newfstatat nice oldfstat oldlstat oldolduname oldstat olduname open openat openat2 pause
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readdir readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min sched_getaffinity
sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl
semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
set_robust_list set_thread_area set_tid_address set_tls setfsgid setfsgid32 setfsuid setfsuid32 setgid
setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid setuid32 setxattr sgetmask
shmat shmctl shmdt shmget shutdown sigaction sigaltstack signal signalfd signalfd4 sigpending sigprocmask
sigreturn sigsuspend socket socketcall socketpair splice ssetmask stat stat64 statfs statfs64 statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname
unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
""".split()

# Allowed only while the container keeps the capability (Docker's includes.caps).
_CAP_GATED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CAP_SYS_ADMIN", ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
                       "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
                       "open_tree", "perf_event_open", "pivot_root", "quotactl", "quotactl_fd",
                       "setdomainname", "sethostname", "setns", "swapon", "swapoff", "syslog", "umount",
                       "umount2", "unshare", "mknod", "mknodat")),
    ("CAP_SYS_BOOT", ("reboot", "kexec_load", "kexec_file_load")),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("init_module", "finit_module", "delete_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE", ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
                        "process_madvise")),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64", "adjtimex",
                      "clock_adjtime", "clock_adjtime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node", "move_pages",
                      "migrate_pages")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
)

#: Never allowed by the default profile, whatever the capabilities (checked by the tests).
NEVER_ALLOWED: tuple[str, ...] = (
    "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "vm86", "vm86old", "uselib", "nfsservctl", "get_kernel_syms", "query_module",
    "create_module", "sysfs", "_sysctl", "ustat", "bdflush", "afs_syscall", "tuxcall", "security",
    "vserver", "pciconfig_iobase", "pciconfig_read", "pciconfig_write",
)

# Namespace flags clone/unshare may not carry without CAP_SYS_ADMIN. clone's
# low byte is the exit signal, so CLONE_NEWTIME (0x80) is checked for unshare only.
_CLONE_NS_MASK = (C.CLONE_NEWNS | C.CLONE_NEWUTS | C.CLONE_NEWIPC | C.CLONE_NEWUSER | C.CLONE_NEWPID
                  | C.CLONE_NEWNET | C.CLONE_NEWCGROUP)
_UNSHARE_NS_MASK = _CLONE_NS_MASK | C.CLONE_NEWTIME
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
_S_IFMT = 0o170000
_S_IFBLK = 0o060000
# personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 (and
# with PER_LINUX32), and 0xffffffff, which only queries.
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def complement_cover(forbidden: Iterable[int], mask: int) -> list[tuple[int, int]]:
    """(mask, value) pairs whose MASKED_EQ tests, OR'ed, hold exactly when
    ``arg & mask`` is none of ``forbidden``.

    libseccomp has no "masked not-equal" and refuses a conditional rule with
    the default action, so "allow ioctl unless its request is TIOCSTI" is
    written as: allowed if some bit on which all forbidden values agree
    differs, or if the bits on which they disagree form another pattern.
    Only the bits in ``mask`` are compared, so garbage in the upper half of a
    32-bit argument (the kernel truncates ``ioctl``'s request to unsigned
    int) cannot slip past (the flatpak TIOCSTI bypass, CVE-2019-10063).

    Raises:
        InvalidArgument: no forbidden value, or too many disagreeing bits (> 6).
    """
    values = sorted({v & mask for v in forbidden})
    if not values:
        raise InvalidArgument("nothing to forbid", field="forbidden", value=values)
    agree = mask
    for v in values[1:]:
        agree &= ~(v ^ values[0])
    disagree = mask & ~agree
    width = bin(disagree).count("1")
    if width > 6:
        raise InvalidArgument("forbidden values differ in too many bits for a compact filter",
                              field="forbidden", value=[hex(v) for v in values])
    out = []
    bit = 1
    while bit <= agree:
        if agree & bit:
            out.append((bit, (values[0] & bit) ^ bit))
        bit <<= 1
    if disagree:
        positions = [i for i in range(64) if disagree >> i & 1]
        seen = {v & disagree for v in values}
        for pattern in range(1 << width):
            value = sum(1 << positions[j] for j in range(width) if pattern >> j & 1)
            if value not in seen:
                out.append((disagree, value))
    return out


def _masked(index: int, mask: int, value: int) -> dict[str, Any]:
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def default_profile_data() -> dict[str, Any]:
    """The built-in default profile as Docker-format data (see the module docstring)."""
    rules: list[dict[str, Any]] = [{"names": sorted(_ALLOWED), "action": "SCMP_ACT_ALLOW"}]
    for cap, names in _CAP_GATED:
        rules.append({"names": list(names), "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}})
    no_admin = {"caps": ["CAP_SYS_ADMIN"]}
    # The kernel reads personality's argument as unsigned int: compare the low
    # 32 bits only (a sign-extended 0xffffffff from a C int must still query).
    rules += [
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [_masked(0, 0xFFFFFFFF, p)]}
        for p in _PERSONALITIES
    ]
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": no_admin,
                  "args": [_masked(0, _CLONE_NS_MASK, 0)],
                  "comment": "no CLONE_NEW* flag without CAP_SYS_ADMIN"})
    rules.append({"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "excludes": no_admin,
                  "args": [_masked(0, _UNSHARE_NS_MASK, 0)],
                  "comment": "unshare(CLONE_FILES|CLONE_FS|CLONE_SYSVSEM) only"})
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS,
                  "excludes": no_admin,
                  "comment": "its flags sit in memory the filter cannot read: make libc fall back to clone"})
    for mask, value in complement_cover((TIOCSTI, TIOCLINUX), 0xFFFFFFFF):
        rules.append({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [_masked(1, mask, value)]})
    for name, index in (("mknod", 1), ("mknodat", 2)):
        for mask, value in complement_cover((_S_IFBLK,), _S_IFMT):
            rules.append({"names": [name], "action": "SCMP_ACT_ALLOW", "excludes": no_admin,
                          "args": [_masked(index, mask, value)]})
    machine = os.uname().machine
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": list(_ARCH_FAMILIES.get(machine, ())),
        "syscalls": rules,
    }


_DEFAULT: Profile | None = None


def default_profile() -> Profile:
    """The built-in default :class:`Profile` (parsed once, then cached)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = parse_profile(default_profile_data())
    return _DEFAULT


# -- compiling and loading ----------------------------------------------------------------


def _pyseccomp() -> Any:
    try:
        import pyseccomp
    except Exception as e:  # ImportError, or OSError when libseccomp.so is missing
        raise Unsupported(f"seccomp filters need pyseccomp and libseccomp: {e}", op="seccomp",
                          hint="pip install pyseccomp; apt-get install libseccomp2") from None
    return pyseccomp


def _action_value(sc: Any, action: str, errno_ret: int | None) -> int:
    if action == "SCMP_ACT_ALLOW":
        return int(sc.ALLOW)
    if action == "SCMP_ACT_ERRNO":
        return int(sc.ERRNO(errno.EPERM if errno_ret is None else errno_ret))
    if action == "SCMP_ACT_TRACE":
        return int(sc.TRACE(errno.EPERM if errno_ret is None else errno_ret))
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return int(sc.KILL_THREAD)
    if action == "SCMP_ACT_KILL_PROCESS":
        return int(sc.KILL_PROCESS)
    if action == "SCMP_ACT_TRAP":
        return int(sc.TRAP)
    if action == "SCMP_ACT_LOG":
        return int(sc.LOG)
    raise InvalidArgument("unsupported action", field="seccomp.action", value=action)  # pragma: no cover


def _condition_groups(args: Sequence[ArgCondition]) -> list[list[ArgCondition]]:
    # libseccomp refuses two comparisons of one argument in a rule; like runc,
    # such a rule becomes one rule per comparison (OR'ed).
    indexes = [a.index for a in args]
    if len(set(indexes)) == len(indexes):
        return [list(args)]
    return [[a] for a in args]


def build_filter(profile: Profile | None, caps: Iterable[str] = _DEFAULT_CAPS) -> Any:
    """Compile ``profile`` for a container that keeps ``caps``; None for no profile.

    Returns a ``pyseccomp.SyscallFilter`` (not loaded yet). Build it in the
    parent and load it in the child with :func:`apply_seccomp`: a fork copies it.
    System call names this libseccomp does not know are skipped, as runc does.

    Raises:
        InvalidArgument: rules that contradict each other.
        Unsupported: pyseccomp/libseccomp missing.

    Example::

        f = build_filter(default_profile(), caps=["CAP_NET_RAW"])
    """
    if profile is None:
        return None
    sc = _pyseccomp()
    caps = tuple(caps)
    machine = os.uname().machine
    kernel = _kernel_version()
    default = _action_value(sc, profile.default_action, profile.default_errno)
    try:
        filt = sc.SyscallFilter(default)
        native = sc.system_arch()
        family = _ARCH_FAMILIES.get(machine, ())
        for name in profile.architectures:
            if name not in family:
                continue  # another machine's calls: this CPU cannot make them
            arch = getattr(sc.Arch, ARCHITECTURES[name])
            if arch != native:
                filt.add_arch(arch)
        # A binary tree over system call numbers: a few comparisons per call
        # instead of a scan of hundreds (libseccomp's SCMP_FLTATR_CTL_OPTIMIZE).
        filt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    except OSError as e:
        raise KernelError(f"libseccomp refused the filter setup: {e.strerror}", op="seccomp_init",
                          errno=e.errno) from None
    for rule in profile.rules:
        if not rule.applies(caps, machine, kernel):
            continue
        action = _action_value(sc, rule.action, rule.errno_ret)
        if action == default:
            continue  # libseccomp refuses such rules (EACCES); they change nothing
        for name in rule.names:
            if sc.resolve_syscall(sc.Arch.NATIVE, name) == -1:  # __NR_SCMP_ERROR: unknown here
                continue
            for group in _condition_groups(rule.args):
                conds = [sc.Arg(a.index, getattr(sc, a.op[len("SCMP_CMP_"):]), a.value, a.value_two)
                         for a in group]
                try:
                    filt.add_rule(action, name, *conds)
                except OSError as e:
                    raise InvalidArgument(f"libseccomp refused a rule: {e.strerror}", field="seccomp.syscalls",
                                          value=name, hint="two rules for this call contradict each other, "
                                                           "or a condition does not fit this architecture") from None
    return filt


_BPF_CACHE: dict[tuple[Profile, frozenset[str]], bytes] = {}


def compile_default_bpf(caps: Iterable[str] = _DEFAULT_CAPS) -> bytes:
    """``compile_bpf(default_profile(), caps)``, without building and parsing
    the default profile (~3 ms) when a program kept on disk fits.

    (:func:`pycontain.backends.seccomp_cache.default_program`.)

    Example::

        program = compile_default_bpf(["CAP_CHOWN"])
    """
    from pycontain.backends import seccomp_cache

    return seccomp_cache.default_program(caps)


def compile_bpf(profile: Profile | None, caps: Iterable[str] = _DEFAULT_CAPS) -> bytes | None:
    """The filter of :func:`build_filter` as a raw classic-BPF program (cached).

    Compiling the default profile takes libseccomp tens of milliseconds, so
    each (profile, capability set) is compiled once per process, and kept in
    the state directory for later processes (:mod:`pycontain.backends.seccomp_cache`);
    the child only hands the bytes to the kernel. None for no profile.

    Example::

        program = compile_bpf(default_profile())
    """
    if profile is None:
        return None
    key = (profile, frozenset(_cap_key(c) for c in caps))
    program = _BPF_CACHE.get(key)
    if program is None:
        # Also kept on disk for the next process (the CLI starts one per
        # container): see pycontain.backends.seccomp_cache.
        from pycontain.backends import seccomp_cache

        disk_key = seccomp_cache.cache_key(profile, key[1])
        program = seccomp_cache.load(disk_key)
    if program is None:
        filt = build_filter(profile, key[1])
        fd = os.memfd_create("pycontain-seccomp", os.MFD_CLOEXEC)
        try:
            with os.fdopen(fd, "w+b", closefd=False) as f:
                filt.export_bpf(f)
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            program = b"".join(chunks)
        finally:
            os.close(fd)
        seccomp_cache.store(disk_key, program)
    _BPF_CACHE[key] = program
    return program


def apply_seccomp(spec: SeccompSpec | bytes | None = "default", caps: Iterable[str] = _DEFAULT_CAPS) -> None:
    """Install a seccomp filter on the calling process (irreversible).

    ``spec`` is what :func:`load_profile` takes, or a program from
    :func:`compile_bpf` (compile in the parent, apply in the child: no
    libseccomp work between fork and exec). ``"unconfined"`` and None
    install nothing. Call it last, after
    :func:`~pycontain.backends.capabilities.set_no_new_privs`, right before
    exec; the filter is inherited by every descendant.

    Raises:
        InvalidArgument: a bad profile (before anything is installed).
        PermissionDenied: neither no_new_privs nor CAP_SYS_ADMIN.
        KernelError: the kernel refused the filter otherwise.

    Example::

        apply_seccomp("default", caps=["CAP_CHOWN"])
    """
    if spec is None:
        return
    program = spec if isinstance(spec, bytes) else compile_bpf(load_profile(spec), caps)
    if program is None:
        return
    try:
        syscalls.seccomp_load_bpf(program)
    except PycontainError as e:
        if e.errno == errno.EACCES:
            raise kernel_error("prctl(PR_SET_SECCOMP)", errno.EACCES,
                               hint="set no_new_privs first (set_no_new_privs()), or keep CAP_SYS_ADMIN") from None
        raise


def describe_action(action: str, errno_ret: int | None = None) -> str:
    """A short human text for an action, e.g. ``"errno EPERM"``."""
    if action == "SCMP_ACT_ERRNO":
        err = errno.EPERM if errno_ret is None else errno_ret
        return f"errno {errno.errorcode.get(err, err)}"
    return action[len("SCMP_ACT_"):].lower()

