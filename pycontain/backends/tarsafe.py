"""Extract hostile OCI layer tars safely, member by member.

Layer tars come from registries, colleagues and ``docker save`` files: they
are hostile input (DESIGN.md §5). ``tarfile``'s own extraction (and its
3.12 "filters", backported to 3.11) resolved paths with ``os.path.realpath``
and was bypassed more than once (CVE-2025-4517: a symlink chain longer than
PATH_MAX makes realpath stop resolving, and a later link escapes). So this
module never resolves a path as a string and never follows a symlink:

* every member name is split into components; absolute names, ``..`` and
  NUL bytes are refused;
* the parent directory is reached by walking component by component from a
  file descriptor of the layer directory with ``openat(O_PATH | O_DIRECTORY |
  O_NOFOLLOW)``: a symlink (or a file) on the way is an error, never followed;
* the last component is created with the ``*at`` calls relative to that
  parent fd (``O_CREAT | O_EXCL | O_NOFOLLOW`` for files, ``linkat`` without
  ``AT_SYMLINK_FOLLOW`` for hard links, whose target is resolved the same way);
* device nodes in the archive are skipped (never created); FIFOs are kept;
* only ``user.*`` extended attributes are kept: ``trusted.overlay.*`` in an
  archive would forge overlayfs whiteouts/redirects and ``security.*`` would
  forge file capabilities or SELinux labels;
* caps on total uncompressed bytes, entry count and gzip compression ratio
  raise :class:`~pycontain.errors.LimitExceeded` as soon as they are passed;
* the sha256 and size of the uncompressed stream (the layer's diff_id) and of
  the raw (maybe gzip) stream are computed while reading, for the caller to
  check against descriptors; a tar must end in its end-of-archive block, so a
  truncated or corrupted archive is an error, not a shorter layer.

OCI whiteouts are turned into what overlayfs understands, because the overlay
storage driver stacks unpacked layer directories as lowerdirs: ``.wh.NAME``
becomes a character device 0/0 named NAME, and ``.wh..wh..opq`` sets
``trusted.overlay.opaque=y`` on its directory (overlayfs(5), "whiteouts and
opaque directories").
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import zlib
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from pycontain.errors import DigestMismatch, InvalidArchive, LimitExceeded, Unsupported
from pycontain.kernel.constants import OVERLAY_OPAQUE_XATTR

if TYPE_CHECKING:
    import tarfile

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_KEPT_XATTR_PREFIXES = ("user.",)
_CHUNK = 1 << 20
_RAW_CHUNK = 64 << 10  # small raw reads: a bomb is noticed before much is read
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Limits:
    """Caps applied while reading an archive.

    ``max_bytes``: uncompressed bytes of one layer tar; ``max_entries``: tar
    members of one layer; ``max_ratio``: uncompressed/compressed bytes of a
    gzip layer, enforced once ``ratio_grace_bytes`` have been decompressed
    (small, very compressible files are normal; a gzip bomb is not).
    """

    max_bytes: int = 64 << 30
    max_entries: int = 1_000_000
    max_ratio: float = 200.0
    ratio_grace_bytes: int = 32 << 20


DEFAULT_LIMITS = Limits()


@dataclass
class ExtractResult:
    """What reading a layer archive found.

    ``diff_id``/``size``: sha256 and byte count of the uncompressed tar;
    ``digest``/``compressed_size``: of the raw stream as given (equal to the
    first two for an uncompressed tar).
    """

    diff_id: str
    size: int
    digest: str
    compressed_size: int
    compression: str
    entries: int
    skipped: list[str] = field(default_factory=list)


# -- the reading pipeline ------------------------------------------------------


def _sha256() -> Any:
    import hashlib  # here: it loads OpenSSL (~3 ms), which a container start does not need

    return hashlib.sha256()


class _RawCounter:
    """Counts and hashes the bytes as given (maybe gzip)."""

    def __init__(self, src: IO[bytes]) -> None:
        self.src = src
        self.sha = _sha256()
        self.count = 0

    def read(self, n: int) -> bytes:
        data = self.src.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data


class _Uncompressed:
    """The uncompressed tar stream: decompresses, hashes, counts, caps, tees.

    tarfile reads it in "r|" (stream) mode. A cap passed raises
    LimitExceeded from read(); it is also kept in ``failure`` in case a
    caller in between swallowed it.
    """

    TAIL = 1 << 20

    def __init__(self, src: IO[bytes], limits: Limits, tee: IO[bytes] | None) -> None:
        self.raw = _RawCounter(src)
        self.limits = limits
        self.tee = tee
        self.sha = _sha256()
        self.count = 0
        self.failure: Exception | None = None
        self.tail = bytearray()
        self.tail_start = 0
        head = self.raw.read(4)
        self._pending = b""
        self.decomp: Any = None
        if head.startswith(_GZIP_MAGIC):
            self.compression = "gzip"
            self.decomp = zlib.decompressobj(wbits=31)
            self._feed(head)
        elif head == _ZSTD_MAGIC:
            raise Unsupported(
                "zstd-compressed layers are not supported",
                op="extract layer",
                hint="recompress the layer with gzip (or leave it uncompressed), e.g. skopeo copy --dest-compress-format gzip",
            )
        else:
            self.compression = "none"
            self._pending = head
        self.raw_eof = False

    def _feed(self, data: bytes) -> None:
        try:
            out = self.decomp.decompress(data, _CHUNK)
        except zlib.error as e:
            raise InvalidArchive(f"corrupt gzip data: {e}", op="extract layer") from None
        self._pending += out

    def _fill(self, n: int) -> None:
        while len(self._pending) < n:
            if self.decomp is None:
                data = self.raw.read(max(n - len(self._pending), _CHUNK))
                if not data:
                    self.raw_eof = True
                    return
                self._pending += data
                continue
            if self.decomp.unconsumed_tail:
                self._feed(self.decomp.unconsumed_tail)
                continue
            if self.decomp.eof:
                rest = self.decomp.unused_data
                if rest.strip(b"\0") == b"":
                    # Some writers pad after the gzip trailer; read the rest to hash it.
                    more = self.raw.read(_RAW_CHUNK)
                    if not more:
                        self.raw_eof = True
                        return
                    if more.strip(b"\0") == b"":
                        continue
                    rest = rest + more
                # A concatenated gzip member (RFC 1952 allows it).
                self.decomp = zlib.decompressobj(wbits=31)
                self._feed(rest)
                continue
            data = self.raw.read(_RAW_CHUNK)
            if not data:
                self.raw_eof = True
                if not self.decomp.eof:
                    raise InvalidArchive("gzip stream ends early (truncated archive)", op="extract layer")
                return
            self._feed(data)

    def read(self, n: int = -1) -> bytes:
        if self.failure is not None:
            raise self.failure
        if n is None or n < 0:
            n = _CHUNK
        self._fill(n)
        data, self._pending = self._pending[:n], self._pending[n:]
        if not data:
            return b""
        self.sha.update(data)
        self.count += len(data)
        if self.tee is not None:
            self.tee.write(data)
        self.tail += data
        if len(self.tail) > 2 * self.TAIL:
            cut = len(self.tail) - self.TAIL
            del self.tail[:cut]
            self.tail_start += cut
        self._check_caps()
        return data

    def _check_caps(self) -> None:
        lim = self.limits
        if self.count > lim.max_bytes:
            self.failure = LimitExceeded(
                "layer is larger than the size cap",
                op="extract layer",
                field="max_bytes",
                value=lim.max_bytes,
                hint="raise Limits(max_bytes=...) if this archive is trusted",
            )
            raise self.failure
        if self.compression != "none" and self.count > lim.ratio_grace_bytes:
            ratio = self.count / max(self.raw.count, 1)
            if ratio > lim.max_ratio:
                self.failure = LimitExceeded(
                    f"compression ratio {ratio:.0f}:1 exceeds the cap (gzip bomb?)",
                    op="extract layer",
                    field="max_ratio",
                    value=lim.max_ratio,
                    hint="raise Limits(max_ratio=...) if this archive is trusted",
                )
                raise self.failure

    def bytes_at(self, pos: int, n: int) -> bytes:
        """The uncompressed bytes [pos, pos+n), reading ahead as needed."""
        while self.count < pos + n:
            if not self.read(_CHUNK):
                break
        lo = pos - self.tail_start
        if lo < 0:
            raise InvalidArchive("tar end-of-archive block is not where tar says", op="extract layer")
        return bytes(self.tail[lo : lo + n])

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


# -- path handling --------------------------------------------------------------


def split_member_name(name: str, *, what: str = "member name") -> list[str]:
    """Components of a tar member name, refusing anything that could escape.

    ``"./a//b/"`` -> ``["a", "b"]``; ``"/etc"``, ``"a/../../b"`` and names
    with NUL raise :class:`InvalidArchive`. The root (``"."``) is ``[]``.
    """
    if "\0" in name:
        raise InvalidArchive(f"{what} contains a NUL byte", op="extract layer", field=what, value=name)
    if name.startswith("/"):
        raise InvalidArchive(
            f"absolute {what} in a layer",
            op="extract layer",
            field=what,
            value=name,
            hint="layer members are relative to the layer root; this archive is malformed or hostile",
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArchive(
            f"{what} goes up with '..'",
            op="extract layer",
            field=what,
            value=name,
            hint="a layer may not name paths outside its root",
        )
    for p in parts:
        if len(os.fsencode(p)) > 255:
            raise InvalidArchive(f"{what} has a component longer than 255 bytes", op="extract layer",
                                 field=what, value=name)
    return parts


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(rootfd: int, parts: list[str], *, create: bool, name: str = "") -> int:
    """fd (O_PATH) of the directory ``parts`` below ``rootfd``; never follows symlinks.

    Missing directories are made (mode 0755) when ``create``; a symlink or a
    non-directory on the way raises :class:`InvalidArchive`.
    """
    fd = os.dup(rootfd)
    try:
        for i, comp in enumerate(parts):
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise InvalidArchive(
                        "path names a directory that does not exist in this layer",
                        op="extract layer",
                        field="name",
                        value=name or "/".join(parts),
                    ) from None
                os.mkdir(comp, 0o755, dir_fd=fd)
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = _lstat_at(fd, comp)
                kind = "a symlink" if st is not None and stat.S_ISLNK(st.st_mode) else "not a directory"
                raise InvalidArchive(
                    f"path goes through {kind} at {'/'.join(parts[: i + 1])!r}",
                    op="extract layer",
                    field="name",
                    value=name or "/".join(parts),
                    hint="layers may not write through symlinks (that is how archives escape their root)",
                ) from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def remove_at(dirfd: int, name: str) -> None:
    """Remove ``name`` (file, symlink or whole tree) in ``dirfd``; never follows symlinks."""
    st = _lstat_at(dirfd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        # shutil.rmtree with dir_fd uses the fd-based walk that does not
        # follow symlinks (the variant immune to the rmtree races).
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


# -- extraction ---------------------------------------------------------------------


@dataclass
class _DirMeta:
    parts: list[str]
    mode: int
    uid: int
    gid: int
    mtime: int
    xattrs: dict[str, bytes]


def _xattrs_of(member: tarfile.TarInfo) -> tuple[dict[str, bytes], list[str]]:
    kept: dict[str, bytes] = {}
    dropped: list[str] = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if name.startswith(_KEPT_XATTR_PREFIXES):
            kept[name] = value.encode("utf-8", "surrogateescape")
        else:
            dropped.append(name)
    return kept, dropped


class _Extractor:
    def __init__(self, rootfd: int, chown: bool) -> None:
        self.rootfd = rootfd
        self.chown = chown
        self.dirs: list[_DirMeta] = []
        self.skipped: list[str] = []
        self._cache_key: tuple[str, ...] | None = None
        self._cache_fd = -1

    def close(self) -> None:
        self._drop_cache()

    def _drop_cache(self) -> None:
        if self._cache_fd >= 0:
            os.close(self._cache_fd)
        self._cache_fd = -1
        self._cache_key = None

    def parent(self, parts: list[str], name: str) -> int:
        key = tuple(parts)
        if key != self._cache_key:
            self._drop_cache()
            self._cache_fd = open_dir_at(self.rootfd, parts, create=True, name=name)
            self._cache_key = key
        return self._cache_fd

    def _clear(self, pfd: int, base: str, keep_dir: bool) -> None:
        st = _lstat_at(pfd, base)
        if st is None:
            return
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return
        # The only cached fd is ``pfd`` itself, the parent of what goes away,
        # so it stays valid; descendants are reopened from scratch.
        remove_at(pfd, base)

    def _own(self, pfd: int, base: str, m: tarfile.TarInfo, *, symlink: bool = False) -> None:
        if self.chown:
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if not symlink:
            os.chmod(base, m.mode & 0o7777, dir_fd=pfd)
        os.utime(base, ns=(int(m.mtime) * 10**9,) * 2, dir_fd=pfd, follow_symlinks=False)

    def member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = split_member_name(m.name)
        if not parts:
            if m.isdir():
                return  # the layer root itself: its metadata is the store's business
            raise InvalidArchive("a non-directory member names the layer root", op="extract layer",
                                 field="name", value=m.name)
        base = parts[-1]
        xattrs, dropped = _xattrs_of(m)
        self.skipped.extend(f"{m.name}: xattr {x} stripped" for x in dropped)

        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, m.name)
            return

        pfd = self.parent(parts[:-1], m.name)
        if m.isdir():
            self._clear(pfd, base, keep_dir=True)
            if _lstat_at(pfd, base) is None:
                os.mkdir(base, 0o700, dir_fd=pfd)
            self.dirs.append(_DirMeta(parts, m.mode & 0o7777, m.uid, m.gid, int(m.mtime), xattrs))
        elif m.isreg():
            self._clear(pfd, base, keep_dir=False)
            self.regular(tar, m, pfd, base, xattrs)
        elif m.issym():
            self._clear(pfd, base, keep_dir=False)
            if "\0" in m.linkname:
                raise InvalidArchive("symlink target contains NUL", op="extract layer", field="linkname",
                                     value=m.linkname)
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._own(pfd, base, m, symlink=True)
        elif m.islnk():
            self.hardlink(m, pfd, base)
        elif m.isfifo():
            self._clear(pfd, base, keep_dir=False)
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._own(pfd, base, m)
        elif m.ischr() or m.isblk():
            # Device nodes from an image would let a container reach host
            # devices (the devices cgroup is a second line, not the first).
            self.skipped.append(f"{m.name}: device node skipped")
        else:
            raise InvalidArchive(f"unsupported tar entry type {m.type!r}", op="extract layer",
                                 field="name", value=m.name)

    def regular(self, tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str,
                xattrs: dict[str, bytes]) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=pfd)
        try:
            src = tar.extractfile(m)
            remaining = m.size
            if src is not None:
                while remaining > 0:
                    buf = src.read(min(_CHUNK, remaining))
                    if not buf:
                        raise InvalidArchive("tar ends inside a file's data (truncated archive)",
                                             op="extract layer", field="name", value=m.name)
                    remaining -= len(buf)
                    view = memoryview(buf)
                    while view:
                        view = view[os.write(fd, view):]
            if self.chown:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)
            for k, v in xattrs.items():
                os.setxattr(fd, k, v)
            os.utime(fd, ns=(int(m.mtime) * 10**9,) * 2)
        finally:
            os.close(fd)

    def hardlink(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        tparts = split_member_name(m.linkname, what="hard link target")
        if not tparts:
            raise InvalidArchive("hard link to the layer root", op="extract layer", field="linkname",
                                 value=m.linkname)
        tfd = open_dir_at(self.rootfd, tparts[:-1], create=False, name=m.linkname)
        try:
            st = _lstat_at(tfd, tparts[-1])
            if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise InvalidArchive(
                    "hard link target is not a file earlier in this layer",
                    op="extract layer",
                    field="linkname",
                    value=m.linkname,
                )
            if tparts == split_member_name(m.name):
                return  # a link to itself: nothing to do
            self._clear(pfd, base, keep_dir=False)
            pfd = self.parent(split_member_name(m.name)[:-1], m.name)
            os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        if base == OPAQUE_MARKER:
            pfd = self.parent(parts[:-1], name)
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.setxattr(dfd, OVERLAY_OPAQUE_XATTR, b"y")
            finally:
                os.close(dfd)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless here.
            self.skipped.append(f"{name}: AUFS metadata skipped")
            return
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            raise InvalidArchive(
                "malformed whiteout",
                op="extract layer",
                field="name",
                value=name,
                hint="a whiteout is .wh.<name> for a real name in the same directory",
            )
        pfd = self.parent(parts[:-1], name)
        self._clear(pfd, target, keep_dir=False)
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)

    def finish_dirs(self) -> None:
        self._drop_cache()
        # Deepest first, so setting a parent's mtime comes after its children changed it.
        for d in sorted(self.dirs, key=lambda d: len(d.parts), reverse=True):
            try:
                pfd = open_dir_at(self.rootfd, d.parts[:-1], create=False)
            except InvalidArchive:
                continue  # a later member replaced a parent (e.g. by a symlink): nothing to set
            try:
                st = _lstat_at(pfd, d.parts[-1])
                if st is None or not stat.S_ISDIR(st.st_mode):
                    continue  # replaced by a later member
                dfd = os.open(d.parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=pfd)
                try:
                    if self.chown:
                        os.fchown(dfd, d.uid, d.gid)
                    os.fchmod(dfd, d.mode)
                    for k, v in d.xattrs.items():
                        os.setxattr(dfd, k, v)
                    os.utime(dfd, ns=(d.mtime * 10**9,) * 2)
                finally:
                    os.close(dfd)
            finally:
                os.close(pfd)


def extract(
    src: IO[bytes],
    dest: str | os.PathLike[str] | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    tee: IO[bytes] | None = None,
) -> ExtractResult:
    """Read the layer tar ``src`` (plain or gzip) into the empty directory ``dest``.

    With ``dest=None`` the archive is only read and checked (digests, caps,
    names), nothing is written. ``tee`` receives the uncompressed tar bytes.
    The caller removes ``dest`` if this raises. Raises
    :class:`InvalidArchive` (malformed or hostile), :class:`LimitExceeded`
    (a cap), :class:`Unsupported` (zstd).

    Example::

        with open("layer.tar.gz", "rb") as f:
            res = extract(f, "/store/layers/tmp-1")
        res.diff_id   # 'sha256:...'
    """
    import tarfile  # here: a container start imports this module, not tarfile (~4 ms)

    stream = _Uncompressed(src, limits, tee)
    rootfd = -1
    ex: _Extractor | None = None
    if dest is not None:
        rootfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        ex = _Extractor(rootfd, chown=os.geteuid() == 0)
    entries = 0
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]
        except tarfile.ReadError as e:
            if stream.failure:
                raise stream.failure from None
            raise InvalidArchive(f"not a tar archive: {e}", op="extract layer") from None
        try:
            for m in tar:
                entries += 1
                if entries > limits.max_entries:
                    raise LimitExceeded(
                        "layer has more entries than the cap",
                        op="extract layer",
                        field="max_entries",
                        value=limits.max_entries,
                        hint="raise Limits(max_entries=...) if this archive is trusted",
                    )
                if ex is not None:
                    try:
                        ex.member(tar, m)
                    except OSError as e:
                        raise InvalidArchive(
                            f"cannot create member: {os.strerror(e.errno or 0)}",
                            op="extract layer",
                            field="name",
                            value=m.name,
                        ) from None
                elif m.isreg():
                    f = tar.extractfile(m)
                    if f is not None:
                        while f.read(_CHUNK):
                            pass
            end = tar.offset
        except (tarfile.TarError, EOFError) as e:
            if stream.failure:
                raise stream.failure from None
            raise InvalidArchive(f"malformed or truncated tar: {e}", op="extract layer") from None
        if stream.failure:
            raise stream.failure
        # tarfile ends quietly on a truncated or corrupt header; OCI layers
        # end with the end-of-archive marker, so demand a zero block there.
        if stream.bytes_at(end, 512) != bytes(512):
            raise InvalidArchive(
                "tar has no end-of-archive block (truncated or corrupt archive)",
                op="extract layer",
                hint=f"the data after byte {end} is not a valid tar header",
            )
        stream.drain()
        if ex is not None:
            try:
                ex.finish_dirs()
            except OSError as e:
                raise InvalidArchive(f"cannot set directory metadata: {e}", op="extract layer") from None
    finally:
        if ex is not None:
            ex.close()
        if rootfd >= 0:
            os.close(rootfd)
    return ExtractResult(
        diff_id="sha256:" + stream.sha.hexdigest(),
        size=stream.count,
        digest="sha256:" + stream.raw.sha.hexdigest(),
        compressed_size=stream.raw.count,
        compression=stream.compression,
        entries=entries,
        skipped=ex.skipped if ex is not None else [],
    )


def check_digest(what: str, expected: str | None, actual: str, expected_size: int | None = None,
                 actual_size: int | None = None) -> None:
    """Raise :class:`DigestMismatch` unless ``actual`` (and the size) match what was expected."""
    if expected is not None and expected != actual:
        raise DigestMismatch(
            f"{what} digest does not match",
            op="verify",
            field=what,
            value=actual,
            hint=f"expected {expected}; the content was altered or truncated",
        )
    if expected_size is not None and actual_size is not None and expected_size != actual_size:
        raise DigestMismatch(
            f"{what} size does not match",
            op="verify",
            field=what,
            value=actual_size,
            hint=f"expected {expected_size} bytes",
        )
