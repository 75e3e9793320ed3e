"""OCI image layouts and ``docker save`` archives: import (strictly checked) and export.

Import reads an OCI image layout (a directory or a tar of one, as
``skopeo copy ... oci:`` / ``oci-archive:`` write) or a docker-archive (what
``docker save`` / ``podman save`` write). Nothing of the archive is
extracted to disk except layers, which go through
:mod:`pycontain.backends.tarsafe`. Everything is input to distrust:

* JSON documents are capped in size and validated field by field
  (schemaVersion, media types, descriptor shapes);
* digests must be ``sha256:<64 hex>`` before they are used to build a path
  (``sha256:../../x`` is refused), and every blob read is hashed and sized
  against its descriptor; layer diff_ids are checked against the config;
* names inside archives are looked up, never resolved on disk; a member
  that is not a regular file (a symlink to /etc/shadow, say) is refused.

Export writes pycontain's own manifest (uncompressed layers, canonical
JSON), so the image digest a user sees is what ``skopeo inspect`` reports.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from pycontain.backends import tarsafe
from pycontain.backends.storage_store import Store, canonical_json, check_digest_string, hex_of
from pycontain.errors import DigestMismatch, InvalidArchive, InvalidArgument, NotFound, Unsupported

if TYPE_CHECKING:  # pragma: no cover
    from pycontain.image import Image

MAX_JSON = 4 << 20
MAX_ARCHIVE_MEMBERS = 100_000

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
ZSTD_TYPES = {"application/vnd.oci.image.layer.v1.tar+zstd"}
REF_NAME = "org.opencontainers.image.ref.name"


def _bad(message: str, *, field: str | None = None, value: Any = None, path: str | None = None) -> InvalidArchive:
    kw: dict[str, Any] = {"op": "Image.load"}
    if field is not None:
        kw["field"] = field
        kw["value"] = value
    if path is not None:
        kw["path"] = path
    return InvalidArchive(message, **kw)


# -- sources: a directory or a tar --------------------------------------------------------


class _Source:
    where: str

    def open(self, name: str) -> IO[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    def exists(self, name: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise _bad(f"{name} is larger than {limit} bytes", field="name", value=name, path=self.where)
        return data

    def close(self) -> None:
        pass


class _DirSource(_Source):
    def __init__(self, path: str) -> None:
        self.where = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _parent(self, name: str) -> tuple[int, str]:
        parts = tarsafe.split_member_name(name, what="path in the layout")
        if not parts:
            raise _bad("empty path in the layout", path=self.where)
        return tarsafe.open_dir_at(self.fd, parts[:-1], create=False, name=name), parts[-1]

    def exists(self, name: str) -> bool:
        try:
            pfd, base = self._parent(name)
        except InvalidArchive:
            return False
        try:
            os.stat(base, dir_fd=pfd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(pfd)

    def open(self, name: str) -> IO[bytes]:
        pfd, base = self._parent(name)
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except FileNotFoundError:
            raise _bad(f"{name} is missing from the layout", field="name", value=name, path=self.where) from None
        except OSError as e:
            raise _bad(f"cannot open {name}: {e.strerror}", field="name", value=name, path=self.where) from None
        finally:
            os.close(pfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _bad(f"{name} is not a regular file", field="name", value=name, path=self.where)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def close(self) -> None:
        os.close(self.fd)


class _TarSource(_Source):
    def __init__(self, path: str) -> None:
        self.where = path
        try:
            self.tar = tarfile.open(path, "r:")
        except tarfile.TarError as e:
            raise _bad(f"not a tar archive: {e}", path=path) from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for i, m in enumerate(self.tar):
                if i >= MAX_ARCHIVE_MEMBERS:
                    raise tarsafe.LimitExceeded("image archive has too many members", op="Image.load",
                                                field="max_members", value=MAX_ARCHIVE_MEMBERS)
                try:
                    key = "/".join(tarsafe.split_member_name(m.name))
                except InvalidArchive:
                    continue  # never looked up, never extracted
                self.members[key] = m  # later members win, as tar extraction would
        except tarfile.TarError as e:
            self.tar.close()
            raise _bad(f"malformed or truncated archive: {e}", path=path) from None
        except BaseException:
            self.tar.close()
            raise

    def _member(self, name: str) -> tarfile.TarInfo | None:
        return self.members.get("/".join(tarsafe.split_member_name(name, what="path in the archive")))

    def exists(self, name: str) -> bool:
        return self._member(name) is not None

    def open(self, name: str) -> IO[bytes]:
        m = self._member(name)
        if m is None:
            raise _bad(f"{name} is missing from the archive", field="name", value=name, path=self.where)
        if not m.isreg():
            raise _bad(f"{name} is not a regular file in the archive", field="name", value=name, path=self.where)
        f = self.tar.extractfile(m)
        assert f is not None
        return f  # type: ignore[return-value]

    def close(self) -> None:
        self.tar.close()


def _open_source(path: str) -> _Source:
    if os.path.isdir(path):
        return _DirSource(path)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
            raise InvalidArgument("compressed image archives are not read directly", field="path", value=path,
                                  op="Image.load", hint="decompress it first (gunzip / zstd -d) and load the .tar")
        return _TarSource(path)
    raise InvalidArgument("no image layout or archive at this path", field="path", value=path, op="Image.load")


# -- JSON validation ---------------------------------------------------------------------------


def _json(src: _Source, name: str) -> Any:
    data = src.read(name)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"{name} is not valid JSON: {e}", field="name", value=name, path=src.where) from None


def _blob(src: _Source, desc: dict[str, Any], what: str, limit: int = MAX_JSON) -> bytes:
    digest = check_digest_string(desc["digest"], f"{what}.digest")
    data = src.read(f"blobs/sha256/{hex_of(digest)}", limit)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    tarsafe.check_digest(what, digest, actual, desc["size"], len(data))
    return data


def _descriptor(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _bad(f"{what} must be a JSON object", field=what, value=d)
    if not isinstance(d.get("mediaType", ""), str):
        raise _bad(f"{what}.mediaType must be a string", field=f"{what}.mediaType", value=d.get("mediaType"))
    check_digest_string(d.get("digest"), f"{what}.digest")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"{what}.size must be a non-negative integer", field=f"{what}.size", value=size)
    ann = d.get("annotations", {})
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise _bad(f"{what}.annotations must map strings to strings", field=f"{what}.annotations", value=ann)
    return d


def validate_manifest(m: Any) -> dict[str, Any]:
    """Check an OCI (or Docker v2) image manifest's shape; returns it."""
    if not isinstance(m, dict):
        raise _bad("manifest must be a JSON object", field="manifest", value=type(m).__name__)
    if m.get("schemaVersion") != 2:
        raise _bad("manifest schemaVersion must be 2", field="schemaVersion", value=m.get("schemaVersion"))
    mt = m.get("mediaType", MEDIA_MANIFEST)
    if mt not in (MEDIA_MANIFEST, DOCKER_MANIFEST):
        raise _bad("not an image manifest", field="mediaType", value=mt)
    cfg = _descriptor(m.get("config"), "config")
    if cfg.get("mediaType", MEDIA_CONFIG) not in (MEDIA_CONFIG, DOCKER_CONFIG):
        raise _bad("config descriptor has an unexpected media type", field="config.mediaType",
                   value=cfg.get("mediaType"))
    layers = m.get("layers")
    if not isinstance(layers, list):
        raise _bad("manifest layers must be a list", field="layers", value=layers)
    for i, layer in enumerate(layers):
        _descriptor(layer, f"layers[{i}]")
        lt = layer.get("mediaType")
        if lt in ZSTD_TYPES:
            raise Unsupported("zstd-compressed layers are not supported", op="Image.load", field=f"layers[{i}]",
                              value=lt, hint="copy the image with skopeo --dest-compress-format gzip first")
        if lt not in LAYER_TYPES:
            raise _bad("unknown layer media type", field=f"layers[{i}].mediaType", value=lt)
    return m


