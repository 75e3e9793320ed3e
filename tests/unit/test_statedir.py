"""The state files' writers and reader (pycontain.statedir): what a reader
sees while a writer is at work."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pycontain import statedir


def test_create_json_makes_a_new_file_only(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    statedir.create_json(path, {"status": "created"})
    assert statedir.read_json(path) == {"status": "created"}
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        statedir.create_json(path, {"status": "other"})
    assert statedir.read_json(path) == {"status": "created"}
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file on the way


def test_rewrite_json_keeps_the_inode_and_pads_a_shorter_text(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    statedir.create_json(path, {"status": "created", "note": "x" * 100})
    before = path.stat()
    statedir.rewrite_json(path, {"status": "running", "pid": 42})
    after = path.stat()
    assert after.st_ino == before.st_ino  # no inode made or freed
    assert after.st_size == before.st_size  # padded, not truncated
    assert json.loads(path.read_bytes()) == {"status": "running", "pid": 42}
    assert path.read_bytes().endswith(b"\n")
    statedir.rewrite_json(path, {"status": "exited", "note": "y" * 300})  # longer: grows
    assert statedir.read_json(path) == {"status": "exited", "note": "y" * 300}
    assert path.stat().st_ino == before.st_ino


def test_rewrite_json_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        statedir.rewrite_json(tmp_path / "missing.json", {})


def test_read_json_waits_for_a_writer_between_create_and_write(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"")  # created, not yet written

    def write_soon() -> None:
        time.sleep(0.003)
        path.write_bytes(b'{"status": "created"}\n')

    t = threading.Thread(target=write_soon)
    t.start()
    try:
        assert statedir.read_json(path) == {"status": "created"}
    finally:
        t.join()


def test_read_json_gives_up_on_a_document_that_never_parses(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"status": ')
    t0 = time.monotonic()
    with pytest.raises(ValueError):
        statedir.read_json(path, attempts=1)
    assert time.monotonic() - t0 < 0.002 + 0.05  # one read, no pause
    with pytest.raises(ValueError):
        statedir.read_json(path)
    with pytest.raises(FileNotFoundError):
        statedir.read_json(tmp_path / "missing.json")
