"""Hostile layer archives: every case leaves the host untouched.

Archives are built here with ``tarfile`` in write mode (and by hand where
tarfile refuses to write something broken). The target of every escape
attempt is an ``outside`` directory next to the layer directory, holding a
sentinel file; after each test it must be exactly as before, and so must
``/etc/passwd``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pycontain.backends import tarsafe
from pycontain.backends.storage_store import Store
from pycontain.errors import DigestMismatch, InvalidArchive, LimitExceeded
from pycontain.image import Image


def _tree_state(root: str) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            data = b""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_nlink, data)
    return out


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@dataclass
class Arena:
    base: str
    dest: str
    outside: str
    secret: str


@pytest.fixture
def arena(tmp_path) -> Iterator[Arena]:
    base = str(tmp_path)
    dest = os.path.join(base, "layer")
    outside = os.path.join(base, "outside")
    os.mkdir(dest)
    os.mkdir(outside)
    secret = os.path.join(outside, "secret")
    with open(secret, "w") as f:
        f.write("do not touch\n")
    before = _tree_state(outside)
    passwd = _sha("/etc/passwd")
    yield Arena(base, dest, outside, secret)
    assert _tree_state(outside) == before, "an archive changed files outside its layer directory"
    assert _sha("/etc/passwd") == passwd
    assert sorted(os.listdir(base)) == ["layer", "outside"]


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def F(name: str, data: bytes = b"x", mode: int = 0o644, **pax: str) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = 1_700_000_000
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def D(name: str, **pax: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    if pax:
        ti.pax_headers = dict(pax)
    return ti, None


def S(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.SYMTYPE
    ti.linkname = target
    return ti, None


def H(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.LNKTYPE
    ti.linkname = target
    return ti, None


def DEV(name: str, kind: bytes, major: int, minor: int) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.devmajor, ti.devminor = major, minor
    ti.mode = 0o666
    return ti, None


def extract(arena: Arena, data: bytes, **kw) -> tarsafe.ExtractResult:
    return tarsafe.extract(io.BytesIO(data), arena.dest, **kw)


# -- names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside/secret", "a/../../outside/secret", "./../outside/new", ".."])
def test_dotdot_names_are_refused(arena: Arena, name: str) -> None:
    with pytest.raises(InvalidArchive, match=r"\.\."):
        extract(arena, _tar([F(name, b"pwned")]))


def test_absolute_names_are_refused(arena: Arena) -> None:
    with pytest.raises(InvalidArchive, match="absolute"):
        extract(arena, _tar([F(arena.secret, b"pwned")]))
    with pytest.raises(InvalidArchive, match="absolute"):
        extract(arena, _tar([F(os.path.join(arena.outside, "new"), b"pwned")]))


def test_symlink_then_write_through_it(arena: Arena) -> None:
    # The classic: l -> /etc (here: the outside dir), then l/passwd.
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([S("l", arena.outside), F("l/secret", b"pwned")]))
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([S("l", arena.outside), F("l/new", b"pwned")]))
    # relative symlink chains and directories through a symlink
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([D("a"), S("a/up", "../../outside"), D("a/up/sub")]))
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([S("l", "/etc"), F("l/passwd", b"pwned")]))


def test_symlink_replacing_a_directory_is_not_followed(arena: Arena) -> None:
    # A directory, then a symlink of the same name, then a file below it:
    # the extractor must not reuse the old directory's fd or follow the link.
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([D("d"), F("d/a"), S("d", arena.outside), F("d/secret", b"pwned")]))


def test_file_replacing_a_symlink_replaces_the_link_itself(arena: Arena) -> None:
    extract(arena, _tar([S("f", arena.secret), F("f", b"mine")]))
    p = os.path.join(arena.dest, "f")
    assert not os.path.islink(p)
    with open(p, "rb") as fh:
        assert fh.read() == b"mine"


def test_symlinks_are_created_but_never_followed(arena: Arena) -> None:
    res = extract(arena, _tar([S("abs", "/etc/passwd"), S("rel", "../../outside/secret")]))
    assert res.entries == 2
    assert os.readlink(os.path.join(arena.dest, "abs")) == "/etc/passwd"
    assert os.readlink(os.path.join(arena.dest, "rel")) == "../../outside/secret"


# -- hard links -------------------------------------------------------------------


@pytest.mark.parametrize("target", ["../outside/secret", "../../etc/passwd", "/etc/passwd", "OUTSIDE"])
def test_hardlinks_out_of_the_root(arena: Arena, target: str) -> None:
    if target == "OUTSIDE":
        target = arena.secret
    with pytest.raises(InvalidArchive):
        extract(arena, _tar([H("h", target)]))
    assert os.stat(arena.secret).st_nlink == 1


def test_hardlink_through_a_symlink(arena: Arena) -> None:
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([S("l", arena.outside), H("h", "l/secret")]))
    assert os.stat(arena.secret).st_nlink == 1


def test_hardlink_to_a_symlink_links_the_symlink_not_its_target(arena: Arena) -> None:
    extract(arena, _tar([S("l", arena.secret), H("h", "l")]))
    assert os.path.islink(os.path.join(arena.dest, "h"))
    assert os.stat(arena.secret).st_nlink == 1


def test_hardlink_inside_the_layer_works(arena: Arena) -> None:
    extract(arena, _tar([F("a/f", b"data"), H("b/g", "a/f")]))
    a = os.stat(os.path.join(arena.dest, "a/f"))
    b = os.stat(os.path.join(arena.dest, "b/g"))
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


# -- CVE-2025-4517 ------------------------------------------------------------------


def test_cve_2025_4517_long_symlink_chain(arena: Arena) -> None:
    """Nested 247-byte directory names reached through one-letter symlinks
    push a path past PATH_MAX, where os.path.realpath stops resolving; a
    symlink through that chain then points outside and a link or write goes
    through it (the archive shape of the CVE-2025-4517 advisory)."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    path = ""
    for step in steps:
        entries.append(D(os.path.join(path, comp)))
        entries.append(S(os.path.join(path, step), comp))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    entries.append(S(linkpath, "../" * len(steps)))
    entries.append(S("escape", os.path.join(linkpath, os.path.relpath(arena.outside, arena.dest))))
    entries.append(H("pwned_link", "escape/secret"))
    entries.append(F("escape/new", b"pwned"))
    with pytest.raises(InvalidArchive):
        extract(arena, _tar(entries))
    assert os.stat(arena.secret).st_nlink == 1


