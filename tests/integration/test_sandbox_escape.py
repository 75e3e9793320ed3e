"""Escape attempts from inside real containers (``pycontain.Container``), as
root and as a non-root user, under the defaults and under a deliberately
weakened configuration (``cap_add=["ALL"], seccomp="unconfined"``, and for
the setuid/file-capability probes no no_new_privs either).

Every probe reports whether the attack got through. The defaults must block
every one; the weakened configuration must let through each attack whose
defence it removes (that is the calibration: the probe can fail). Attacks
whose defence does not depend on capabilities or seccomp (pivot_root and the
detached old root, the pid namespace, fd closing) cannot be let through by
the weakened configuration; their probes are calibrated instead by running
them on the host, where they must report the "escape" (tests at the end).

The backend-level versions of several of these (busybox rootfs, engine) are
in test_hardening.py, test_seccomp.py and test_rootfs.py; these go through
the public API end to end, with the workload as a fork of the caller (the
``%%container`` path, whose /proc/self/exe is the host's python) and as an
exec'd program.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import termios  # imported here: a non-root user inside cannot read the caller's stdlib (/root/.pyenv)
from typing import Any

import pytest

import pycontain
import pycontain.errors
from pycontain.container import Container
from pycontain.kernel import syscalls
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS
from tests.integration.containment import make_busybox_rootfs

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
NR = {"pivot_root": 155, "setns": 308, "keyctl": 250, "bpf": 321, "finit_module": 313, "kexec_file_load": 320,
      "syslog": 103, "ptrace": 101}
DOCKER_MASK = syscalls.cap_mask(DOCKER_DEFAULT_CAPS)
NONROOT = "1000:1000"
# A capability in Docker's bounding set, so only no_new_privs stands between
# a file capability and the process (one outside the set is refused at execve).
CAP_NET_RAW = 13


# -- probes (run inside the container: plain Python, already imported) ------------------------------------


def _sys(name: str, *args: Any) -> int:
    """errno of a raw system call, 0 if it succeeded."""
    ret = LIBC.syscall(NR[name], *args)
    return 0 if ret >= 0 else ctypes.get_errno()


def _in_fork(fn: Any) -> int:
    """Run ``fn`` (returns an errno, 0 = success) in a fork; its effects stay there."""
    pid = os.fork()
    if pid == 0:
        try:
            code = int(fn())
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 254
        os._exit(code & 0xFF)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def probe_chroot_escape(info: dict[str, Any]) -> tuple[bool, str]:
    # The classic: chroot into a subdirectory, climb out with "..", chroot there.
    def attempt() -> int:
        jail = info.get("jail", "/tmp/.jail")
        os.makedirs(jail, exist_ok=True)
        os.chroot(jail)
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        return 0 if os.stat("/").st_dev == info["host_root_dev"] else 99

    err = _in_fork(attempt)
    return err == 0, "still inside after the climb" if err == 99 else f"result {errno.errorcode.get(err, err)}"


def probe_old_root(info: dict[str, Any]) -> tuple[bool, str]:
    # Anything mounted that is the host's root filesystem (the old root, a
    # bind of it), or a leftover pivot directory.
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    seen = []
    for p in points:
        if p in info["volumes"]:
            continue  # binds of host directories the container was given on purpose
        try:
            if os.stat(p).st_dev == info["host_root_dev"]:
                seen.append(p)
        except OSError:
            pass
    names = [p for p in points if any(w in p for w in ("old_root", ".pivot", "oldroot"))]
    return bool(seen or names), f"host-fs mounts {seen}, pivot leftovers {names}"


def probe_fds(info: dict[str, Any]) -> tuple[bool, str]:
    # Inherited descriptors (CVE-2024-21626: a leaked directory fd is a way
    # out): any fd but stdio that is a directory or a file of the host.
    bad = []
    for fd in range(3, 1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) or st.st_dev == info["host_root_dev"]:
            bad.append((fd, os.readlink(f"/proc/self/fd/{fd}")))
    cwd = os.stat(".").st_dev == info["host_root_dev"]
    return bool(bad) or cwd, f"fds {bad}, cwd on host fs: {cwd}"


def probe_proc_self_exe(info: dict[str, Any]) -> tuple[bool, str]:
    # CVE-2019-5736: reopen the binary behind /proc/self/exe (or PID 1's)
    # for writing. Only opened, never written: success is the escape.
    out = []
    for path in ("/proc/self/exe", "/proc/1/exe"):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            out.append(f"{path}: {errno.errorcode.get(e.errno or 0, e.errno)}")
            continue
        on_host = os.fstat(fd).st_dev == info["host_root_dev"]
        os.close(fd)
        if on_host:
            return True, f"{path} opened for writing, a host file"
        out.append(f"{path}: writable copy-on-write file of the container")
    return False, "; ".join(out)


def probe_masked_paths(info: dict[str, Any]) -> tuple[bool, str]:
    # Masked: /proc/keys and /proc/timer_list read empty; undoing the mask
    # (umount) needs CAP_SYS_ADMIN and umount2.
    def attempt() -> int:
        LIBC.umount2(b"/proc/timer_list", 2)  # MNT_DETACH
        with open("/proc/timer_list") as f:
            return 0 if f.read(64) else 99

    err = _in_fork(attempt)
    return err == 0, "timer_list still reads empty" if err == 99 else f"timer_list: {errno.errorcode.get(err, err)}"


def probe_read_only_paths(info: dict[str, Any]) -> tuple[bool, str]:
    # /proc/sys is read-only: remounting it rw needs CAP_SYS_ADMIN and mount(2).
    def attempt() -> int:
        LIBC.mount(None, b"/proc/sys", None, 0x20 | 0x1000, None)  # MS_REMOUNT|MS_BIND, rw
        with open("/proc/sys/kernel/domainname", "w") as f:
            f.write("(none)")  # the container's own uts namespace: harmless
        return 0

    err = _in_fork(attempt)
    return err == 0, f"write to /proc/sys: {errno.errorcode.get(err, err)}"


def probe_cgroupfs_write(info: dict[str, Any]) -> tuple[bool, str]:
    # CVE-2022-0492 class: write cgroupfs (release_agent lives at a
    # hierarchy root; here: remount our own cgroup view rw and raise our own
    # pids limit, i.e. lift a limit from inside).
    def attempt() -> int:
        path = b"/sys/fs/cgroup/pids"
        LIBC.mount(None, path, None, 0x20 | 0x1000, None)
        with open("/sys/fs/cgroup/pids/pids.max", "w") as f:
            f.write("max")
        return 0

    def release_agent() -> int:
        os.makedirs("/tmp/.cg", exist_ok=True)
        if LIBC.mount(b"cgroup", b"/tmp/.cg", b"cgroup", 0, b"memory") != 0:
            return ctypes.get_errno()
        return 0  # a fresh cgroup v1 mount: the way to a release_agent

    err, err2 = _in_fork(attempt), _in_fork(release_agent)
    return err == 0 or err2 == 0, (f"write pids.max: {errno.errorcode.get(err, err)}; "
                                   f"mount cgroup v1: {errno.errorcode.get(err2, err2)}")


def probe_device_nodes(info: dict[str, Any]) -> tuple[bool, str]:
    # A minimal /dev; a block device made with mknod cannot be opened
    # (devices cgroup), and /dev/kmsg is not there.
    dev = sorted(os.listdir("/dev"))
    extra = set(dev) - {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "mqueue", "fd",
                        "stdin", "stdout", "stderr", "console"}

    def attempt() -> int:
        path = "/tmp/.blk"
        if not os.path.exists(path):
            os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(*info["root_blockdev"]))
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 512)
        os.close(fd)
        return 0

    err = _in_fork(attempt)
    return bool(extra) or err == 0, f"/dev extras {sorted(extra)}; read a mknod'd host disk: " \
                                    f"{errno.errorcode.get(err, err)}"


def probe_kmsg(info: dict[str, Any]) -> tuple[bool, str]:
    # /dev/kmsg is absent, and syslog(2) (the kernel log) is refused.
    present = os.path.exists("/dev/kmsg")
    err = _sys("syslog", 10, None, 0)  # SYSLOG_ACTION_SIZE_BUFFER: read-only
    return present or err == 0, f"/dev/kmsg present: {present}; syslog(2): {errno.errorcode.get(err, err)}"


def probe_host_processes(info: dict[str, Any]) -> tuple[bool, str]:
    # PID isolation: host processes are not there to signal or ptrace.
    pid = info["host_pid"]
    out = []
    try:
        os.kill(pid, 0)
        out.append("signal: ok")
    except OSError as e:
        out.append(f"signal: {errno.errorcode.get(e.errno or 0)}")

    def trace() -> int:
        if LIBC.syscall(NR["ptrace"], 16, pid, 0, 0) != 0:  # PTRACE_ATTACH
            return ctypes.get_errno()
        LIBC.syscall(NR["ptrace"], 17, pid, 0, 0)  # PTRACE_DETACH
        return 0

    err = _in_fork(trace)
    out.append(f"ptrace: {errno.errorcode.get(err, err)}")
    return "signal: ok" in out or err == 0, "; ".join(out)


def probe_pid_namespace(info: dict[str, Any]) -> tuple[bool, str]:
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    host_like = [p for p in pids if p > 1000]
    return bool(host_like) or os.getpid() > 1000, f"pids {pids[:10]}, mine {os.getpid()}"


def probe_capabilities(info: dict[str, Any]) -> tuple[bool, str]:
    with open("/proc/self/status") as f:
        st = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    eff, bnd = int(st["CapEff"], 16), int(st["CapBnd"], 16)
    extra = (eff | bnd) & ~info["docker_mask"]
    return bool(extra), f"CapEff {eff:#x} CapBnd {bnd:#x} beyond Docker's: {extra:#x}"


def probe_setuid(info: dict[str, Any]) -> tuple[bool, str]:
    # A setuid-root program gives nothing under no_new_privs.
    r = subprocess.run([info["suid_python"], "-I", "-S", "-c", "import os; print(os.geteuid())"],
                       capture_output=True, text=True)
    euid = r.stdout.strip()
    return euid == "0" and os.geteuid() != 0, f"euid after exec of a setuid-root program: {euid!r} {r.stderr[-200:]}"


def probe_file_caps(info: dict[str, Any]) -> tuple[bool, str]:
    # A program with a file capability (CAP_NET_RAW) gains nothing.
    try:
        r = subprocess.run([info["cap_python"], "-I", "-S", "-c",
                            "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])"],
                           capture_output=True, text=True)
    except PermissionError:
        # execve(2) refuses a program whose file capabilities are not all in
        # the bounding set (the "capability-dumb binary" rule): also blocked.
        return False, "execve refused (EPERM): file capabilities outside the bounding set"
    try:
        eff = int(r.stdout.strip(), 16)
    except ValueError:
        return False, f"no output: {r.stderr[-200:]}"
    with open("/proc/self/status") as f:
        mine = int(next(line for line in f if line.startswith("CapEff")).split()[1], 16)
    gained = eff & ~mine
    return bool(gained & (1 << CAP_NET_RAW)), f"CapEff {eff:#x} (mine {mine:#x})"


def probe_mount(info: dict[str, Any]) -> tuple[bool, str]:
    err = _in_fork(lambda: 0 if LIBC.mount(b"none", b"/mnt", b"tmpfs", 0, None) == 0 else ctypes.get_errno())
    return err == 0, errno.errorcode.get(err, str(err))


def probe_umount(info: dict[str, Any]) -> tuple[bool, str]:
    err = _in_fork(lambda: 0 if LIBC.umount2(b"/dev/shm", 2) == 0 else ctypes.get_errno())
    return err == 0, errno.errorcode.get(err, str(err))


def probe_pivot_root(info: dict[str, Any]) -> tuple[bool, str]:
    def attempt() -> int:
        LIBC.unshare(0x00020000)  # a mount namespace of the fork's own, if allowed
        os.makedirs("/tmp/.pr", exist_ok=True)
        LIBC.mount(b"none", b"/tmp/.pr", b"tmpfs", 0, None)  # a new root that is not the current one
        os.chdir("/tmp/.pr")
        return _sys("pivot_root", b".", b".")

    err = _in_fork(attempt)
    return err == 0, errno.errorcode.get(err, str(err))


def probe_setns(info: dict[str, Any]) -> tuple[bool, str]:
    def attempt() -> int:
        fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
        return _sys("setns", fd, 0)

    err = _in_fork(attempt)
    return err == 0, errno.errorcode.get(err, str(err))


def probe_keyctl(info: dict[str, Any]) -> tuple[bool, str]:
    err = _sys("keyctl", 0, ctypes.c_long(-3), 0)  # KEYCTL_GET_KEYRING_ID(session), no create
    return err == 0, errno.errorcode.get(err, str(err))


def probe_bpf(info: dict[str, Any]) -> tuple[bool, str]:
    # BPF_MAP_CREATE of a 1-entry array map
    attr = struct.pack("IIIII", 2, 4, 4, 1, 0) + bytes(108)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = LIBC.syscall(NR["bpf"], 0, buf, len(attr))
    if ret >= 0:
        os.close(ret)
        return True, "map created"
    err = ctypes.get_errno()
    return False, errno.errorcode.get(err, str(err))


def probe_userns(info: dict[str, Any]) -> tuple[bool, str]:
    err = _in_fork(lambda: 0 if LIBC.unshare(0x10000000) == 0 else ctypes.get_errno())  # CLONE_NEWUSER
    return err == 0, errno.errorcode.get(err, str(err))


def probe_kernel_modules(info: dict[str, Any]) -> tuple[bool, str]:
    # Reaching the module loader or kexec at all (any errno but EPERM) is
    # the escape; /dev/null is no module and fd -1 no kernel: nothing loads.
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        mod = _sys("finit_module", fd, b"", 0)
    finally:
        os.close(fd)
    kexec = _sys("kexec_file_load", -1, -1, 0, b"", 0)
    # ENOSYS: this kernel has neither (then the weakened calibration skips).
    got = [n for n, e in (("finit_module", mod), ("kexec_file_load", kexec)) if e not in (errno.EPERM, errno.ENOSYS)]
    return bool(got), f"finit_module: {errno.errorcode.get(mod, mod)}; kexec_file_load: " \
                      f"{errno.errorcode.get(kexec, kexec)}"


def probe_tiocsti(info: dict[str, Any]) -> tuple[bool, str]:
    # Push a character into a terminal's input queue: a pty of our own, made
    # our controlling terminal (TIOCSTI on another tty needs CAP_SYS_ADMIN).
    def attempt() -> int:
        os.setsid()
        _master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        fcntl.ioctl(slave, termios.TIOCSTI, b"x")
        return 0

    err = _in_fork(attempt)
    return err == 0, f"TIOCSTI: {errno.errorcode.get(err, err)}"


PROBES = {name[len("probe_"):]: fn for name, fn in globals().items() if name.startswith("probe_")}


def run_all(info: dict[str, Any], only: list[str] | None = None) -> int:
    """The container's workload: every probe, one JSON line on stdout."""
    out = {}
    for name, fn in PROBES.items():
        if only is not None and name not in only:
            continue
        try:
            escaped, detail = fn(info)
        except BaseException as e:  # a probe that crashed reports why
            escaped, detail = False, f"probe error {type(e).__name__}: {e}"
        out[name] = [bool(escaped), detail]
    os.write(1, (json.dumps(out) + "\n").encode())
    return 0


