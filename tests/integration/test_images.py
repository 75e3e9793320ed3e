"""Images and the store: the layer cake, sharing, listing, removal, pruning, disk usage."""

from __future__ import annotations

import os
import shutil
import tarfile

import pytest

import pycontain
from pycontain.backends import storage_driver as sd
from pycontain.backends.storage_store import Store
from pycontain.errors import Busy, InvalidArgument, NotFound, Unsupported
from pycontain.image import Image, Layer, disk_usage, images, prune


def _tree(root: str, files: dict[str, str]) -> str:
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(data)
        os.utime(p, (1_700_000_000, 1_700_000_000))
    return root


@pytest.fixture
def base_dir(tmp_path) -> str:
    root = _tree(str(tmp_path / "base"), {"etc/os-release": "ID=cake\n", "bin/sh": "#!fake\n",
                                          "usr/lib/libc.so": "x" * 100_000})
    shutil.copy2("/bin/busybox", os.path.join(root, "bin/busybox"))
    return root


def test_layer_cake_shares_the_base_layer(tmp_path, base_dir) -> None:
    st = Store()
    base = Image.from_rootfs(base_dir, tag="base:1")
    apache = Layer.from_dir(_tree(str(tmp_path / "apache"), {"usr/sbin/httpd": "httpd\n",
                                                             "etc/apache2/apache2.conf": "Listen 80\n"}))
    mysql = Layer.from_dir(_tree(str(tmp_path / "mysql"), {"usr/sbin/mysqld": "mysqld\n",
                                                           "etc/mysql/my.cnf": "[mysqld]\n"}))
    web = base.with_layer(apache, tag="web:1", cmd=["/usr/sbin/httpd"])
    db = base.with_layer(mysql, tag="db:1", cmd=["/usr/sbin/mysqld"])

    assert web.layers[0].digest == db.layers[0].digest == base.layers[0].digest
    assert web.layers[0].path == db.layers[0].path  # one directory on disk
    assert len(st.layers()) == 3  # base, apache, mysql: the base is stored once
    assert sorted(os.listdir(st.layers_dir)) == sorted(x.diff_id.split(":")[1] for x in st.layers())

    # importing the same base again reuses it: same digest, not unpacked twice
    inode = os.stat(base.layers[0].path).st_ino
    again = Image.from_rootfs(base_dir, tag="base:again", cmd=["/bin/sh"])  # another image, same layer
    assert again.layers[0].digest == base.layers[0].digest
    assert os.stat(again.layers[0].path).st_ino == inode
    assert len(st.layers()) == 3

    du = disk_usage()
    row = du[du["digest"] == base.layers[0].digest].iloc[0]
    assert row["images"] == 4 and bool(row["shared"])
    assert set(row["tags"]) == {"base:1", "base:again", "web:1", "db:1"}
    assert int(du[du["digest"] == apache.digest].iloc[0]["images"]) == 1
    assert row["disk_bytes"] >= 100_000  # measured on disk (st_blocks), counted once

    per_image = web.disk_usage()
    assert list(per_image["digest"]) == [base.layers[0].digest, apache.digest] or \
        set(per_image["digest"]) == {base.layers[0].digest, apache.digest}


def test_images_dataframe_remove_and_prune(tmp_path, base_dir) -> None:
    st = Store()
    base = Image.from_rootfs(base_dir, tag="base:1")
    extra = Layer.from_dir(_tree(str(tmp_path / "extra"), {"opt/x": "x\n"}))
    app = base.with_layer(extra, tag="app:1")

    df = pycontain.images()
    assert list(df.columns) == ["tag", "digest", "layers", "size", "created"]
    assert set(df["tag"]) == {"base:1", "app:1"}
    row = df[df["tag"] == "app:1"].iloc[0]
    assert row["layers"] == 2 and row["digest"] == app.digest
    assert row["size"] == base.layers[0].size + extra.size

    app.remove()
    app.remove()  # idempotent
    assert set(images()["tag"]) == {"base:1"}
    assert not st.has_layer(extra.digest)  # pruned: nothing else used it
    assert st.has_layer(base.layers[0].digest)
    with pytest.raises(NotFound):
        Image.get("app:1")

    # an unreferenced layer survives removing other images, and is pruned on demand
    orphan = Layer.from_dir(_tree(str(tmp_path / "orphan"), {"o": "o"}))
    Image.from_rootfs(_tree(str(tmp_path / "tmpimg"), {"t": "t"})).remove()
    assert st.has_layer(orphan.digest)
    assert prune() == [orphan.digest]
    assert not os.path.exists(os.path.join(st.layers_dir, orphan.digest.split(":")[1]))

    base.remove()
    assert images().empty
    assert st.layers() == []