# -- device nodes, whiteouts, xattrs --------------------------------------------------


def test_device_nodes_are_never_created(arena: Arena) -> None:
    res = extract(
        arena,
        _tar([D("dev"), DEV("dev/sda", tarfile.BLKTYPE, 8, 0), DEV("dev/mem", tarfile.CHRTYPE, 1, 1),
              DEV("dev/fake-whiteout", tarfile.CHRTYPE, 0, 0), F("dev/ok", b"1")]),
    )
    assert sorted(os.listdir(os.path.join(arena.dest, "dev"))) == ["ok"]
    assert len([s for s in res.skipped if "device" in s]) == 3


def test_fifos_are_kept(arena: Arena) -> None:
    extract(arena, _tar([DEV("p", tarfile.FIFOTYPE, 0, 0)]))
    assert stat.S_ISFIFO(os.lstat(os.path.join(arena.dest, "p")).st_mode)


@pytest.mark.parametrize("name", [".wh..", ".wh...", ".wh.", "a/.wh.."])
def test_bad_whiteouts_are_refused(arena: Arena, name: str) -> None:
    with pytest.raises(InvalidArchive, match="whiteout"):
        extract(arena, _tar([F(name, b"")]))


def test_whiteout_through_a_symlink_cannot_delete_outside(arena: Arena) -> None:
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([S("l", arena.outside), F("l/.wh.secret", b"")]))
    with pytest.raises(InvalidArchive, match="symlink"):
        extract(arena, _tar([S("l", arena.outside), F("l/.wh..wh..opq", b"")]))


