"""Finding the Wasm bytes in manifests, indexes and (hostile) tar layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence

import pytest

from wasmfleet_oci import errors, formats

WASM = b"\0asm\x01\0\0\0" + b"module body"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes = b"x", **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data), **extra}


def _manifest(config_type: str, *layer_types: str) -> formats.ImageManifest:
    document = {
        "schemaVersion": 2,
        "mediaType": formats.OCI_MANIFEST,
        "config": _descriptor(config_type, b"{}"),
        "layers": [_descriptor(t, t.encode()) for t in layer_types],
    }
    parsed = formats.parse_manifest(json.dumps(document).encode())
    assert isinstance(parsed, formats.ImageManifest)
    return parsed


def _index(*platforms: dict[str, str], media_type: str = formats.OCI_INDEX) -> formats.ImageIndex:
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            _descriptor(formats.OCI_MANIFEST, json.dumps(p).encode(), platform=p) for p in platforms
        ],
    }
    parsed = formats.parse_manifest(json.dumps(document).encode())
    assert isinstance(parsed, formats.ImageIndex)
    return parsed


# -- manifests ---------------------------------------------------------------------------------


def test_the_cncf_wasm_layout_is_one_wasm_layer() -> None:
    manifest = _manifest(formats.WASM_CONFIG, formats.WASM_LAYER)
    plan = formats.plan_module_source(manifest)
    assert plan == formats.WasmLayerPlan(layer=manifest.layers[0])


def test_the_older_wasm_to_oci_layer_type_is_one_wasm_layer() -> None:
    manifest = _manifest("application/vnd.wasm.config.v1+json", formats.WASM_TO_OCI_LAYER)
    assert formats.plan_module_source(manifest) == formats.WasmLayerPlan(manifest.layers[0])


def test_an_ordinary_image_with_tar_layers_is_searched_for_a_wasm_file() -> None:
    manifest = _manifest(
        formats.OCI_IMAGE_CONFIG, formats.OCI_LAYER_TAR_GZIP, formats.OCI_LAYER_TAR
    )
    plan = formats.plan_module_source(manifest)
    assert plan == formats.ImageLayersPlan(config=manifest.config, layers=manifest.layers)


def test_a_docker_image_manifest_with_gzip_layers_is_searched_too() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": formats.DOCKER_MANIFEST,
        "config": _descriptor(formats.DOCKER_IMAGE_CONFIG),
        "layers": [_descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip")],
    }
    parsed = formats.parse_manifest(json.dumps(document).encode())
    assert isinstance(parsed, formats.ImageManifest)
    assert isinstance(formats.plan_module_source(parsed), formats.ImageLayersPlan)


def test_a_wasm_config_with_two_layers_is_refused_naming_them() -> None:
    manifest = _manifest(formats.WASM_CONFIG, formats.WASM_LAYER, formats.WASM_LAYER)
    with pytest.raises(errors.UnsupportedArtifact, match="exactly one application/wasm"):
        formats.plan_module_source(manifest)


def test_a_helm_chart_is_refused_naming_the_media_types_seen() -> None:
    manifest = _manifest(
        "application/vnd.cncf.helm.config.v1+json",
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
    )
    with pytest.raises(errors.UnsupportedArtifact) as refused:
        formats.plan_module_source(manifest)
    message = str(refused.value)
    assert "application/vnd.cncf.helm.config.v1+json" in message
    assert "application/vnd.cncf.helm.chart.content.v1.tar+gzip" in message


def test_an_image_with_a_zstd_layer_is_refused_naming_it() -> None:
    manifest = _manifest(formats.OCI_IMAGE_CONFIG, "application/vnd.oci.image.layer.v1.tar+zstd")
    with pytest.raises(errors.UnsupportedArtifact, match=r"tar\+zstd"):
        formats.plan_module_source(manifest)


def test_the_media_type_header_is_used_when_the_manifest_has_no_media_type_field() -> None:
    document = {"schemaVersion": 2, "manifests": []}
    parsed = formats.parse_manifest(
        json.dumps(document).encode(), content_type=formats.DOCKER_MANIFEST_LIST + "; q=1"
    )
    assert isinstance(parsed, formats.ImageIndex)


def test_a_docker_schema_1_manifest_is_refused() -> None:
    with pytest.raises(errors.UnsupportedArtifact, match="schema 1"):
        formats.parse_manifest(b'{"schemaVersion": 1, "fsLayers": []}')


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schemaVersion": 2, "mediaType": "text/plain"}', "text/plain"),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": formats.OCI_MANIFEST,
                    "config": {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": -1},
                }
            ).encode(),
            "config.size",
        ),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": formats.OCI_MANIFEST,
                    "config": {"mediaType": "x", "digest": "sha256:../../../etc", "size": 1},
                }
            ).encode(),
            "config.digest",
        ),
    ],
)
def test_a_malformed_manifest_is_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(errors.UnsupportedArtifact, match=reason):
        formats.parse_manifest(body)


def test_an_index_entry_for_wasip1_is_chosen_over_linux_entries() -> None:
    index = _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "wasip1", "architecture": "wasm"},
        {"os": "linux", "architecture": "arm64"},
    )
    assert formats.plan_platform_manifest(index) == index.manifests[1]


def test_an_index_entry_for_wasi_or_the_wasm_architecture_is_accepted() -> None:
    assert formats.plan_platform_manifest(_index({"os": "wasi", "architecture": "x"})).platform
    only_arch = _index({"os": "linux", "architecture": "amd64"}, {"os": "", "architecture": "wasm"})
    assert formats.plan_platform_manifest(only_arch) == only_arch.manifests[1]


def test_wasip1_is_preferred_even_when_listed_after_a_wasm_architecture_entry() -> None:
    index = _index({"os": "unknown", "architecture": "wasm"}, {"os": "wasip1", "architecture": "x"})
    assert formats.plan_platform_manifest(index) == index.manifests[1]


def test_a_docker_manifest_list_is_an_index_too() -> None:
    index = _index(
        {"os": "wasip1", "architecture": "wasm"}, media_type=formats.DOCKER_MANIFEST_LIST
    )
    assert formats.plan_platform_manifest(index) == index.manifests[0]


def test_an_index_without_a_wasm_platform_is_refused_listing_the_platforms() -> None:
    index = _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    )
    with pytest.raises(errors.UnsupportedArtifact, match="linux/amd64, linux/arm64/v8"):
        formats.plan_platform_manifest(index)


# -- image configs -----------------------------------------------------------------------------


def test_the_entrypoint_then_the_cmd_name_the_module() -> None:
    config = {"config": {"Entrypoint": ["/app/main.wasm", "--flag"], "Cmd": ["other.wasm"]}}
    assert formats.parse_image_entrypoint(json.dumps(config).encode()) == [
        "app/main.wasm",
        "other.wasm",
    ]


def test_a_relative_entrypoint_is_resolved_against_the_working_dir() -> None:
    config = {"config": {"Cmd": ["./svc.wasm"], "WorkingDir": "/srv"}}
    assert formats.parse_image_entrypoint(json.dumps(config).encode()) == ["srv/svc.wasm"]


@pytest.mark.parametrize("config", [b"", b"nope", b"[]", b'{"config": null}', b'{"config": {}}'])
def test_an_unreadable_image_config_names_no_module(config: bytes) -> None:
    assert formats.parse_image_entrypoint(config) == []


# -- tar layers --------------------------------------------------------------------------------


def _tar(members: Sequence[tuple[str, bytes | str | None]], *, gzipped: bool = False) -> io.BytesIO:
    """Builds a layer: ``(name, bytes)`` is a file, ``(name, "->target")`` a symlink,
    ``(name, "=>target")`` a hard link, ``(name, None)`` a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.SYMTYPE if content.startswith("->") else tarfile.LNKTYPE
                info.linkname = content[2:]
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    return io.BytesIO(gzip.compress(data) if gzipped else data)


