"""Reading images back from a registry over the Distribution API: index, manifests, blobs.

The build asks whether an image index is already there (a warm run pushes nothing), and the
tests read what was pushed exactly as a node's runtime would. Plain HTTP, for the harness's
registry on loopback.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from wasmfleet_harness.images.recipe import Platform

__all__ = [
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "Document",
    "fetch_blob",
    "fetch_config",
    "fetch_manifest",
    "index_platforms",
]

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


@dataclass(frozen=True)
class Document:
    """A manifest or index as the registry served it."""

    media_type: str
    digest: str
    body: dict[str, Any]


def fetch_manifest(registry: str, repository: str, reference: str) -> Document | None:
    """The manifest or index ``reference`` (a tag or digest) names; None when there is none.

    ``registry`` is ``host:port``.
    """
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{reference}",
        headers={"Accept": ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Document(
                media_type=response.headers.get("Content-Type", ""),
                digest=response.headers.get("Docker-Content-Digest", ""),
                body=json.loads(response.read()),
            )
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def fetch_blob(registry: str, repository: str, digest: str) -> bytes:
    with urllib.request.urlopen(
        f"http://{registry}/v2/{repository}/blobs/{digest}", timeout=60
    ) as response:
        data: bytes = response.read()
        return data


def index_platforms(index: Document) -> dict[Platform, str]:
    """Platform -> manifest digest, for each image an index lists."""
    if index.media_type not in INDEX_TYPES:
        return {}
    return {
        Platform(entry["platform"]["os"], entry["platform"]["architecture"]): entry["digest"]
        for entry in index.body.get("manifests", [])
        if "platform" in entry
    }


def fetch_config(registry: str, repository: str, tag: str, platform: Platform) -> dict[str, Any]:
    """The image configuration of ``platform``'s image in the index ``tag``, as a node's
    runtime reads it: index, then that platform's manifest, then its config blob."""
    index = fetch_manifest(registry, repository, tag)
    if index is None:
        raise LookupError(f"{registry}/{repository}:{tag} is not in the registry")
    digest = index_platforms(index).get(platform)
    if digest is None:
        raise LookupError(f"{registry}/{repository}:{tag} has no image for {platform}")
    manifest = fetch_manifest(registry, repository, digest)
    if manifest is None or manifest.media_type not in MANIFEST_TYPES:
        raise LookupError(f"{registry}/{repository}@{digest} is not an image manifest")
    config: dict[str, Any] = json.loads(
        fetch_blob(registry, repository, manifest.body["config"]["digest"])
    )
    return config
