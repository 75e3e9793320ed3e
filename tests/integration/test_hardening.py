"""Capabilities, no_new_privs, fd closing and the posture reader, measured
from inside the container and from /proc outside it, each with a calibration
run (WEAKENED) where the defence is missing."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import struct
import time

import pytest

from pycontain.backends import capabilities, seccomp
from pycontain.backends.posture import read_posture
from pycontain.backends.rootfs import RootfsPlan, enter_rootfs
from pycontain.engine import ChildSpec, start
from pycontain.errors import InvalidArgument
from pycontain.kernel import syscalls
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS
from tests.integration.containment import WEAKENED, Config, make_busybox_rootfs, run_probes, run_script

DOCKER_MASK = syscalls.cap_mask(DOCKER_DEFAULT_CAPS)
STATUS = "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status"


@pytest.fixture
def root(tmp_path):
    return make_busybox_rootfs(str(tmp_path / "rootfs"))


def _status(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+):\s+(\S+)", output, re.M))


def test_capability_sets_are_dockers(root):
    st = _status(run_script(root, STATUS).output)
    assert DOCKER_MASK == 0xA80425FB  # the 14 capabilities of moby's defaults
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(st[key], 16) == DOCKER_MASK, (key, st)
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    # Calibration: the weakened container keeps everything the session has.
    weak = _status(run_script(root, STATUS, WEAKENED).output)
    assert int(weak["CapEff"], 16) & ~DOCKER_MASK
    assert weak["NoNewPrivs"] == "0" and weak["Seccomp"] == "0"


def test_cap_add_and_drop(root):
    caps = capabilities.resolve_capabilities(add=["NET_ADMIN"], drop=["NET_RAW", "MKNOD"])
    st = _status(run_script(root, STATUS, Config(caps=caps)).output)
    want = (DOCKER_MASK | syscalls.cap_mask(["NET_ADMIN"])) & ~syscalls.cap_mask(["NET_RAW", "MKNOD"])
    assert int(st["CapEff"], 16) == want and int(st["CapBnd"], 16) == want
    none = _status(run_script(root, STATUS, Config(caps=capabilities.resolve_capabilities(drop=["ALL"]))).output)
    assert int(none["CapEff"], 16) == 0 and int(none["CapBnd"], 16) == 0


def test_dropped_capabilities_are_enforced_without_seccomp(root):
    # The capability layer alone (seccomp off): no CAP_SYS_ADMIN, no sethostname / mount.
    script = "hostname evil 2>&1 && echo RENAMED; mount -t tmpfs none /mnt 2>&1 && echo MOUNTED; true"
    run = run_script(root, script, Config(seccomp="unconfined"))
    assert "RENAMED" not in run.output and "MOUNTED" not in run.output
    assert run.output.count("Operation not permitted") >= 1 or "Permission denied" in run.output
    calib = run_script(root, script, WEAKENED)
    assert "RENAMED" in calib.output and "MOUNTED" in calib.output


def _file_caps(path: str, caps: list[str]) -> None:
    # security.capability, VFS_CAP_REVISION_2 with the effective bit: the
    # program gets ``caps`` on exec (capabilities(7), "File capabilities").
    mask = syscalls.cap_mask(caps)
    value = struct.pack("<IIIII", 0x02000000 | 0x1, mask & 0xFFFFFFFF, 0, mask >> 32, 0)
    os.setxattr(path, "security.capability", value)


def test_no_new_privs_blocks_file_capabilities(root):
    capbox = os.path.join(root, "bin", "capbox")
    shutil.copy2(os.path.join(root, "bin", "busybox"), capbox)
    _file_caps(capbox, ["CAP_DAC_OVERRIDE"])
    # busybox picks the applet from argv[0]: a link named "cat" to the capable copy.
    os.makedirs(os.path.join(root, "capbin"))
    os.symlink("/bin/capbox", os.path.join(root, "capbin", "cat"))
    script = "/capbin/cat /proc/self/status"
    hardened = _status(run_script(root, script, uid=1000).output)
    assert int(hardened["CapEff"], 16) == 0 and hardened["NoNewPrivs"] == "1", hardened
    # Calibration: without no_new_privs (and without seccomp) the file capability is granted.
    weak = _status(run_script(root, script, WEAKENED, uid=1000).output)
    assert int(weak["CapEff"], 16) == syscalls.cap_mask(["CAP_DAC_OVERRIDE"]), weak


def _open_fds() -> list[int]:
    # fstat, not a listing of /proc/self/fd: listing opens an fd of its own.
    out = []
    for fd in range(256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.append(fd)
    return out


def _fd_probe(close: bool) -> dict[str, object]:
    state: dict[str, object] = {}

    def leak_host_root() -> None:
        # The engine's own fds (its result pipe) are what the container keeps;
        # then the classic escape: a directory fd of the host's / carried inside.
        state["engine"] = _open_fds()
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        os.dup2(fd, 9, inheritable=True)
        os.close(fd)

    def probe() -> dict[str, object]:
        if close:
            capabilities.close_fds(state["engine"])  # type: ignore[arg-type]
        out: dict[str, object] = {"engine": state["engine"], "open": _open_fds()}
        try:
            out["fd9"] = sorted(os.listdir(9))
        except OSError as e:
            out["fd9"] = e.errno
        return out

    return {"before": leak_host_root, "probe": probe}


def test_every_fd_but_the_passed_ones_is_closed(root):
    hooks = _fd_probe(close=True)
    res = run_probes(root, hooks["probe"], before=hooks["before"])
    assert res["open"] == res["engine"] and 9 not in res["open"], res
    assert set(res["engine"]) - {0, 1, 2} and len(res["engine"]) <= 4  # stdio + the result pipe
    assert res["fd9"] == errno.EBADF
    # Calibration: without close_fds the host's root is reachable through fd 9.
    hooks = _fd_probe(close=False)
    calib = run_probes(root, hooks["probe"], WEAKENED, before=hooks["before"])
    assert 9 in calib["open"] and "work" in calib["fd9"], calib


def test_close_fds_keeps_what_is_asked(tmp_path):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            extra = os.open(str(tmp_path), os.O_RDONLY)
            os.dup2(extra, 40)
            keep = (0, 1, 2, w, 40)
            capabilities.close_fds(keep)
            fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
            os.write(w, " ".join(map(str, fds)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 4096).decode().split()
    os.close(r)
    os.waitpid(pid, 0)
    fds = [int(x) for x in data]
    # The listing's own directory fd is the one extra entry.
    assert {0, 1, 2, 40}.issubset(fds) and len(fds) == 6, fds
    with pytest.raises(InvalidArgument):
        capabilities.close_fds(["3"])  # type: ignore[list-item]


def test_posture_read_from_outside(root, tmp_path):
    program = seccomp.compile_bpf(seccomp.default_profile())
    plan = RootfsPlan(root)

    def target() -> None:
        enter_rootfs(plan)
        capabilities.drop_capabilities()
        capabilities.set_no_new_privs()
        seccomp.apply_seccomp(program)
        capabilities.close_fds((0, 1, 2))
        os.execv("/bin/busybox", ["sleep", "30"])

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        child = start(ChildSpec(target=target, new={"mnt", "pid", "uts", "ipc", "net"}, stdout=devnull,
                                stderr=devnull))
    finally:
        os.close(devnull)
    try:
        deadline = time.monotonic() + 10
        while True:
            p = read_posture(child.pid)
            with open(f"/proc/{child.pid}/cmdline", "rb") as f:
                exec_done = f.read().startswith(b"sleep\0")
            if p.seccomp == "filter" and exec_done:
                break
            assert time.monotonic() < deadline, p
            time.sleep(0.01)
        assert set(p.capabilities["effective"]) == set(DOCKER_DEFAULT_CAPS)
        assert p.capabilities["bounding"] == p.capabilities["effective"]
        assert p.capabilities["inheritable"] == () and p.capabilities["ambient"] == ()
        assert p.no_new_privs and p.seccomp_filters == 1
        assert {"mnt", "pid", "uts", "ipc", "net"} <= set(p.own_namespaces)
        points = {m[0] for m in p.mounts}
        assert {"/", "/proc", "/dev", "/sys", "/dev/pts"} <= points
        assert not points & {"/boot", "/run", "/home", "/work"}
        assert p.as_dict()["seccomp"] == "filter"
        # Calibration: this test process itself is not confined.
        me = read_posture(os.getpid())
        assert me.seccomp == "disabled" and not me.no_new_privs and me.own_namespaces == ()
    finally:
        child.kill(signal.SIGKILL)
        child.wait()