LIMIT = 1 << 20


def _scan(*layers: io.BytesIO) -> list[list[formats.TarEntry]]:
    return [formats.parse_tar_layer(layer, max_unpacked_bytes=LIMIT) for layer in layers]


def test_a_single_wasm_file_in_a_gzipped_layer_is_found_and_extracted() -> None:
    layer = _tar([("app", None), ("app/hello.wasm", WASM), ("etc/motd", b"hi")], gzipped=True)
    position, entry = formats.plan_wasm_entry(_scan(layer))
    assert (position, entry) == (0, formats.TarEntry("app/hello.wasm", "file", len(WASM)))
    out = io.BytesIO()
    copied = formats.extract_tar_entry(
        layer, path=entry.path, out=out, max_bytes=LIMIT, max_unpacked_bytes=LIMIT
    )
    assert (copied, out.getvalue()) == (len(WASM), WASM)


def test_a_leading_dot_slash_in_member_names_is_ignored() -> None:
    layer = _tar([("./hello.wasm", WASM)])
    assert formats.plan_wasm_entry(_scan(layer))[1].path == "hello.wasm"


@pytest.mark.parametrize("name", ["../evil.wasm", "app/../../evil.wasm", "a/../b.txt"])
def test_a_layer_with_a_dot_dot_path_is_refused(name: str) -> None:
    with pytest.raises(errors.UnsupportedArtifact, match=r"'\.\.'"):
        _scan(_tar([("ok.wasm", WASM), (name, WASM)]))


def test_a_layer_with_an_absolute_path_is_refused() -> None:
    with pytest.raises(errors.UnsupportedArtifact, match="absolute"):
        _scan(_tar([("/evil.wasm", WASM)]))


def test_a_symlink_named_wasm_is_never_chosen_even_as_the_only_candidate() -> None:
    layers = _scan(_tar([("hello.wasm", "->/etc/shadow")]))
    with pytest.raises(errors.UnsupportedArtifact, match="only links or special files"):
        formats.plan_wasm_entry(layers)


