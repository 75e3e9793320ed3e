"""Layers and images: content-addressed, copy-on-write, OCI compatible.

A :class:`Layer` is an OCI layer tar (whiteouts ``.wh.NAME``, opaque
``.wh..wh..opq``) named by the sha256 of its uncompressed bytes (its
diff_id), unpacked once into the store (``$PYCONTAIN_STORE``). An
:class:`Image` is an ordered list of layers plus a config (env, cmd,
entrypoint, workdir, user). Images import and export OCI image layouts and
``docker save`` archives, so pycontain talks to podman, skopeo and umoci.

Example::

    import pycontain
    base = pycontain.Image.from_rootfs("/srv/busybox", tag="busybox:1")
    base.layers[0].digest            # 'sha256:...'
    pycontain.images()               # DataFrame: tag, digest, layers, size, created
    base.save("/tmp/busybox.tar", format="docker-archive")
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycontain.backends.storage_overlay import exists_below
from pycontain.backends.storage_store import (
    HOST_LAYER,
    ImageRecord,
    LayerRecord,
    Store,
    canonical_json,
)
from pycontain.errors import Busy, InvalidArgument, NotFound, PycontainError, Unsupported, kernel_error

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from pycontain.backends.storage_driver import RootfsPlan
    from pycontain.backends.tarsafe import Limits

__all__ = ["Layer", "Image", "ImageConfig", "Limits", "images", "prune", "disk_usage"]

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
HOST_ANNOTATION = "org.pycontain.base"

_TAG = re.compile(
    r"^(?:(?P<host>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?)/)?"
    r"(?P<name>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?$"
)


def normalize_tag(tag: str) -> str:
    """``"name"`` -> ``"name:latest"``; refuses what no registry would accept."""
    if not isinstance(tag, str) or not _TAG.match(tag) or len(tag) > 255:
        raise InvalidArgument(
            "malformed image tag",
            field="tag",
            value=tag,
            hint="like 'busybox', 'busybox:1.36' or 'localhost:5000/team/app:v2'",
        )
    m = _TAG.match(tag)
    assert m is not None
    return tag if m.group("tag") else tag + ":latest"


def _limits(limits: Limits | None) -> Limits:
    """``limits``, or the default caps for None (the default: so that a
    container start, which imports this module, never imports tarsafe)."""
    from pycontain.backends import tarsafe

    return tarsafe.DEFAULT_LIMITS if limits is None else limits


def __getattr__(name: str) -> Any:
    if name == "Limits":  # re-exported, from its module on first use
        from pycontain.backends.tarsafe import Limits

        return Limits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _store(store: Store | str | os.PathLike[str] | None) -> Store:
    if isinstance(store, Store):
        return store
    return Store(store)


# -- config ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """What a container of this image runs by default (the OCI config's ``config``)."""

    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    workdir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Env": list(self.env)}
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out

    @classmethod
    def from_oci(cls, cfg: Mapping[str, Any] | None) -> ImageConfig:
        cfg = cfg or {}

        def strs(key: str) -> tuple[str, ...] | None:
            v = cfg.get(key)
            if v is None:
                return None
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise InvalidArgument("image config field must be a list of strings", field=key, value=v)
            return tuple(v)

        def text(key: str) -> str:
            v = cfg.get(key) or ""
            if not isinstance(v, str):
                raise InvalidArgument("image config field must be a string", field=key, value=v)
            return v

        labels = cfg.get("Labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise InvalidArgument("image config Labels must map strings to strings", field="Labels", value=labels)
        return cls(
            env=strs("Env") or (),
            cmd=strs("Cmd"),
            entrypoint=strs("Entrypoint"),
            workdir=text("WorkingDir"),
            user=text("User"),
            labels=dict(labels),
        )

    def replace(self, **changes: Any) -> ImageConfig:
        import dataclasses

        for key in ("cmd", "entrypoint"):
            if key in changes and isinstance(changes[key], str):
                raise InvalidArgument(f"{key} must be a list of strings (exec form)", field=key, value=changes[key],
                                      hint=f"{key}=['sh', '-c', '...'] for a shell command")
            if key in changes and changes[key] is not None:
                changes[key] = tuple(changes[key])
        if "env" in changes:
            env = changes["env"]
            if isinstance(env, Mapping):
                env = [f"{k}={v}" for k, v in env.items()]
            changes["env"] = tuple(env)
        return dataclasses.replace(self, **changes)

    @property
    def env_dict(self) -> dict[str, str]:
        return {k: v for k, _, v in (e.partition("=") for e in self.env)}


# -- layers --------------------------------------------------------------------------


class Layer:
    """One layer in the store, addressed by its diff_id.

    ``digest`` is ``"sha256:..."`` of the uncompressed OCI tar and ``size``
    its size in bytes. ``path`` is the unpacked directory (overlay-style
    whiteouts). The special host layer (``Image.from_host``) has digest
    ``"host:/"``, size 0 and path ``/``.
    """

    def __init__(self, record: LayerRecord, store: Store | None = None, parent: Layer | None = None) -> None:
        self._rec = record
        self._store = store or Store()
        self.parent = parent

    @property
    def digest(self) -> str:
        return self._rec.diff_id

    @property
    def size(self) -> int:
        return self._rec.size

    @property
    def path(self) -> str:
        return self._rec.path

    @property
    def tar_path(self) -> str | None:
        return self._rec.tar

    @property
    def is_host(self) -> bool:
        return self._rec.is_host

    @property
    def record(self) -> LayerRecord:
        return self._rec

    def __repr__(self) -> str:
        return f"Layer({self.digest[:19]}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @classmethod
    def get(cls, digest: str, *, store: Store | str | None = None) -> Layer:
        """The stored layer ``digest``; raises NotFound."""
        st = _store(store)
        return cls(st.layer(digest), st)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], *, store: Store | str | None = None) -> Layer:
        """A layer holding the tree under ``path``, written as a deterministic tar.

        The same tree (names, contents, modes, numeric owners, mtimes in whole
        seconds) always gives the same digest. Overlay whiteouts in the tree
        (char device 0/0, ``trusted.overlay.opaque``) become OCI whiteouts;
        other device nodes and sockets are left out. Raises InvalidArgument
        if ``path`` is not a directory.

        Example::

            layer = Layer.from_dir("/srv/rootfs")
            layer.digest, layer.size
        """
        import tempfile

        from pycontain.backends import storage_tar  # tarfile: only when writing a layer

        src = os.fspath(path)
        if not os.path.isdir(src):
            raise InvalidArgument("not a directory", field="path", value=src, op="Layer.from_dir")
        st = _store(store)
        try:
            st.ensure()
            with tempfile.TemporaryFile(dir=st.tmp_dir) as f:
                storage_tar.write_tree(src, f, overlay=True)
                f.seek(0)
                rec = st.add_layer(f)  # type: ignore[arg-type]
        except PycontainError:
            raise
        except OSError as e:
            # A full or read-only store: a typed error that says where, not a bare OSError.
            raise kernel_error("Layer.from_dir", e.errno or errno.EIO, path=st.root,
                               hint="free space in the image store (PYCONTAIN_STORE) or move it"
                               if e.errno == errno.ENOSPC else None) from None
        return cls(rec, st)

    @classmethod
    def from_tar(
        cls,
        path: str | os.PathLike[str],
        *,
        digest: str | None = None,
        size: int | None = None,
        limits: Limits | None = None,
        store: Store | str | None = None,
    ) -> Layer:
        """Import the layer tar at ``path`` (plain or gzip), checked and unpacked safely.

        ``digest``/``size``: expected diff_id and uncompressed size (checked).
        Raises InvalidArchive (hostile or malformed), LimitExceeded (caps in
        ``limits``; None: :data:`pycontain.backends.tarsafe.DEFAULT_LIMITS`),
        DigestMismatch. On error nothing stays in the store.
        """
        st = _store(store)
        try:
            f = open(os.fspath(path), "rb")
        except OSError as e:
            raise InvalidArgument(f"cannot open layer tar: {e.strerror}", field="path", value=os.fspath(path)) from None
        with f:
            rec = st.add_layer(f, diff_id=digest, size=size, limits=limits)
        return cls(rec, st)

    def entries(self) -> list[tuple[str, str, int, str]]:
        """(path, change, size, type) per entry of the layer tar; change is A, C or D."""
        import tarfile

        from pycontain.backends import tarsafe

        if self.is_host or not self.tar_path:
            return []
        lowers = []
        p = self.parent
        while p is not None:
            lowers.append(p.path)
            p = p.parent
        out = []
        with tarfile.open(self.tar_path, "r:") as tar:
            for m in tar:
                parts = tarsafe.split_member_name(m.name)
                if not parts:
                    continue
                base = parts[-1]
                if base == tarsafe.OPAQUE_MARKER:
                    continue
                if base.startswith(tarsafe.WHITEOUT_PREFIX):
                    path = "/" + "/".join(parts[:-1] + [base[len(tarsafe.WHITEOUT_PREFIX):]])
                    out.append((path, "D", 0, "whiteout"))
                    continue
                kind = "dir" if m.isdir() else "symlink" if m.issym() else "hardlink" if m.islnk() else "file"
                change = "C" if exists_below(lowers, parts) else "A"
                out.append(("/" + "/".join(parts), change, m.size if m.isreg() else 0, kind))
        return out

    def diff(self) -> pd.DataFrame:
        """A DataFrame of what this layer changes: ``path``, ``change`` (A/C/D), ``size`` (bytes).

        "C" needs to know the layers below; a layer taken from an image
        (``image.layers[i]``) knows them, a lone layer reports additions as A.
        """
        import pandas as pd

        rows = self.entries()
        return pd.DataFrame([(p, c, s) for p, c, s, _ in rows], columns=["path", "change", "size"])


