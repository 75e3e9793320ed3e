"""pycontain images work with podman and skopeo, both ways.

podman runs with a private configuration and storage under the test's temp
dir (vfs driver), inside a private mount namespace where a tmpfs hides
``/sys/fs/cgroup/unified`` (crun refuses hybrid cgroup hosts), and with
``--cgroups=disabled``: these tests are about images, and podman's cgroupfs
manager would otherwise leave directories behind (on this host it even
makes plain directories for the unmounted net_cls/net_prio controllers).
This sandbox lacks CAP_SYS_RESOURCE, so podman's default rlimits are lowered.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.integration.test_storage_drivers import run_in_mount_ns

pytestmark = pytest.mark.skipif(not (shutil.which("podman") and shutil.which("skopeo")),
                                reason="podman and skopeo needed")


def _busybox_rootfs(root: str, marker: str) -> None:
    os.makedirs(f"{root}/bin")
    os.makedirs(f"{root}/etc")
    shutil.copy2("/bin/busybox", f"{root}/bin/busybox")
    for tool in ("sh", "true", "cat", "echo", "ls"):
        os.symlink("busybox", f"{root}/bin/{tool}")
    with open(f"{root}/etc/marker", "w") as f:
        f.write(marker + "\n")


class Podman:
    def __init__(self, base: str) -> None:
        self.base = base
        for sub in ("root", "run", "tmp"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        with open(os.path.join(base, "containers.conf"), "w") as f:
            f.write(f'[engine]\ntmp_dir = "{base}/tmp"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{base}/tmp/events.log"\ncgroup_manager = "cgroupfs"\n'
                    'runtime = "crun"\n')
        with open(os.path.join(base, "storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/root"\nrunroot = "{base}/run"\n')
        with open(os.path.join(base, "registries.conf"), "w") as f:
            f.write("unqualified-search-registries = []\n")
        self.env = dict(os.environ, CONTAINERS_CONF=f"{base}/containers.conf",
                        CONTAINERS_STORAGE_CONF=f"{base}/storage.conf",
                        CONTAINERS_REGISTRIES_CONF=f"{base}/registries.conf", TMPDIR=f"{base}/tmp")

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["podman", *args]
        hide_v2 = ""
        if os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers"):
            hide_v2 = "mount -t tmpfs -o size=1m pycontain-interop /sys/fs/cgroup/unified && "
        shell = hide_v2 + 'exec "$@"'
        t0 = time.monotonic()
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh", *argv],
                              capture_output=True, text=True, env=self.env, timeout=120)
        if os.environ.get("PYCONTAIN_TEST_VERBOSE"):
            print(f"podman {args[0]}: {time.monotonic() - t0:.2f}s", file=sys.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def run_flags(self) -> list[str]:
        nofile = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        return ["--rm", "--network=none", "--pull=never", "--ulimit", f"nofile={nofile}:{nofile}",
                "--ulimit", f"nproc={nproc}:{nproc}", "--cgroups=disabled"]


@pytest.fixture
def podman() -> Iterator[Podman]:
    # A short base path: podman's runroot holds unix sockets (conmon attach,
    # exit fifo), whose paths must stay under 108 bytes; with pytest's long
    # tmp_path every `podman run` waited ~20 s for a socket it could not bind.
    base = tempfile.mkdtemp(prefix="pcpm-", dir="/tmp")
    p = Podman(base)
    try:
        yield p
    finally:
        left = p("ps", "-a", "--format", "{{.ID}}", check=False).stdout.split()
        p("rm", "-af", check=False)
        p("rmi", "-af", check=False)
        shutil.rmtree(base, ignore_errors=True)
        assert left == [], f"podman left containers: {left}"


def test_pycontain_export_runs_in_podman_and_skopeo_reads_it(tmp_path, podman: Podman) -> None:
    from pycontain.image import Image

    rootfs = str(tmp_path / "rootfs")
    _busybox_rootfs(rootfs, "made-by-pycontain")
    img = Image.from_rootfs(rootfs, tag="pcinterop:1", cmd=["/bin/cat", "/etc/marker"])

    archive = str(tmp_path / "img-docker.tar")
    img.save(archive, format="docker-archive")
    out = podman("load", "-i", archive)
    assert "pcinterop:1" in out.stdout + out.stderr
    podman("run", *podman.run_flags(), "localhost/pcinterop:1", "/bin/true")
    ran = podman("run", *podman.run_flags(), "localhost/pcinterop:1")
    assert ran.stdout.strip() == "made-by-pycontain"

    oci_tar = str(tmp_path / "img-oci.tar")
    img.save(oci_tar, format="oci")
    podman("load", "-i", oci_tar)

    oci_dir = str(tmp_path / "img-oci")
    img.save(oci_dir, format="oci")
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{oci_dir}:pcinterop:1"], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["Digest"] == img.digest
    assert info["Layers"] == [layer.digest for layer in img.layers]
    info = json.loads(subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["Layers"] == [layer.digest for layer in img.layers]
    cfg = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci:{oci_dir}:pcinterop:1"],
                                    capture_output=True, text=True, check=True).stdout)
    assert cfg["config"]["Cmd"] == ["/bin/cat", "/etc/marker"]


def scenario_run_busybox(store_root: str, work: str, ref: str) -> dict:
    """Prepare the image's rootfs with the overlay driver, mount it, and run busybox chrooted in it."""
    from pycontain.backends import storage_driver as sd
    from pycontain.backends.storage_store import Store
    from pycontain.image import Image

    st = Store(store_root)
    img = Image.get(ref, store=st)
    driver = sd.select_driver(st, "overlay")
    plan = driver.prepare([x.record for x in img.layers], os.path.join(work, "c"), image=img.digest, owner="interop")
    target = os.path.join(work, "root")
    os.makedirs(target)
    sd.mount_rootfs(plan, target)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            os.dup2(w, 1)
            os.chroot(target)
            os.chdir("/")
            argv = list(img.config.cmd or ["/bin/sh"])
            os.execve(argv[0], argv, img.config.env_dict)
        finally:
            os._exit(127)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    from pycontain.kernel import syscalls

    syscalls.umount2(target)
    driver.cleanup(plan)
    return {"out": out, "status": os.waitstatus_to_exitcode(status)}


