"""Capability resolution, posture parsing and rootfs plan validation, without the kernel."""

from __future__ import annotations

import os

import pytest

from pycontain.backends import capabilities as K
from pycontain.backends.posture import parse_posture, read_posture
from pycontain.backends.rootfs import MASKED_PATHS, READONLY_PATHS, BindMount, RootfsPlan, check_volume
from pycontain.errors import InvalidArgument
from pycontain.kernel.constants import CAPABILITIES, DOCKER_DEFAULT_CAPS


def test_resolve_capabilities():
    assert set(K.resolve_capabilities()) == set(DOCKER_DEFAULT_CAPS) and len(DOCKER_DEFAULT_CAPS) == 14
    caps = K.resolve_capabilities(add=["net_admin"], drop=["CAP_NET_RAW", "mknod"])
    assert "CAP_NET_ADMIN" in caps and "CAP_NET_RAW" not in caps and "CAP_MKNOD" not in caps
    assert K.resolve_capabilities(drop=["ALL"], add=["NET_BIND_SERVICE"]) == ("CAP_NET_BIND_SERVICE",)
    assert K.resolve_capabilities(add=["ALL"]) == CAPABILITIES
    assert K.resolve_capabilities(keep=(), add=()) == ()
    # kernel order, whatever the input order
    assert list(caps) == [c for c in CAPABILITIES if c in caps]


@pytest.mark.parametrize("kw", [
    {"add": ["CAP_TELEPATHY"]},
    {"drop": ["SYS ADMIN"]},
    {"add": "NET_ADMIN"},
    {"keep": [1]},
    {"drop": [""]},
])
def test_resolve_capabilities_rejects(kw):
    with pytest.raises(InvalidArgument):
        K.resolve_capabilities(**kw)


def test_drop_capabilities_validates_before_the_kernel():
    # Refused before any prctl: this process keeps all it had.
    with pytest.raises(InvalidArgument):
        K.drop_capabilities(add=["CAP_NOPE"])
    assert os.path.exists("/proc/self/status")


def test_parse_posture():
    status = {"CapInh": "0000000000000000", "CapPrm": "00000000a80425fb", "CapEff": "00000000a80425fb",
              "CapBnd": "00000000a80425fb", "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2",
              "Seccomp_filters": "1"}
    p = parse_posture(1, status)
    assert set(p["capabilities"]["effective"]) == set(DOCKER_DEFAULT_CAPS)
    assert p["capabilities"]["ambient"] == () and p["no_new_privs"] and p["seccomp"] == "filter"
    assert p["seccomp_filters"] == 1
    assert parse_posture(1, {"Seccomp": "9"})["seccomp"] == "unknown"


def test_read_posture_of_self():
    me = read_posture(os.getpid())
    assert me.own_namespaces == () and me.mounts and me.as_dict()["pid"] == os.getpid()
    with pytest.raises(InvalidArgument):
        read_posture(0)
    with pytest.raises(InvalidArgument):
        read_posture(True)  # type: ignore[arg-type]


def test_bind_mount_validation(tmp_path):
    ok = BindMount(str(tmp_path), "/data//x/", True)
    assert ok.destination == "/data/x" and ok.read_only
    for dest in ("data", "/proc", "/proc/sys", "/sys/fs/cgroup", "/dev/shm", "/", "/a,b", "/a:b", "/a/../etc",
                 "/a\0b"):
        with pytest.raises(InvalidArgument):
            BindMount(str(tmp_path), dest)
    with pytest.raises(InvalidArgument):
        BindMount("relative/src", "/data")
    with pytest.raises(InvalidArgument):
        check_volume((str(tmp_path / "missing"), "/data"))
    with pytest.raises(InvalidArgument):
        check_volume("src:/dst")
    assert check_volume((str(tmp_path), "/d")).read_only is False

    class Like:
        source = str(tmp_path)
        destination = "/d"
        read_only = True

    assert check_volume(Like()).read_only is True
    # /procfoo is not /proc
    assert BindMount(str(tmp_path), "/procfoo").destination == "/procfoo"


def test_plan_defaults(tmp_path):
    plan = RootfsPlan(str(tmp_path))
    assert plan.masked_paths == MASKED_PATHS and plan.readonly_paths == READONLY_PATHS
    assert plan.nodev and not plan.read_only and plan.cgroup == "auto"
    assert "/proc/kcore" in MASKED_PATHS and "/sys/firmware" in MASKED_PATHS and "/proc/sys" in READONLY_PATHS
    with pytest.raises(InvalidArgument):
        RootfsPlan(str(tmp_path / "missing"))
    with pytest.raises(InvalidArgument):
        RootfsPlan(str(tmp_path), mount_rootfs="overlay")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        RootfsPlan(str(tmp_path), read_only="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        RootfsPlan(str(tmp_path), files={"/etc/hosts": b"bytes"})  # type: ignore[dict-item]
    # A plan that a storage driver mounts need not exist yet.
    assert RootfsPlan(str(tmp_path / "later"), mount_rootfs=lambda p: None).rootfs.endswith("later")