# -- images --------------------------------------------------------------------------


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # (datetime: ~1 ms to import)


class Image:
    """An ordered list of layers (bottom first) plus a config, kept in the store.

    Build one with :meth:`from_rootfs`, :meth:`from_host`, :meth:`from_layers`
    or :meth:`load`; find a stored one with :meth:`get`. ``digest`` is the
    sha256 of the OCI manifest pycontain writes for it (what ``skopeo
    inspect`` shows for an export), ``tag`` its first tag.
    """

    def __init__(self, record: ImageRecord, store: Store | None = None) -> None:
        self._rec = record
        self._store = store or Store()

    # -- identity ----------------------------------------------------------------

    @property
    def digest(self) -> str:
        return self._rec.digest

    @property
    def tag(self) -> str | None:
        return self._rec.tags[0] if self._rec.tags else None

    @property
    def tags(self) -> list[str]:
        return list(self._rec.tags)

    @property
    def config(self) -> ImageConfig:
        return ImageConfig.from_oci(self._rec.config.get("config"))

    @property
    def oci_config(self) -> dict[str, Any]:
        """The full OCI image config (architecture, os, rootfs, history, ...)."""
        return dict(self._rec.config)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def layers(self) -> list[Layer]:
        out: list[Layer] = []
        parent: Layer | None = None
        for diff_id in self._rec.layers:
            layer = Layer(self._store.layer(diff_id), self._store, parent)
            out.append(layer)
            parent = layer
        return out

    @property
    def size(self) -> int:
        """Bytes of all layer tars (what an export weighs, uncompressed)."""
        return sum(layer.size for layer in self.layers)

    @property
    def based_on_host(self) -> bool:
        return bool(self._rec.layers) and self._rec.layers[0] == HOST_LAYER

    def __repr__(self) -> str:
        return f"Image({self.tag or self.digest[:19]}, layers={len(self._rec.layers)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    # -- constructors ------------------------------------------------------------------

    @classmethod
    def get(cls, ref: str, *, store: Store | str | None = None) -> Image:
        """A stored image by tag (``"busybox"`` means ``busybox:latest``) or digest; raises NotFound."""
        st = _store(store)
        refs = [ref]
        if ":" not in ref.rsplit("/", 1)[-1]:
            # "busybox" is stored as "busybox:latest": that goes first unless
            # the ref looks like a digest (each look-up reads every image
            # record of the store).
            with contextlib.suppress(InvalidArgument):
                refs.insert(len(refs) if re.fullmatch(r"[0-9a-f]{4,64}", ref) else 0, normalize_tag(ref))
        for i, r in enumerate(refs):
            try:
                return cls(st.image(r), st)
            except NotFound:
                if i == len(refs) - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def from_layers(
        cls,
        layers: Iterable[Layer],
        *,
        tag: str | None = None,
        config: ImageConfig | None = None,
        created: str | None = None,
        history: Sequence[Mapping[str, Any]] | None = None,
        store: Store | str | None = None,
        **config_changes: Any,
    ) -> Image:
        """An image of ``layers`` (bottom first) and ``config``, recorded in the store.

        Keyword arguments ``env``, ``cmd``, ``entrypoint``, ``workdir``,
        ``user`` change the config. Example::

            app = Image.from_layers(base.layers + [Layer.from_dir("app/")], tag="app:1", cmd=["/app/run"])
        """
        st = _store(store)
        layer_list = list(layers)
        for i, layer in enumerate(layer_list):
            if layer.is_host and i != 0:
                raise InvalidArgument("the host layer can only be the lowest layer", field="layers", value=i)
            if not st.has_layer(layer.digest):
                raise NotFound("layer is not in this store", field="layers", value=layer.digest)
        cfg = config or ImageConfig()
        if config_changes:
            cfg = cfg.replace(**config_changes)
        diff_ids = [layer.digest for layer in layer_list if not layer.is_host]
        oci_config: dict[str, Any] = {
            "created": created or _now_rfc3339(),
            "architecture": _oci_arch(),
            "os": "linux",
            "config": cfg.to_oci(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": list(history) if history is not None
            else [{"created": created or _now_rfc3339(), "created_by": "pycontain"} for _ in diff_ids],
        }
        tags = [normalize_tag(tag)] if tag else []
        return cls._record(st, [layer.digest for layer in layer_list], oci_config, tags)

    @classmethod
    def _record(cls, st: Store, layers: list[str], oci_config: dict[str, Any], tags: list[str]) -> Image:
        config_bytes = canonical_json(oci_config)
        config_digest = st.put_blob(config_bytes)
        manifest = build_manifest(st, layers, config_digest, len(config_bytes))
        digest = st.put_blob(canonical_json(manifest))
        rec = ImageRecord(digest, config_digest, layers, oci_config, tags, time.time())
        return cls(st.put_image(rec), st)

    @classmethod
    def from_rootfs(
        cls,
        path: str | os.PathLike[str],
        *,
        tag: str | None = None,
        config: ImageConfig | None = None,
        store: Store | str | None = None,
        **config_changes: Any,
    ) -> Image:
        """A one-layer image of the directory tree at ``path`` (e.g. an unpacked busybox rootfs).

        Example::

            img = Image.from_rootfs("/srv/busybox", tag="busybox", cmd=["/bin/sh"])
        """
        st = _store(store)
        layer = Layer.from_dir(path, store=st)
        return cls.from_layers([layer], tag=tag, config=config, store=st, **config_changes)

    @classmethod
    def from_host(
        cls,
        *,
        tag: str | None = None,
        config: ImageConfig | None = None,
        store: Store | str | None = None,
        **config_changes: Any,
    ) -> Image:
        """An image whose lowest layer is the host's ``/``, read-only, not copied.

        This is the default base of notebook sandboxes: a container of it sees
        the host's files copy-on-write (only the root filesystem, not what is
        mounted below it). Such an image cannot be saved or pushed.
        """
        st = _store(store)
        host = Layer(st.layer(HOST_LAYER), st)
        base_config = config or ImageConfig(env=(f"PATH={os.environ.get('PATH', ImageConfig().env[0][5:])}",))
        return cls.from_layers([host], tag=tag, config=base_config, store=st, **config_changes)

    def with_layer(self, layer: Layer, *, tag: str | None = None, created_by: str = "pycontain",
                   **config_changes: Any) -> Image:
        """A new image: this one plus ``layer`` on top (the layers below are shared, not copied)."""
        history = list(self._rec.config.get("history") or [])
        history.append({"created": _now_rfc3339(), "created_by": created_by})
        return Image.from_layers(self.layers + [layer], tag=tag, config=self.config.replace(**config_changes)
                                 if config_changes else self.config, history=history, store=self._store)

    def tag_as(self, tag: str) -> Image:
        """Add ``tag`` to this image (moving it from any other image)."""
        self._rec.tags = [normalize_tag(tag)]
        self._rec = self._store.put_image(self._rec)
        return self

    # -- containers ----------------------------------------------------------------------

    def prepare_rootfs(self, container_dir: str | os.PathLike[str], *, owner: str,
                       driver: str | None = None) -> RootfsPlan:
        """Prepare a container's rootfs from this image with a storage driver (no mount yet).

        ``driver``: "overlay", "btrfs" or "copy" (default: the best for the
        store; an explicit choice never falls back). ``owner`` names the
        container in the store's registry, which keeps this image and its
        layers from being removed while the rootfs exists. Mount the result
        with :func:`pycontain.backends.storage_driver.mount_rootfs` inside the
        container's private mount namespace; release it with
        ``select_driver(store, plan.driver).cleanup(plan)``.
        """
        from pycontain.backends.storage_driver import select_driver

        drv = select_driver(self._store, driver)
        return drv.prepare([layer.record for layer in self.layers], os.fspath(container_dir),
                           image=self.digest, owner=owner)

    # -- store management ----------------------------------------------------------------

    def remove(self, *, prune: bool = True) -> None:
        """Remove this image from the store (idempotent); with ``prune``, also
        those of its layers no other image or container uses (other unused
        layers stay: :func:`prune` removes them). Raises Busy if a container uses it."""
        users = _containers_using(self._store, self.digest)
        if users:
            raise Busy("image is used by containers", op="Image.remove", value=self.tag or self.digest,
                       hint=f"remove the containers first: {', '.join(users)}")
        self._store.remove_image(self.digest)
        if prune:
            self._store.prune(keep=_layers_in_use(self._store), only=set(self._rec.layers))
            _prune_driver_caches(self._store)

    def disk_usage(self) -> pd.DataFrame:
        """Per layer of this image: digest, size, disk bytes and how many images share it."""
        df = disk_usage(store=self._store)
        return df[df["digest"].isin(self._rec.layers)].reset_index(drop=True)

    # -- import / export -----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        tag: str | None = None,
        limits: Limits | None = None,
        store: Store | str | None = None,
    ) -> Image:
        """Import an OCI image layout (directory or tar) or a ``docker save`` / ``podman save`` archive.

        Every blob is checked against its digest and size, JSON is validated
        strictly, layers are unpacked safely. With several images in the
        archive, ``tag`` picks one (else the first). Raises InvalidArchive,
        DigestMismatch, LimitExceeded, NotFound (tag not in the archive).

        Example::

            img = Image.load("busybox-oci.tar")
        """
        from pycontain.image import oci

        return oci.load(path, tag=tag, limits=_limits(limits), store=_store(store))

    @classmethod
    def build(cls, source: str | os.PathLike[str], *, tag: str | None = None, store: Store | str | None = None,
              progress: bool = True, no_cache: bool = False) -> Image:
        """Build an image from a Containerfile subset (FROM a tag, ``scratch`` or
        ``host``; RUN, COPY, ENV, WORKDIR, CMD, ENTRYPOINT, USER, LABEL).

        ``source`` is a directory with a ``Containerfile``/``Dockerfile``, a
        path to one, or the text itself. Each step is cached: a rebuild with
        nothing changed runs no step. See :func:`pycontain.build.build`,
        which also reports which steps came from the cache.

        Example::

            img = Image.build("./app", tag="app:1")   # ./app/Containerfile
        """
        from pycontain.build import build

        return build(source, tag=tag, store=store, progress=progress, no_cache=no_cache).image

    @classmethod
    def pull(
        cls,
        ref: str,
        *,
        limits: Limits | None = None,
        progress: bool = True,
        store: Store | str | None = None,
    ) -> Image:
        """Pull ``"host:port/name:tag"`` (or ``...@sha256:...``) over the OCI distribution API.

        Layers already in the store are not downloaded again; everything is
        verified (digests, sizes, diff_ids) and unpacked safely. ``progress``
        shows tqdm bars. Plain HTTP only for loopback registries and
        ``$PYCONTAIN_INSECURE_REGISTRIES``. Raises NotFound, PermissionDenied,
        InvalidArchive, DigestMismatch, KernelError (registry unreachable).

        Example::

            img = Image.pull("localhost:5000/team/app:v1")
        """
        from pycontain.image import registry

        return registry.pull(ref, store=_store(store), limits=_limits(limits), progress=progress)

    def push(self, ref: str | None = None, *, progress: bool = True) -> str:
        """Push this image to ``ref`` (default: its tag, which must name a registry).

        Blobs the registry has already are skipped. Returns the reference pushed.

        Example::

            img.push("localhost:5000/team/app:v1")
        """
        from pycontain.image import registry

        if self.based_on_host:
            raise Unsupported("an image based on the host cannot be pushed", op="Image.push",
                              value=self.tag or self.digest)
        return registry.push(self, ref, progress=progress)

    def save(self, path: str | os.PathLike[str], format: str = "oci") -> str:
        """Export to ``path``: ``format="oci"`` (an OCI layout: a directory, or a
        tar if ``path`` ends in ``.tar``) or ``"docker-archive"`` (a tar that
        ``docker load`` / ``podman load`` read). Returns the path.

        Raises Unsupported for an image based on the host.
        """
        from pycontain.image import oci

        if self.based_on_host:
            raise Unsupported("an image based on the host cannot be exported", op="Image.save",
                              value=self.tag or self.digest,
                              hint="build from a rootfs (Image.from_rootfs) to get a portable image")
        return oci.save(self, os.fspath(path), format=format)


