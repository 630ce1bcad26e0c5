"""Basic auth, the bearer-token flow, custom CAs and redirects, against the real registry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from wasmfleet_agent.store import ModuleStore, PullPolicy
from wasmfleet_harness.loopback import LoopbackProxy
from wasmfleet_harness.pki import CertificateAuthority
from wasmfleet_harness.registry import BasicAuth, Registry, RegistryTls
from wasmfleet_oci import errors
from wasmfleet_oci.auth import Credentials
from wasmfleet_oci.client import ClientSettings, RegistryClient
from wasmfleet_oci.push import push_module
from wasmfleet_oci.reference import Reference, parse_reference

SIGNATURE = "X-Signature=presigned-s3cr3t"


def _ref(host: str, name: str) -> Reference:
    return parse_reference(f"{host}/tests/{name}-{uuid.uuid4().hex[:8]}:v1")


def _credentials(auth: BasicAuth) -> Credentials:
    return Credentials(username=auth.username, password=auth.password)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ModuleStore]:
    module_store = ModuleStore(tmp_path / "cache", 64 * 1024 * 1024)
    yield module_store
    await module_store.close()


async def _push(
    registry_host: str, module: bytes, name: str, credentials: Credentials | None
) -> Reference:
    ref = _ref(registry_host, name)
    async with RegistryClient() as client:
        pushed = await push_module(
            client=client, reference=ref, module=module, credentials=credentials
        )
    return pushed.pinned


# -- Basic --------------------------------------------------------------------------------------


async def test_basic_auth_admits_the_user_and_refuses_anonymous_pulls(
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    store: ModuleStore,
) -> None:
    module = wasm_modules["hello-rust"].read_bytes()
    credentials = _credentials(registry_basic_auth)
    ref = await _push(registry_with_basic_auth.host, module, "basic", credentials)

    with pytest.raises(errors.Unauthorized, match="requires credentials"):
        await store.pull(ref, policy=PullPolicy.ALWAYS)
    wrong = Credentials(username=registry_basic_auth.username, password="not-the-password")
    with pytest.raises(
        errors.Unauthorized, match=r"refused access to .* with the credentials given"
    ) as refused:
        await store.pull(ref, policy=PullPolicy.ALWAYS, credentials=wrong)
    assert "not-the-password" not in str(refused.value)
    assert store.module_digests() == []

    pulled = await store.pull(ref, policy=PullPolicy.ALWAYS, credentials=credentials)
    assert pulled.path.read_bytes() == module


async def test_an_anonymous_push_to_a_basic_auth_registry_is_refused(
    registry_with_basic_auth: Registry, wasm_modules: dict[str, Path]
) -> None:
    with pytest.raises(errors.Unauthorized):
        await _push(
            registry_with_basic_auth.host, wasm_modules["hello-c"].read_bytes(), "anon", None
        )


# -- Bearer tokens ------------------------------------------------------------------------------


async def test_the_bearer_token_flow_admits_the_user_for_push_and_pull(
    registry_with_token_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    store: ModuleStore,
) -> None:
    tokens = registry_with_token_auth.token_server
    assert tokens is not None
    module = wasm_modules["hello-go"].read_bytes()
    credentials = _credentials(registry_basic_auth)
    ref = await _push(registry_with_token_auth.host, module, "bearer", credentials)

    pulled = await store.pull(ref, policy=PullPolicy.ALWAYS, credentials=credentials)
    assert pulled.path.read_bytes() == module
    granted = [t.granted for t in tokens.issued if t.username == registry_basic_auth.username]
    assert (f"repository:{ref.repository}:pull,push",) in granted
    assert (f"repository:{ref.repository}:pull",) in granted


async def test_the_token_server_refuses_a_wrong_password(
    registry_with_token_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    store: ModuleStore,
) -> None:
    tokens = registry_with_token_auth.token_server
    assert tokens is not None
    ref = await _push(
        registry_with_token_auth.host,
        wasm_modules["hello-c"].read_bytes(),
        "bearer-wrong",
        _credentials(registry_basic_auth),
    )
    refused_before = tokens.refused
    wrong = Credentials(username=registry_basic_auth.username, password="guess")
    with pytest.raises(errors.Unauthorized, match="token service") as refused:
        await store.pull(ref, policy=PullPolicy.ALWAYS, credentials=wrong)
    assert "guess" not in str(refused.value)
    assert tokens.refused == refused_before + 1


async def test_an_anonymous_token_grants_nothing_and_the_pull_is_refused(
    registry_with_token_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    store: ModuleStore,
) -> None:
    tokens = registry_with_token_auth.token_server
    assert tokens is not None
    ref = await _push(
        registry_with_token_auth.host,
        wasm_modules["hello-c"].read_bytes(),
        "bearer-anon",
        _credentials(registry_basic_auth),
    )
    with pytest.raises(errors.Unauthorized, match="refused access"):
        await store.pull(ref, policy=PullPolicy.ALWAYS)
    anonymous = [t for t in tokens.issued if t.username is None and ref.repository in str(t.scopes)]
    assert anonymous
    assert all(t.granted == () for t in anonymous)
    assert store.module_digests() == []


async def test_a_token_is_fetched_once_per_scope_and_never_shared_across_credentials(
    registry_with_token_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    tmp_path: Path,
) -> None:
    tokens = registry_with_token_auth.token_server
    assert tokens is not None
    credentials = _credentials(registry_basic_auth)
    ref = await _push(
        registry_with_token_auth.host,
        wasm_modules["hello-rust"].read_bytes(),
        "bearer-cache",
        credentials,
    )
    pull_scope = f"repository:{ref.repository}:pull"

    def issued(username: str | None) -> int:
        return sum(1 for t in tokens.issued if t.username == username and pull_scope in t.scopes)

    async with RegistryClient() as client:
        # Anonymous first: a token is fetched, and it is not good enough.
        with pytest.raises(errors.Unauthorized):
            await client.fetch_manifest(reference=ref)
        assert issued(None) == 1
        # The same client with credentials must not reuse the anonymous token.
        for _ in range(3):
            await client.fetch_digest(reference=ref, credentials=credentials)
            await client.fetch_manifest(reference=ref, credentials=credentials)
        assert issued(registry_basic_auth.username) == 1
        # ... and an anonymous request must not ride on the credentials' token either.
        with pytest.raises(errors.Unauthorized):
            await client.fetch_manifest(reference=ref)
        assert issued(None) == 2


async def test_a_token_is_reused_until_it_expires_on_the_clock_the_client_is_given(
    registry_with_token_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
) -> None:
    """A token's lifetime (the token server's ``expires_in``: 300 s) is counted on the clock
    the client checks it by: here one far from the real monotonic clock, moved by hand."""
    tokens = registry_with_token_auth.token_server
    assert tokens is not None
    credentials = _credentials(registry_basic_auth)
    ref = await _push(
        registry_with_token_auth.host,
        wasm_modules["hello-c"].read_bytes(),
        "bearer-clock",
        credentials,
    )
    pull_scope = f"repository:{ref.repository}:pull"

    def issued() -> int:
        return sum(1 for t in tokens.issued if pull_scope in t.scopes)

    now = [1_000_000_000.0]
    async with RegistryClient(clock=lambda: now[0]) as client:
        await client.fetch_manifest(reference=ref, credentials=credentials)
        assert issued() == 1
        now[0] += 200  # within the lifetime and its safety margin: the same token serves
        await client.fetch_manifest(reference=ref, credentials=credentials)
        assert issued() == 1
        now[0] += 200  # past it: a new one is bought
        await client.fetch_manifest(reference=ref, credentials=credentials)
        assert issued() == 2


# -- TLS with a custom CA -----------------------------------------------------------------------


async def test_a_registry_with_a_private_ca_is_trusted_only_through_the_ca_bundle(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    authority = CertificateAuthority(tmp_path / "pki")
    serving = authority.issue("registry", common_name="registry", server_hosts=("127.0.0.1",))
    server = Registry(
        tmp_path / "registry-tls",
        tls=RegistryTls(cert=serving.cert, key=serving.key, ca=authority.cert_path),
        name="registry-tls",
    )
    server.start()
    try:
        module = wasm_modules["hello-c"].read_bytes()
        ref = _ref(server.host, "tls")
        trusting = ClientSettings(ca_file=authority.cert_path, plain_http_for_loopback=False)
        async with RegistryClient(settings=trusting) as client:
            pushed = await push_module(client=client, reference=ref, module=module)
            assert (await client.fetch_manifest(reference=pushed.pinned)).digest == (
                pushed.manifest_digest
            )

        untrusting = ClientSettings(plain_http_for_loopback=False)
        async with RegistryClient(settings=untrusting) as client:
            with pytest.raises(errors.RegistryError, match="TLS failed"):
                await client.fetch_digest(reference=ref)
    finally:
        server.stop()


# -- redirects ----------------------------------------------------------------------------------


async def test_credentials_are_not_forwarded_when_a_blob_redirects_to_another_origin(
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    store: ModuleStore,
) -> None:
    module = wasm_modules["hello-rust"].read_bytes()
    credentials = _credentials(registry_basic_auth)
    pushed = await _push(registry_with_basic_auth.host, module, "redirect", credentials)

    # The "blob store" on another port signs its own way into the registry.
    async with LoopbackProxy(
        registry_with_basic_auth.url, upstream_auth=registry_basic_auth
    ) as blob_store:

        async def redirect_blobs(request: web.Request) -> web.StreamResponse | None:
            if request.method == "GET" and "/blobs/" in request.path:
                raise web.HTTPTemporaryRedirect(f"{blob_store.url}{request.path}?{SIGNATURE}")
            return None

        async with LoopbackProxy(registry_with_basic_auth.url, intercept=redirect_blobs) as front:
            ref = parse_reference(f"{front.host}/{pushed.repository}@{pushed.digest}")
            pulled = await store.pull(ref, policy=PullPolicy.ALWAYS, credentials=credentials)

    assert pulled.path.read_bytes() == module
    front_blobs = front.requests("GET", "/blobs/")
    assert front_blobs
    assert all(r.authorization == credentials.basic_header() for r in front_blobs)
    redirected = blob_store.requests("GET", "/blobs/")
    assert [r.query for r in redirected] == [SIGNATURE]
    assert [r.authorization for r in redirected] == [None]


async def test_credentials_are_kept_when_a_redirect_stays_on_the_same_origin(
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    store: ModuleStore,
) -> None:
    module = wasm_modules["hello-c"].read_bytes()
    credentials = _credentials(registry_basic_auth)
    pushed = await _push(registry_with_basic_auth.host, module, "same-origin", credentials)

    async def redirect_once(request: web.Request) -> web.StreamResponse | None:
        if request.method == "GET" and "/blobs/" in request.path and "hop" not in request.query:
            raise web.HTTPTemporaryRedirect(f"{request.path}?hop=1")
        return None

    async with LoopbackProxy(registry_with_basic_auth.url, intercept=redirect_once) as front:
        ref = parse_reference(f"{front.host}/{pushed.repository}@{pushed.digest}")
        pulled = await store.pull(ref, policy=PullPolicy.ALWAYS, credentials=credentials)

    assert pulled.path.read_bytes() == module
    hops = [r for r in front.requests("GET", "/blobs/") if r.query == "hop=1"]
    assert [r.authorization for r in hops] == [credentials.basic_header()]


async def test_a_failing_redirect_target_is_reported_without_its_signed_query(
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    store: ModuleStore,
) -> None:
    credentials = _credentials(registry_basic_auth)
    pushed = await _push(
        registry_with_basic_auth.host, wasm_modules["hello-c"].read_bytes(), "gone", credentials
    )

    async def gone(request: web.Request) -> web.StreamResponse | None:
        raise web.HTTPNotFound()

    async with LoopbackProxy(registry_with_basic_auth.url, intercept=gone) as blob_store:

        async def redirect_blobs(request: web.Request) -> web.StreamResponse | None:
            if request.method == "GET" and "/blobs/" in request.path:
                raise web.HTTPFound(f"{blob_store.url}/bucket/blob?{SIGNATURE}")
            return None

        async with LoopbackProxy(registry_with_basic_auth.url, intercept=redirect_blobs) as front:
            ref = parse_reference(f"{front.host}/{pushed.repository}@{pushed.digest}")
            with pytest.raises(errors.BlobUnknown) as missing:
                await store.pull(ref, policy=PullPolicy.ALWAYS, credentials=credentials)
    assert SIGNATURE not in str(missing.value)
    assert "presigned" not in str(missing.value)


# -- a cached private module ----------------------------------------------------------------------


async def test_a_cached_private_module_reaches_only_callers_the_registry_accepts_for_it(
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Tenant A pulls its private module; tenant B names the same digest on the same node.
    Without credentials, or with wrong ones, B is refused though the module is cached; with
    credentials the registry accepts, B is served from the cache; and a restarted agent
    remembers who was accepted (pull policy Never asks no registry)."""
    module = wasm_modules["hello-rust"].read_bytes()
    credentials = _credentials(registry_basic_auth)
    ref = await _push(registry_with_basic_auth.host, module, "private", credentials)
    cache = tmp_path / "cache"
    store = ModuleStore(cache, 64 * 1024 * 1024)
    try:
        first = await store.pull(ref, policy=PullPolicy.IF_NOT_PRESENT, credentials=credentials)
        assert not first.cached

        with pytest.raises(errors.Unauthorized) as anonymous:
            await store.pull(ref, policy=PullPolicy.IF_NOT_PRESENT)
        assert str(anonymous.value).startswith(
            f"{ref} is cached on this node, but the registry does not grant it to anonymous pulls: "
        )
        wrong = Credentials(username=registry_basic_auth.username, password="not-the-password")
        with pytest.raises(errors.Unauthorized, match="does not grant it to these pull cred"):
            await store.pull(ref, policy=PullPolicy.IF_NOT_PRESENT, credentials=wrong)
        with pytest.raises(errors.Unauthorized, match="pull policy Never does not ask it"):
            await store.pull(ref, policy=PullPolicy.NEVER)

        same_login = Credentials(
            username=registry_basic_auth.username, password=credentials.password
        )
        served = await store.pull(ref, policy=PullPolicy.NEVER, credentials=same_login)
        assert served.cached
        assert served.path.read_bytes() == module
    finally:
        await store.close()

    def no_network() -> RegistryClient:
        raise AssertionError("the store asked for a registry client")

    restarted = ModuleStore(cache, 64 * 1024 * 1024, client_factory=no_network)
    try:
        again = await restarted.pull(ref, policy=PullPolicy.NEVER, credentials=credentials)
        assert again.cached
        with pytest.raises(errors.Unauthorized, match="has not been seen to grant it"):
            await restarted.pull(ref, policy=PullPolicy.NEVER)
    finally:
        await restarted.close()