def test_podman_made_image_is_loaded_and_run_by_pycontain(tmp_path, podman: Podman) -> None:
    from pycontain.image import Image

    rootfs = str(tmp_path / "rootfs")
    _busybox_rootfs(rootfs, "made-by-podman")
    rootfs_tar = str(tmp_path / "rootfs.tar")
    with tarfile.open(rootfs_tar, "w") as t:
        for name in sorted(os.listdir(rootfs)):
            t.add(os.path.join(rootfs, name), arcname=name)
    podman("import", "--change", 'CMD=["/bin/cat","/etc/marker"]', rootfs_tar, "podimg:1")

    for fmt in ("docker-archive", "oci-archive"):
        out = str(tmp_path / f"podimg-{fmt}.tar")
        podman("save", "--format", fmt, "-o", out, "localhost/podimg:1")
        img = Image.load(out)
        assert img.config.cmd == ("/bin/cat", "/etc/marker"), img.config
        assert len(img.layers) == 1
        if fmt == "docker-archive":
            assert img.tag == "localhost/podimg:1"
        res = run_in_mount_ns("scenario_run_busybox", os.environ["PYCONTAIN_STORE"],
                              str(tmp_path / f"work-{fmt}"), img.digest, module=__name__)
        assert res == {"out": "made-by-podman\n", "status": 0}


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci not installed")
def test_umoci_unpacks_a_pycontain_export(tmp_path) -> None:
    from pycontain.image import Image

    rootfs = str(tmp_path / "rootfs")
    _busybox_rootfs(rootfs, "for-umoci")
    img = Image.from_rootfs(rootfs, tag="umoci-test:1", cmd=["/bin/cat", "/etc/marker"], workdir="/etc")
    layout = img.save(str(tmp_path / "oci"), format="oci")
    assert subprocess.run(["umoci", "ls", "--layout", layout], capture_output=True, text=True,
                          check=True).stdout.split() == ["umoci-test:1"]
    bundle = str(tmp_path / "bundle")
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:umoci-test:1", bundle], check=True,
                   capture_output=True)
    with open(f"{bundle}/rootfs/etc/marker") as f:
        assert f.read() == "for-umoci\n"
    with open(f"{bundle}/config.json") as f:
        spec = json.load(f)
    assert spec["process"]["args"] == ["/bin/cat", "/etc/marker"]
    assert spec["process"]["cwd"] == "/etc"
