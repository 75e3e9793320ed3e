"""Containers in a user namespace (``Container(userns=...)``), seen from
inside and from the host: ids, maps, file ownership through idmapped
layers and volumes, capabilities that count only inside, exec/call."""

from __future__ import annotations

import os
import socket
import sys
import textwrap

import pytest

import pycontain
from pycontain.container import Container
from pycontain.errors import InvalidArgument
from tests.integration.containment import make_busybox_rootfs

MAP = "0 100000 65536"
MAP_LINE = ["0", "100000", "65536"]


def _status_ids(pid: int) -> tuple[list[str], list[str]]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return fields["Uid"].split(), fields["Gid"].split()


def test_root_inside_with_the_map() -> None:
    r = pycontain.run(["sh", "-c", "id -u; id -g; id -G; cat /proc/self/uid_map /proc/self/gid_map"], userns=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["0", "0", "0"]
    assert [ln.split() for ln in lines[3:]] == [MAP_LINE, MAP_LINE]
    # The control: without userns the map is the host's identity map.
    r = pycontain.run(["cat", "/proc/self/uid_map"])
    assert r.stdout.split() == ["0", "0", "4294967295"]


def test_processes_run_as_the_mapped_host_ids() -> None:
    with Container(command=["sleep", "30"], userns=True) as c:
        assert c.pid is not None and c.cgroup is not None
        pids = c.cgroup.pids()
        assert c.pid in pids and len(pids) == 2  # init and sleep; the helper is gone
        for pid in pids:
            uids, gids = _status_ids(pid)
            assert uids == ["100000"] * 4 and gids == ["100000"] * 4, pid
            assert os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
        assert c.posture()["namespaces"]["user"] == "own"


def test_explicit_maps_for_uid_and_gid() -> None:
    r = pycontain.run(["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; grep -E '^(Uid|Gid)' /proc/self/status"],
                      userns={"uid_map": "0 200000 1000", "gid_map": "0 300000 1000\n1000 400000 10"})
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines()]
    assert lines[0] == ["0", "200000", "1000"]
    assert lines[1:3] == [["0", "300000", "1000"], ["1000", "400000", "10"]]
    assert lines[3][1:] == ["0"] * 4 and lines[4][1:] == ["0"] * 4  # root inside
    with Container(command=["sleep", "30"], userns="0 200000 1000") as c:
        assert c.pid is not None
        assert _status_ids(c.pid) == (["200000"] * 4, ["200000"] * 4)