def test_good_whiteouts_become_overlay_whiteouts(arena: Arena) -> None:
    extract(arena, _tar([D("etc"), F("etc/.wh.shadow", b""), D("usr"), F("usr/.wh..wh..opq", b""),
                         F("usr/keep", b"k")]))
    st = os.lstat(os.path.join(arena.dest, "etc/shadow"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(os.path.join(arena.dest, "usr"), "trusted.overlay.opaque") == b"y"
    assert os.listdir(os.path.join(arena.dest, "usr")) == ["keep"]


def test_overlay_and_security_xattrs_are_stripped(arena: Arena) -> None:
    res = extract(
        arena,
        _tar([
            D("d", **{"SCHILY.xattr.trusted.overlay.opaque": "y",
                      "SCHILY.xattr.trusted.overlay.redirect": "/etc"}),
            F("bin/ping", b"\x7fELF", **{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                                          "SCHILY.xattr.security.selinux": "system_u:object_r:x",
                                          "SCHILY.xattr.user.keep": "1"}),
        ]),
    )
    assert os.listxattr(os.path.join(arena.dest, "d")) == []
    assert os.listxattr(os.path.join(arena.dest, "bin/ping")) == ["user.keep"]
    assert len([s for s in res.skipped if "xattr" in s]) == 4


# -- caps -----------------------------------------------------------------------------


def test_gzip_bomb_hits_the_ratio_cap(arena: Arena) -> None:
    # 256 MiB of zeros as concatenated gzip members (RFC 1952 allows them):
    # about 260 KiB on disk, built in milliseconds.
    ti = tarfile.TarInfo("zeros")
    ti.size = 256 << 20
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9)
    bomb = gzip.compress(ti.tobuf(tarfile.PAX_FORMAT)) + zeros * 256 + gzip.compress(bytes(1024))
    assert len(bomb) < (1 << 20)
    with pytest.raises(LimitExceeded) as info:
        extract(arena, bomb)
    assert info.value.field == "max_ratio"
    assert isinstance(info.value, ValueError)


def test_entry_count_cap(arena: Arena) -> None:
    data = _tar([F(f"f{i}", b"") for i in range(101)])
    with pytest.raises(LimitExceeded) as info:
        extract(arena, data, limits=tarsafe.Limits(max_entries=100))
    assert info.value.field == "max_entries"
    extract(arena, _tar([F(f"g{i}", b"") for i in range(100)]), limits=tarsafe.Limits(max_entries=100))


class _EndlessHeaders(io.RawIOBase):
    """A gzip stream of ``count`` tar headers, generated as it is read."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.comp = zlib.compressobj(1, zlib.DEFLATED, 31)
        self.block = tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT) * 2048
        self.buf = b""
        self.served = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while len(self.buf) < max(n, 1) and self.comp is not None:
            if self.left > 0:
                self.buf += self.comp.compress(self.block)
                self.left -= 2048
            else:
                self.buf += self.comp.compress(bytes(1024)) + self.comp.flush()
                self.comp = None
        out, self.buf = self.buf[:n], self.buf[n:]
        self.served += len(out)
        return out


def test_millions_of_entries_stop_at_the_cap(arena: Arena) -> None:
    """Four million entries (2 GiB of headers): the cap stops extraction
    after reading only what it needed, with a typed error."""
    src = _EndlessHeaders(4_000_000)
    with pytest.raises(LimitExceeded) as info:
        tarsafe.extract(src, arena.dest, limits=tarsafe.Limits(max_entries=5000, max_ratio=1e9))  # type: ignore[arg-type]
    assert info.value.field == "max_entries"
    assert src.left > 3_500_000  # it did not read on to the end
    assert tarsafe.DEFAULT_LIMITS.max_entries <= 1_000_000


def test_size_cap(arena: Arena) -> None:
    data = _tar([F("big", bytes(1 << 20))])
    with pytest.raises(LimitExceeded) as info:
        extract(arena, data, limits=tarsafe.Limits(max_bytes=512 << 10))
    assert info.value.field == "max_bytes"


# -- truncation and corruption ----------------------------------------------------------


def test_truncated_inside_file_data(arena: Arena) -> None:
    data = _tar([F("a", b"A" * 5000), F("b", b"B" * 5000)])
    with pytest.raises(InvalidArchive, match="truncated"):
        extract(arena, data[:512 + 3000])


def test_truncated_at_a_header_boundary(arena: Arena) -> None:
    data = _tar([F("a", b"A" * 512), F("b", b"B" * 512)])
    with pytest.raises(InvalidArchive, match="end-of-archive"):
        extract(arena, data[:1024])  # header + data of "a", nothing else


def test_truncated_inside_a_header(arena: Arena) -> None:
    data = _tar([F("a", b"A" * 512), F("b", b"B" * 512)])
    with pytest.raises(InvalidArchive):
        extract(arena, data[:1024 + 100])


def test_corrupt_header_checksum(arena: Arena) -> None:
    data = bytearray(_tar([F("a", b"A" * 512), F("b", b"B" * 512)]))
    data[1024 + 10] ^= 0xFF  # the name of "b": its checksum no longer matches
    with pytest.raises(InvalidArchive):
        extract(arena, bytes(data))


def test_truncated_gzip(arena: Arena) -> None:
    gz = gzip.compress(_tar([F("a", os.urandom(20000))]))
    with pytest.raises(InvalidArchive):
        extract(arena, gz[: len(gz) - 20])


def test_not_a_tar(arena: Arena) -> None:
    with pytest.raises(InvalidArchive):
        extract(arena, b"hello world" * 100)


# -- digests -------------------------------------------------------------------------------


def test_digest_and_size_are_of_the_uncompressed_stream(arena: Arena) -> None:
    data = _tar([F("a", b"hello")])
    res = tarsafe.extract(io.BytesIO(gzip.compress(data)), None)
    assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert res.size == len(data)
    assert res.compression == "gzip"
    with pytest.raises(DigestMismatch):
        tarsafe.check_digest("layer", "sha256:" + "0" * 64, res.diff_id)
    with pytest.raises(DigestMismatch):
        tarsafe.check_digest("layer", res.diff_id, res.diff_id, len(data) + 1, res.size)


# -- hostile image layouts and archives (Image.load) -----------------------------------------

def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """A valid one-layer OCI layout in a directory, to be broken by each test."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"))
        self.layer = _tar([F("hello", b"hello\n")])
        self.layer_gz = gzip.compress(self.layer)
        self.config = {"architecture": "amd64", "os": "linux",
                       "config": {"Cmd": ["/hello"]},
                       "rootfs": {"type": "layers", "diff_ids": [_sha256(self.layer)]}}
        self.manifest: dict = {}
        self.index: dict = {}
        self.write()

    def blob(self, data: bytes) -> str:
        d = _sha256(data)
        with open(os.path.join(self.root, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return d

    def write(self, *, manifest_raw: bytes | None = None, config_raw: bytes | None = None) -> None:
        cfg = config_raw if config_raw is not None else json.dumps(self.config).encode()
        if not self.manifest:
            self.manifest = {
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blob(cfg),
                           "size": len(cfg)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": self.blob(self.layer_gz), "size": len(self.layer_gz)}],
            }
        man = manifest_raw if manifest_raw is not None else json.dumps(self.manifest).encode()
        if not self.index:
            self.index = {"schemaVersion": 2, "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": self.blob(man),
                 "size": len(man), "annotations": {"org.opencontainers.image.ref.name": "evil:1"}}]}
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump(self.index, f)
        with open(os.path.join(self.root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)


def _store_is_clean() -> None:
    st = Store()
    assert st.layers() == []
    assert st.images() == []
    if os.path.isdir(st.tmp_dir):
        assert os.listdir(st.tmp_dir) == []


def test_valid_layout_loads(tmp_path) -> None:
    lay = Layout(str(tmp_path / "oci"))
    img = Image.load(lay.root)
    assert img.tag == "evil:1" and img.config.cmd == ("/hello",)


@pytest.mark.parametrize("where", ["index", "manifest.config", "manifest.layer", "config.diff_id"])
@pytest.mark.parametrize("digest", ["sha256:../../../../etc/passwd", "sha256:" + "A" * 64, "md5:abc", 42,
                                    "sha256:" + "0" * 63 + "/"])
def test_malicious_digest_strings(tmp_path, where: str, digest) -> None:
    lay = Layout(str(tmp_path / "oci"))
    if where == "index":
        lay.index["manifests"][0]["digest"] = digest
        lay.write()
    elif where == "manifest.config":
        lay.manifest["config"]["digest"] = digest
        lay.index = {}
        lay.write()
    elif where == "manifest.layer":
        lay.manifest["layers"][0]["digest"] = digest
        lay.index = {}
        lay.write()
    else:
        lay.config["rootfs"]["diff_ids"] = [digest]
        lay.manifest = {}
        lay.index = {}
        lay.write()
    with pytest.raises(InvalidArchive, match="digest"):
        Image.load(lay.root)
    _store_is_clean()


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"schemaVersion": 1}', b'{"schemaVersion": 2}',
                                 b'{"schemaVersion": 2, "config": {}, "layers": []}',
                                 b'{"schemaVersion": 2, "config": {"digest": "sha256:' + b"0" * 64
                                 + b'", "size": -1}, "layers": []}',
                                 b'{"schemaVersion": 2, "config": {"digest": "sha256:' + b"0" * 64
                                 + b'", "size": true}, "layers": []}',
                                 b'{"schemaVersion": 2, "config": {"digest": "sha256:' + b"0" * 64
                                 + b'", "size": 1}, "layers": {}}',
                                 b"\xff\xfe"])
