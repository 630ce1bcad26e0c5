"""Modules pushed to the real registry come back byte for byte, in every layout the store reads."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wasmfleet_agent.store import ModuleStore, PullPolicy
from wasmfleet_harness.registry import BasicAuth, Registry
from wasmfleet_oci import errors, formats
from wasmfleet_oci.client import RegistryClient, sha256_digest
from wasmfleet_oci.push import push_module
from wasmfleet_oci.reference import Reference, parse_reference

HELLO = ("hello-rust", "hello-go", "hello-c")


def _ref(registry: Registry, name: str, tag: str = "v1") -> Reference:
    return parse_reference(f"{registry.host}/tests/{name}-{uuid.uuid4().hex[:8]}:{tag}")


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient() as registry_client:
        yield registry_client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ModuleStore]:
    module_store = ModuleStore(tmp_path / "cache", 64 * 1024 * 1024)
    yield module_store
    await module_store.close()


async def _push_manifest(
    client: RegistryClient,
    ref: Reference,
    *,
    config: bytes,
    config_type: str,
    layers: list[tuple[str, bytes]],
) -> str:
    """Pushes an arbitrary single-platform manifest with the client's low-level uploads."""
    config_digest = await client.push_blob(reference=ref, data=config)
    descriptors = [{"mediaType": config_type, "digest": config_digest, "size": len(config)}]
    for media_type, data in layers:
        digest = await client.push_blob(reference=ref, data=data)
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": formats.OCI_MANIFEST,
            "config": descriptors[0],
            "layers": descriptors[1:],
        }
    ).encode()
    return await client.push_manifest(reference=ref, body=manifest, media_type=formats.OCI_MANIFEST)


def _image_layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue())


@pytest.mark.parametrize("name", HELLO)
async def test_a_pushed_module_pulls_back_identical_by_tag_and_by_digest(
    name: str,
    wasm_modules: dict[str, Path],
    registry: Registry,
    client: RegistryClient,
    store: ModuleStore,
) -> None:
    module = wasm_modules[name].read_bytes()
    ref = _ref(registry, name)
    pushed = await push_module(client=client, reference=ref, module=module, title=f"{name}.wasm")

    by_tag = await store.pull(ref, policy=PullPolicy.ALWAYS)
    assert by_tag.manifest_digest == pushed.manifest_digest
    assert by_tag.module_digest == sha256_digest(module) == pushed.module_digest
    assert by_tag.path.read_bytes() == module
    assert by_tag.size == len(module)

    by_digest = await store.pull(str(pushed.pinned), policy=PullPolicy.ALWAYS)
    assert by_digest.path.read_bytes() == module
    assert by_digest.cached  # the second pull found the module and downloaded nothing


