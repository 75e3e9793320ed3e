"""Images: rootfs creation for a small and a large image, and a pull from a
local registry against ``skopeo copy``.

* ``rootfs-create``: a container's rootfs prepared from a 10 MB and from a
  1 GB image by the store's storage driver (overlay here), then released:
  with copy-on-write layers both cost the same. Baseline: the 10 MB image.
* ``pull``: the busybox image plus a 32 MB layer, pushed once to Debian's
  ``docker-registry`` on 127.0.0.1, then pulled into a fresh store by
  ``pycontain.Image.pull`` and copied to a fresh OCI layout by ``skopeo copy``.
  Baseline: skopeo.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from benchmarks.measure import Case, skipped
from benchmarks.peers import Workspace

MB = 1 << 20


def _tree_with_file(root: str, size: int) -> str:
    os.makedirs(root, exist_ok=True)
    chunk = os.urandom(MB)  # incompressible, so sizes are what they say
    with open(os.path.join(root, "data.bin"), "wb") as f:
        for _ in range(size // MB):
            f.write(chunk)
    return root


def _rootfs_cases(ws: Workspace) -> list[Case]:
    from pycontain import Image
    from pycontain.backends.storage_driver import select_driver

    images: dict[str, Any] = {}
    counter = [0]

    def make(label: str, size: int) -> Any:
        def setup() -> None:
            if label not in images:
                src = _tree_with_file(os.path.join(ws.root, f"image-{label}"), size)
                images[label] = Image.from_rootfs(src, tag=f"pycontain-bench/size:{label}")
                shutil.rmtree(src, ignore_errors=True)

        def run() -> None:
            counter[0] += 1
            img = images[label]
            base = os.path.join(ws.root, "rootfs-create", f"c{counter[0]}")
            plan = img.prepare_rootfs(base, owner=f"bench-{label}-{counter[0]}")
            select_driver(img.store, plan.driver).cleanup(plan)
            shutil.rmtree(base, ignore_errors=True)

        return Case(f"pycontain {label} image", "rootfs-create", run=run, setup=setup, warmup=2,
                    note=f"Image.prepare_rootfs + cleanup for a one-layer {label} image (storage driver)")

    return [make("10MB", 10 * MB), make("1GB", 1024 * MB)]


class _Registry:
    """docker-registry on 127.0.0.1, a child of the benchmark, stopped by pid."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.addr = ""

    def start(self) -> str:
        if self.proc is not None:
            return self.addr
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = os.path.join(self.root, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {self.root}/data\nhttp:\n  addr: 127.0.0.1:{port}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.addr = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=1):
                    return self.addr
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _pull_cases(ws: Workspace) -> list[Case]:
    if shutil.which("docker-registry") is None:
        return [skipped("pycontain Image.pull", "pull", "docker-registry is not installed")]
    from pycontain import Image, Layer

    reg = _Registry(os.path.join(ws.root, "registry"))
    ref: list[str] = []

    def setup() -> None:
        if ref:
            return
        os.makedirs(reg.root, exist_ok=True)
        addr = reg.start()
        from benchmarks.bench_pycontain import _busybox_image

        extra = Layer.from_dir(_tree_with_file(os.path.join(ws.root, "pull-extra"), 32 * MB))
        img = _busybox_image(ws).with_layer(extra)
        name = f"{addr}/pycontain-bench/pull:1"
        img.push(name, progress=False)
        ref.append(name)

    ws.on_close(reg.stop)

    def pycontain_pull() -> None:
        store = tempfile.mkdtemp(dir=ws.root, prefix="pull-store-")
        try:
            Image.pull(ref[0], store=store, progress=False)
        finally:
            shutil.rmtree(store, ignore_errors=True)

    cases = [
        Case("pycontain Image.pull", "pull", run=pycontain_pull, setup=setup, repeat=10,
             note="busybox + a 32 MB layer from docker-registry on 127.0.0.1 into a fresh store (verified, unpacked)"),
    ]
    if shutil.which("skopeo"):
        def skopeo_copy() -> None:
            dest = tempfile.mkdtemp(dir=ws.root, prefix="skopeo-")
            try:
                subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref[0]}",
                                f"oci:{dest}/layout:latest"], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=300)
            finally:
                shutil.rmtree(dest, ignore_errors=True)

        # First in the list: the group's baseline.
        cases.insert(0, Case("skopeo", "pull", run=skopeo_copy, setup=setup, repeat=10,
                             note="skopeo copy docker://127.0.0.1:port/... oci:DIR (fetch and verify, no unpack)"))
    else:
        cases.insert(0, skipped("skopeo", "pull", "skopeo is not installed"))
    return cases


def cases(ws: Workspace) -> list[Case]:
    try:
        import pycontain.image  # noqa: F401
    except ImportError:
        return [skipped("pycontain", "rootfs-create", "pycontain.image is missing")]
    return [*_rootfs_cases(ws), *_pull_cases(ws)]