def test_image_in_use_cannot_be_removed_and_its_layers_are_not_pruned(tmp_path, base_dir) -> None:
    st = Store()
    base = Image.from_rootfs(base_dir, tag="base:1")
    layer_digest = base.layers[0].digest
    plan = base.prepare_rootfs(str(tmp_path / "c1"), owner="c1", driver="overlay")
    driver = sd.select_driver(st, plan.driver)
    try:
        with pytest.raises(Busy, match="c1"):
            base.remove()
        st.remove_image(base.digest)  # even with the record gone, the layer stays while used
        assert prune() == []
        assert st.has_layer(layer_digest)
    finally:
        driver.cleanup(plan)
    assert prune() == [layer_digest]


def test_get_by_tag_and_digest_and_tag_moves(base_dir, tmp_path) -> None:
    a = Image.from_rootfs(base_dir, tag="busy")
    assert a.tag == "busy:latest"
    assert Image.get("busy") == a
    assert Image.get("busy:latest") == a
    assert Image.get(a.digest) == a
    assert Image.get(a.digest.split(":")[1][:12]) == a
    with pytest.raises(NotFound):
        Image.get("nope:1")
    b = Image.from_rootfs(_tree(str(tmp_path / "other"), {"f": "1"}), tag="busy")
    assert Image.get("busy") == b
    assert Image.get(a.digest).tags == []
    with pytest.raises(InvalidArgument):
        Image.from_rootfs(base_dir, tag="Bad Tag!")


def test_config_round_trip(base_dir) -> None:
    img = Image.from_rootfs(base_dir, tag="cfg:1", cmd=["/bin/sh", "-c", "echo hi"], entrypoint=["/bin/busybox"],
                            env={"A": "1", "PATH": "/bin"}, workdir="/srv", user="1000:1000")
    cfg = Image.get("cfg:1").config
    assert cfg.cmd == ("/bin/sh", "-c", "echo hi")
    assert cfg.entrypoint == ("/bin/busybox",)
    assert cfg.env_dict == {"A": "1", "PATH": "/bin"}
    assert (cfg.workdir, cfg.user) == ("/srv", "1000:1000")
    assert img.oci_config["rootfs"]["diff_ids"] == [img.layers[0].digest]
    with pytest.raises(InvalidArgument, match="exec form"):
        Image.from_rootfs(base_dir, cmd="echo hi")


def test_layer_from_dir_is_deterministic(tmp_path) -> None:
    d = _tree(str(tmp_path / "d"), {"a/b": "1", "c": "2"})
    one = Layer.from_dir(d)
    two = Layer.from_dir(d)
    assert one.digest == two.digest and one.size == two.size
    with tarfile.open(one.tar_path) as t:
        names = t.getnames()
        assert names == sorted(names, key=os.fsencode)
        assert {m.uname for m in t} == {""}
    os.utime(os.path.join(d, "c"), (1_700_000_100, 1_700_000_100))
    assert Layer.from_dir(d).digest != one.digest
    with pytest.raises(InvalidArgument):
        Layer.from_dir(os.path.join(d, "c"))