def test_volume_files_belong_to_the_mapped_uid(tmp_path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chmod(vol, 0o777)
    (vol / "hosts-file").write_text("host\n")
    os.chmod(vol / "hosts-file", 0o644)  # root's, not writable by others
    script = "echo made > /data/new; echo 'new ok'; echo x >> /data/hosts-file && echo 'host file written'; true"
    r = pycontain.run(["sh", "-c", script], userns=True, volumes={str(vol): "/data"}, cap_add=["ALL"])
    assert r.returncode == 0, r.stderr
    assert "new ok" in r.stdout
    st = os.stat(vol / "new")
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    # CAP_DAC_OVERRIDE counts only inside: a file of the host's root stays closed.
    assert "host file written" not in r.stdout and "Permission denied" in r.stderr
    assert (vol / "hosts-file").read_text() == "host\n"
    # The control: without userns the container's root (with ALL) writes it.
    r = pycontain.run(["sh", "-c", "echo x >> /data/hosts-file"], volumes={str(vol): "/data"}, cap_add=["ALL"])
    assert r.returncode == 0 and (vol / "hosts-file").read_text() == "host\nx\n"


def test_image_files_are_roots_and_etc_is_writable() -> None:
    script = ("stat -c '%u %g' /etc/passwd /usr/bin; echo hello > /etc/pycontain-userns && cat /etc/pycontain-userns; "
              "echo more >> /etc/hostname && echo appended; mkdir /var/pc-dir && touch /var/pc-dir/f && echo made")
    with Container(command=["sh", "-c", script], userns=True) as c:
        assert c.wait(20) == 0
        diff = c.diff().set_index("path")
        assert diff.loc["/etc/pycontain-userns", "change"] == "A"
        assert diff.loc["/etc/hostname", "change"] == "C"
        # What the container's root wrote lies in the writable layer as uid 0:
        # the layer commits like one written without a user namespace.
        upper = c._rootfs.plan.rootfs
        for rel in ("etc/pycontain-userns", "etc/hostname", "var/pc-dir/f"):
            st = os.lstat(os.path.join(upper, rel))
            assert (st.st_uid, st.st_gid) == (0, 0), rel
    assert not os.path.exists("/etc/pycontain-userns")


def test_image_files_seen_as_root_and_written(tmp_path) -> None:
    # An image from the store: each layer directory is idmapped.
    root = make_busybox_rootfs(str(tmp_path / "rootfs"))
    with open(f"{root}/etc/motd", "w") as f:
        f.write("base\n")
    os.makedirs(f"{root}/home/user")
    os.chown(f"{root}/home/user", 1000, 1000)
    img = pycontain.Image.from_rootfs(root, tag="busybox:userns", env=["PATH=/bin"])
    script = "stat -c '%u %g' /etc/motd /bin/busybox /home/user; echo more >> /etc/motd; cat /etc/motd"
    r = pycontain.run(["sh", "-c", script], image=img, userns=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["0 0", "0 0", "1000 1000"]
    assert lines[3:5] == ["base", "more"]
    # The container's user 1000 is host uid 101000 and owns its home.
    r = pycontain.run(["sh", "-c", "id -u; echo mine > /home/user/f && cat /home/user/f; grep Uid /proc/self/status"],
                      image=img, userns=True, user="1000:1000")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["1000", "mine"] and lines[2].split()[1:] == ["1000"] * 4


_PROBE = textwrap.dedent("""
    import ctypes, errno, os, socket
    libc = ctypes.CDLL(None, use_errno=True)
    def err(ret):
        return "ok" if ret == 0 else errno.errorcode[ctypes.get_errno()]
    print("finit_module", err(libc.syscall(313, -1, b"", 0)))
    # reboot(2) checks CAP_SYS_BOOT before its magic numbers: with none, it
    # cannot do anything (EINVAL), whoever calls it.
    print("reboot", err(libc.syscall(169, 0, 0, 0, None)))
    print("swapoff", err(libc.swapoff(b"/nonexistent-swap")))
    print("sethostname", err(libc.sethostname(b"evil", 4)))
    print("mount", err(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)))
    with open("/proc/self/status") as f:
        print("CapEff", [l.split()[1] for l in f if l.startswith("CapEff")][0])
    print("hostname", socket.gethostname())
""")


_modules = os.path.exists("/proc/modules")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of finit_module and reboot for x86_64")
def test_capabilities_count_only_inside() -> None:
    host_name = socket.gethostname()
    opts = {"cap_add": ["ALL"], "seccomp": "unconfined", "hostname": "inside"}
    r = pycontain.run([sys.executable, "-I", "-c", _PROBE], userns=True, **opts)
    assert r.returncode == 0, r.stderr
    seen = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    # Every capability is effective, yet the kernel refuses what needs the host's.
    assert int(seen["CapEff"], 16) & (1 << 16) and int(seen["CapEff"], 16) & (1 << 21)  # SYS_MODULE, SYS_ADMIN
    # (a kernel without module support says ENOSYS to anyone)
    assert seen["finit_module"] == ("EPERM" if _modules else "ENOSYS")
    assert seen["reboot"] == "EPERM" and seen["swapoff"] == "EPERM"
    assert seen["sethostname"] == "EPERM"
    assert seen["mount"] == "EPERM"
    assert seen["hostname"] == "inside"
    assert socket.gethostname() == host_name
    # The control: as the host's root with ALL, the same calls get past the
    # capability checks (EBADF: no module file; the container's own hostname).
    r = pycontain.run([sys.executable, "-I", "-c", _PROBE.replace('b"/mnt"', 'b"/nonexistent-mnt"')], **opts)
    seen = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert seen["finit_module"] == ("EBADF" if _modules else "ENOSYS")
    assert seen["reboot"] == "EINVAL" and seen["swapoff"] == "ENOENT"
    assert seen["sethostname"] == "ok" and seen["hostname"] == "evil"
    assert socket.gethostname() == host_name


def test_low_ports_can_be_bound_and_the_host_sysctl_stays() -> None:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        host_value = f.read()
    code = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 80)); "
            "print(open('/proc/sys/net/ipv4/ip_unprivileged_port_start').read().strip())")
    r = pycontain.run([sys.executable, "-I", "-c", code], userns=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        assert f.read() == host_value
    # network="host" leaves the host's sysctl alone (and the port closed to the container's root).
    r = pycontain.run([sys.executable, "-I", "-c", code], userns=True, network="host")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        assert f.read() == host_value


def _inside() -> tuple[int, int, str, int, int]:
    with open("/proc/self/uid_map") as f:
        umap = f.read()
    return (os.getuid(), os.getgid(), umap, os.stat("/etc/passwd").st_uid, os.stat("/proc/self/ns/user").st_ino)


def test_exec_and_call_join_the_user_namespace() -> None:
    with Container(command=["sleep", "30"], userns=True) as c:
        assert c.pid is not None
        uid, gid, umap, owner, userns_ino = c.call(_inside, timeout=30)
        assert (uid, gid, umap.split(), owner) == (0, 0, MAP_LINE, 0)
        assert userns_ino == os.stat(f"/proc/{c.pid}/ns/user").st_ino
        # The same from a Container opened by name (as another process would).
        assert Container.open(c.name).call(_inside, timeout=30)[:3] == (0, 0, umap)
        r, w = os.pipe()
        child = c.exec(["sh", "-c", "id -u; cat /proc/self/uid_map; grep Uid /proc/self/status; sleep 2"],
                       stdout=w, wait=False)
        os.close(w)
        # From the host: the exec'd process runs as the mapped uid.
        first = os.read(r, 4096).decode()
        assert _status_ids(child.pid)[0] == ["100000"] * 4
        assert child.wait(20) == 0
        while chunk := os.read(r, 4096):
            first += chunk.decode()
        os.close(r)
        lines = first.splitlines()
        assert lines[0] == "0" and lines[1].split() == MAP_LINE and lines[2].split()[1:] == ["0"] * 4


def test_state_records_the_option() -> None:
    c = Container(command=["true"], userns="0 200000 5000")
    try:
        c.start()
        c.wait(20)
        state = pycontain.container.get(c.name)
        assert state["userns"] == {"uid_map": "0 200000 5000\n", "gid_map": "0 200000 5000\n"}
        assert Container.open(c.name).config.userns == c.config.userns
        row = pycontain.containers().set_index("name").loc[c.name]
        assert row["userns"] == "0 200000 5000"
    finally:
        c.remove(force=True)
    with Container(command=["true"]) as plain:
        assert pycontain.container.get(plain.name)["userns"] is None
        assert pycontain.containers().set_index("name").loc[plain.name, "userns"] is None


def test_a_failed_setup_leaves_nothing() -> None:
    from pycontain.errors import NotFound

    # The user is looked up after PID 1 joined the user namespace: the last step.
    c = Container(command=["true"], userns=True, user="no-such-user")
    try:
        with pytest.raises(NotFound):
            c.start()
        assert c.status == "created" and c.cgroup is None and c.pid is None
        assert not c._layers_path().exists()  # the writable layer went with the failure
    finally:
        c.remove(force=True)
    # (the leak check of every integration test sees processes, mounts and cgroups)


@pytest.mark.parametrize("bad", ["0 0 65536", "1 100000 10", "0 100000", "0 100000 0", "0 100000 10\n5 200000 10",
                                 "yes", 1, {"uid_map": "0 100000 10"}])
def test_bad_maps_are_refused_before_anything(bad: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        Container(command=["true"], userns=bad)
    assert info.value.field is not None and info.value.field.startswith("userns")
    assert pycontain.containers().empty  # not even the name was taken


def test_other_storage_drivers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCONTAIN_STORAGE_DRIVER", "copy")
    c = Container(command=["true"], userns=True)
    try:
        with pytest.raises(InvalidArgument) as info:
            c.start()
        assert info.value.field == "userns" and info.value.hint
        assert c.status == "created" and c.cgroup is None
    finally:
        c.remove(force=True)


def test_size_limited_layer_in_a_user_namespace() -> None:
    r = pycontain.run(["sh", "-c", "stat -c %u /etc/passwd; echo x > /etc/pc-sized && stat -c %u /etc/pc-sized"],
                      userns=True, storage_size="16M")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0"]


def test_cli_run_userns() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "pycontain", "run", "--rm", "--userns", "auto", "host", "sh", "-c",
                          "id -u; cat /proc/self/uid_map"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "0" and lines[1].split() == MAP_LINE
    out = subprocess.run([sys.executable, "-m", "pycontain", "run", "--rm", "--userns", "0 0 1", "host", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "userns" in out.stderr


# -- the sandbox-escape probes, weakened, inside a user namespace ------------------------------------------

#: Attacks that the weakened configuration (every capability, no seccomp)
#: lets through as root (test_sandbox_escape's calibration) because they need
#: a capability over the host: a user namespace must stop them again. (Not
#: pivot_root: its probe first unshares a mount namespace, which the user
#: namespace owns and may pivot in, as rootless containers do: no way out.)
_CAPABILITY_ATTACKS = ("masked_paths", "read_only_paths", "cgroupfs_write", "kmsg", "mount", "umount", "setns",
                       "bpf")


def test_weakened_container_in_a_user_namespace_stays_shut(tmp_path) -> None:
    import json

    from tests.integration import test_sandbox_escape as escape

    info = {"host_root_dev": os.stat("/").st_dev, "host_pid": os.getpid(), "docker_mask": escape.DOCKER_MASK,
            "root_blockdev": escape._root_blockdev(), "suid_python": "/nonexistent", "cap_python": "/nonexistent",
            "volumes": []}
    found = {}
    for userns in (None, True):
        c = Container(image="host", cap_add=list(escape.HELD), seccomp="unconfined", userns=userns)
        c._test_allow_new_privs = True  # type: ignore[attr-defined]
        r, w = os.pipe()
        chunks = []
        try:
            c.start_python(escape.run_all, (info, list(_CAPABILITY_ATTACKS)), stdout=w, stderr=w)
            os.close(w)
            while data := os.read(r, 65536):
                chunks.append(data)
            assert c.wait(60) == 0, b"".join(chunks)[-3000:]
        finally:
            os.close(r)
            c.remove(force=True)
        text = b"".join(chunks).decode(errors="replace")
        found[userns] = json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])
    for attack in _CAPABILITY_ATTACKS:
        assert found[None][attack][0], f"calibration: {attack} should get through without a user namespace"
        assert not found[True][attack][0], f"{attack} got through in a user namespace: {found[True][attack][1]}"