def test_malformed_manifest_json(tmp_path, raw: bytes) -> None:
    lay = Layout(str(tmp_path / "oci"))
    lay.index = {}
    lay.write(manifest_raw=raw)
    with pytest.raises(InvalidArchive):
        Image.load(lay.root)
    _store_is_clean()


@pytest.mark.parametrize("cfg", [b"{broken", b"null", b'{"rootfs": {"type": "layers"}}',
                                 b'{"rootfs": {"type": "layers", "diff_ids": []}}',
                                 b'{"rootfs": {"type": "layers", "diff_ids": ["sha256:../x"]}}',
                                 b'{"rootfs": {"type": "layers", "diff_ids": ["DIFF"]}, "config": {"Cmd": "sh"}}',
                                 b'{"rootfs": {"type": "layers", "diff_ids": ["DIFF"]}, "config": {"Env": [1]}}',
                                 b'{"rootfs": {"type": "layers", "diff_ids": ["DIFF"]}, "config": []}',
                                 b'{"rootfs": {"type": "layers", "diff_ids": ["DIFF"]}, "history": {}}'])
def test_malformed_config_json(tmp_path, cfg: bytes) -> None:
    lay = Layout(str(tmp_path / "oci"))
    lay.manifest = {}
    lay.index = {}
    lay.write(config_raw=cfg.replace(b"DIFF", _sha256(lay.layer).encode()))
    with pytest.raises(InvalidArchive):
        Image.load(lay.root)
    _store_is_clean()


