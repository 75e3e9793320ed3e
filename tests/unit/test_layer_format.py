"""Layer tar names, deterministic writing and reading without root."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from pycontain.backends import storage_tar, tarsafe
from pycontain.backends.storage_btrfs import chain_ids
from pycontain.errors import InvalidArchive


@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ["a", "b"]), ("./a//b/", ["a", "b"]), (".", []), ("./", []), ("a/./b", ["a", "b"]),
     ("..foo/bar..", ["..foo", "bar.."])],
)
def test_split_member_name(name: str, parts: list[str]) -> None:
    assert tarsafe.split_member_name(name) == parts


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "a\0b", "x/" + "y" * 256])
def test_split_member_name_refuses(name: str) -> None:
    with pytest.raises(InvalidArchive):
        tarsafe.split_member_name(name)


def _tree(root: str) -> None:
    for rel, data in {"b/x": "1", "a": "2", "b/c/d": "3"}.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(data)
        os.utime(p, (1_600_000_000, 1_600_000_000))
    os.symlink("a", os.path.join(root, "l"))
    os.link(os.path.join(root, "a"), os.path.join(root, "b/hard"))


def test_write_tree_is_deterministic_and_sorted(tmp_path) -> None:
    _tree(str(tmp_path / "t"))
    one, two = io.BytesIO(), io.BytesIO()
    storage_tar.write_tree(str(tmp_path / "t"), one)
    storage_tar.write_tree(str(tmp_path / "t"), two)
    assert one.getvalue() == two.getvalue()
    with tarfile.open(fileobj=io.BytesIO(one.getvalue())) as t:
        members = t.getmembers()
    names = [m.name for m in members]
    assert names == ["a", "b", "b/c", "b/c/d", "b/hard", "b/x", "l"]
    hard = members[names.index("b/hard")]
    assert hard.islnk() and hard.linkname == "a"
    assert all(m.uname == "" and m.gname == "" for m in members)


def test_extract_read_only_mode_hashes_the_stream(tmp_path) -> None:
    _tree(str(tmp_path / "t"))
    buf = io.BytesIO()
    storage_tar.write_tree(str(tmp_path / "t"), buf)
    res = tarsafe.extract(io.BytesIO(buf.getvalue()), None)
    assert res.diff_id == "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
    assert res.size == len(buf.getvalue()) and res.entries == 7 and res.compression == "none"


def test_round_trip_into_a_directory(tmp_path) -> None:
    _tree(str(tmp_path / "t"))
    buf = io.BytesIO()
    storage_tar.write_tree(str(tmp_path / "t"), buf)
    dest = tmp_path / "out"
    dest.mkdir()
    tarsafe.extract(io.BytesIO(buf.getvalue()), str(dest))
    again = io.BytesIO()
    storage_tar.write_tree(str(dest), again)
    assert again.getvalue() == buf.getvalue()


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    chain = chain_ids([a, b])
    assert chain[0] == a
    assert chain[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