def test_an_entrypoint_naming_a_hard_link_is_refused_not_followed() -> None:
    layers = _scan(_tar([("real.wasm", WASM), ("app.wasm", "=>real.wasm")]))
    with pytest.raises(errors.UnsupportedArtifact, match="link"):
        formats.plan_wasm_entry(layers, preferred=["app.wasm"])


def test_symlinks_elsewhere_in_an_image_are_harmless() -> None:
    layers = _scan(_tar([("bin", "->usr/bin"), ("hello.wasm", WASM)]))
    assert formats.plan_wasm_entry(layers)[1].path == "hello.wasm"


def test_a_fifo_named_wasm_is_never_chosen() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("pipe.wasm")
        info.type = tarfile.FIFOTYPE
        archive.addfile(info)
    buffer.seek(0)
    with pytest.raises(errors.UnsupportedArtifact, match=r"pipe\.wasm"):
        formats.plan_wasm_entry(_scan(buffer))


def test_several_wasm_files_without_an_entrypoint_are_refused_listing_them() -> None:
    layers = _scan(_tar([("a.wasm", WASM), ("b/c.wasm", WASM)]))
    with pytest.raises(errors.UnsupportedArtifact, match=r"/a\.wasm, /b/c\.wasm"):
        formats.plan_wasm_entry(layers)


def test_the_entrypoint_chooses_among_several_wasm_files() -> None:
    layers = _scan(_tar([("a.wasm", WASM), ("b/c.wasm", WASM + b"!")]))
    assert formats.plan_wasm_entry(layers, preferred=["b/c.wasm"])[1].path == "b/c.wasm"


def test_an_entrypoint_that_is_not_in_the_image_falls_back_to_the_single_file() -> None:
    layers = _scan(_tar([("a.wasm", WASM)]))
    assert formats.plan_wasm_entry(layers, preferred=["bin/sh"])[1].path == "a.wasm"


def test_a_layer_without_wasm_files_is_refused() -> None:
    with pytest.raises(errors.UnsupportedArtifact, match=r"no regular \.wasm file"):
        formats.plan_wasm_entry(_scan(_tar([("etc/motd", b"hi")])))


def test_an_upper_layer_replaces_a_lower_file_of_the_same_path() -> None:
    layers = _scan(_tar([("hello.wasm", WASM)]), _tar([("hello.wasm", WASM + b"v2")]))
    position, entry = formats.plan_wasm_entry(layers)
    assert (position, entry.size) == (1, len(WASM) + 2)


def test_a_whiteout_in_an_upper_layer_deletes_the_lower_file() -> None:
    layers = _scan(
        _tar([("old.wasm", WASM), ("new.wasm", WASM)]),
        _tar([(".wh.old.wasm", b"")]),
    )
    assert formats.plan_wasm_entry(layers)[1].path == "new.wasm"


def test_an_opaque_directory_hides_what_lower_layers_put_in_it() -> None:
    layers = _scan(
        _tar([("app/old.wasm", WASM)]),
        _tar([("app/.wh..wh..opq", b""), ("app/new.wasm", WASM)]),
    )
    assert formats.plan_wasm_entry(layers)[1].path == "app/new.wasm"


def test_a_decompression_bomb_is_refused_once_it_unpacks_past_the_limit() -> None:
    layer = _tar([("zeros", b"\0" * (4 * LIMIT)), ("hello.wasm", WASM)], gzipped=True)
    assert len(layer.getvalue()) < LIMIT // 10
    with pytest.raises(errors.ModuleTooLarge, match="unpacks to more than"):
        formats.parse_tar_layer(layer, max_unpacked_bytes=LIMIT)


def test_a_module_larger_than_the_limit_is_not_extracted() -> None:
    layer = _tar([("hello.wasm", WASM)])
    with pytest.raises(errors.ModuleTooLarge, match="more than the limit"):
        formats.extract_tar_entry(
            layer, path="hello.wasm", out=io.BytesIO(), max_bytes=4, max_unpacked_bytes=LIMIT
        )


def test_the_last_member_of_a_path_is_the_one_extracted() -> None:
    layer = _tar([("hello.wasm", b"first"), ("hello.wasm", WASM)])
    out = io.BytesIO()
    formats.extract_tar_entry(
        layer, path="hello.wasm", out=out, max_bytes=LIMIT, max_unpacked_bytes=LIMIT
    )
    assert out.getvalue() == WASM


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x28\xb5\x2f\xfd" + b"\0" * 600, "zstd"),
        (b"\x1f\x8b" + b"garbage" * 100, "tar"),
        (b"definitely not a tar archive" * 40, "tar"),
    ],
)
def test_a_layer_that_is_not_a_tar_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(errors.UnsupportedArtifact, match=reason):
        formats.parse_tar_layer(io.BytesIO(data), max_unpacked_bytes=LIMIT)
