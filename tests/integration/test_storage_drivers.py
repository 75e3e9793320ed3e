"""One conformance suite for every storage driver (overlay, btrfs, copy).

Each scenario runs in a child process that first unshares a private mount
namespace (``unshare --mount --propagation private``): the rootfs mounts
(and, for btrfs, the loop-backed btrfs itself) exist only there and vanish
with the child. The loop device is attached and detached by the test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVERS = ["overlay", "btrfs", "copy"]


def run_in_mount_ns(fn: str, *args: object, timeout: float = 120,
                    module: str = "tests.integration.test_storage_drivers") -> dict:
    """Run ``fn(*args)`` of this module in a child with a private mount namespace; return its JSON result."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {REPO!r})\n"
        f"from {module} import {fn}\n"
        f"res = {fn}(*{list(args)!r})\n"
        "print('RESULT ' + json.dumps(res))\n"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{fn} failed in the child:\n{proc.stdout}\n{proc.stderr}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture
def btrfs_image(tmp_path) -> Iterator[str]:
    """A 256 MiB btrfs filesystem in a file, attached to a loop device (detached after)."""
    if not shutil.which("mkfs.btrfs"):
        pytest.skip("btrfs-progs not installed")
    backing = str(tmp_path / "btrfs.img")
    with open(backing, "wb") as f:
        f.truncate(256 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        subprocess.run(["mkfs.btrfs", "-q", dev], check=True, capture_output=True)
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        # the kernel frees the device once the child's namespace (and its mount) is gone
        deadline = time.monotonic() + 5
        name = os.path.basename(dev)
        while os.path.exists(f"/sys/block/{name}/loop/backing_file") and time.monotonic() < deadline:
            time.sleep(0.05)


def _where(driver: str, tmp_path, btrfs_dev: str | None) -> tuple[str, str, str | None]:
    if driver == "btrfs":
        return str(tmp_path / "mnt" / "store"), str(tmp_path / "mnt" / "work"), btrfs_dev
    return os.environ["PYCONTAIN_STORE"], str(tmp_path / "work"), None


@pytest.fixture(params=DRIVERS)
def driver_env(request, tmp_path) -> Iterator[tuple[str, str, str, str | None]]:
    driver = request.param
    dev = None
    if driver == "btrfs":
        dev = request.getfixturevalue("btrfs_image")
    store, work, dev = _where(driver, tmp_path, dev)
    yield driver, store, work, dev


# -- what runs inside the child ------------------------------------------------------------


def _setup(store: str, work: str, dev: str | None) -> None:
    if dev:
        from pycontain.kernel import syscalls

        mnt = os.path.dirname(store)
        os.makedirs(mnt, exist_ok=True)
        syscalls.mount(dev, mnt, "btrfs", 0, None)
    os.makedirs(work, exist_ok=True)


def _write(path: str, data: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _layer2_tar(path: str) -> None:
    """/etc/os changed, /etc/gone whited out, /opq made opaque with one new file, /app/x added."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        def add(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE) -> None:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            ti.mtime = 1_700_000_000
            ti.size = len(data or b"")
            t.addfile(ti, io.BytesIO(data or b""))

        add("etc", kind=tarfile.DIRTYPE)
        add("etc/os", b"v2\n")
        add("etc/.wh.gone", b"")
        add("opq", kind=tarfile.DIRTYPE)
        add("opq/.wh..wh..opq", b"")
        add("opq/new", b"new\n")
        add("app/x", b"x\n")


def scenario(driver_name: str, store_root: str, work: str, dev: str | None) -> dict:
    from pycontain.backends import storage_driver as sd
    from pycontain.backends.storage_store import Store
    from pycontain.image import Image, Layer
    from pycontain.kernel import syscalls

    _setup(store_root, work, dev)
    st = Store(store_root)
    base = os.path.join(work, "base")
    _write(f"{base}/etc/os", "v1\n")
    _write(f"{base}/etc/gone", "bye\n")
    os.symlink("os", f"{base}/etc/l")
    _write(f"{base}/usr/keep/a", "a\n")
    _write(f"{base}/usr/keep/b", "b\n")
    _write(f"{base}/opq/old", "old\n")
    l1 = Layer.from_dir(base, store=st)
    _layer2_tar(os.path.join(work, "l2.tar"))
    l2 = Layer.from_tar(os.path.join(work, "l2.tar"), store=st)
    image = Image.from_layers([l1, l2], tag="cake:1", store=st)

    driver = sd.select_driver(st, driver_name)
    assert driver.name == driver_name
    layers = [x.record for x in image.layers]
    plan = driver.prepare(layers, os.path.join(work, "c1"), image=image.digest, owner="c1")
    assert sd.containers_using(st, image.digest) == ["c1"]
    target = os.path.join(work, "root1")
    os.mkdir(target)
    sd.mount_rootfs(sd.load_plan(plan.container_dir), target)

    # the merged view
    assert _read(f"{target}/etc/os") == "v2\n"
    assert not os.path.lexists(f"{target}/etc/gone")
    assert os.readlink(f"{target}/etc/l") == "os"
    assert sorted(os.listdir(f"{target}/opq")) == ["new"]
    assert sorted(os.listdir(f"{target}/usr/keep")) == ["a", "b"]
    assert _read(f"{target}/app/x") == "x\n"

    # the container writes
    _write(f"{target}/new.txt", "hello\n")
    _write(f"{target}/usr/keep/a", "changed\n")
    os.unlink(f"{target}/usr/keep/b")
    _write(f"{target}/d/e/f", "deep\n")
    syscalls.umount2(target)

    # layers below are untouched
    assert _read(f"{l1.path}/usr/keep/b") == "b\n"
    assert _read(f"{l1.path}/usr/keep/a") == "a\n"

    changes = {c.path: c.change for c in driver.diff(plan)}
    assert changes["/new.txt"] == "A", changes
    assert changes["/usr/keep/a"] == "C", changes
    assert changes["/usr/keep/b"] == "D", changes
    assert changes["/d/e/f"] == "A", changes
    assert "/etc/os" not in changes and "/opq/new" not in changes, changes

    # commit: a new layer on top of the image, seen by a new container
    commit_tar = os.path.join(work, "commit.tar")
    with open(commit_tar, "wb") as f:
        driver.commit(plan, f)
    l3 = Layer.from_tar(commit_tar, store=st)
    image2 = image.with_layer(l3, tag="cake:2")
    assert [x.digest for x in image2.layers[:2]] == [l1.digest, l2.digest]
    plan2 = driver.prepare([x.record for x in image2.layers], os.path.join(work, "c2"), image=image2.digest,
                           owner="c2")
    target2 = os.path.join(work, "root2")
    os.mkdir(target2)
    sd.mount_rootfs(plan2, target2)
    assert _read(f"{target2}/new.txt") == "hello\n"
    assert _read(f"{target2}/usr/keep/a") == "changed\n"
    assert not os.path.lexists(f"{target2}/usr/keep/b")
    assert _read(f"{target2}/d/e/f") == "deep\n"
    assert _read(f"{target2}/etc/os") == "v2\n"
    syscalls.umount2(target2)
    layer_diff = {r.path: r.change for r in image2.layers[2].diff().itertuples()}
    assert layer_diff["/usr/keep/b"] == "D" and layer_diff["/usr/keep/a"] == "C" and layer_diff["/new.txt"] == "A"

    # two containers of one image
    plan3 = driver.prepare(layers, os.path.join(work, "c3"), image=image.digest, owner="c3")
    shared = plan3.lowers == plan.lowers
    target3 = os.path.join(work, "root3")
    os.mkdir(target3)
    sd.mount_rootfs(plan3, target3)
    ino_lower = os.lstat(f"{l1.path}/usr/keep/b").st_ino
    ino_c3 = os.lstat(f"{target3}/usr/keep/b").st_ino
    syscalls.umount2(target3)

    for p in (plan, plan2, plan3):
        driver.cleanup(p)
        driver.cleanup(p)  # idempotent
        assert not os.path.exists(p.container_dir)
    assert sd.containers_using(st, image.digest) == []

    # removing the images frees every layer (and the btrfs chain snapshots)
    image2.remove()
    image.remove()
    assert st.layers() == []
    if driver_name == "btrfs":
        assert os.listdir(os.path.join(store_root, "btrfs")) == []
    return {"shared_lowers": shared, "same_inode": ino_lower == ino_c3}


def scenario_timing(driver_name: str, store_root: str, work: str, dev: str | None, n_dirs: int = 10,
                    repeats: int = 3) -> dict:
    """Prepare a rootfs from a tiny image and from a big one (many files), warm."""
    from pycontain.backends import storage_driver as sd
    from pycontain.backends.storage_store import Store
    from pycontain.image import Image

    _setup(store_root, work, dev)
    st = Store(store_root)
    small = os.path.join(work, "small")
    _write(f"{small}/f", "x")
    big = os.path.join(work, "big")
    for i in range(n_dirs):
        for j in range(100):
            _write(f"{big}/d{i}/f{j}", "y" * 1000)
    imgs = {"small": Image.from_rootfs(small, store=st), "big": Image.from_rootfs(big, store=st)}
    driver = sd.select_driver(st, driver_name)
    times: dict[str, float] = {}
    for name, img in imgs.items():
        layers = [x.record for x in img.layers]
        # warm-up: the btrfs driver builds its chain snapshot once per image
        p = driver.prepare(layers, os.path.join(work, f"warm-{name}"), image=img.digest, owner=f"warm-{name}")
        driver.cleanup(p)
        best = 1e9
        for k in range(repeats):
            t0 = time.perf_counter()
            p = driver.prepare(layers, os.path.join(work, f"{name}{k}"), image=img.digest, owner=f"{name}{k}")
            best = min(best, time.perf_counter() - t0)
            driver.cleanup(p)
        times[name] = best
    return times


# -- the tests ----------------------------------------------------------------------------------


def test_conformance(driver_env) -> None:
    driver, store, work, dev = driver_env
    res = run_in_mount_ns("scenario", driver, store, work, dev)
    if driver == "overlay":
        # every container of an image stacks the very same lower directories
        assert res == {"shared_lowers": True, "same_inode": True}


@pytest.mark.parametrize("driver", ["overlay", "btrfs"])
def test_rootfs_creation_time_does_not_grow_with_image_size(driver, tmp_path, request) -> None:
    dev = request.getfixturevalue("btrfs_image") if driver == "btrfs" else None
    store, work, dev = _where(driver, tmp_path, dev)
    t = run_in_mount_ns("scenario_timing", driver, store, work, dev, timeout=300)
    # 1000 files vs 1: a copy would take ~100x longer; allow noise on a shared machine.
    assert t["big"] < max(5 * t["small"], 0.05), t


def test_copy_driver_time_grows_with_image_size(tmp_path) -> None:
    """The control for the test above: the measurement can fail."""
    store, work, _ = _where("copy", tmp_path, None)
    t = run_in_mount_ns("scenario_timing", "copy", store, work, None, 10, 1, timeout=300)
    assert t["big"] > 5 * t["small"], t


def test_explicit_driver_never_falls_back(tmp_path) -> None:
    from pycontain.backends import storage_driver as sd
    from pycontain.backends.storage_store import Store
    from pycontain.errors import InvalidArgument, Unsupported

    st = Store()
    with pytest.raises(Unsupported, match="btrfs"):
        sd.select_driver(st, "btrfs")  # the test store is on ext4
    with pytest.raises(InvalidArgument):
        sd.select_driver(st, "zfs")
    assert sd.select_driver(st).name == "overlay"
    assert sd.probe_drivers(st)["btrfs"] is not None


def test_host_layer_overlay(tmp_path) -> None:
    res = run_in_mount_ns("scenario_host", os.environ["PYCONTAIN_STORE"], str(tmp_path / "work"))
    assert res == {"os_release_same": True, "write_stayed_in_upper": True, "layered": True}


def scenario_host(store_root: str, work: str) -> dict:
    from pycontain.backends import storage_driver as sd
    from pycontain.backends.storage_store import Store
    from pycontain.image import Image

    st = Store(store_root)
    os.makedirs(work)
    img = Image.from_host(tag="host", store=st)
    assert img.based_on_host and img.layers[0].is_host
    driver = sd.select_driver(st, "overlay")
    plan = driver.prepare([x.record for x in img.layers], os.path.join(work, "c"), image=img.digest, owner="h")
    target = os.path.join(work, "root")
    os.mkdir(target)
    sd.mount_rootfs(plan, target)
    same = _read(f"{target}/etc/os-release") == _read("/etc/os-release")
    _write(f"{target}/etc/pycontain-host-test", "x")
    from pycontain.kernel import syscalls

    syscalls.umount2(target)
    ok = not os.path.exists("/etc/pycontain-host-test") and os.path.exists(
        os.path.join(plan.rootfs, "etc/pycontain-host-test"))
    changes = driver.diff(plan)
    assert [c.path for c in changes if c.change == "A"] == ["/etc/pycontain-host-test"], changes
    driver.cleanup(plan)

    # the host with store layers on top: overlayfs refuses overlapping lowerdirs
    # (the store lies inside /), which the driver works around
    from pycontain.image import Layer

    app = os.path.join(work, "app")
    _write(f"{app}/opt/pycontain-app/run", "app\n")
    _write(f"{app}/etc/os-release", "ID=pycontain-app\n")
    img2 = img.with_layer(Layer.from_dir(app, store=st))
    plan2 = driver.prepare([x.record for x in img2.layers], os.path.join(work, "c2"), image=img2.digest, owner="h2")
    target2 = os.path.join(work, "root2")
    os.mkdir(target2)
    sd.mount_rootfs(plan2, target2)
    layered = (_read(f"{target2}/opt/pycontain-app/run") == "app\n"
               and _read(f"{target2}/etc/os-release") == "ID=pycontain-app\n"
               and os.path.exists(f"{target2}/usr/bin/env"))
    _write(f"{target2}/usr/pycontain-host-test", "y")
    sd.unmount_rootfs(plan2, target2)
    ok2 = not os.path.exists("/usr/pycontain-host-test") and not os.path.exists("/opt/pycontain-app")
    changes2 = {c.path: c.change for c in driver.diff(plan2)}
    assert changes2 == {"/usr": "C", "/usr/pycontain-host-test": "A"}, changes2  # the copied-up parent is C
    driver.cleanup(plan2)
    return {"os_release_same": same, "write_stayed_in_upper": ok and ok2, "layered": layered}
