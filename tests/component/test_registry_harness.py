"""The harness's OCI registry is a real distribution server: content by digest, real auth."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request

import pytest

from wasmfleet_harness.registry import BasicAuth, Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: BasicAuth | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if auth is not None:
        token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def _push_blob(registry: Registry, repo: str, data: bytes, auth: BasicAuth | None) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _ = _request(
        "POST", f"{registry.url}/v2/{repo}/blobs/uploads/", body=b"", auth=auth
    )
    assert status == 202
    location = headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    separator = "&" if "?" in location else "?"
    status, _, _ = _request(
        "PUT",
        f"{location}{separator}digest={digest}",
        body=data,
        headers={"Content-Type": "application/octet-stream"},
        auth=auth,
    )
    assert status == 201
    return digest


def _push_artifact(
    registry: Registry, repo: str, tag: str, layer: bytes, auth: BasicAuth | None = None
) -> tuple[str, str, bytes]:
    config = b"{}"
    config_digest = _push_blob(registry, repo, config, auth)
    layer_digest = _push_blob(registry, repo, layer, auth)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.wasm.config.v0+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/wasm", "digest": layer_digest, "size": len(layer)}
            ],
        }
    ).encode()
    status, headers, _ = _request(
        "PUT",
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        body=manifest,
        headers={"Content-Type": OCI_MANIFEST},
        auth=auth,
    )
    assert status == 201
    manifest_digest = headers["Docker-Content-Digest"]
    assert manifest_digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    return manifest_digest, layer_digest, manifest


def test_a_pushed_blob_and_manifest_read_back_by_digest(registry: Registry) -> None:
    layer = b"\0asm\x01\0\0\0"
    manifest_digest, layer_digest, manifest = _push_artifact(registry, "tests/empty", "v1", layer)

    _, headers, body = _request(
        "GET",
        f"{registry.url}/v2/tests/empty/manifests/{manifest_digest}",
        headers={"Accept": OCI_MANIFEST},
    )
    assert body == manifest
    assert headers["Content-Type"] == OCI_MANIFEST
    _, _, blob = _request("GET", f"{registry.url}/v2/tests/empty/blobs/{layer_digest}")
    assert blob == layer


def test_a_blob_under_the_wrong_digest_is_refused(registry: Registry) -> None:
    _, headers, _ = _request("POST", f"{registry.url}/v2/tests/bad/blobs/uploads/", body=b"")
    location = headers["Location"]
    separator = "&" if "?" in location else "?"
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(urllib.error.HTTPError) as refused:
        _request("PUT", f"{location}{separator}digest={wrong}", body=b"payload")
    assert refused.value.code == 400
    refused.value.close()


def test_basic_auth_refuses_anonymous_reads_and_admits_the_user(
    registry_with_basic_auth: Registry, registry_basic_auth: BasicAuth
) -> None:
    registry = registry_with_basic_auth
    manifest_digest, _, manifest = _push_artifact(
        registry, "tests/private", "v1", b"\0asm\x01\0\0\0", auth=registry_basic_auth
    )
    url = f"{registry.url}/v2/tests/private/manifests/{manifest_digest}"

    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _request("GET", url, headers={"Accept": OCI_MANIFEST})
    assert anonymous.value.code == 401
    assert "Basic" in anonymous.value.headers["WWW-Authenticate"]
    anonymous.value.close()

    with pytest.raises(urllib.error.HTTPError) as wrong_password:
        _request(
            "GET",
            url,
            headers={"Accept": OCI_MANIFEST},
            auth=BasicAuth(registry_basic_auth.username, "not-the-password"),
        )
    assert wrong_password.value.code == 401
    wrong_password.value.close()

    _, _, body = _request("GET", url, headers={"Accept": OCI_MANIFEST}, auth=registry_basic_auth)
    assert body == manifest