def build_manifest(st: Store, layers: list[str], config_digest: str, config_size: int) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [],
    }
    for diff_id in layers:
        if diff_id == HOST_LAYER:
            manifest["annotations"] = {HOST_ANNOTATION: "host"}
            continue
        rec = st.layer(diff_id)
        manifest["layers"].append({"mediaType": MEDIA_LAYER, "digest": diff_id, "size": rec.size})
    return manifest


def _oci_arch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _containers_using(st: Store, digest: str) -> list[str]:
    """Names of containers whose rootfs was prepared from this image (see storage_driver)."""
    from pycontain.backends.storage_driver import containers_using

    return containers_using(st, digest)


def _prune_driver_caches(st: Store) -> None:
    from pycontain.backends.storage_driver import prune_driver_caches

    prune_driver_caches(st)


def _layers_in_use(st: Store) -> set[str]:
    from pycontain.backends.storage_driver import layers_in_use

    return layers_in_use(st)


# -- module functions ------------------------------------------------------------------------


def images(*, store: Store | str | None = None) -> pd.DataFrame:
    """Every stored image: ``tag``, ``digest``, ``layers`` (count), ``size`` (bytes), ``created``.

    One row per tag (an untagged image has one row with tag None), newest first.

    Example::

        pycontain.images()
    """
    import pandas as pd

    df = pd.DataFrame(image_records(store=store), columns=["tag", "digest", "layers", "size", "created"])
    df["created"] = pd.to_datetime(df["created"], unit="s", utc=True)
    return df


