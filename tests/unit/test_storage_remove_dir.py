"""storage_driver.remove_dir: known entries by name, anything else by a full walk."""

from __future__ import annotations

import os
from pathlib import Path

from pycontain.backends.storage_driver import remove_dir


def test_known_entries(tmp_path: Path) -> None:
    d = tmp_path / "c"
    (d / "work" / "work").mkdir(parents=True)
    (d / "upper").mkdir()
    (d / "rootfs.json").write_text("{}")
    remove_dir(str(d), ("rootfs.json", "work/work/", "work/", "upper/", "missing/", "gone"))
    assert not d.exists()


def test_unexpected_content_falls_back_to_a_walk(tmp_path: Path) -> None:
    d = tmp_path / "c"
    (d / "upper" / "etc").mkdir(parents=True)
    (d / "upper" / "etc" / "passwd").write_text("x")
    (d / "surprise").write_text("y")
    os.symlink("/", d / "link-out")  # not followed
    remove_dir(str(d), ("upper/",))
    assert not d.exists()
    assert os.path.isdir("/etc")


def test_a_file_where_a_directory_was_expected(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "upper").write_text("not a dir")
    remove_dir(str(d), ("upper/",))
    assert not d.exists()


def test_missing_directory_is_fine(tmp_path: Path) -> None:
    remove_dir(str(tmp_path / "nothing"), ("a", "b/"))
