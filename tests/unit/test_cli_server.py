"""The CLI server's pure logic: frames, the run request, socket naming (and
that the launcher's copy of the rules matches the server module's)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pycontain.cli import server
from tests.launcher import LAUNCHER, load_launcher


def test_frames_round_trip() -> None:
    frame = server.encode_frame(b"X", b"-15")
    assert frame == b"X00000003-15"
    assert server.parse_header(frame[:server.HEADER]) == (b"X", 3)
    with pytest.raises(ValueError):
        server.parse_header(b"X0000")
    with pytest.raises(ValueError):
        server.parse_header(b"Xzzzzzzzz")
    with pytest.raises(ValueError):
        server.parse_header(b"X%08x" % (server.MAX_FRAME + 1))


def test_run_request_round_trip() -> None:
    argv = ["run", "--rm", "-e", "A=b=c", "host", "sh", "-c", "echo \udcff"]  # an undecodable byte survives
    env = {b"PATH": b"/bin", b"EMPTY": b"", b"EQ": b"x=y"}
    payload = server.Request.encode(123, 0o027, "02", argv, env)
    r = server.Request(payload)
    assert (r.pid, r.umask, r.stdio, r.argv, r.env) == (123, 0o027, (0, 2), argv, env)


@pytest.mark.parametrize("payload", [b"", b"1\x002", b"x\x000\x00012\x000", b"1\x000\x00012\x005\x00a",
                                     b"1\x000\x0079\x000"])
def test_malformed_requests_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        server.Request(payload)


def test_enabled_and_socket_dir() -> None:
    assert server.enabled({}) and server.enabled({"PYCONTAIN_CLI_SERVER": "1"})
    for off in ("0", "no", "False", " off "):
        assert not server.enabled({"PYCONTAIN_CLI_SERVER": off})
    assert server.socket_dir({}, euid=0) == "/run/pycontain/cli"
    assert server.socket_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}, euid=1000) == "/run/user/1000/pycontain/cli"
    assert server.socket_dir({}, euid=1000) is None
    assert server.socket_dir({"PYCONTAIN_CLI_SERVER_DIR": "/tmp/x"}, euid=1000) == "/tmp/x"


def test_launcher_names_the_socket_as_the_server_module_does() -> None:
    launcher = load_launcher()
    st = os.stat(LAUNCHER)
    name = server.socket_name(sys.executable, st)
    assert launcher.CLI_PROTOCOL == server.PROTOCOL
    cases = [
        ({b"PYCONTAIN_CLI_SERVER_DIR": b"/tmp/somewhere"}, "/tmp/somewhere"),
        ({}, server.socket_dir({})),
        ({b"XDG_RUNTIME_DIR": b"/run/user/7"}, server.socket_dir({"XDG_RUNTIME_DIR": "/run/user/7"})),
    ]
    for env, directory in cases:
        assert launcher.cli_server_dir(env) == directory
    assert launcher.cli_server_socket("/tmp/somewhere") == f"/tmp/somewhere/{name}"
    for off in (b"0", b"no", b"False", b" off "):
        assert launcher.cli_server_dir({b"PYCONTAIN_CLI_SERVER": off}) is None
        assert not server.enabled({"PYCONTAIN_CLI_SERVER": off.decode()})
    # another interpreter, another launcher: another socket
    assert server.socket_name("/other/python", st) != name
    assert server.socket_name(sys.executable, os.stat(__file__)) != name


def test_launcher_keeps_its_compiled_client_only_in_a_private_dir(tmp_path: Path) -> None:
    launcher = load_launcher()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    launcher.load_client(str(private))
    [cached] = [p for p in private.iterdir() if p.name.startswith("client-")]
    assert cached.stat().st_mode & 0o777 == 0o600
    # the next launcher reads it (a corrupt copy is compiled again, not run)
    fresh = load_launcher()
    fresh.load_client(str(private))
    assert callable(fresh.via_server)
    cached.write_bytes(b"not marshal data")
    fresh = load_launcher()
    fresh.load_client(str(private))
    assert callable(fresh.via_server)
    assert cached.read_bytes() != b"not marshal data"  # written again
    # nothing is kept where others may write
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o755)
    load_launcher().load_client(str(loose))
    assert list(loose.iterdir()) == []


def test_fnv1a64_known_values() -> None:
    # Published FNV-1a 64 test vectors.
    assert server.fnv1a64(b"") == 0xCBF29CE484222325
    assert server.fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert server.fnv1a64(b"foobar") == 0x85944171F73967E8


def test_check_dir_refuses_a_dir_others_may_enter(tmp_path: Path) -> None:
    good = tmp_path / "good" / "cli"
    server.check_dir(str(good))
    assert good.stat().st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(PermissionError):
        server.check_dir(str(loose))
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(PermissionError):
        server.check_dir(str(link))


def test_server_module_imports_nothing_heavy_at_the_top() -> None:
    # It is a CLI topic module: `pycontain --help` imports it.
    import subprocess

    code = ("import sys; import pycontain.cli.server; "
            "print(sorted(m for m in ('socket', 'selectors', 'pycontain.container', 'argparse') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("answer", "start"), [(b"keep other namespaces", False), (b"restart stale", True)])
def test_a_refusal_before_the_request_is_out_still_counts(answer: bytes, start: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that refuses at accept() (another namespace, stale code) and
    closes may do so while the Python client is still sending: its send
    fails, yet the N is there to be read, and a "keep" must not make the
    client start a server (one in another namespace would take the socket
    and answer every later client with a refusal)."""
    import shutil
    import socket
    import tempfile
    import threading

    base = tempfile.mkdtemp(prefix="pcr-", dir="/tmp")
    path = os.path.join(base, "s.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(20)

    def refuse() -> None:
        conn, _ = listener.accept()
        conn.sendall(server.encode_frame(b"N", answer))
        conn.close()  # without reading a byte

    t = threading.Thread(target=refuse, daemon=True)
    t.start()
    monkeypatch.setenv("PYCONTAIN_TEST_BIG", "x" * (8 << 20))  # far more than a socket's buffer
    try:
        launcher = load_launcher()
        assert launcher.START_SERVER is True
        assert launcher.via_server(path, ["run", "x"]) is None
        assert launcher.START_SERVER is start
    finally:
        t.join(20)
        listener.close()
        shutil.rmtree(base, ignore_errors=True)