async def test_a_pushed_manifest_uses_the_cncf_wasm_media_types(
    wasm_modules: dict[str, Path], registry: Registry, client: RegistryClient
) -> None:
    module = wasm_modules["hello-c"].read_bytes()
    ref = _ref(registry, "media-types")
    pushed = await push_module(client=client, reference=ref, module=module)

    fetched = await client.fetch_manifest(reference=pushed.pinned)
    assert fetched.media_type == formats.OCI_MANIFEST
    document = json.loads(fetched.body)
    assert document["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert document["config"]["mediaType"] == "application/vnd.wasm.config.v0+json"
    assert [(layer["mediaType"], layer["size"]) for layer in document["layers"]] == [
        ("application/wasm", len(module))
    ]
    config = await client.fetch_blob_bytes(
        reference=ref, descriptor=formats.Descriptor.model_validate(document["config"])
    )
    assert json.loads(config)["os"] == "wasip1"


async def test_pushing_the_same_module_twice_uploads_no_blob_again(
    wasm_modules: dict[str, Path], registry: Registry, client: RegistryClient
) -> None:
    module = wasm_modules["hello-rust"].read_bytes()
    ref = _ref(registry, "twice")
    first = await push_module(client=client, reference=ref, module=module)
    assert await client.has_blob(reference=ref, digest=first.module_digest)
    again = await push_module(client=client, reference=ref, module=module)
    assert again.manifest_digest == first.manifest_digest


def test_the_push_command_prints_the_digest_the_store_then_pulls(
    wasm_modules: dict[str, Path], registry: Registry, tmp_path: Path
) -> None:
    ref = _ref(registry, "cli")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wasmfleet_agent.push_cli",
            "push",
            str(wasm_modules["hello-go"]),
            str(ref),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert digest.startswith("sha256:")
    manifest = _get(f"{registry.url}/v2/{ref.repository}/manifests/{ref.tag}")
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest


def test_the_push_command_explains_a_file_that_is_not_wasm(
    registry: Registry, tmp_path: Path
) -> None:
    not_wasm = tmp_path / "script.sh"
    not_wasm.write_text("#!/bin/sh\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wasmfleet_agent.push_cli",
            "push",
            str(not_wasm),
            f"{registry.host}/tests/x:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "not a WebAssembly binary" in result.stderr


def _wasmfleet(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Runs the installed ``wasmfleet`` console script of this environment."""
    command = Path(sys.executable).parent / "wasmfleet"
    return subprocess.run(
        [str(command), *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_push_command_takes_credentials_from_a_docker_config_or_stdin(
    wasm_modules: dict[str, Path],
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    tmp_path: Path,
) -> None:
    module = str(wasm_modules["hello-c"])
    ref = _ref(registry_with_basic_auth, "cli-auth")
    pair = f"{registry_basic_auth.username}:{registry_basic_auth.password}".encode()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {"auths": {f"http://{ref.registry}/v2/": {"auth": base64.b64encode(pair).decode()}}}
        )
    )

    anonymous = _wasmfleet("push", module, str(ref))
    assert anonymous.returncode == 1
    assert "requires credentials" in anonymous.stderr

    from_config = _wasmfleet("push", module, str(ref), "--docker-config", str(config))
    assert from_config.returncode == 0, from_config.stderr
    from_stdin = _wasmfleet(
        "push",
        module,
        str(ref),
        "--username",
        registry_basic_auth.username,
        "--password-stdin",
        stdin=registry_basic_auth.password + "\n",
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_config.stdout
    assert registry_basic_auth.password not in from_stdin.stdout + from_stdin.stderr


def _get(url: str) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": formats.OCI_MANIFEST})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body


async def test_the_older_wasm_to_oci_layer_type_is_pulled(
    wasm_modules: dict[str, Path], registry: Registry, client: RegistryClient, store: ModuleStore
) -> None:
    module = wasm_modules["hello-rust"].read_bytes()
    ref = _ref(registry, "wasm-to-oci")
    digest = await _push_manifest(
        client,
        ref,
        config=b"{}",
        config_type="application/vnd.wasm.config.v1+json",
        layers=[(formats.WASM_TO_OCI_LAYER, module)],
    )
    pulled = await store.pull(ref.with_digest(digest))
    assert pulled.path.read_bytes() == module
    assert pulled.manifest_digest == digest


async def test_a_wasm_file_inside_a_gzipped_image_layer_is_pulled(
    wasm_modules: dict[str, Path], registry: Registry, client: RegistryClient, store: ModuleStore
) -> None:
    module = wasm_modules["hello-c"].read_bytes()
    decoy = wasm_modules["hello-rust"].read_bytes()
    ref = _ref(registry, "image-layer")
    config = json.dumps(
        {"architecture": "wasm", "os": "wasip1", "config": {"Entrypoint": ["/app/hello.wasm"]}}
    ).encode()
    digest = await _push_manifest(
        client,
        ref,
        config=config,
        config_type=formats.OCI_IMAGE_CONFIG,
        layers=[
            (
                formats.OCI_LAYER_TAR_GZIP,
                _image_layer({"etc/motd": b"hi", "lib/decoy.wasm": decoy}),
            ),
            (formats.OCI_LAYER_TAR_GZIP, _image_layer({"app/hello.wasm": module})),
        ],
    )
    pulled = await store.pull(ref.with_digest(digest))
    assert pulled.path.read_bytes() == module
    assert pulled.module_digest == sha256_digest(module)


async def test_an_image_layer_with_a_path_escape_is_refused_and_nothing_is_cached(
    registry: Registry, client: RegistryClient, store: ModuleStore
) -> None:
    ref = _ref(registry, "hostile-layer")
    digest = await _push_manifest(
        client,
        ref,
        config=b'{"config": {}}',
        config_type=formats.OCI_IMAGE_CONFIG,
        layers=[(formats.OCI_LAYER_TAR_GZIP, _image_layer({"../../escape.wasm": b"\0asm"}))],
    )
    with pytest.raises(errors.UnsupportedArtifact, match=r"'\.\.'"):
        await store.pull(ref.with_digest(digest))
    assert store.module_digests() == []
    assert list((store.root / "work").iterdir()) == []


async def test_an_image_index_with_a_wasip1_entry_pulls_that_entry(
    wasm_modules: dict[str, Path], registry: Registry, client: RegistryClient, store: ModuleStore
) -> None:
    module = wasm_modules["hello-go"].read_bytes()
    ref = _ref(registry, "index")
    wasm_manifest = (await push_module(client=client, reference=ref, module=module)).manifest_digest
    linux_digest = await _push_manifest(
        client,
        ref,
        config=b'{"config": {}}',
        config_type=formats.OCI_IMAGE_CONFIG,
        layers=[(formats.OCI_LAYER_TAR_GZIP, _image_layer({"bin/hello": b"ELF"}))],
    )
    entries = []
    for digest, platform in (
        (linux_digest, {"os": "linux", "architecture": "amd64"}),
        (wasm_manifest, {"os": "wasip1", "architecture": "wasm"}),
    ):
        body = await client.fetch_manifest(reference=ref.with_digest(digest))
        entries.append(
            {
                "mediaType": formats.OCI_MANIFEST,
                "digest": digest,
                "size": len(body.body),
                "platform": platform,
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": formats.OCI_INDEX, "manifests": entries}
    ).encode()
    index_digest = await client.push_manifest(
        reference=ref, body=index, media_type=formats.OCI_INDEX
    )

    pulled = await store.pull(ref, policy=PullPolicy.ALWAYS)
    assert pulled.manifest_digest == index_digest
    assert pulled.path.read_bytes() == module


async def test_an_artifact_that_is_not_a_module_is_refused_naming_its_media_types(
    registry: Registry, client: RegistryClient, store: ModuleStore
) -> None:
    ref = _ref(registry, "helm")
    digest = await _push_manifest(
        client,
        ref,
        config=b"{}",
        config_type="application/vnd.cncf.helm.config.v1+json",
        layers=[("application/vnd.cncf.helm.chart.content.v1.tar+gzip", b"chart")],
    )
    with pytest.raises(errors.UnsupportedArtifact, match=r"vnd\.cncf\.helm\.config"):
        await store.pull(ref.with_digest(digest))


async def test_a_wasm_layer_that_is_not_webassembly_is_refused(
    registry: Registry, client: RegistryClient, store: ModuleStore
) -> None:
    ref = _ref(registry, "not-wasm")
    digest = await _push_manifest(
        client,
        ref,
        config=b"{}",
        config_type=formats.WASM_CONFIG,
        layers=[(formats.WASM_LAYER, b"#!/bin/sh\necho gotcha\n")],
    )
    with pytest.raises(errors.UnsupportedArtifact, match="not a WebAssembly binary"):
        await store.pull(ref.with_digest(digest))
    assert store.module_digests() == []


async def test_an_unknown_tag_is_manifest_unknown(registry: Registry, store: ModuleStore) -> None:
    with pytest.raises(errors.ManifestUnknown):
        await store.pull(_ref(registry, "missing"))