def validate_config(c: Any, n_layers: int | None = None) -> dict[str, Any]:
    """Check an OCI image config's shape (rootfs.diff_ids, config fields); returns it."""
    from pycontain.image import ImageConfig

    if not isinstance(c, dict):
        raise _bad("image config must be a JSON object", field="config", value=type(c).__name__)
    rootfs = c.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or not isinstance(rootfs.get("diff_ids"), list):
        raise _bad("image config rootfs must be {type: layers, diff_ids: [...]}", field="rootfs", value=rootfs)
    for i, d in enumerate(rootfs["diff_ids"]):
        check_digest_string(d, f"rootfs.diff_ids[{i}]")
    if n_layers is not None and len(rootfs["diff_ids"]) != n_layers:
        raise _bad("config lists a different number of layers than the manifest", field="rootfs.diff_ids",
                   value=len(rootfs["diff_ids"]))
    if c.get("os", "linux") != "linux":
        raise Unsupported("only linux images can run here", op="Image.load", field="os", value=c.get("os"))
    for key in ("architecture", "os", "created"):
        if key in c and not isinstance(c[key], str):
            raise _bad(f"config {key} must be a string", field=key, value=c[key])
    if "history" in c and not isinstance(c["history"], list):
        raise _bad("config history must be a list", field="history", value=c["history"])
    try:
        ImageConfig.from_oci(c.get("config") if isinstance(c.get("config"), dict) or c.get("config") is None
                             else _raise_bad_config(c.get("config")))
    except InvalidArchive:
        raise
    except InvalidArgument as e:
        raise _bad(f"bad image config: {e.message}", field=e.field, value=e.value) from None
    return c


