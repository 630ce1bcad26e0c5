"""`wasmfleet push` writes the CNCF Wasm artifact layout, byte for byte reproducibly."""

from __future__ import annotations

import datetime
import hashlib
import json

import pytest

from wasmfleet_oci import formats
from wasmfleet_oci.push import render_wasm_config, render_wasm_manifest

MODULE_DIGEST = "sha256:" + hashlib.sha256(b"\0asm\x01\0\0\0").hexdigest()


def _descriptors() -> tuple[formats.Descriptor, formats.Descriptor]:
    config = render_wasm_config(module_digest=MODULE_DIGEST)
    return (
        formats.Descriptor(
            media_type=formats.WASM_CONFIG,
            digest="sha256:" + hashlib.sha256(config).hexdigest(),
            size=len(config),
        ),
        formats.Descriptor(media_type=formats.WASM_LAYER, digest=MODULE_DIGEST, size=8),
    )


def test_the_manifest_is_an_oci_manifest_with_the_wasm_config_and_one_wasm_layer() -> None:
    config, layer = _descriptors()
    document = json.loads(render_wasm_manifest(config=config, layer=layer))
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == formats.OCI_MANIFEST
    assert document["config"]["mediaType"] == "application/vnd.wasm.config.v0+json"
    assert [layer["mediaType"] for layer in document["layers"]] == ["application/wasm"]
    assert document["layers"][0] == {
        "mediaType": "application/wasm",
        "digest": MODULE_DIGEST,
        "size": 8,
    }


def test_the_manifest_the_store_reads_back_is_a_single_wasm_layer() -> None:
    config, layer = _descriptors()
    parsed = formats.parse_manifest(render_wasm_manifest(config=config, layer=layer))
    assert isinstance(parsed, formats.ImageManifest)
    assert formats.plan_module_source(parsed) == formats.WasmLayerPlan(layer=layer)


def test_the_same_inputs_render_the_same_bytes() -> None:
    config, layer = _descriptors()
    first = render_wasm_manifest(config=config, layer=layer, annotations={"b": "2", "a": "1"})
    again = render_wasm_manifest(config=config, layer=layer, annotations={"a": "1", "b": "2"})
    assert first == again


def test_the_config_names_the_wasip1_platform_and_the_layer() -> None:
    created = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    document = json.loads(render_wasm_config(module_digest=MODULE_DIGEST, created=created))
    assert document == {
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [MODULE_DIGEST],
        "created": "2025-01-02T03:04:05Z",
    }


def test_a_naive_creation_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        render_wasm_config(module_digest=MODULE_DIGEST, created=datetime.datetime(2025, 1, 1))
