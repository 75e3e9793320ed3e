"""Containers from images: the image's config, copy-on-write layers shared
between containers, diff() and commit()."""

from __future__ import annotations

import os

import pytest

import pycontain
from pycontain.container import Container
from tests.integration.containment import make_busybox_rootfs


@pytest.fixture
def busybox(tmp_path) -> pycontain.Image:
    root = make_busybox_rootfs(str(tmp_path / "rootfs"))
    with open(f"{root}/etc/motd", "w") as f:
        f.write("base\n")
    return pycontain.Image.from_rootfs(root, tag="busybox:test", cmd=["sh", "-c", "echo default cmd"],
                                       env=["PATH=/bin", "GREETING=hello"], workdir="/tmp")


def test_image_config_is_the_default(busybox: pycontain.Image) -> None:
    with Container(image="busybox:test") as c:
        assert c.wait(10) == 0
    r = pycontain.run(["sh", "-c", "echo $GREETING $(pwd); ls /bin | wc -l"], image=busybox)
    greeting, cwd, applets = r.stdout.split()
    assert (greeting, cwd) == ("hello", "/tmp") and int(applets) > 100


def test_diff_and_commit(busybox: pycontain.Image) -> None:
    with Container(image=busybox, command=["sh", "-c", "echo new > /root/new; echo more >> /etc/motd; "
                                                        "rm /bin/vi"]) as c:
        assert c.wait(10) == 0
        diff = c.diff().set_index("path")
        assert diff.loc["/root/new", "change"] == "A"
        assert diff.loc["/etc/motd", "change"] == "C"
        assert diff.loc["/bin/vi", "change"] == "D"
        img = c.commit(tag="busybox:committed")
    assert [layer.digest for layer in img.layers[:-1]] == [layer.digest for layer in busybox.layers]
    r = pycontain.run(["sh", "-c", "cat /root/new /etc/motd; test -e /bin/vi || echo gone"], image="busybox:committed")
    assert r.stdout == "new\nbase\nmore\ngone\n"
    assert "busybox:committed" in set(pycontain.images()["tag"])


def test_two_containers_share_the_image(busybox: pycontain.Image) -> None:
    with Container(image=busybox, command=["sh", "-c", "head -c 1048576 /dev/zero > /root/a"]) as a, \
            Container(image=busybox, command=["sh", "-c", "echo b > /root/b; cat /root/a 2>/dev/null || echo none"],
                      ) as b:
        assert a.wait(10) == 0 and b.wait(10) == 0
        # each writable layer holds only what that container wrote
        a_upper = a._rootfs.plan.rootfs
        b_upper = b._rootfs.plan.rootfs
        assert os.path.getsize(os.path.join(a_upper, "root/a")) == 1 << 20
        assert not os.path.exists(os.path.join(b_upper, "root/a"))
        assert not os.path.exists(os.path.join(a_upper, "bin/busybox"))
        assert set(a.diff()["path"]) == {"/root", "/root/a"}


def test_missing_image_is_a_typed_error() -> None:
    with pytest.raises(LookupError):
        pycontain.run(["true"], image="no-such-image:1")
    assert pycontain.containers().empty


def test_an_image_in_use_by_a_container_cannot_be_removed(busybox: pycontain.Image) -> None:
    from pycontain.errors import Busy

    c = Container(image=busybox, command=["true"])
    c.start()
    try:
        assert c.wait(10) == 0
        with pytest.raises(Busy, match="used by containers"):
            busybox.remove()  # the exited container's writable layer still stacks on it
    finally:
        c.remove()
    busybox.remove()
    assert "busybox:test" not in set(pycontain.images()["tag"])


def test_a_tag_is_looked_up_once_per_container(busybox: pycontain.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    # A look-up by tag reads every image record of the store: once per
    # container, and "name" finds "name:latest" at the first try.
    from pycontain.backends.storage_store import Store

    busybox.tag_as("plain")  # stored as plain:latest
    scans: list[int] = []
    real = Store.images
    monkeypatch.setattr(Store, "images", lambda self: (scans.append(1), real(self))[1])
    with Container(image="plain", command=["true"]) as c:
        assert c.wait(10) == 0
    assert len(scans) == 1
    scans.clear()
    assert pycontain.Image.get("plain").digest == busybox.digest
    assert len(scans) == 1