def _raise_bad_config(v: Any) -> Any:
    raise _bad("config.config must be a JSON object", field="config", value=v)


# -- load ----------------------------------------------------------------------------------------


class _Candidate:
    def __init__(self, names: list[str], manifest: dict[str, Any] | None = None, docker: dict[str, Any] | None = None,
                 manifest_desc: dict[str, Any] | None = None) -> None:
        self.names = names
        self.manifest = manifest
        self.docker = docker
        self.manifest_desc = manifest_desc


def _oci_candidates(src: _Source) -> Iterator[_Candidate]:
    layout = _json(src, "oci-layout")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise _bad("oci-layout must name an imageLayoutVersion", field="oci-layout", value=layout)
    index = _json(src, "index.json")
    yield from _index_candidates(src, _platform_filter(index), depth=0)


def _index_candidates(src: _Source, index: Any, depth: int) -> Iterator[_Candidate]:
    if not isinstance(index, dict) or index.get("schemaVersion") != 2 or not isinstance(index.get("manifests"), list):
        raise _bad("image index must have schemaVersion 2 and a manifests list", field="index", value=index
                   if not isinstance(index, dict) else {k: index.get(k) for k in ("schemaVersion", "mediaType")})
    if depth > 2:
        raise _bad("image indexes nested too deeply", field="index", value=depth)
    for i, d in enumerate(index["manifests"]):
        desc = _descriptor(d, f"manifests[{i}]")
        mt = desc.get("mediaType", MEDIA_MANIFEST)
        name = desc.get("annotations", {}).get(REF_NAME)
        if mt in (MEDIA_INDEX, DOCKER_LIST):
            sub = json.loads(_blob(src, desc, f"manifests[{i}]"))
            for cand in _index_candidates(src, _platform_filter(sub), depth + 1):
                if name and not cand.names:
                    cand.names = [name]
                yield cand
            continue
        plat = desc.get("platform")
        if isinstance(plat, dict) and plat.get("os") not in (None, "linux"):
            continue
        try:
            manifest = json.loads(_blob(src, desc, f"manifests[{i}]"))
        except ValueError as e:
            raise _bad(f"manifest is not valid JSON: {e}", field=f"manifests[{i}]", value=desc["digest"]) from None
        yield _Candidate([name] if name else [], manifest=validate_manifest(manifest), manifest_desc=desc)


def _platform_filter(index: Any) -> Any:
    from pycontain.image import _oci_arch

    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        return index
    arch = _oci_arch()
    keep = [d for d in index["manifests"] if not isinstance(d, dict) or not isinstance(d.get("platform"), dict)
            or (d["platform"].get("os") == "linux" and d["platform"].get("architecture") == arch)]
    return {**index, "manifests": keep}


