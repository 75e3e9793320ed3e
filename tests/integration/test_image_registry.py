"""Push and pull against Debian's docker-registry (distribution 2.8) on 127.0.0.1.

The registry runs as a child of the test with its storage in the test's temp
dir and is stopped (by pid) afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from pycontain.backends.storage_store import Store
from pycontain.errors import InvalidArgument, NotFound
from pycontain.image import Image, Layer

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path) -> Iterator[str]:
    port = _free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"registry did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _tree(root: str, files: dict[str, str]) -> str:
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(data)
    return root


def test_push_then_pull_into_a_fresh_store(tmp_path, registry: str, capsys) -> None:
    base = Image.from_rootfs(_tree(str(tmp_path / "base"), {"etc/os": "base\n", "big": "x" * 300_000}),
                             cmd=["/bin/sh"])
    app = base.with_layer(Layer.from_dir(_tree(str(tmp_path / "app"), {"app/run": "run\n"})),
                          tag=f"{registry}/team/app:v1")
    pushed = app.push(progress=False)
    assert pushed == f"{registry}/team/app:v1"

    with urllib.request.urlopen(f"http://{registry}/v2/team/app/tags/list") as r:
        assert json.load(r)["tags"] == ["v1"]

    fresh = Store(str(tmp_path / "fresh"))
    pulled = Image.pull(f"{registry}/team/app:v1", store=fresh, progress=False)
    assert pulled.digest == app.digest
    assert [x.digest for x in pulled.layers] == [x.digest for x in app.layers]
    assert pulled.config.cmd == ("/bin/sh",)
    with open(os.path.join(pulled.layers[1].path, "app/run")) as f:
        assert f.read() == "run\n"

    by_digest = Image.pull(f"{registry}/team/app@{app.digest}", store=fresh, progress=False)
    assert by_digest.digest == app.digest

    # a second image on the same base pushes only its new layer, pulls only what is missing
    other = base.with_layer(Layer.from_dir(_tree(str(tmp_path / "other"), {"other": "o\n"})))
    other.push(f"{registry}/team/other:v1", progress=False)
    capsys.readouterr()
    pulled_other = Image.pull(f"{registry}/team/other:v1", store=fresh, progress=True)
    assert pulled_other.layers[0].path == pulled.layers[0].path  # base reused, not unpacked again
    bars = capsys.readouterr().err
    assert "layer 2/2" in bars and "layer 1/2" not in bars  # a tqdm bar for the one layer downloaded
    shutil.rmtree(fresh.root)


def test_pull_errors(registry: str) -> None:
    with pytest.raises(NotFound):
        Image.pull(f"{registry}/nope/nothing:1", progress=False)
    with pytest.raises(InvalidArgument, match="registry"):
        Image.pull("busybox:latest", progress=False)  # no default registry: nothing leaves the machine
    with pytest.raises(InvalidArgument):
        Image.pull(f"{registry}/UPPER:1", progress=False)


def test_push_needs_a_registry_reference(tmp_path) -> None:
    img = Image.from_rootfs(_tree(str(tmp_path / "r"), {"f": "1"}), tag="local:1")
    with pytest.raises(InvalidArgument):
        img.push(progress=False)