# -- running them -----------------------------------------------------------------------------------------


def _root_blockdev() -> tuple[int, int]:
    st = os.stat("/")
    return os.major(st.st_dev), os.minor(st.st_dev)


@pytest.fixture(scope="module")
def host_sleeper():
    p = subprocess.Popen(["sleep", "600"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def privileged_programs(tmp_path_factory):
    """A setuid-root copy of python and one with a file capability, in a host
    directory bind-mounted into the containers (read-only)."""
    d = tmp_path_factory.mktemp("suid")
    os.chmod(d, 0o755)
    py = os.path.realpath("/usr/bin/python3")
    shutil.copy2(py, d / "suidpy")
    os.chown(d / "suidpy", 0, 0)
    os.chmod(d / "suidpy", 0o4755)
    shutil.copy2(py, d / "cappy")
    os.chmod(d / "cappy", 0o755)
    mask = 1 << CAP_NET_RAW
    os.setxattr(d / "cappy", "security.capability", struct.pack("<IIIII", 0x02000000 | 0x1, mask, 0, 0, 0))
    return str(d)


# cap_add=["ALL"] asks for every capability the kernel knows, and this
# session lacks some (CAP_SYS_RESOURCE in this VM): the weakened config adds
# every capability the caller holds instead.
HELD = tuple(syscalls.cap_names(syscalls.capget()[1]))
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "weakened": {"cap_add": list(HELD), "seccomp": "unconfined"},
}
USERS = {"root": None, "nonroot": NONROOT}


def _run_probes(user: str, config: str, info: dict[str, Any], volumes: dict[str, Any]) -> dict[str, Any]:
    """The probes as the workload of a container (a fork of this process, as
    for ``%%container``); their JSON line back."""
    c = Container(image="host", user=USERS[user], volumes=volumes, **CONFIGS[config])
    if config == "weakened":
        c._test_allow_new_privs = True  # type: ignore[attr-defined]
    r, w = os.pipe()
    chunks = []
    try:
        c.start_python(run_all, (info,), stdout=w, stderr=w)
        os.close(w)
        w = -1
        while True:
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
        assert c.wait(60) == 0, b"".join(chunks)[-3000:]
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)
        c.remove(force=True)
    text = b"".join(chunks).decode(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    assert lines, text[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@pytest.fixture(scope="module")
def results(host_sleeper, privileged_programs):
    info = {"host_root_dev": os.stat("/").st_dev, "host_pid": host_sleeper, "docker_mask": DOCKER_MASK,
            "root_blockdev": _root_blockdev(), "suid_python": "/mnt/priv/suidpy", "cap_python": "/mnt/priv/cappy",
            "volumes": ["/mnt/priv"]}
    volumes = {privileged_programs: {"bind": "/mnt/priv", "mode": "ro"}}
    out = {}
    for user in USERS:
        for config in CONFIGS:
            out[(user, config)] = _run_probes(user, config, info, volumes)
    return out


# What each attack needs to get through when its defence is removed, per
# user. None: the weakened configuration lets it through (calibration must
# see the escape); a string: why the weakened configuration cannot enable
# it (then only "blocked by default" is asserted, and the calibration is
# elsewhere, e.g. on the host).
_NO_CAPS = "a non-root user has no capabilities, even with cap_add=ALL (capabilities(7): setuid clears them)"
_STRUCTURAL = "the defence is structural (pivot_root + detach, pid namespace, fd closing), not capabilities or " \
              "seccomp: calibrated on the host (test_probes_detect_escapes_on_the_host)"
CALIBRATION: dict[str, dict[str, str | None]] = {
    "chroot_escape": {"root": _STRUCTURAL, "nonroot": _STRUCTURAL},
    "old_root": {"root": _STRUCTURAL, "nonroot": _STRUCTURAL},
    "fds": {"root": _STRUCTURAL, "nonroot": _STRUCTURAL},
    "proc_self_exe": {"root": "the kernel refuses writes to a running executable (ETXTBSY) whatever the "
                              "capabilities; the caller's python is running", "nonroot": _NO_CAPS},
    "masked_paths": {"root": None, "nonroot": _NO_CAPS},
    "read_only_paths": {"root": None, "nonroot": _NO_CAPS},
    "cgroupfs_write": {"root": None, "nonroot": _NO_CAPS},
    "device_nodes": {"root": "the devices cgroup refuses the disk whatever the capabilities",
                     "nonroot": _NO_CAPS},
    "kmsg": {"root": None, "nonroot": _NO_CAPS},
    "host_processes": {"root": _STRUCTURAL, "nonroot": _STRUCTURAL},
    "pid_namespace": {"root": _STRUCTURAL, "nonroot": _STRUCTURAL},
    "capabilities": {"root": None, "nonroot": None},  # the bounding set shows it
    "setuid": {"root": "root gains nothing from a setuid-root program", "nonroot": None},
    "file_caps": {"root": "root already holds every capability of its bounding set", "nonroot": None},
    "mount": {"root": None, "nonroot": _NO_CAPS},
    "umount": {"root": None, "nonroot": _NO_CAPS},
    "pivot_root": {"root": None, "nonroot": _NO_CAPS},
    "setns": {"root": None, "nonroot": _NO_CAPS},
    "keyctl": {"root": None, "nonroot": None},
    "bpf": {"root": None, "nonroot": _NO_CAPS},
    "userns": {"root": None, "nonroot": None},
    "kernel_modules": {"root": None, "nonroot": _NO_CAPS},
    "tiocsti": {"root": None, "nonroot": None},
}


def test_every_probe_has_a_calibration_rule():
    assert set(CALIBRATION) == set(PROBES)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("attack", sorted(PROBES))
def test_attack(results, attack, user, config):
    escaped, detail = results[(user, config)][attack]
    if config == "default":
        assert not escaped, f"{attack} got through the defaults as {user}: {detail}"
        return
    why_not = CALIBRATION[attack][user]
    if attack == "kernel_modules" and why_not is None and detail.count("ENOSYS") == 2:
        why_not = "this kernel has no module loader and no kexec_file_load (ENOSYS)"
    if why_not is not None:
        assert not escaped, f"{attack} as {user} weakened: {detail}"
        pytest.skip(f"calibration impossible with the weakened config: {why_not}")
    assert escaped, f"calibration: {attack} as {user} should get through the weakened config: {detail}"


# -- calibration of the structural probes: on the host they must see the way out ---------------------------


def test_probes_detect_escapes_on_the_host(tmp_path, host_sleeper):
    # The same probe functions, run in this (unconfined, host) process, must
    # report each "escape": otherwise a blocked result above would prove nothing.
    info = {"host_root_dev": os.stat("/").st_dev, "host_pid": host_sleeper, "volumes": [],
            "jail": str(tmp_path / "jail")}
    leaked = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("chroot_escape", "old_root", "fds", "host_processes", "pid_namespace"):
            escaped, detail = PROBES[name](info)
            assert escaped, f"the {name} probe does not detect the host: {detail}"
    finally:
        os.close(leaked)


# -- CVE-2024-21626: a working directory through a leaked descriptor ----------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_workdir_through_a_leaked_fd_is_refused(user, monkeypatch):
    # The caller holds a directory fd of the host (as runc leaked
    # /sys/fs/cgroup); the workdir names it through /proc/self/fd. Containers
    # forked from this process, which holds the fd: a zygote never has the
    # caller's fds (a first line of defence), the check is the second.
    monkeypatch.setattr(pycontain.container, "FORK_SOURCE", "caller")
    fd = os.open("/sys/fs/cgroup", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    host_dev = os.stat("/sys/fs/cgroup").st_dev
    script = "stat -c %d . && ls"
    try:
        with pytest.raises(pycontain.errors.PermissionDenied) as info:
            pycontain.run(["sh", "-c", script], workdir=f"/proc/self/fd/{fd}", user=USERS[user])
        assert "CVE-2024-21626" in (info.value.hint or "")
        # Calibration: without the check the container lands on the host's cgroupfs.
        monkeypatch.setattr(pycontain.container, "_verify_cwd", lambda: None)
        r = pycontain.run(["sh", "-c", script], workdir=f"/proc/self/fd/{fd}", user=USERS[user])
        assert r.stdout.split()[0] == str(host_dev) and "memory" in r.stdout.split(), r
    finally:
        os.close(fd)
    assert pycontain.containers().empty


# -- /proc, /sys or /dev as symlinks in the image -----------------------------------------------------------


@pytest.mark.parametrize("kernel_dir", ["proc", "sys", "dev"])
def test_image_with_kernel_dir_as_symlink(kernel_dir, tmp_path):
    # A hostile image makes /proc (/sys, /dev) a symlink elsewhere, hoping the
    # container's own mounts follow it (or land on the host: "/../../etc").
    root = make_busybox_rootfs(str(tmp_path / "rootfs"))
    os.makedirs(f"{root}/target")
    os.symlink("/target", f"{root}/{kernel_dir}")
    img = pycontain.Image.from_rootfs(root, tag=f"evil-{kernel_dir}:1")
    try:
        r = pycontain.run(["sh", "-c", "cat /proc/self/mountinfo; ls -A /target | wc -l"], image=img)
    except pycontain.errors.PycontainError as e:  # refusing the image is a fine answer too
        assert kernel_dir in str(e) or "symlink" in str(e).lower(), e
        return
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    points = {line.split()[4]: line.split(" - ")[1].split()[0] for line in lines[:-1]}
    assert points.get("/proc") == "proc" and points.get("/sys") == "sysfs" and points.get("/dev") == "tmpfs", points
    assert not [p for p in points if p.startswith("/target")], points
    assert lines[-1].strip() == "0"  # nothing was mounted into (or created in) the symlink's target


def test_exec_path_probes(host_sleeper):
    # The exec'd path (a program, not a fork of the caller): the same
    # syscall refusals hold, and /proc/self/exe cannot be reopened for writing.
    info = {"host_root_dev": os.stat("/").st_dev, "host_pid": host_sleeper, "docker_mask": DOCKER_MASK,
            "root_blockdev": _root_blockdev(), "volumes": []}
    only = ["proc_self_exe", "mount", "pivot_root", "setns", "keyctl", "bpf", "userns", "kmsg", "capabilities",
            "old_root", "fds", "host_processes"]
    code = (f"import sys, json; sys.path.insert(0, {os.getcwd()!r}); "
            "from tests.integration import test_sandbox_escape as t; "
            f"t.run_all(json.loads({json.dumps(json.dumps(info))}), {only!r})")
    r = pycontain.run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert set(out) == set(only)
    for name, (escaped, detail) in out.items():
        assert not escaped, f"{name}: {detail}"
