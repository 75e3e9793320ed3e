"""Pull and push images over the OCI distribution API (HTTP, stdlib only).

Endpoints used (OCI distribution spec, "Pull" and "Push" workflows)::

    GET  /v2/<name>/manifests/<tag|digest>      (Accept: OCI/Docker manifests and indexes)
    GET  /v2/<name>/blobs/<digest>              (redirects followed)
    HEAD /v2/<name>/blobs/<digest>              (skip blobs the registry has)
    POST /v2/<name>/blobs/uploads/              then PUT <location>?digest=<digest> (monolithic)
    PUT  /v2/<name>/manifests/<tag>

Everything fetched is verified as in :mod:`pycontain.image.oci`: manifest
digest (when pulled by digest, and against ``Docker-Content-Digest``),
config digest and size, each layer's blob digest/size and diff_id, and the
layers go through the safe extractor. Plain HTTP is used only for loopback
registries (``localhost``, ``127.0.0.1``, ``[::1]``) and hosts listed in
``$PYCONTAIN_INSECURE_REGISTRIES`` (comma separated); anything else is HTTPS.
No credentials are sent (anonymous access only).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from pycontain.backends import tarsafe
from pycontain.backends.storage_store import Store, check_digest_string
from pycontain.errors import InvalidArchive, InvalidArgument, KernelError, NotFound, PermissionDenied
from pycontain.image import oci

if TYPE_CHECKING:  # pragma: no cover
    from pycontain.image import Image

ACCEPT = ", ".join([oci.MEDIA_MANIFEST, oci.MEDIA_INDEX, oci.DOCKER_MANIFEST, oci.DOCKER_LIST])
_REF = re.compile(
    r"^(?P<host>(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?|\[[0-9a-fA-F:]+\])(?::[0-9]+)?)/"
    r"(?P<name>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_LOOPBACK = {"localhost", "127.0.0.1", "[::1]"}
_TIMEOUT = 60.0


@dataclass(frozen=True)
class Reference:
    host: str  # "host:port"
    name: str
    tag: str | None
    digest: str | None

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    @property
    def tag_ref(self) -> str:
        return f"{self.host}/{self.name}:{self.tag or 'latest'}"

    @property
    def secure(self) -> bool:
        hostname = self.host.rsplit(":", 1)[0] if not self.host.endswith("]") else self.host
        insecure = {h.strip() for h in os.environ.get("PYCONTAIN_INSECURE_REGISTRIES", "").split(",") if h.strip()}
        return not (hostname in _LOOPBACK or self.host in insecure or hostname in insecure)


def parse_reference(ref: str) -> Reference:
    """``"host:port/name:tag"`` or ``"host/name@sha256:..."`` -> Reference; the registry host is required."""
    m = _REF.match(ref) if isinstance(ref, str) else None
    if m is None or ("." not in m.group("host") and ":" not in m.group("host") and m.group("host") != "localhost"):
        raise InvalidArgument(
            "malformed image reference",
            field="ref",
            value=ref,
            hint="name the registry explicitly: 'localhost:5000/team/app:v1' (pycontain has no default registry)",
        )
    return Reference(m.group("host"), m.group("name"), m.group("tag"), m.group("digest"))


class _Client:
    def __init__(self, ref: Reference) -> None:
        self.ref = ref
        self.conns: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def close(self) -> None:
        for c in self.conns.values():
            c.close()

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        if key not in self.conns:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            self.conns[key] = cls(netloc, timeout=_TIMEOUT)
        return self.conns[key]

    def request(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                redirects: int = 5) -> http.client.HTTPResponse:
        if not url.startswith(("http://", "https://")):
            scheme = "https" if self.ref.secure else "http"
            url = f"{scheme}://{self.ref.host}{url}"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and parts.netloc != self.ref.host and Reference(parts.netloc, "", None, None).secure:
            raise PermissionDenied("registry redirected to plain HTTP on another host", op="registry", value=url)
        conn = self._conn(parts.scheme, parts.netloc)
        path = parts.path + ("?" + parts.query if parts.query else "")
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self.conns.pop((parts.scheme, parts.netloc), None)
            raise KernelError(f"registry request failed: {e}", op=f"{method} {url}",
                              hint="is the registry running and reachable?") from None
        if resp.status in (301, 302, 303, 307, 308) and redirects > 0:
            location = resp.getheader("Location") or ""
            resp.read()
            return self.request(method if resp.status in (307, 308) else "GET",
                                urllib.parse.urljoin(url, location), body, headers, redirects - 1)
        return resp

    def check(self, resp: http.client.HTTPResponse, what: str, ok: tuple[int, ...]) -> None:
        if resp.status in ok:
            return
        text = resp.read(4096).decode("utf-8", "replace")
        if resp.status == 404:
            raise NotFound(f"{what} not found in the registry", op="registry", value=self.ref.tag_ref,
                           hint=text.strip()[:300])
        if resp.status in (401, 403):
            raise PermissionDenied(f"registry refused {what} (HTTP {resp.status})", op="registry",
                                   value=self.ref.tag_ref, hint="pycontain speaks to registries anonymously")
        raise KernelError(f"registry answered HTTP {resp.status} for {what}", op="registry",
                          value=self.ref.tag_ref, hint=text.strip()[:300])


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                leave=False)


class _Counting:
    """A file object that reports bytes read to a progress bar."""

    def __init__(self, f: IO[bytes], bar: Any) -> None:
        self.f = f
        self.bar = bar

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bar.update(len(data))
        return data


# -- pull ------------------------------------------------------------------------------------


def pull(ref: str, *, store: Store, limits: tarsafe.Limits = tarsafe.DEFAULT_LIMITS, progress: bool = True) -> Image:
    from pycontain.image import Image

    r = parse_reference(ref)
    client = _Client(r)
    try:
        manifest = _get_manifest(client, r.ref, depth=0)
        cfg_desc = manifest["config"]
        resp = client.request("GET", f"/v2/{r.name}/blobs/{cfg_desc['digest']}")
        client.check(resp, "config blob", (200,))
        raw = resp.read(oci.MAX_JSON + 1)
        tarsafe.check_digest("config", cfg_desc["digest"], "sha256:" + hashlib.sha256(raw).hexdigest(),
                             cfg_desc["size"], len(raw))
        try:
            config = json.loads(raw)
        except ValueError as e:
            raise InvalidArchive(f"image config is not valid JSON: {e}", op="Image.pull") from None
        oci.validate_config(config, len(manifest["layers"]))
        diff_ids = config["rootfs"]["diff_ids"]
        for i, (desc, diff_id) in enumerate(zip(manifest["layers"], diff_ids)):
            if store.has_layer(diff_id):
                continue
            resp = client.request("GET", f"/v2/{r.name}/blobs/{desc['digest']}")
            client.check(resp, f"layer {i}", (200,))
            with _bar(desc["size"], f"layer {i + 1}/{len(diff_ids)} {desc['digest'][7:19]}", progress) as bar:
                store.add_layer(_Counting(resp, bar), diff_id=diff_id, digest=desc["digest"],  # type: ignore[arg-type]
                                compressed_size=desc["size"], limits=limits)
            resp.read()  # drain what follows the tar's end so the connection can be reused
        return Image._record(store, list(diff_ids), config, [r.tag_ref] if not r.digest or r.tag else [])
    finally:
        client.close()


def _get_manifest(client: _Client, ref: str, depth: int) -> dict[str, Any]:
    r = client.ref
    resp = client.request("GET", f"/v2/{r.name}/manifests/{ref}", headers={"Accept": ACCEPT})
    client.check(resp, "manifest", (200,))
    raw = resp.read(oci.MAX_JSON + 1)
    if len(raw) > oci.MAX_JSON:
        raise InvalidArchive("manifest too large", op="Image.pull", value=len(raw))
    actual = "sha256:" + hashlib.sha256(raw).hexdigest()
    if ref.startswith("sha256:"):
        tarsafe.check_digest("manifest", ref, actual)
    header = resp.getheader("Docker-Content-Digest")
    if header and header.startswith("sha256:"):
        tarsafe.check_digest("manifest", check_digest_string(header, "Docker-Content-Digest"), actual)
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise InvalidArchive(f"manifest is not valid JSON: {e}", op="Image.pull") from None
    if isinstance(doc, dict) and doc.get("mediaType") in (oci.MEDIA_INDEX, oci.DOCKER_LIST) or (
            isinstance(doc, dict) and "manifests" in doc and "layers" not in doc):
        if depth > 1:
            raise InvalidArchive("image indexes nested too deeply", op="Image.pull")
        from pycontain.image import _oci_arch

        arch = _oci_arch()
        for i, d in enumerate(doc.get("manifests") or []):
            desc = oci._descriptor(d, f"manifests[{i}]")
            plat = desc.get("platform") or {}
            if plat.get("os") == "linux" and plat.get("architecture") == arch:
                return _get_manifest(client, desc["digest"], depth + 1)
        raise NotFound(f"no linux/{arch} image in the index", op="Image.pull", value=r.tag_ref)
    return oci.validate_manifest(doc)


# -- push ------------------------------------------------------------------------------------


def push(image: Image, ref: str | None, *, progress: bool = True) -> str:
    from pycontain.image import normalize_tag

    target = ref or image.tag
    if not target:
        raise InvalidArgument("the image has no tag; name the destination", field="ref", value=None,
                              op="Image.push", hint="image.push('localhost:5000/team/app:v1')")
    r = parse_reference(normalize_tag(target) if "@" not in target else target)
    st = image.store
    manifest_bytes = st.get_blob(image.digest)
    manifest = json.loads(manifest_bytes)
    client = _Client(r)
    try:
        for layer in image.layers:
            assert layer.tar_path is not None
            with open(layer.tar_path, "rb") as f, _bar(layer.size, f"push {layer.digest[7:19]}", progress) as bar:
                _upload(client, layer.digest, layer.size, _Counting(f, bar))
        cfg = st.get_blob(manifest["config"]["digest"])
        _upload(client, manifest["config"]["digest"], len(cfg), cfg)
        resp = client.request("PUT", f"/v2/{r.name}/manifests/{r.tag or 'latest'}", body=manifest_bytes,
                              headers={"Content-Type": oci.MEDIA_MANIFEST, "Content-Length": str(len(manifest_bytes))})
        client.check(resp, "manifest upload", (201, 200))
        resp.read()
        got = resp.getheader("Docker-Content-Digest")
        if got and got != image.digest:
            raise InvalidArchive("registry stored the manifest under another digest", op="Image.push", value=got,
                                 hint=f"expected {image.digest}")
    finally:
        client.close()
    return r.tag_ref


def _upload(client: _Client, digest: str, size: int, body: Any) -> None:
    name = client.ref.name
    resp = client.request("HEAD", f"/v2/{name}/blobs/{digest}")
    resp.read()
    if resp.status == 200:
        return  # the registry has it already
    resp = client.request("POST", f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    client.check(resp, "upload start", (202,))
    resp.read()
    location = resp.getheader("Location")
    if not location:
        raise InvalidArchive("registry gave no upload location", op="Image.push")
    sep = "&" if "?" in location else "?"
    url = location if location.startswith("http") else location
    resp = client.request("PUT", f"{url}{sep}digest={urllib.parse.quote(digest)}", body=body,
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
    client.check(resp, "blob upload", (201,))
    resp.read()
