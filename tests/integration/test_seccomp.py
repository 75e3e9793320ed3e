"""The default seccomp filter on the real kernel, probed from inside a container.

Every probe runs in a forked child of the container's Python (side effects
such as a new user namespace stay there) and reports an errno. Hardened:
EPERM (clone3: ENOSYS). Calibration (WEAKENED: every capability, no filter):
the same probe reaches the kernel and gets anything but EPERM.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import termios

import pyseccomp
import pytest

from pycontain.backends import seccomp
from pycontain.errors import InvalidArgument
from pycontain.kernel import constants as C
from tests.integration.containment import (
    LIBC,
    WEAKENED,
    Config,
    errno_of,
    in_fork,
    make_busybox_rootfs,
    name,
    run_probes,
    run_script,
)

_NAMES = ("mount", "umount2", "pivot_root", "unshare", "clone", "clone3", "setns", "keyctl", "add_key", "ptrace",
          "bpf", "perf_event_open", "kexec_load", "init_module", "finit_module", "delete_module",
          "process_vm_readv", "userfaultfd", "io_uring_setup", "personality", "open_by_handle_at", "swapon",
          "reboot", "settimeofday", "syslog", "acct", "ioctl")
NR = {n: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) for n in _NAMES}
L = ctypes.c_long


def _sc(nr_name: str, *args: object) -> int:
    conv = [a if isinstance(a, (bytes, type(None))) else L(int(a)) for a in args]  # type: ignore[call-overload]
    return errno_of(LIBC.syscall(L(NR[nr_name]), *conv))


def _raw_clone(flags: int) -> int:
    # clone(2) without CLONE_VM behaves like fork: the child returns 0 here.
    ret = LIBC.syscall(L(NR["clone"]), L(flags | signal.SIGCHLD), L(0), L(0), L(0), L(0))
    if ret == 0:
        os._exit(0)
    if ret == -1:
        return ctypes.get_errno()
    os.waitpid(ret, 0)
    return 0


def _tiocsti(cmd: int) -> int:
    master, slave = os.openpty()
    try:
        return errno_of(LIBC.syscall(L(NR["ioctl"]), L(slave), ctypes.c_ulong(cmd), ctypes.c_char_p(b"x")))
    finally:
        os.close(master)
        os.close(slave)


ATTACKS = {
    "mount": lambda: _sc("mount", b"none", b"/mnt", b"tmpfs", 0, None),
    "umount2": lambda: _sc("umount2", b"/dev/mqueue", C.MNT_DETACH),
    "pivot_root": lambda: _sc("pivot_root", b"/nonexistent", b"/nonexistent"),
    "unshare(CLONE_NEWUSER)": lambda: _sc("unshare", C.CLONE_NEWUSER),
    "unshare(CLONE_NEWNS)": lambda: _sc("unshare", C.CLONE_NEWNS),
    "unshare(CLONE_NEWCGROUP)": lambda: _sc("unshare", C.CLONE_NEWCGROUP),
    "clone(CLONE_NEWUSER)": lambda: _raw_clone(C.CLONE_NEWUSER),
    "clone(CLONE_NEWNET)": lambda: _raw_clone(C.CLONE_NEWNET),
    "setns": lambda: _sc("setns", os.open("/proc/self/ns/uts", os.O_RDONLY), 0),
    "keyctl": lambda: _sc("keyctl", 0, -3, 0),
    "add_key": lambda: _sc("add_key", b"user", b"k", b"v", 1, -3),
    "ptrace": lambda: _sc("ptrace", 0, 0, 0, 0),
    "bpf": lambda: _sc("bpf", 0, None, 0),
    "perf_event_open": lambda: _sc("perf_event_open", None, 0, -1, -1, 0),
    "kexec_load": lambda: _sc("kexec_load", 0, 0, None, 0xFFFF0000),
    "init_module": lambda: _sc("init_module", None, 0, b""),
    "finit_module": lambda: _sc("finit_module", -1, b"", 0),
    "delete_module": lambda: _sc("delete_module", b"pycontain_no_such_module", 0x800),
    "process_vm_readv": lambda: _sc("process_vm_readv", os.getpid(), None, 0, None, 0, 0),
    "userfaultfd": lambda: _sc("userfaultfd", 0),
    "io_uring_setup": lambda: _sc("io_uring_setup", 1, None),
    "personality(PER_BSD)": lambda: _sc("personality", 6),
    "open_by_handle_at": lambda: _sc("open_by_handle_at", -1, None, 0),
    "swapon": lambda: _sc("swapon", b"/nonexistent", 0),
    "settimeofday": lambda: _sc("settimeofday", None, None),
    "syslog": lambda: _sc("syslog", 3, None, 0),
    "acct": lambda: _sc("acct", b"/nonexistent"),
    "ioctl(TIOCSTI)": lambda: _tiocsti(termios.TIOCSTI),
    "ioctl(TIOCSTI | 1<<32)": lambda: _tiocsti(termios.TIOCSTI | 1 << 32),
    "ioctl(TIOCLINUX)": lambda: _tiocsti(0x541C),
}
# What must keep working under the default filter.
ALLOWED = {
    "fork": lambda: in_fork(lambda: 0),
    "unshare(CLONE_FILES)": lambda: _sc("unshare", C.CLONE_FILES),
    "personality(query)": lambda: _sc("personality", 0xFFFFFFFF),
    "ioctl(TIOCGWINSZ)": lambda: _tiocgwinsz(),
    "mknod(char)": lambda: errno_of(LIBC.mknod(b"/tmp/c", 0o020600, os.makedev(1, 3))),
    "socket": lambda: _socket(),
}


def _tiocgwinsz() -> int:
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        os.close(master)
        os.close(slave)


def _socket() -> int:
    import socket

    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    return 0


def _probe_all(probes: dict) -> dict[str, int]:
    return {key: in_fork(fn) for key, fn in probes.items()}


@pytest.fixture
def root(tmp_path):
    return make_busybox_rootfs(str(tmp_path / "rootfs"))


def test_default_filter_refuses_attacks(root):
    res = run_probes(root, lambda: _probe_all(ATTACKS))
    wrong = {k: name(v) for k, v in res.items() if v != (errno.EPERM)}
    assert not wrong, f"not refused with EPERM: {wrong}"
    # clone3 answers ENOSYS, so the C library falls back to clone(2), whose flags the filter can see.
    clone3 = run_probes(root, lambda: in_fork(lambda: _sc_clone3()))
    assert clone3 == errno.ENOSYS
    # Calibration: every probe reaches the kernel (no EPERM) without the filter and with every capability.
    calib = run_probes(root, lambda: {**_probe_all(ATTACKS), "clone3": in_fork(_sc_clone3)}, WEAKENED)
    blocked = {k: name(v) for k, v in calib.items() if v == errno.EPERM or (k == "clone3" and v == errno.ENOSYS)}
    assert not blocked, f"the probe cannot tell: {blocked}"


def _sc_clone3() -> int:
    return errno_of(LIBC.syscall(L(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "clone3")), None, L(0)))


def test_default_filter_allows_ordinary_work(root):
    res = run_probes(root, lambda: _probe_all(ALLOWED))
    assert all(v == 0 for v in res.values()), {k: name(v) for k, v in res.items()}
    run = run_script(root, "echo a > /tmp/f && cat /tmp/f && ls / >/dev/null && sh -c 'exit 3'; echo rc=$?")
    assert "a\n" in run.output and "rc=3" in run.output


def test_filter_is_the_defence_for_tiocsti_and_namespaces(root):
    # Every capability but the default filter: what the filter alone refuses.
    # (TIOCSTI on a tty that is not ours needs CAP_SYS_ADMIN anyway, so only this
    # configuration shows the filter itself at work.)
    held = WEAKENED.caps
    keys = ("ioctl(TIOCSTI)", "ioctl(TIOCSTI | 1<<32)", "ioctl(TIOCLINUX)", "keyctl", "userfaultfd",
            "io_uring_setup")
    res = run_probes(root, lambda: _probe_all({k: ATTACKS[k] for k in keys}),
                     Config(caps=held, no_new_privs=True, seccomp="default"))
    assert all(v == errno.EPERM for v in res.values()), {k: name(v) for k, v in res.items()}
    # Capability-gated groups come back with the capability, as in Docker:
    gated = run_probes(root, lambda: _probe_all({k: ATTACKS[k] for k in ("mount", "unshare(CLONE_NEWNS)",
                                                                          "ptrace")}),
                       Config(caps=held, no_new_privs=True, seccomp="default"))
    assert all(v == 0 for v in gated.values()), {k: name(v) for k, v in gated.items()}


def test_docker_format_profile_file(root, tmp_path):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
            {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["not_a_syscall_anywhere"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))

    def probes() -> dict[str, int]:
        return {
            "uname": in_fork(lambda: os.uname() and 0),
            "getpriority(PRIO_PROCESS)": in_fork(lambda: os.getpriority(os.PRIO_PROCESS, 0) and 0),
            "getpriority(PRIO_PGRP)": in_fork(lambda: os.getpriority(os.PRIO_PGRP, 0) and 0),
            "getpid": in_fork(lambda: os.getpid() and 0),
        }

    res = run_probes(root, probes, Config(seccomp=str(path)))
    assert res == {"uname": errno.EACCES, "getpriority(PRIO_PROCESS)": errno.EPERM, "getpriority(PRIO_PGRP)": 0,
                   "getpid": 0}, res
    assert run_probes(root, probes, Config(seccomp="unconfined"))["uname"] == 0


def test_containers_common_profile_loads(root):
    # The Docker-format profile podman ships, when installed: parsed strictly and enforced.
    path = "/usr/share/containers/seccomp.json"
    if not os.path.exists(path):
        pytest.skip("containers-common's seccomp.json is not installed")
    # It refuses userfaultfd with EPERM, and answers its default ENOSYS to a
    # call it does not list (listmount, 458, newer than the profile).
    def probes() -> dict[str, int]:
        return {"userfaultfd": in_fork(ATTACKS["userfaultfd"]), "fork": in_fork(lambda: 0),
                "listmount": in_fork(lambda: errno_of(LIBC.syscall(L(458), None, None, L(0), L(0))))}

    res = run_probes(root, probes, Config(seccomp=path))
    assert res == {"userfaultfd": errno.EPERM, "listmount": errno.ENOSYS, "fork": 0}, res
    calib = run_probes(root, probes, WEAKENED)
    assert calib["listmount"] != errno.ENOSYS and calib["userfaultfd"] != errno.EPERM, calib


def test_bad_profiles_are_refused_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        seccomp.load_profile(str(bad))
    with pytest.raises(InvalidArgument, match="cannot read"):
        seccomp.load_profile(str(tmp_path / "missing.json"))


_DATA_STACK = r'''
import numpy as np, pandas as pd, threading, subprocess, multiprocessing as mp, tempfile, asyncio
a = np.random.rand(200, 200); b = a @ a
total = pd.DataFrame({"x": range(1000)}).x.sum()
t = threading.Thread(target=lambda: None); t.start(); t.join()
sub = subprocess.run(["/bin/echo", "sub"], capture_output=True, text=True).stdout.strip()
with mp.Pool(2) as pool: r = pool.map(abs, [-1, -2])
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
plt.plot([1, 2]); plt.savefig(tempfile.mktemp(suffix=".png"))
asyncio.run(asyncio.sleep(0))
print("DATA-STACK-OK", total, sub, r, b.shape)
'''


def test_python_data_stack_runs_under_the_default_filter(tmp_path):
    # What the notebook user runs inside: numpy/BLAS threads, pandas, a
    # subprocess, a multiprocessing pool, matplotlib, asyncio -- all under
    # Docker's capabilities, no_new_privs and the default filter.
    pytest.importorskip("numpy")
    pytest.importorskip("matplotlib")
    import sys
    import tempfile

    from pycontain.backends import capabilities
    from pycontain.engine import ChildSpec, start

    program = seccomp.compile_bpf(seccomp.default_profile())

    def target() -> None:
        capabilities.drop_capabilities()
        capabilities.set_no_new_privs()
        seccomp.apply_seccomp(program)
        capabilities.close_fds((0, 1, 2))
        os.execv(sys.executable, [sys.executable, "-c", _DATA_STACK])

    with tempfile.TemporaryFile() as out:
        child = start(ChildSpec(target=target, new={"mnt", "pid", "ipc", "uts", "net"}, stdout=out.fileno(),
                                stderr=out.fileno()))
        code = child.wait(120)
        out.seek(0)
        text = out.read().decode(errors="replace")
    assert code == 0 and "DATA-STACK-OK 499500 sub [1, 2] (200, 200)" in text, text
