"""The client retries what is transient, with doubling backoff and a bound, and nothing else."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiohttp import web

from wasmfleet_common.backoff import Backoff
from wasmfleet_harness.loopback import Intercept, LoopbackProxy
from wasmfleet_harness.processes import free_port
from wasmfleet_harness.registry import Registry
from wasmfleet_oci import errors, formats
from wasmfleet_oci.client import ClientSettings, RegistryClient, sha256_digest
from wasmfleet_oci.push import push_module
from wasmfleet_oci.reference import Reference, parse_reference

SETTINGS = ClientSettings(max_attempts=4, backoff=Backoff(base=0.1, cap=5.0))


class RecordingSleep:
    """Stands in for asyncio.sleep: records each backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def _pushed(registry: Registry, module: bytes) -> Reference:
    ref = parse_reference(f"{registry.host}/tests/retry-{uuid.uuid4().hex[:8]}:v1")
    async with RegistryClient() as client:
        return (await push_module(client=client, reference=ref, module=module)).pinned


def _failing_first(
    times: int, status: int, path_part: str, headers: dict[str, str] | None = None
) -> Intercept:
    failures = iter(range(times))

    async def intercept(request: web.Request) -> web.StreamResponse | None:
        if path_part in request.path and next(failures, None) is not None:
            return web.Response(status=status, headers=headers)
        return None

    return intercept


def _through(proxy: LoopbackProxy, ref: Reference) -> Reference:
    return Reference(registry=proxy.host, repository=ref.repository, digest=ref.digest)


async def test_a_registry_answering_503_is_retried_with_doubling_backoff_until_it_recovers(
    registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    ref = await _pushed(registry, wasm_modules["hello-c"].read_bytes())
    sleep = RecordingSleep()
    async with (
        LoopbackProxy(registry.url, intercept=_failing_first(2, 503, "/manifests/")) as proxy,
        RegistryClient(settings=SETTINGS, sleep=sleep) as client,
    ):
        fetched = await client.fetch_manifest(reference=_through(proxy, ref))
    assert fetched.digest == ref.digest
    assert sleep.delays == [0.1, 0.2]
    assert len(proxy.requests("GET", "/manifests/")) == 3


async def test_retries_stop_after_the_configured_number_of_attempts(
    registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    ref = await _pushed(registry, wasm_modules["hello-c"].read_bytes())
    sleep = RecordingSleep()
    async with (
        LoopbackProxy(registry.url, intercept=_failing_first(100, 502, "/manifests/")) as proxy,
        RegistryClient(settings=SETTINGS, sleep=sleep) as client,
    ):
        with pytest.raises(errors.RegistryUnavailable, match="502"):
            await client.fetch_manifest(reference=_through(proxy, ref))
    assert len(proxy.requests("GET", "/manifests/")) == SETTINGS.max_attempts
    assert sleep.delays == [0.1, 0.2, 0.4]


async def test_too_many_requests_waits_as_long_as_retry_after_says(
    registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    ref = await _pushed(registry, wasm_modules["hello-c"].read_bytes())
    sleep = RecordingSleep()
    throttle = _failing_first(1, 429, "/manifests/", headers={"Retry-After": "3"})
    async with (
        LoopbackProxy(registry.url, intercept=throttle) as proxy,
        RegistryClient(settings=SETTINGS, sleep=sleep) as client,
    ):
        await client.fetch_manifest(reference=_through(proxy, ref))
    assert sleep.delays == [3.0]


async def test_a_refused_connection_is_retried_then_reported_as_unavailable() -> None:
    ref = parse_reference(f"127.0.0.1:{free_port()}/tests/nobody-home@sha256:{'2' * 64}")
    sleep = RecordingSleep()
    async with RegistryClient(settings=SETTINGS, sleep=sleep) as client:
        with pytest.raises(errors.RegistryUnavailable, match="failed 4 times"):
            await client.fetch_digest(reference=ref)
    assert sleep.delays == [0.1, 0.2, 0.4]


async def test_a_missing_blob_is_not_retried(registry: Registry) -> None:
    missing = formats.Descriptor(media_type=formats.WASM_LAYER, digest=f"sha256:{'3' * 64}", size=1)
    sleep = RecordingSleep()
    async with (
        LoopbackProxy(registry.url) as proxy,
        RegistryClient(settings=SETTINGS, sleep=sleep) as client,
    ):
        ref = parse_reference(f"{proxy.host}/tests/none:v1")
        with pytest.raises(errors.BlobUnknown):
            await client.fetch_blob_bytes(reference=ref, descriptor=missing)
    assert sleep.delays == []
    assert len(proxy.requests("GET", "/blobs/")) == 1


def _cut_off_once(blob: bytes) -> Intercept:
    done: list[bool] = []

    async def intercept(request: web.Request) -> web.StreamResponse | None:
        if request.method != "GET" or "/blobs/" not in request.path or done:
            return None
        done.append(True)
        response = web.StreamResponse(headers={"Content-Length": str(len(blob))})
        await response.prepare(request)
        await response.write(blob[: len(blob) // 2])
        assert request.transport is not None
        request.transport.close()  # the connection drops halfway through the body
        return response

    return intercept


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_a_download_cut_off_midway_starts_over_and_leaves_no_partial_file(
    registry: Registry, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    module = wasm_modules["hello-go"].read_bytes()
    ref = await _pushed(registry, module)
    descriptor = formats.Descriptor(
        media_type=formats.WASM_LAYER, digest=sha256_digest(module), size=len(module)
    )
    destination = tmp_path / "module.wasm"
    sleep = RecordingSleep()
    async with (
        LoopbackProxy(registry.url, intercept=_cut_off_once(module)) as proxy,
        RegistryClient(settings=SETTINGS, sleep=sleep) as client,
    ):
        await client.fetch_blob(
            reference=_through(proxy, ref), descriptor=descriptor, destination=destination
        )
    assert destination.read_bytes() == module
    assert _names(tmp_path) == ["module.wasm"]  # no partial file left beside it
    assert len(proxy.requests("GET", "/blobs/")) == 2
    assert sleep.delays == [0.1]