def test_tampered_blob_is_caught(tmp_path) -> None:
    lay = Layout(str(tmp_path / "oci"))
    path = os.path.join(lay.root, "blobs", "sha256", _sha256(lay.layer_gz)[7:])
    with open(path, "wb") as f:
        f.write(gzip.compress(_tar([F("hello", b"HACKED")])))
    with pytest.raises(DigestMismatch):
        Image.load(lay.root)
    _store_is_clean()


def test_size_mismatch_is_caught(tmp_path) -> None:
    lay = Layout(str(tmp_path / "oci"))
    lay.manifest["layers"][0]["size"] += 1
    lay.index = {}
    lay.write()
    with pytest.raises(DigestMismatch, match="size"):
        Image.load(lay.root)
    _store_is_clean()


def test_diff_id_mismatch_is_caught(tmp_path) -> None:
    lay = Layout(str(tmp_path / "oci"))
    lay.config["rootfs"]["diff_ids"] = [_sha256(b"something else")]
    lay.manifest = {}
    lay.index = {}
    lay.write()
    with pytest.raises(DigestMismatch, match="diff_id"):
        Image.load(lay.root)
    _store_is_clean()


def test_layout_blob_that_is_a_symlink_is_refused(tmp_path) -> None:
    lay = Layout(str(tmp_path / "oci"))
    path = os.path.join(lay.root, "blobs", "sha256", _sha256(lay.layer_gz)[7:])
    os.unlink(path)
    os.symlink("/etc/passwd", path)
    with pytest.raises(InvalidArchive):
        Image.load(lay.root)
    _store_is_clean()


def _docker_archive(path: str, manifest: object, files: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    with tarfile.open(path, "w") as t:
        for name, data in {**files, "manifest.json": json.dumps(manifest).encode()}.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.SYMTYPE
            ti.linkname = target
            t.addfile(ti)


def test_docker_archive_hostile_paths(tmp_path) -> None:
    layer = _tar([F("x", b"x")])
    cfg = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [_sha256(layer)]}}).encode()
    cname = _sha256(cfg)[7:] + ".json"
    ok = {cname: cfg, "l/layer.tar": layer}
    good = str(tmp_path / "good.tar")
    _docker_archive(good, [{"Config": cname, "RepoTags": ["d:1"], "Layers": ["l/layer.tar"]}], ok)
    assert Image.load(good, store=Store(str(tmp_path / "s"))).tag == "d:1"
    shutil.rmtree(str(tmp_path / "s"))

    cases = {
        "dotdot layer": ([{"Config": cname, "Layers": ["../../etc/passwd"]}], ok, None),
        "absolute layer": ([{"Config": cname, "Layers": ["/etc/passwd"]}], ok, None),
        "symlinked layer": ([{"Config": cname, "Layers": ["evil.tar"]}], ok, {"evil.tar": "/etc/passwd"}),
        "config name lies": ([{"Config": "0" * 64 + ".json", "Layers": ["l/layer.tar"]}],
                             {**ok, "0" * 64 + ".json": cfg}, None),
        "not a list": ({"Config": cname}, ok, None),
        "layers not strings": ([{"Config": cname, "Layers": [1]}], ok, None),
        "layer count": ([{"Config": cname, "Layers": ["l/layer.tar", "l/layer.tar"]}], ok, None),
    }
    for what, (manifest, files, links) in cases.items():
        path = str(tmp_path / (what.replace(" ", "_") + ".tar"))
        _docker_archive(path, manifest, files, links)
        with pytest.raises(InvalidArchive):
            Image.load(path)
        _store_is_clean()


