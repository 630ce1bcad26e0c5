"""The module cache: verified downloads, atomic files, shared pulls, eviction, pull policies."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from wasmfleet_agent.store import ModuleStore, PullPolicy
from wasmfleet_common.backoff import Backoff
from wasmfleet_harness.loopback import LoopbackProxy
from wasmfleet_harness.modules import with_custom_section
from wasmfleet_harness.registry import Registry
from wasmfleet_oci import errors
from wasmfleet_oci.auth import Credentials
from wasmfleet_oci.client import ClientSettings, RegistryClient, sha256_digest
from wasmfleet_oci.push import push_module
from wasmfleet_oci.reference import Reference, parse_reference

MiB = 1024 * 1024
FAST = ClientSettings(max_attempts=2, backoff=Backoff(base=0.01, cap=0.02))


def _variant(module: bytes, label: str, padding: int = 0) -> bytes:
    """The same real module with one more custom section: a distinct digest, still valid Wasm."""
    return with_custom_section(module, f"wasmfleet-test-{label}", padding=padding)


def _registry_blob(registry: Registry, digest: str) -> Path:
    hex_digest = digest.split(":", 1)[1]
    return (
        registry.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    )


def _counting_clock() -> Callable[[], float]:
    ticks = itertools.count(1_000_000)
    return lambda: float(next(ticks))


async def _push(registry_host: str, module: bytes, name: str, tag: str = "v1") -> Reference:
    ref = parse_reference(f"{registry_host}/tests/{name}-{uuid.uuid4().hex[:8]}:{tag}")
    async with RegistryClient() as client:
        return (await push_module(client=client, reference=ref, module=module)).pinned


def _no_network() -> RegistryClient:
    raise AssertionError("the store asked for a registry client")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ModuleStore]:
    module_store = ModuleStore(tmp_path / "cache", 64 * MiB)
    yield module_store
    await module_store.close()


def _leftovers(store: ModuleStore) -> list[Path]:
    partial = [p for p in store.root.rglob("*") if p.name.startswith(".partial-")]
    return partial + list((store.root / "work").iterdir())


# -- digests ------------------------------------------------------------------------------------


async def test_a_blob_whose_bytes_do_not_match_its_digest_is_refused_and_not_cached(
    registry: Registry, wasm_modules: dict[str, Path], store: ModuleStore
) -> None:
    module = _variant(wasm_modules["hello-c"].read_bytes(), uuid.uuid4().hex)
    ref = await _push(registry.host, module, "tampered-blob")
    stored = _registry_blob(registry, sha256_digest(module))
    tampered = bytearray(module)
    tampered[-1] ^= 0xFF  # same length, one bit pattern changed
    stored.write_bytes(bytes(tampered))

    with pytest.raises(errors.DigestMismatch, match="hashes to"):
        await store.pull(ref)
    assert store.module_digests() == []
    assert not store.path_of(sha256_digest(module)).exists()
    assert _leftovers(store) == []


async def test_a_blob_longer_than_its_descriptor_is_refused(
    registry: Registry, wasm_modules: dict[str, Path], store: ModuleStore
) -> None:
    module = _variant(wasm_modules["hello-rust"].read_bytes(), uuid.uuid4().hex)
    ref = await _push(registry.host, module, "longer-blob")
    _registry_blob(registry, sha256_digest(module)).write_bytes(module + b"extra")

    with pytest.raises(errors.DigestMismatch, match="bytes"):
        await store.pull(ref)
    assert store.module_digests() == []
    assert _leftovers(store) == []


async def test_a_manifest_that_does_not_hash_to_the_pulled_digest_is_refused(
    registry: Registry, wasm_modules: dict[str, Path], store: ModuleStore
) -> None:
    module = _variant(wasm_modules["hello-c"].read_bytes(), uuid.uuid4().hex)
    ref = await _push(registry.host, module, "tampered-manifest")
    assert ref.digest is not None
    stored = _registry_blob(registry, ref.digest)
    manifest = json.loads(stored.read_bytes())
    manifest["annotations"] = {"injected": "by an attacker"}
    stored.write_bytes(json.dumps(manifest).encode())

    with pytest.raises(errors.DigestMismatch, match="manifest"):
        await store.pull(ref)
    assert store.module_digests() == []


async def test_a_digest_the_registry_does_not_have_is_manifest_unknown(
    registry: Registry, store: ModuleStore
) -> None:
    ref = parse_reference(f"{registry.host}/tests/nothing@sha256:{'0' * 64}")
    with pytest.raises(errors.ManifestUnknown):
        await store.pull(ref)


# -- pull policies and the registry going away ---------------------------------------------------


async def test_a_cached_module_is_served_after_a_restart_with_the_registry_stopped(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    server = Registry(tmp_path / "registry", name="registry-stoppable")
    server.start()
    try:
        module = wasm_modules["hello-go"].read_bytes()
        pinned = await _push(server.host, module, "offline")
        tagged = Reference(registry=pinned.registry, repository=pinned.repository, tag="v1")
        first = ModuleStore(tmp_path / "cache", 64 * MiB)
        try:
            await first.pull(tagged, policy=PullPolicy.IF_NOT_PRESENT)
        finally:
            await first.close()
    finally:
        server.stop()
    assert not server.process.alive()

    # A restarted agent: a new store on the same directory, and no registry to talk to.
    restarted = ModuleStore(tmp_path / "cache", 64 * MiB, client_factory=_no_network)
    try:
        for ref in (pinned, tagged):
            for policy in (PullPolicy.IF_NOT_PRESENT, PullPolicy.NEVER):
                served = await restarted.pull(ref, policy=policy)
                assert served.cached
                assert served.manifest_digest == pinned.digest
                assert served.path.read_bytes() == module
    finally:
        await restarted.close()

    # Always insists on asking the registry, which is really gone.
    strict = ModuleStore(
        tmp_path / "cache", 64 * MiB, client_factory=lambda: RegistryClient(settings=FAST)
    )
    try:
        with pytest.raises(errors.RegistryUnavailable):
            await strict.pull(pinned, policy=PullPolicy.ALWAYS)
    finally:
        await strict.close()


async def test_a_module_an_anonymous_pull_brought_is_served_to_every_caller_from_the_cache(
    registry: Registry, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    """Public: what the registry gave to anyone needs no check for a caller with credentials."""
    module = _variant(wasm_modules["hello-c"].read_bytes(), uuid.uuid4().hex)
    ref = await _push(registry.host, module, "public")
    first = ModuleStore(tmp_path / "cache", 64 * MiB)
    try:
        await first.pull(ref, policy=PullPolicy.IF_NOT_PRESENT)
    finally:
        await first.close()
    offline = ModuleStore(tmp_path / "cache", 64 * MiB, client_factory=_no_network)
    try:
        someone = Credentials(username="someone", password="anything")
        for policy in (PullPolicy.IF_NOT_PRESENT, PullPolicy.NEVER):
            served = await offline.pull(ref, policy=policy, credentials=someone)
            assert served.cached
    finally:
        await offline.close()


async def test_never_with_a_module_that_is_not_cached_says_so(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path / "cache", MiB, client_factory=_no_network)
    ref = parse_reference(f"127.0.0.1:1/tests/absent@sha256:{'1' * 64}")
    with pytest.raises(errors.ModuleNotCached, match="pull policy is Never"):
        await store.pull(ref, policy=PullPolicy.NEVER)
    with pytest.raises(errors.ModuleNotCached):
        await store.pull("127.0.0.1:1/tests/absent:v1", policy="Never")


async def test_always_re_resolves_a_moved_tag_while_if_not_present_keeps_the_cached_one(
    registry: Registry, wasm_modules: dict[str, Path], store: ModuleStore
) -> None:
    first_module = _variant(wasm_modules["hello-c"].read_bytes(), "first")
    second_module = _variant(wasm_modules["hello-c"].read_bytes(), "second")
    first = await _push(registry.host, first_module, "moving")
    tag = Reference(registry=first.registry, repository=first.repository, tag="v1")
    assert (await store.pull(tag)).path.read_bytes() == first_module

    async with RegistryClient() as client:
        second = await push_module(client=client, reference=tag, module=second_module)

    assert (await store.pull(tag, policy=PullPolicy.IF_NOT_PRESENT)).path.read_bytes() == (
        first_module
    )
    moved = await store.pull(tag, policy=PullPolicy.ALWAYS)
    assert moved.manifest_digest == second.manifest_digest
    assert moved.path.read_bytes() == second_module
    assert (await store.pull(tag, policy=PullPolicy.IF_NOT_PRESENT)).manifest_digest == (
        second.manifest_digest
    )


async def test_a_damaged_cached_module_is_pulled_again_when_verification_is_on(
    registry: Registry, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    module = wasm_modules["hello-rust"].read_bytes()
    ref = await _push(registry.host, module, "damaged")
    store = ModuleStore(tmp_path / "cache", 64 * MiB, verify_cached=True)
    try:
        pulled = await store.pull(ref)
        pulled.path.write_bytes(b"\0asm garbage")
        again = await store.pull(ref)
        assert not again.cached
        assert again.path.read_bytes() == module
    finally:
        await store.close()


# -- concurrency and atomicity -------------------------------------------------------------------


async def test_concurrent_pulls_of_one_digest_download_it_once(
    registry: Registry, wasm_modules: dict[str, Path], store: ModuleStore
) -> None:
    module = _variant(wasm_modules["hello-go"].read_bytes(), uuid.uuid4().hex)
    pushed = await _push(registry.host, module, "shared")

    async with LoopbackProxy(registry.url) as proxy:
        ref = parse_reference(f"{proxy.host}/{pushed.repository}@{pushed.digest}")
        results = await asyncio.gather(*(store.pull(ref) for _ in range(8)))

    assert {r.path for r in results} == {store.path_of(sha256_digest(module))}
    assert results[0].path.read_bytes() == module
    assert len(proxy.requests("GET", f"/blobs/{sha256_digest(module)}")) == 1
    assert len(proxy.requests("GET", "/manifests/")) == 1


async def test_leftovers_of_an_interrupted_download_are_removed_and_never_served(
    registry: Registry, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    module = wasm_modules["hello-c"].read_bytes()
    ref = await _push(registry.host, module, "leftovers")
    root = tmp_path / "cache"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    partial = blobs / ".partial-crashed"
    partial.write_bytes(module[: len(module) // 2])
    (root / "work" / "old-download").mkdir(parents=True)

    store = ModuleStore(root, 64 * MiB)
    try:
        assert not partial.exists()
        assert list((root / "work").iterdir()) == []
        assert store.module_digests() == []
        assert (await store.pull(ref)).path.read_bytes() == module
    finally:
        await store.close()


# -- eviction ------------------------------------------------------------------------------------


async def test_eviction_keeps_the_cache_under_its_limit_and_spares_pinned_modules(
    registry: Registry, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    base = wasm_modules["hello-c"].read_bytes()
    modules = {name: _variant(base, f"{name}-{uuid.uuid4().hex}") for name in "ABCD"}
    size = len(modules["A"])
    refs = {
        name: await _push(registry.host, data, f"evict-{name.lower()}")
        for name, data in modules.items()
    }
    limit = 2 * size + size // 2  # room for two modules, not three
    store = ModuleStore(tmp_path / "cache", limit, clock=_counting_clock())
    digest = {name: sha256_digest(data) for name, data in modules.items()}

    def cached() -> set[str]:
        return {name for name in modules if store.path_of(digest[name]).exists()}

    try:
        await store.pull(refs["A"], pin=True)
        await store.pull(refs["B"])
        assert cached() == {"A", "B"}

        await store.pull(refs["C"])  # over the limit: B is the least recently used unpinned
        assert cached() == {"A", "C"}
        assert store.total_bytes <= limit

        await store.pull(refs["D"])  # A is older than C, but pinned
        assert cached() == {"A", "D"}
        assert store.total_bytes <= limit

        store.unpin(digest["A"])
        await store.pull(refs["B"])  # now A is the least recently used and free to go
        assert cached() == {"D", "B"}
        assert store.total_bytes <= limit

        with store.pinned(digest["D"]), store.pinned(digest["B"]):
            over = await store.pull(refs["C"])  # everything else pinned: nothing evicted
            assert cached() == {"B", "C", "D"}
            assert over.path.read_bytes() == modules["C"]
        assert store.evict() == [digest["D"]]
        assert cached() == {"B", "C"}
        assert store.total_bytes <= limit
        evicted_manifest = refs["D"].digest
        assert evicted_manifest is not None
        manifest_record = store.root / "manifests" / "sha256" / evicted_manifest.split(":")[1]
        assert not manifest_record.exists()  # the index forgets what was evicted
    finally:
        await store.close()


async def test_a_module_larger_than_the_whole_cache_is_refused_before_downloading(
    registry: Registry, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    module = wasm_modules["hello-go"].read_bytes()
    ref = await _push(registry.host, module, "too-large")
    store = ModuleStore(tmp_path / "cache", len(module) - 1)
    try:
        with pytest.raises(errors.ModuleTooLarge, match="more than the whole cache"):
            await store.pull(ref)
        assert _leftovers(store) == []
    finally:
        await store.close()