def test_layer_from_tar_and_diff(tmp_path, base_dir) -> None:
    base = Image.from_rootfs(base_dir)
    tar_path = str(tmp_path / "l.tar")
    with tarfile.open(tar_path, "w") as t:
        for name, data in (("etc/os-release", b"ID=changed\n"), ("etc/new", b"n"), ("bin/.wh.sh", b"")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, __import__("io").BytesIO(data))
    layer = Layer.from_tar(tar_path)
    with open(tar_path, "rb") as f:
        import hashlib

        assert layer.digest == "sha256:" + hashlib.sha256(f.read()).hexdigest()
    assert layer.size == os.path.getsize(tar_path)
    img = base.with_layer(layer)
    diff = img.layers[1].diff()
    assert list(diff.columns) == ["path", "change", "size"]
    got = {r.path: (r.change, r.size) for r in diff.itertuples()}
    assert got == {"/etc/os-release": ("C", 11), "/etc/new": ("A", 1), "/bin/sh": ("D", 0)}
    assert set(Layer.get(layer.digest).diff()["change"]) == {"A", "D"}  # alone it knows no lower layers


def test_host_image(tmp_path) -> None:
    img = Image.from_host(tag="host:1")
    assert img.based_on_host
    assert img.layers[0].digest == "host:/" and img.layers[0].path == "/"
    with pytest.raises(Unsupported):
        img.save(str(tmp_path / "x.tar"), format="docker-archive")
    app = img.with_layer(Layer.from_dir(_tree(str(tmp_path / "app"), {"opt/app": "1"})))
    assert [x.digest for x in app.layers][0] == "host:/"
    assert len(Store().layers()) == 1  # the host is never copied into the store


def test_save_load_round_trip_all_formats(tmp_path, base_dir) -> None:
    img = Image.from_rootfs(base_dir, tag="rt:1", cmd=["/bin/sh"])
    img = img.with_layer(Layer.from_dir(_tree(str(tmp_path / "top"), {"top": "t"})), tag="rt:2")
    for fmt, name in (("oci", "oci-dir"), ("oci", "oci.tar"), ("docker-archive", "docker.tar")):
        out = img.save(str(tmp_path / name), format=fmt)
        fresh = Store(str(tmp_path / f"store-{name}"))
        loaded = Image.load(out, store=fresh)
        assert loaded.digest == img.digest
        assert loaded.tag == "rt:2"
        assert [x.digest for x in loaded.layers] == [x.digest for x in img.layers]
        assert loaded.config == img.config
        shutil.rmtree(fresh.root)
    with pytest.raises(InvalidArgument):
        img.save(str(tmp_path / "docker.tar"), format="docker-archive")  # exists
    with pytest.raises(InvalidArgument):
        img.save(str(tmp_path / "x"), format="tarball")


def test_user_xattrs_survive_and_others_do_not(tmp_path) -> None:
    d = _tree(str(tmp_path / "x"), {"f": "1"})
    os.setxattr(os.path.join(d, "f"), "user.note", b"kept")
    os.setxattr(os.path.join(d, "f"), "trusted.overlay.opaque", b"y")
    layer = Layer.from_dir(d)
    assert os.getxattr(os.path.join(layer.path, "f"), "user.note") == b"kept"
    assert "trusted.overlay.opaque" not in os.listxattr(os.path.join(layer.path, "f"))


def test_from_dir_stays_on_one_filesystem(tmp_path) -> None:
    """A tmpfs mounted inside the tree (in a private mount namespace) appears as an empty directory."""
    from tests.integration.test_storage_drivers import run_in_mount_ns

    res = run_in_mount_ns("scenario_one_fs", os.environ["PYCONTAIN_STORE"], str(tmp_path / "tree"),
                          module=__name__)
    assert res == {"names": ["mnt", "top"], "mnt_entries": []}


def scenario_one_fs(store: str, tree: str) -> dict:
    import tarfile as tf

    from pycontain.kernel import syscalls

    _tree(tree, {"top": "1"})
    os.mkdir(os.path.join(tree, "mnt"))
    syscalls.mount("pycontain-test", os.path.join(tree, "mnt"), "tmpfs", 0, "size=1m")
    with open(os.path.join(tree, "mnt", "inside"), "w") as f:
        f.write("not in the layer")
    layer = Layer.from_dir(tree, store=Store(store))
    with tf.open(layer.tar_path) as t:
        names = t.getnames()
    return {"names": names, "mnt_entries": os.listdir(os.path.join(layer.path, "mnt"))}