def image_records(*, store: Store | str | None = None) -> list[dict[str, Any]]:
    """What :func:`images` lists, as plain dicts (``created``: Unix time),
    newest first: for the command line, which need not import pandas."""
    st = _store(store)
    rows: list[dict[str, Any]] = []
    for rec in st.images():
        size = sum(st.layer(d).size for d in rec.layers if st.has_layer(d))
        for tag in rec.tags or [None]:  # type: ignore[list-item]
            rows.append({"tag": tag, "digest": rec.digest, "layers": len(rec.layers), "size": size,
                         "created": rec.created})
    rows.sort(key=lambda r: r["created"], reverse=True)
    return rows


def disk_usage(*, store: Store | str | None = None) -> pd.DataFrame:
    """Disk use per stored layer: ``digest``, ``size`` (tar bytes), ``disk_bytes``
    (unpacked + tar, on disk), ``images`` (how many use it), ``shared`` (>1) and ``tags``.

    A layer shared by several images is stored once: its bytes count once.
    """
    import pandas as pd

    st = _store(store)
    users: dict[str, list[ImageRecord]] = {}
    for rec in st.images():
        for d in set(rec.layers):
            users.setdefault(d, []).append(rec)
    rows = []
    for layer in st.layers():
        recs = users.get(layer.diff_id, [])
        tags = sorted({t for r in recs for t in r.tags})
        rows.append((layer.diff_id, layer.size, st.disk_usage(layer.diff_id), len(recs), len(recs) > 1, tags))
    return pd.DataFrame(rows, columns=["digest", "size", "disk_bytes", "images", "shared", "tags"])


def prune(*, store: Store | str | None = None) -> list[str]:
    """Remove layers no image (and no container) uses; returns their digests."""
    st = _store(store)
    removed = st.prune(keep=_layers_in_use(st))
    _prune_driver_caches(st)
    return removed