def _docker_candidates(src: _Source) -> Iterator[_Candidate]:
    entries = _json(src, "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise _bad("manifest.json must be a non-empty list", field="manifest.json", value=type(entries).__name__)
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) or not isinstance(e.get("Layers"), list) \
                or not all(isinstance(x, str) for x in e["Layers"]):
            raise _bad("manifest.json entry needs Config (string) and Layers (strings)", field=f"manifest.json[{i}]",
                       value=e if not isinstance(e, dict) else sorted(e))
        tags = e.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _bad("RepoTags must be a list of strings", field=f"manifest.json[{i}].RepoTags", value=tags)
        yield _Candidate(list(tags), docker=e)


def load(path: str | os.PathLike[str], *, tag: str | None, limits: tarsafe.Limits, store: Store) -> Image:
    from pycontain.image import Image, normalize_tag

    where = os.fspath(path)
    src = _open_source(where)
    try:
        if src.exists("oci-layout") and src.exists("index.json"):
            cands = list(_oci_candidates(src))
        elif src.exists("manifest.json"):
            cands = list(_docker_candidates(src))
        else:
            raise _bad("neither an OCI image layout (oci-layout, index.json) nor a docker-archive (manifest.json)",
                       path=where)
        if not cands:
            raise _bad("the archive holds no image for linux", path=where)
        want = normalize_tag(tag) if tag else None
        chosen = cands[0]
        if want is not None:
            named = [c for c in cands if want in _tags_of(c.names)]
            if not named and len(cands) > 1:
                raise NotFound("tag not in the archive", op="Image.load", value=tag, path=where,
                               hint="tags here: " + ", ".join(t for c in cands for t in _tags_of(c.names)))
            chosen = named[0] if named else cands[0]
        layers, config = (_load_docker(src, chosen, limits, store) if chosen.docker is not None
                          else _load_oci(src, chosen, limits, store))
        tags = _tags_of(chosen.names)
        if want and want not in tags:
            tags.insert(0, want)
        return Image._record(store, layers, config, tags)
    finally:
        src.close()


def _tags_of(names: list[str]) -> list[str]:
    from pycontain.image import normalize_tag

    out = []
    for n in names:
        try:
            out.append(normalize_tag(n))
        except InvalidArgument:
            continue  # e.g. an OCI ref name that is only a tag ("latest"): not a full reference
    return out


def _load_oci(src: _Source, cand: _Candidate, limits: tarsafe.Limits, store: Store) -> tuple[list[str], dict[str, Any]]:
    m = cand.manifest
    assert m is not None
    try:
        config = json.loads(_blob(src, m["config"], "config"))
    except ValueError as e:
        raise _bad(f"image config is not valid JSON: {e}", field="config", value=m["config"]["digest"]) from None
    validate_config(config, len(m["layers"]))
    diff_ids = config["rootfs"]["diff_ids"]
    for i, (desc, diff_id) in enumerate(zip(m["layers"], diff_ids)):
        if store.has_layer(diff_id):
            continue
        with src.open(f"blobs/sha256/{hex_of(desc['digest'], f'layers[{i}].digest')}") as f:
            store.add_layer(f, diff_id=diff_id, digest=desc["digest"], compressed_size=desc["size"], limits=limits)
    return list(diff_ids), config


def _load_docker(src: _Source, cand: _Candidate, limits: tarsafe.Limits,
                 store: Store) -> tuple[list[str], dict[str, Any]]:
    e = cand.docker
    assert e is not None
    raw = src.read(e["Config"])
    # docker and podman name the config after its sha256 ("<hex>.json", or blobs/sha256/<hex>)
    actual = hashlib.sha256(raw).hexdigest()
    base = os.path.basename(e["Config"])
    stem = base[:-5] if base.endswith(".json") else base
    if len(stem) == 64 and all(ch in "0123456789abcdef" for ch in stem) and stem != actual:
        raise DigestMismatch("config does not hash to its file name", op="Image.load", field="Config",
                             value="sha256:" + actual, hint=f"expected sha256:{stem}")
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise _bad(f"image config is not valid JSON: {err}", field="Config", value=e["Config"]) from None
    validate_config(config, len(e["Layers"]))
    diff_ids = config["rootfs"]["diff_ids"]
    for name, diff_id in zip(e["Layers"], diff_ids):
        if store.has_layer(diff_id):
            continue
        with src.open(name) as f:
            store.add_layer(f, diff_id=diff_id, limits=limits)
    return list(diff_ids), config


