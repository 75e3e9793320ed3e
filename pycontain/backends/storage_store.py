"""The content-addressed store of layers, blobs and image records.

Layout under the store root (``$PYCONTAIN_STORE``, else
``/var/lib/pycontain`` as root, else ``~/.local/share/pycontain``)::

    layers/<hex>/diff/        the layer unpacked once, overlay-style whiteouts
    layers/<hex>/layer.tar    its uncompressed OCI tar (sha256 = diff_id = <hex>)
    layers/<hex>/layer.json   diff_id, size, entries, created, what was skipped
    blobs/sha256/<hex>        configs and manifests (OCI blob layout)
    images/<hex>.json         one image record per manifest digest: layers, config, tags
    tmp/                      work in progress; renamed into place when complete
    .lock                     flock(2) serialising writers

``layers/`` is mode 0700: unpacked layers keep their setuid bits and
ownership, so host users must not reach them. A layer appears under its
name only after it was completely extracted and verified (rename(2) is
atomic), so a crash or a hostile archive leaves at most a ``tmp/`` entry,
which the next writer removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from pycontain.errors import InvalidArchive, NotFound
from pycontain.statedir import list_dir

if TYPE_CHECKING:
    from pycontain.backends import tarsafe

HOST_LAYER = "host:/"
_HEX = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def default_root() -> str:
    env = os.environ.get("PYCONTAIN_STORE")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return "/var/lib/pycontain"
    return os.path.join(os.path.expanduser("~"), ".local", "share", "pycontain")


def check_digest_string(value: Any, field_name: str = "digest") -> str:
    """``value`` if it is ``sha256:<64 hex>``; anything else (``sha256:../../x``) is refused."""
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise InvalidArchive(
            "malformed digest",
            op="verify",
            field=field_name,
            value=value,
            hint="a digest is 'sha256:' followed by 64 lowercase hex digits",
        )
    return value


def hex_of(digest: str, field_name: str = "digest") -> str:
    return check_digest_string(digest, field_name)[len("sha256:"):]


@dataclass(frozen=True)
class LayerRecord:
    """A layer in the store. ``path`` is its unpacked diff directory (``/`` for the host layer)."""

    diff_id: str
    size: int
    path: str
    tar: str | None
    created: float
    entries: int = 0
    skipped: tuple[str, ...] = ()

    @property
    def is_host(self) -> bool:
        return self.diff_id == HOST_LAYER


HOST = LayerRecord(HOST_LAYER, 0, "/", None, 0.0)


@dataclass
class ImageRecord:
    """What the store keeps per image (its manifest digest names it)."""

    digest: str
    config_digest: str
    layers: list[str]  # diff_ids, bottom first; may start with HOST_LAYER
    config: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "config_digest": self.config_digest,
            "layers": self.layers,
            "config": self.config,
            "tags": self.tags,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(d["digest"], d["config_digest"], list(d["layers"]), d["config"], list(d.get("tags", [])),
                   float(d.get("created", 0.0)))


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Store:
    """One store directory. Cheap to create; every method re-reads the disk."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root)) if root is not None else default_root()

    # -- paths -----------------------------------------------------------------

    @property
    def layers_dir(self) -> str:
        return os.path.join(self.root, "layers")

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.root, "tmp")

    def ensure(self) -> None:
        dirs = (("", 0o711), ("layers", 0o700), ("blobs/sha256", 0o755), ("images", 0o755),
                ("tmp", 0o700), ("containers", 0o700))
        # Made once, looked at on every container start: a stat is cheaper
        # than makedirs' mkdir and EEXIST (six of each on ext4 here).
        if all(os.path.isdir(os.path.join(self.root, sub)) for sub, _ in dirs):
            return
        for sub, mode in dirs:
            os.makedirs(os.path.join(self.root, sub), mode=mode, exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.ensure()
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def layer_path(self, diff_id: str) -> str:
        return os.path.join(self.layers_dir, hex_of(diff_id, "diff_id"))

    # -- layers ------------------------------------------------------------------

    def has_layer(self, diff_id: str) -> bool:
        if diff_id == HOST_LAYER:
            return True
        return os.path.exists(os.path.join(self.layer_path(diff_id), "layer.json"))

    def layer(self, diff_id: str) -> LayerRecord:
        if diff_id == HOST_LAYER:
            return HOST
        base = self.layer_path(diff_id)
        try:
            with open(os.path.join(base, "layer.json")) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise NotFound("no such layer in the store", op="layer", value=diff_id, path=self.root,
                           hint="pycontain.images() lists what the store holds") from None
        return LayerRecord(meta["diff_id"], meta["size"], os.path.join(base, "diff"),
                           os.path.join(base, "layer.tar"), meta["created"], meta.get("entries", 0),
                           tuple(meta.get("skipped", ())))

    def layers(self) -> list[LayerRecord]:
        out = []
        names = sorted(list_dir(self.layers_dir))
        for name in names:
            if _HEX.match(name) and os.path.exists(os.path.join(self.layers_dir, name, "layer.json")):
                out.append(self.layer("sha256:" + name))
        return out

    def add_layer(
        self,
        src: IO[bytes],
        *,
        diff_id: str | None = None,
        size: int | None = None,
        digest: str | None = None,
        compressed_size: int | None = None,
        limits: tarsafe.Limits | None = None,
    ) -> LayerRecord:
        """Unpack the layer tar ``src`` (plain or gzip) into the store, once.

        ``diff_id``/``size`` are checked against the uncompressed stream,
        ``digest``/``compressed_size`` against the bytes as given. If the
        layer is already stored (known ``diff_id``), nothing is read.
        Raises InvalidArchive, LimitExceeded, DigestMismatch; on any error
        nothing is left in the store. ``limits``: None for
        :data:`~pycontain.backends.tarsafe.DEFAULT_LIMITS`.
        """
        # Imported here: a container start reads the store, never a tar.
        from pycontain.backends import tarsafe

        if limits is None:
            limits = tarsafe.DEFAULT_LIMITS
        if diff_id is not None:
            check_digest_string(diff_id, "diff_id")
            if self.has_layer(diff_id):
                return self.layer(diff_id)
        if digest is not None:
            check_digest_string(digest, "digest")
        self.ensure()
        import tempfile  # here: a container start does not need it

        work = tempfile.mkdtemp(prefix="layer-", dir=self.tmp_dir)
        try:
            os.chmod(work, 0o700)
            diff = os.path.join(work, "diff")
            os.mkdir(diff, 0o755)
            with open(os.path.join(work, "layer.tar"), "wb") as tee:
                res = tarsafe.extract(src, diff, limits=limits, tee=tee)
            tarsafe.check_digest("layer diff_id", diff_id, res.diff_id, size, res.size)
            tarsafe.check_digest("layer blob", digest, res.digest, compressed_size, res.compressed_size)
            meta = {
                "diff_id": res.diff_id,
                "size": res.size,
                "entries": res.entries,
                "created": time.time(),
                "compression": res.compression,
                "skipped": res.skipped[:1000],
            }
            with open(os.path.join(work, "layer.json"), "w") as f:
                json.dump(meta, f)
            with self.lock():
                final = self.layer_path(res.diff_id)
                if not os.path.exists(os.path.join(final, "layer.json")):
                    if os.path.lexists(final):
                        _remove_tree(final)
                    os.rename(work, final)
                    work = ""
            return self.layer(res.diff_id)
        finally:
            if work:
                _remove_tree(work)

    def remove_layer(self, diff_id: str) -> None:
        if diff_id == HOST_LAYER:
            return
        path = self.layer_path(diff_id)
        if os.path.lexists(path):
            # Rename first so a half-removed layer is never seen as complete.
            import tempfile  # here: a container start does not need it

            doomed = tempfile.mkdtemp(prefix="rm-", dir=self.tmp_dir)
            os.rename(path, os.path.join(doomed, "x"))
            _remove_tree(doomed)

    def disk_usage(self, diff_id: str) -> int:
        """Bytes on disk of the unpacked layer and its tar (st_blocks, hard links once)."""
        if diff_id == HOST_LAYER:
            return 0
        return tree_usage(self.layer_path(diff_id))

    # -- blobs ---------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        self.ensure()
        import hashlib  # here: it loads OpenSSL (~3 ms), which a container start does not need

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = os.path.join(self.root, "blobs", "sha256", hex_of(digest))
        if not os.path.exists(path):
            import tempfile  # here: a container start does not need it

            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)
        return digest

    def get_blob(self, digest: str) -> bytes:
        path = os.path.join(self.root, "blobs", "sha256", hex_of(digest))
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound("no such blob in the store", op="blob", value=digest, path=self.root) from None

    # -- images ----------------------------------------------------------------------

    def _image_path(self, digest: str) -> str:
        return os.path.join(self.root, "images", hex_of(digest) + ".json")

    def put_image(self, rec: ImageRecord) -> ImageRecord:
        """Store ``rec``; its tags move to it from any other image."""
        self.ensure()
        with self.lock():
            old = self._read_image(rec.digest)
            if old is not None:
                rec.tags = sorted(set(old.tags) | set(rec.tags))
                rec.created = old.created or rec.created
            for other in self.images():
                if other.digest != rec.digest and set(other.tags) & set(rec.tags):
                    other.tags = [t for t in other.tags if t not in rec.tags]
                    self._write_image(other)
            self._write_image(rec)
        return rec

    def _write_image(self, rec: ImageRecord) -> None:
        import tempfile  # here: a container start does not need it

        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(rec.to_json(), f)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self._image_path(rec.digest))

    def _read_image(self, digest: str) -> ImageRecord | None:
        try:
            with open(self._image_path(digest)) as f:
                return ImageRecord.from_json(json.load(f))
        except FileNotFoundError:
            return None

    def image(self, ref: str) -> ImageRecord:
        """An image by tag, full digest or unique digest prefix (``sha256:`` optional)."""
        images = self.images()
        for rec in images:
            if ref in rec.tags:
                return rec
        bare = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
        if re.fullmatch(r"[0-9a-f]{4,64}", bare):
            hits = [r for r in images if hex_of(r.digest).startswith(bare)]
            if len(hits) == 1:
                return hits[0]
        raise NotFound("no such image", op="image", value=ref, hint="pycontain.images() lists the stored images")

    def images(self) -> list[ImageRecord]:
        out = []
        names = sorted(list_dir(os.path.join(self.root, "images")))
        for name in names:
            if name.endswith(".json") and _HEX.match(name[:-5]):
                rec = self._read_image("sha256:" + name[:-5])
                if rec is not None:
                    out.append(rec)
        return out

    def remove_image(self, digest: str) -> None:
        with self.lock():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._image_path(digest))

    def prune(self, keep: set[str] = frozenset(), only: set[str] | None = None) -> list[str]:  # type: ignore[assignment]
        """Remove layers no image refers to (and not in ``keep``); returns their diff_ids.

        ``only`` limits the candidates (the layers of an image just removed).
        """
        with self.lock():
            used = set(keep)
            for rec in self.images():
                used.update(rec.layers)
            removed = []
            for layer in self.layers():
                if layer.diff_id not in used and (only is None or layer.diff_id in only):
                    self.remove_layer(layer.diff_id)
                    removed.append(layer.diff_id)
            if only is None:
                # leftovers of crashed writers (a full prune holds the lock, so none is running)
                for name in os.listdir(self.tmp_dir):
                    _remove_tree(os.path.join(self.tmp_dir, name))
        return removed


def _remove_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=False, onerror=_force_remove)
    elif os.path.lexists(path):
        os.unlink(path)


def _force_remove(func: Any, path: str, exc: Any) -> None:
    # A layer may hold directories without write permission (mode 0555):
    # as root rmtree works anyway; as a user, make the parent writable and retry.
    parent = os.path.dirname(path)
    try:
        os.chmod(parent, 0o700)
        func(path)
    except OSError:
        raise exc[1] from None


def tree_usage(path: str) -> int:
    """Disk bytes (st_blocks * 512) of a tree, counting each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total
