"""Strict validation of OCI documents, digests, tags and image configs."""

from __future__ import annotations

import pytest

from pycontain.backends.storage_store import check_digest_string
from pycontain.errors import InvalidArchive, InvalidArgument, Unsupported
from pycontain.image import ImageConfig, normalize_tag
from pycontain.image.oci import validate_config, validate_manifest

D = "sha256:" + "0" * 64


def _manifest(**kw) -> dict:
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D, "size": 2},
         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D, "size": 3}]}
    m.update(kw)
    return m


def test_valid_manifest() -> None:
    assert validate_manifest(_manifest())["schemaVersion"] == 2


@pytest.mark.parametrize("bad", [
    {"schemaVersion": 1},
    {"mediaType": "application/vnd.oci.image.index.v1+json"},
    {"config": None},
    {"config": {"digest": "sha256:../../x", "size": 1}},
    {"config": {"digest": D, "size": "1"}},
    {"config": {"digest": D, "size": 1, "annotations": {"a": 1}}},
    {"layers": None},
    {"layers": [{"mediaType": "text/plain", "digest": D, "size": 1}]},
    {"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D, "size": -5}]},
])
def test_bad_manifests(bad: dict) -> None:
    with pytest.raises(InvalidArchive):
        validate_manifest(_manifest(**bad))


def test_zstd_layers_are_unsupported_not_invalid() -> None:
    with pytest.raises(Unsupported):
        validate_manifest(_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                                             "digest": D, "size": 1}]))


def test_config_validation() -> None:
    good = {"os": "linux", "rootfs": {"type": "layers", "diff_ids": [D]}, "config": {"Cmd": ["sh"]}}
    assert validate_config(good, 1) is good
    with pytest.raises(InvalidArchive):
        validate_config(good, 2)
    with pytest.raises(Unsupported):
        validate_config({**good, "os": "windows"}, 1)
    with pytest.raises(InvalidArchive):
        validate_config({**good, "config": {"Cmd": "sh"}}, 1)
    with pytest.raises(InvalidArchive):
        validate_config({**good, "rootfs": {"type": "layers", "diff_ids": ["sha256:../x"]}}, 1)


@pytest.mark.parametrize("value", ["sha256:../../x", "sha256:" + "g" * 64, "sha512:" + "0" * 128, None, 1,
                                   "sha256:" + "0" * 65, " sha256:" + "0" * 64])
def test_digest_strings(value) -> None:
    with pytest.raises(InvalidArchive):
        check_digest_string(value)
    assert check_digest_string(D) == D


@pytest.mark.parametrize(("tag", "norm"), [("busybox", "busybox:latest"), ("busybox:1.36", "busybox:1.36"),
                                           ("localhost:5000/team/app:v2", "localhost:5000/team/app:v2"),
                                           ("localhost/podimg:1", "localhost/podimg:1")])
def test_tags(tag: str, norm: str) -> None:
    assert normalize_tag(tag) == norm


@pytest.mark.parametrize("tag", ["", "UPPER", "a b", "x:", "x:-bad", "../x", 5])
def test_bad_tags(tag) -> None:
    with pytest.raises(InvalidArgument):
        normalize_tag(tag)


def test_image_config_round_trip() -> None:
    cfg = ImageConfig().replace(cmd=["sh"], env={"A": "1"}, workdir="/w", user="1:1")
    again = ImageConfig.from_oci(cfg.to_oci())
    assert again == cfg
    assert again.env_dict == {"A": "1"}
    with pytest.raises(InvalidArgument):
        ImageConfig.from_oci({"Env": "A=1"})