# -- save ----------------------------------------------------------------------------------------------


class _Writer:
    """Puts files into a directory or a tar, the same way."""

    def __init__(self, path: str, as_tar: bool) -> None:
        self.path = path
        self.as_tar = as_tar
        self.tar: tarfile.TarFile | None = None
        if as_tar:
            self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
        else:
            os.makedirs(path, exist_ok=True)
            if os.listdir(path):
                raise InvalidArgument("the export directory is not empty", field="path", value=path,
                                      op="Image.save")
        self.dirs: set[str] = set()

    def _dir(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in self.dirs:
                continue
            self.dirs.add(d)
            if self.tar is not None:
                ti = tarfile.TarInfo(d)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                self.tar.addfile(ti)
            else:
                os.makedirs(os.path.join(self.path, d), exist_ok=True)

    def bytes(self, name: str, data: bytes) -> None:
        self._dir(name)
        if self.tar is not None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            self.tar.addfile(ti, io.BytesIO(data))
        else:
            with open(os.path.join(self.path, name), "wb") as f:
                f.write(data)

    def file(self, name: str, src: str) -> None:
        self._dir(name)
        if self.tar is not None:
            ti = tarfile.TarInfo(name)
            ti.size = os.path.getsize(src)
            ti.mode = 0o644
            with open(src, "rb") as f:
                self.tar.addfile(ti, f)
        else:
            shutil.copyfile(src, os.path.join(self.path, name))

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def save(image: Image, path: str, *, format: str) -> str:
    if format not in ("oci", "docker-archive"):
        raise InvalidArgument("unknown export format", field="format", value=format, op="Image.save",
                              hint="'oci' (a directory, or a tar if the path ends in .tar) or 'docker-archive'")
    st = image.store
    as_tar = format == "docker-archive" or path.endswith(".tar")
    if os.path.lexists(path) and (as_tar or not os.path.isdir(path) or os.listdir(path)):
        raise InvalidArgument("the export path exists already (and is not an empty directory)", field="path",
                              value=path, op="Image.save")
    parent = os.path.dirname(os.path.abspath(path))
    # write next to the target and rename, so a failure leaves no half archive
    tmp = tempfile.mkdtemp(prefix=".pycontain-save-", dir=parent)
    target = os.path.join(tmp, "out")
    try:
        w = _Writer(target, as_tar)
        try:
            if format == "oci":
                _save_oci(image, st, w)
            else:
                _save_docker(image, st, w)
        finally:
            w.close()
        if as_tar:
            os.rename(target, path)
        else:
            if os.path.isdir(path):
                os.rmdir(path)  # empty, checked above
            os.rename(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _save_oci(image: Image, st: Store, w: _Writer) -> None:
    w.bytes("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
    manifest_bytes = st.get_blob(image.digest)
    manifest = json.loads(manifest_bytes)
    for layer in image.layers:
        assert layer.tar_path is not None
        w.file(f"blobs/sha256/{hex_of(layer.digest)}", layer.tar_path)
    w.bytes(f"blobs/sha256/{hex_of(manifest['config']['digest'])}", st.get_blob(manifest["config"]["digest"]))
    w.bytes(f"blobs/sha256/{hex_of(image.digest)}", manifest_bytes)
    desc: dict[str, Any] = {"mediaType": MEDIA_MANIFEST, "digest": image.digest, "size": len(manifest_bytes)}
    if image.tag:
        desc["annotations"] = {REF_NAME: image.tag}
    w.bytes("index.json", canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [desc]}))


def _save_docker(image: Image, st: Store, w: _Writer) -> None:
    manifest = json.loads(st.get_blob(image.digest))
    config_digest = manifest["config"]["digest"]
    config_name = hex_of(config_digest) + ".json"
    w.bytes(config_name, st.get_blob(config_digest))
    layer_names = []
    for layer in image.layers:
        assert layer.tar_path is not None
        name = f"{hex_of(layer.digest)}/layer.tar"
        w.file(name, layer.tar_path)
        w.bytes(f"{hex_of(layer.digest)}/VERSION", b"1.0")
        layer_names.append(name)
    w.bytes("manifest.json", json.dumps([{"Config": config_name, "RepoTags": image.tags,
                                          "Layers": layer_names}]).encode())
