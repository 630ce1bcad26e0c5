"""Publishing a module as a CNCF Wasm artifact, so users and tests need no other tool.

The layout is the one the store prefers to read: an OCI image manifest whose config has media
type ``application/vnd.wasm.config.v0+json`` and whose single layer is the module itself,
``application/wasm``. The render functions are pure (the manifest's bytes, and so its digest,
depend only on their arguments); `push_module` does the uploads.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass

from wasmfleet_api.units import format_time
from wasmfleet_oci import auth, formats
from wasmfleet_oci.client import RegistryClient, sha256_digest
from wasmfleet_oci.reference import Reference

__all__ = [
    "ComponentDescription",
    "PushedModule",
    "push_module",
    "render_wasm_config",
    "render_wasm_manifest",
]

CREATED_ANNOTATION = "org.opencontainers.image.created"
TITLE_ANNOTATION = "org.opencontainers.image.title"


@dataclass(frozen=True)
class PushedModule:
    """What a push stored: the manifest's digest and the module's (the layer's) digest."""

    reference: Reference
    manifest_digest: str
    module_digest: str
    size: int

    @property
    def pinned(self) -> Reference:
        """The pushed reference with its digest: what a WasmService should name."""
        return self.reference.with_digest(self.manifest_digest)


@dataclass(frozen=True)
class ComponentDescription:
    """What the config of a component's artifact says about it: the interfaces it imports and
    exports and, when known, the world it targets (the artifact format's ``component``)."""

    imports: tuple[str, ...]
    exports: tuple[str, ...]
    target: str | None = None


def render_wasm_config(
    *,
    module_digest: str,
    created: datetime.datetime | None = None,
    component: ComponentDescription | None = None,
) -> bytes:
    """The config blob of a CNCF Wasm artifact: os ``wasip1`` for a preview 1 module, or
    ``wasip2`` with the ``component`` section for a component."""
    document: dict[str, object] = {
        "architecture": "wasm",
        "os": "wasip1" if component is None else "wasip2",
        "layerDigests": [module_digest],
    }
    if component is not None:
        section: dict[str, object] = {
            "exports": list(component.exports),
            "imports": list(component.imports),
        }
        if component.target is not None:
            section["target"] = component.target
        document["component"] = section
    if created is not None:
        document["created"] = format_time(created)
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def render_wasm_manifest(
    *,
    config: formats.Descriptor,
    layer: formats.Descriptor,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The OCI image manifest of a CNCF Wasm artifact: ``config`` plus one module layer."""
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": formats.OCI_MANIFEST,
        "config": config.model_dump(by_alias=True, exclude_none=True),
        "layers": [layer.model_dump(by_alias=True, exclude_none=True)],
    }
    if annotations:
        document["annotations"] = dict(sorted(annotations.items()))
    return json.dumps(document, separators=(",", ":")).encode()


async def push_module(
    *,
    client: RegistryClient,
    reference: Reference,
    module: bytes,
    credentials: auth.Credentials | None = None,
    title: str | None = None,
    created: datetime.datetime | None = None,
    component: ComponentDescription | None = None,
) -> PushedModule:
    """Uploads ``module`` (config blob, layer blob, then the manifest under the tag).

    Blobs the repository already has are not uploaded again. ``title`` (a file name) and
    ``created`` become the usual OCI annotations when given; ``component`` describes a
    component (the caller inspects it: this package does not load Wasm).
    """
    if not module.startswith(formats.WASM_MAGIC):
        raise ValueError("the file is not a WebAssembly binary (no \\0asm header)")
    if reference.digest is not None:
        raise ValueError(f"push to a tag, not to a digest: {reference}")
    module_digest = sha256_digest(module)
    layer_annotations = {TITLE_ANNOTATION: title} if title else None
    layer = formats.Descriptor(
        media_type=formats.WASM_LAYER,
        digest=module_digest,
        size=len(module),
        annotations=layer_annotations,
    )
    config_bytes = render_wasm_config(
        module_digest=module_digest, created=created, component=component
    )
    config = formats.Descriptor(
        media_type=formats.WASM_CONFIG,
        digest=sha256_digest(config_bytes),
        size=len(config_bytes),
    )
    annotations = {CREATED_ANNOTATION: format_time(created)} if created is not None else None
    manifest = render_wasm_manifest(config=config, layer=layer, annotations=annotations)
    await client.push_blob(reference=reference, data=config_bytes, credentials=credentials)
    await client.push_blob(reference=reference, data=module, credentials=credentials)
    manifest_digest = await client.push_manifest(
        reference=reference,
        body=manifest,
        media_type=formats.OCI_MANIFEST,
        credentials=credentials,
    )
    return PushedModule(
        reference=reference,
        manifest_digest=manifest_digest,
        module_digest=module_digest,
        size=len(module),
    )
