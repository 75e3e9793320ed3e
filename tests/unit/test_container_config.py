"""Container options are validated before anything touches the kernel."""

from __future__ import annotations

import signal

import pytest

from pycontain.container_config import Volume, make_config, parse_signal
from pycontain.errors import InvalidArgument, PycontainError


def test_defaults_are_strict() -> None:
    c = make_config()
    assert c.image == "host"
    assert c.network == "none"
    assert c.seccomp == "default"
    assert c.cap_add == () and not c.read_only and not c.detach
    assert c.name.startswith("pc-")


def test_normalizes_human_values(tmp_path) -> None:
    c = make_config(
        command="python3 -c 'print(1)'",
        memory="64M",
        cpus="0.5",
        pids=32,
        env=["A=1", "B=x=y"],
        volumes={str(tmp_path): {"bind": "/data/", "mode": "ro"}},
        cap_drop=["net_raw"],
        ports={8080: "80"},
    )
    assert c.command == ("python3", "-c", "print(1)")
    assert c.memory == 64 * 2**20 and c.cpus == 0.5 and c.pids == 32
    assert c.env == {"A": "1", "B": "x=y"}
    assert c.volumes == (Volume(str(tmp_path), "/data", True),)
    assert c.cap_drop == ("CAP_NET_RAW",)
    assert c.ports == {8080: 80}


@pytest.mark.parametrize("name", ["", "..", "a/b", "-rf", "a\0b", "x" * 300, ".hidden", 5])
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_config(name=name)
    assert info.value.field == "name"
    assert isinstance(info.value, ValueError) and isinstance(info.value, PycontainError)


@pytest.mark.parametrize("env", [{"A=B": "1"}, {"A\0": "1"}, {"": "1"}, {"A": "x\0"}, ["NOEQUALS"], "A=1"])
def test_bad_env(env: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_config(env=env)
    assert info.value.field is not None and info.value.field.startswith("env")


@pytest.mark.parametrize("command", [[], "", [""], ["a\0b"], [1], b"ls"])
def test_bad_command(command: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_config(command=command)
    assert info.value.field == "command"


@pytest.mark.parametrize(
    "volume",
    [
        "/tmp:relative",
        "/tmp:/proc",
        "/tmp:/proc/sys",
        "/tmp:/sys",
        "/tmp:/dev",
        "/tmp:/",
        "relative:/data",
        "/tmp:/data:rx",
        "/nonexistent-pycontain-test:/data",
        "/tmp:/data:ro:extra",
    ],
)
def test_bad_volumes(volume: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_config(volumes=[volume])
    assert info.value.field is not None and info.value.field.startswith("volumes")


@pytest.mark.parametrize("path", ["/a,b", "/lower:dir", "/x\0"])
def test_mount_option_injection(path: str) -> None:
    with pytest.raises(InvalidArgument):
        make_config(volumes={"/tmp": path})
    with pytest.raises(InvalidArgument):
        make_config(workdir=path)


@pytest.mark.parametrize(
    "kw",
    [
        {"memory": "32bm"},
        {"memory": True},
        {"memory": "1e9"},
        {"cpus": 0},
        {"cpus": "nan"},
        {"pids": -5},
        {"cpuset": "3-1"},
        {"cpuset": "0-99"},
        {"hostname": "bad_host!"},
        {"user": "root; rm"},
        {"cap_add": ["CAP_NOPE"]},
        {"seccomp": "/nonexistent.json"},
        {"detach": "yes"},
        {"ports": {0: 80}},
        {"ports": {8080: 70000}},
        {"network": "a/b"},
        {"image": ""},
    ],
)
def test_bad_values_name_their_field(kw: dict[str, object]) -> None:
    (key,) = kw
    with pytest.raises(InvalidArgument) as info:
        make_config(**kw)
    assert info.value.field is not None and info.value.field.split(".")[0] == key


def test_signals() -> None:
    assert parse_signal("TERM") == signal.SIGTERM
    assert parse_signal("sigkill") == signal.SIGKILL
    assert parse_signal(signal.SIGINT) == signal.SIGINT
    assert parse_signal(9) == 9
    for bad in ["SIGFOO", 0, 999, True, None, "-1"]:
        with pytest.raises(InvalidArgument):
            parse_signal(bad)