def test_truncated_image_archive(tmp_path) -> None:
    lay = Layout(str(tmp_path / "oci"))
    img = Image.load(lay.root)
    out = img.save(str(tmp_path / "img.tar"), format="docker-archive")
    img.remove()
    with open(out, "rb") as f:
        data = f.read()
    cut = str(tmp_path / "cut.tar")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InvalidArchive):
        Image.load(cut)
    _store_is_clean()


@pytest.mark.parametrize("case", ["symlink-write", "dotdot", "bad-whiteout", "truncated", "entries"])
def test_layer_from_tar_leaves_nothing_in_the_store(arena: Arena, case: str) -> None:
    from pycontain.image import Layer

    data = {
        "symlink-write": _tar([F("ok", b"1"), S("l", arena.outside), F("l/secret", b"pwned")]),
        "dotdot": _tar([F("ok", b"1"), F("../x", b"pwned")]),
        "bad-whiteout": _tar([F("ok", b"1"), F(".wh..", b"")]),
        "truncated": _tar([F("ok", b"1" * 4000)])[:2048],
        "entries": _tar([F(f"f{i}", b"") for i in range(20)]),
    }[case]
    path = os.path.join(arena.base, "layer", "evil.tar")
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(InvalidArchive):
        Layer.from_tar(path, limits=tarsafe.Limits(max_entries=10))
    os.unlink(path)
    _store_is_clean()


def test_directory_replaced_by_a_symlink_later(arena: Arena) -> None:
    # legitimate in tar semantics: the later member wins; the directory's
    # metadata is then not applied through the new symlink
    extract(arena, _tar([D("a"), D("a/b"), F("a/b/f"), S("a", arena.outside)]))
    assert os.readlink(os.path.join(arena.dest, "a")) == arena.outside


def test_names_that_are_not_utf8_round_trip(arena: Arena) -> None:
    raw = os.fsdecode(b"caf\xe9-\xff")  # latin-1 bytes, not UTF-8
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as t:
        ti = tarfile.TarInfo(raw)
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
    extract(arena, buf.getvalue())
    assert os.listdir(os.fsencode(arena.dest)) == [b"caf\xe9-\xff"]


def test_gzip_bomb_inside_an_image_layout(tmp_path) -> None:
    lay = Layout(str(tmp_path / "oci"))
    ti = tarfile.TarInfo("zeros")
    ti.size = 128 << 20
    body = gzip.compress(ti.tobuf(tarfile.PAX_FORMAT)) + gzip.compress(bytes(1 << 20), 9) * 128 \
        + gzip.compress(bytes(1024))
    plain_digest = _sha256(ti.tobuf(tarfile.PAX_FORMAT) + bytes(128 << 20) + bytes(1024))
    lay.layer_gz = body
    lay.config["rootfs"]["diff_ids"] = [plain_digest]
    lay.manifest = {}
    lay.index = {}
    lay.write()
    with pytest.raises(LimitExceeded, match="ratio"):
        Image.load(lay.root)  # the default caps
    _store_is_clean()


def test_image_archive_member_cap(tmp_path, monkeypatch) -> None:
    from pycontain.image import oci

    monkeypatch.setattr(oci, "MAX_ARCHIVE_MEMBERS", 50)
    path = str(tmp_path / "many.tar")
    _docker_archive(path, [], {f"junk{i}": b"" for i in range(100)})
    with pytest.raises(LimitExceeded):
        Image.load(path)
    _store_is_clean()
