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
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pycontain.backends import tarsafe
from pycontain.errors import DigestMismatch, InvalidArchive, LimitExceeded


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
