"""A live registry that misbehaves: every pull ends with the right module or a clear refusal.

Each test runs a real aiohttp server on 127.0.0.1 (the harness's `LoopbackProxy`, with every
request answered here instead of forwarded) that speaks the Distribution API for one real
module and lies in one way: content that does not hash to its digest, sizes and
``Content-Length`` that do not match, redirects to other origins and in circles, manifests too
large to hold and, in the property test, any status, headers and body at all. The client and
the store run unmodified against it over real HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wasmfleet_agent.store import ModuleStore, PulledModule, PullPolicy
from wasmfleet_common.backoff import Backoff
from wasmfleet_harness.loopback import LoopbackProxy
from wasmfleet_harness.processes import free_port
from wasmfleet_oci import errors, formats
from wasmfleet_oci.auth import Credentials
from wasmfleet_oci.client import ClientSettings, RegistryClient, sha256_digest
from wasmfleet_oci.push import render_wasm_config, render_wasm_manifest
from wasmfleet_oci.reference import Reference, parse_reference

MiB = 1024 * 1024
REPOSITORY = "hostile/app"
TAG = "v1"
FAST = ClientSettings(
    max_attempts=2,
    backoff=Backoff(base=0.001, cap=0.01),
    connect_timeout=2.0,
    read_timeout=5.0,
    max_redirects=3,
)
PULL_DEADLINE = 20.0
"""Seconds a pull may take against any of these servers before the test calls it a hang."""
CREDENTIALS = Credentials(username="fleet", password="not-for-the-blob-store")
TOKEN = "token-not-for-the-blob-store"
SIGNATURE = "X-Signature=presigned"

T = TypeVar("T")


# -- the artifact and the fake registry ---------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A CNCF Wasm artifact (manifest, config, one module layer) held in memory."""

    module: bytes
    config: bytes
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def module_digest(self) -> str:
        return sha256_digest(self.module)

    @property
    def layer(self) -> formats.Descriptor:
        return formats.Descriptor(
            media_type=formats.WASM_LAYER, digest=self.module_digest, size=len(self.module)
        )

    @property
    def config_descriptor(self) -> formats.Descriptor:
        return formats.Descriptor(
            media_type=formats.WASM_CONFIG, digest=sha256_digest(self.config), size=len(self.config)
        )

    def blob(self, digest: str) -> bytes | None:
        blobs = {self.module_digest: self.module, sha256_digest(self.config): self.config}
        return blobs.get(digest)


def _artifact(module: bytes, annotations: Mapping[str, str] | None = None) -> Artifact:
    config = render_wasm_config(module_digest=sha256_digest(module))
    described = Artifact(module=module, config=config, manifest=b"")
    manifest = render_wasm_manifest(
        config=described.config_descriptor, layer=described.layer, annotations=annotations
    )
    return Artifact(module=module, config=config, manifest=manifest)


@dataclass(frozen=True)
class Reply:
    """One answer, written as given (a lying ``length`` included) by `_send`."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    length: int | Literal["exact", "chunked"] = "exact"
    """``Content-Length``: the body's, none (chunked), or this number whatever the body is."""


async def _send(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Writes ``reply`` as it is (aiohttp itself cuts a body to a shorter ``Content-Length``);
    like any server, no body after HEAD, 204 or 304."""
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    if reply.length == "chunked":
        response.enable_chunked_encoding()
    elif reply.length == "exact":
        response.content_length = len(reply.body)
    else:
        response.content_length = reply.length
        response.force_close()  # a short body then ends with the connection, as on the wire
    await response.prepare(request)
    if request.method != "HEAD" and reply.status not in (204, 304):
        await response.write(reply.body)
    await response.write_eof()
    return response


def _honest(artifact: Artifact, request: web.Request) -> Reply:
    """What a well-behaved registry answers: the manifest, a blob, a token, or 404."""
    kind, _, name = request.path.removeprefix(f"/v2/{REPOSITORY}/").partition("/")
    if kind == "manifests" and name in (artifact.manifest_digest, TAG):
        digest = artifact.manifest_digest
        headers = {"Content-Type": formats.OCI_MANIFEST, "Docker-Content-Digest": digest}
        return Reply(body=artifact.manifest, headers=headers)
    blob = artifact.blob(name) if kind == "blobs" else None
    if blob is not None:
        return Reply(body=blob, headers={"Content-Type": "application/octet-stream"})
    if request.path == "/token":
        body = json.dumps({"token": TOKEN}).encode()
        return Reply(body=body, headers={"Content-Type": "application/json"})
    unknown = b'{"errors": [{"code": "NAME_UNKNOWN", "message": "nothing here"}]}'
    return Reply(status=404, body=unknown, headers={"Content-Type": "application/json"})


Hostile = Callable[[web.Request], Awaitable[Reply | None]]
"""Answers a request with a lie (a `Reply`), or lets the registry answer honestly (None)."""


class FakeRegistry:
    """A registry on loopback serving one `Artifact`, with ``hostile`` answering first.

    It is a `LoopbackProxy` with nothing behind it: the harness's server and request log, with
    every request answered here. With ``auth``, requests without `CREDENTIALS` (``basic``) or
    the token its ``/token`` realm hands out for them (``bearer``) get a challenge first.
    """

    def __init__(
        self,
        artifact: Artifact,
        hostile: Hostile | None = None,
        *,
        auth: Literal["basic", "bearer"] | None = None,
    ) -> None:
        self.artifact = artifact
        self.hostile = hostile
        self.auth = auth
        # Never contacted: `_answer` answers every request itself.
        self.proxy = LoopbackProxy(f"http://127.0.0.1:{free_port()}", intercept=self._answer)

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def reference(self) -> Reference:
        """The artifact, pinned by digest, as served here."""
        return parse_reference(f"{self.proxy.host}/{REPOSITORY}@{self.artifact.manifest_digest}")

    @property
    def tagged(self) -> Reference:
        """The artifact by its tag, as served here."""
        return parse_reference(f"{self.proxy.host}/{REPOSITORY}:{TAG}")

    def requests(self, method: str, path_part: str = "") -> int:
        return len(self.proxy.requests(method, path_part))

    async def __aenter__(self) -> FakeRegistry:
        await self.proxy.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.proxy.stop()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.auth is not None and request.headers.get("Authorization") != self._expected(
            request
        ):
            challenge = {
                "basic": 'Basic realm="fake"',
                "bearer": f'Bearer realm="{self.url}/token",service="fake"',
            }
            headers = {"WWW-Authenticate": challenge[self.auth]}
            return await _send(request, Reply(401, headers=headers))
        reply = await self.hostile(request) if self.hostile is not None else None
        return await _send(request, reply if reply is not None else _honest(self.artifact, request))

    def _expected(self, request: web.Request) -> str:
        """The ``Authorization`` this request needs (the token realm takes the credentials)."""
        if self.auth == "bearer" and request.path != "/token":
            return f"Bearer {TOKEN}"
        return CREDENTIALS.basic_header()


def _on(method: str, path_part: str, reply: Callable[[web.Request], Reply]) -> Hostile:
    """Lies with ``reply`` to every ``method`` request whose path holds ``path_part``."""

    async def hostile(request: web.Request) -> Reply | None:
        return reply(request) if request.method == method and path_part in request.path else None

    return hostile


# -- fixtures and helpers -----------------------------------------------------------------------


def _fast_client() -> RegistryClient:
    return RegistryClient(settings=FAST)


@pytest.fixture(scope="module")
def artifact(wasm_modules: dict[str, Path]) -> Artifact:
    return _artifact(wasm_modules["hello-c"].read_bytes())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ModuleStore]:
    module_store = ModuleStore(tmp_path / "cache", 64 * MiB, client_factory=_fast_client)
    yield module_store
    await module_store.close()


async def _within_deadline(pull: Awaitable[T]) -> T:
    """``pull``'s result; a pull that outlasts `PULL_DEADLINE` fails the test as a hang."""
    return await asyncio.wait_for(pull, PULL_DEADLINE)


async def _pulled_or_refused(pull: Awaitable[PulledModule]) -> PulledModule | errors.RegistryError:
    """The pulled module, or the `errors.RegistryError` the pull raised; any other exception
    (a hang included, as `TimeoutError`) propagates and fails the test."""
    try:
        return await _within_deadline(pull)
    except errors.RegistryError as error:
        return error


def _assert_nothing_kept(store: ModuleStore) -> None:
    assert store.module_digests() == []
    partial = [p for p in store.root.rglob("*") if p.name.startswith(".partial-")]
    assert partial + list((store.root / "work").iterdir()) == []


def _files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def _flipped(data: bytes) -> bytes:
    """``data`` with its last byte changed: same size, another digest."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


# -- content that does not match its digest or size ---------------------------------------------


def _tampered_manifest(artifact: Artifact) -> Callable[[web.Request], Reply]:
    """A valid manifest for the same module, but not the one the digest names, served under
    that digest's ``Docker-Content-Digest`` as if it were."""
    other = _artifact(artifact.module, annotations={"injected": "by the registry"})
    headers = {
        "Content-Type": formats.OCI_MANIFEST,
        "Docker-Content-Digest": artifact.manifest_digest,
    }
    return lambda _: Reply(body=other.manifest, headers=headers)


def _truncated_manifest(artifact: Artifact) -> Callable[[web.Request], Reply]:
    """The right manifest, but a ``Content-Length`` that cuts it short."""
    length = len(artifact.manifest) // 2
    return lambda _: Reply(body=artifact.manifest, length=length)


@pytest.mark.parametrize("lie", [_tampered_manifest, _truncated_manifest])
async def test_a_manifest_that_does_not_hash_to_the_requested_digest_is_refused(
    artifact: Artifact,
    store: ModuleStore,
    lie: Callable[[Artifact], Callable[[web.Request], Reply]],
) -> None:
    """Whatever the registry claims in its headers, the manifest's own bytes must hash to the
    digest pulled; otherwise nothing it names is fetched."""
    async with FakeRegistry(artifact, _on("GET", "/manifests/", lie(artifact))) as registry:
        with pytest.raises(errors.DigestMismatch, match=r"manifest served for \S+ hashes to"):
            await _within_deadline(store.pull(registry.reference))
    assert registry.requests("GET", "/blobs/") == 0
    _assert_nothing_kept(store)


async def test_a_blob_whose_bytes_do_not_hash_to_its_digest_is_refused_and_not_retried(
    artifact: Artifact, store: ModuleStore
) -> None:
    """A layer of the right size but other bytes is refused once: a lie is not transient."""
    flipped = Reply(body=_flipped(artifact.module))
    async with FakeRegistry(artifact, _on("GET", "/blobs/", lambda _: flipped)) as registry:
        with pytest.raises(errors.DigestMismatch, match="hashes to"):
            await _within_deadline(store.pull(registry.reference))
    assert registry.requests("GET", "/blobs/") == 1
    _assert_nothing_kept(store)


@pytest.mark.parametrize("length", ["exact", "chunked"], ids=["announced", "chunked"])
@pytest.mark.parametrize("change", [-1, +1], ids=["shorter", "longer"])
async def test_a_blob_of_another_size_than_its_descriptor_is_refused(
    artifact: Artifact, store: ModuleStore, change: int, length: Literal["exact", "chunked"]
) -> None:
    """A layer one byte shorter or longer than its descriptor says is refused, whether its
    ``Content-Length`` announces the wrong size or it streams without one."""
    body = artifact.module[:-1] if change < 0 else artifact.module + b"\0"
    reply = Reply(body=body, length=length)
    async with FakeRegistry(artifact, _on("GET", "/blobs/", lambda _: reply)) as registry:
        with pytest.raises(errors.DigestMismatch, match=f"{len(artifact.module)}"):
            await _within_deadline(store.pull(registry.reference))
    _assert_nothing_kept(store)


@pytest.mark.parametrize("what", ["manifest", "config", "layer"])
async def test_a_content_length_promising_more_than_is_sent_is_a_registry_error(
    artifact: Artifact, tmp_path: Path, what: str
) -> None:
    """A body that ends (with the connection) before the ``Content-Length`` it announced is a
    broken transfer: reported as `errors.RegistryUnavailable`, never as aiohttp's own error,
    for manifests, small blobs read into memory and streamed layers alike."""
    body = {"manifest": artifact.manifest, "config": artifact.config, "layer": artifact.module}
    path_part = "/manifests/" if what == "manifest" else "/blobs/"
    reply = Reply(body=body[what][: len(body[what]) // 2], length=len(body[what]))
    async with (
        FakeRegistry(artifact, _on("GET", path_part, lambda _: reply)) as registry,
        _fast_client() as client,
    ):
        ref = registry.reference
        fetch: Awaitable[object]
        if what == "manifest":
            fetch = client.fetch_manifest(reference=ref)
        elif what == "config":
            fetch = client.fetch_blob_bytes(reference=ref, descriptor=artifact.config_descriptor)
        else:
            destination = tmp_path / "module.wasm"
            fetch = client.fetch_blob(
                reference=ref, descriptor=artifact.layer, destination=destination
            )
        with pytest.raises(errors.RegistryUnavailable, match=r"\S"):
            await _within_deadline(fetch)
    assert 1 <= registry.requests("GET", path_part) <= FAST.max_attempts
    assert _files(tmp_path) == []  # no partial download left behind


# -- redirects ----------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "bearer"])
@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_blob_redirected_to_another_loopback_origin_is_followed_without_credentials(
    artifact: Artifact, store: ModuleStore, status: int, auth: Literal["basic", "bearer"]
) -> None:
    """Registries send blob downloads to storage elsewhere: the redirect is followed, and the
    registry's ``Authorization`` (the password, or the token bought with it) stays with the
    registry: the same host on another port is another origin."""
    async with FakeRegistry(artifact) as storage:

        def to_storage(request: web.Request) -> Reply:
            location = f"{storage.url}{request.path}?{SIGNATURE}"
            return Reply(status=status, headers={"Location": location})

        async with FakeRegistry(artifact, _on("GET", "/blobs/", to_storage), auth=auth) as registry:
            ref = registry.reference
            pulled = await _within_deadline(store.pull(ref, credentials=CREDENTIALS))

    assert pulled.path.read_bytes() == artifact.module
    registry_blobs = registry.proxy.requests("GET", "/blobs/")
    sent = CREDENTIALS.basic_header() if auth == "basic" else f"Bearer {TOKEN}"
    assert [r.authorization for r in registry_blobs] == [sent]
    stored = storage.proxy.requests("GET", "/blobs/")
    assert [(r.query, r.authorization) for r in stored] == [(SIGNATURE, None)]


@pytest.mark.parametrize("shape", ["to-itself", "ping-pong"])
async def test_a_redirect_loop_ends_with_a_clear_error_after_max_redirects(
    artifact: Artifact, store: ModuleStore, shape: str
) -> None:
    """A blob redirected in circles (to the same URL, or back and forth between two servers)
    ends after ``max_redirects`` hops with an error saying so, and is not retried."""
    peers: dict[str, FakeRegistry] = {}

    def to(name: str) -> Callable[[web.Request], Reply]:
        return lambda request: Reply(
            status=307, headers={"Location": f"{peers[name].url}{request.path}"}
        )

    onwards = "second" if shape == "ping-pong" else "first"
    async with (
        FakeRegistry(artifact, _on("GET", "/blobs/", to(onwards))) as first,
        FakeRegistry(artifact, _on("GET", "/blobs/", to("first"))) as second,
    ):
        peers.update(first=first, second=second)
        with pytest.raises(errors.RegistryError, match="redirected more than 3 times"):
            await _within_deadline(store.pull(first.reference))
    hops = first.requests("GET", "/blobs/") + second.requests("GET", "/blobs/")
    assert hops == FAST.max_redirects + 1
    assert second.requests("GET", "/blobs/") == (2 if shape == "ping-pong" else 0)
    _assert_nothing_kept(store)


@pytest.mark.parametrize(
    "location",
    [
        "http://[::1",  # an IPv6 literal never closed
        "http://127.0.0.1:99999/bucket",  # no such port
        "http://127.0.0.1:http/bucket",  # a port that is not a number
        "file:///etc/passwd",
        "http://storage.example/bucket",  # plain HTTP to a host that is not insecure-listed
    ],
)
async def test_a_redirect_to_a_malformed_or_forbidden_location_is_a_registry_error(
    artifact: Artifact, store: ModuleStore, location: str
) -> None:
    """A ``Location`` that does not parse, is not HTTP, or is plain HTTP to a host not listed as
    insecure is refused as `errors.RegistryError` naming the redirecting URL (not the target,
    which may carry a signed query); never followed, never a crash."""
    moved = Reply(status=307, headers={"Location": location})
    async with FakeRegistry(artifact, _on("GET", "/blobs/", lambda _: moved)) as registry:
        with pytest.raises(errors.RegistryError, match="redirected") as refused:
            await _within_deadline(store.pull(registry.reference))
    assert registry.url in str(refused.value)
    _assert_nothing_kept(store)


@pytest.mark.parametrize(
    ("location", "refusal"),
    [
        ("storage", "plain HTTP"),  # plain HTTP to another origin, not insecure-listed
        ("http://[::1", "malformed"),
        ("file:///etc/passwd", "non-HTTP"),
    ],
)
async def test_an_upload_sent_to_a_forbidden_location_is_refused_before_anything_goes_there(
    artifact: Artifact, location: str, refusal: str
) -> None:
    """The ``Location`` a registry answers a new blob upload with is held to the rules of a
    redirect: an http(s) URL, plain HTTP only to registries allowed it. Otherwise the push
    ends as `errors.RegistryError` naming the registry's URL, and no byte is sent anywhere.
    Loopback is not trusted by default here, so only the registry itself may use plain HTTP."""
    async with FakeRegistry(artifact) as storage:
        target = f"{storage.url}/upload" if location == "storage" else location
        started = Reply(status=202, headers={"Location": target})
        async with FakeRegistry(
            artifact, _on("POST", "/blobs/uploads/", lambda _: started)
        ) as registry:
            settings = dataclasses.replace(
                FAST,
                plain_http_for_loopback=False,
                insecure_registries=frozenset({registry.proxy.host}),
            )
            async with RegistryClient(settings=settings) as client:
                with pytest.raises(errors.RegistryError, match=refusal) as refused:
                    await _within_deadline(
                        client.push_blob(reference=registry.tagged, data=b"\0asm module")
                    )
    assert registry.url in str(refused.value)
    assert registry.requests("POST", "/blobs/uploads/") == 1
    assert registry.requests("PUT") == storage.requests("PUT") == 0


@pytest.mark.parametrize(
    "realm",
    [
        "http://[::1",
        "https://127.0.0.1:99999/token",
        "ftp://127.0.0.1/token",
        "http://auth.example/token",  # plain HTTP to a host that is not insecure-listed
    ],
)
async def test_a_bearer_challenge_with_a_malformed_realm_is_unauthorized(
    artifact: Artifact, store: ModuleStore, realm: str
) -> None:
    """A Bearer challenge whose realm is no usable http(s) URL (malformed, another scheme, or
    plain HTTP off loopback) ends the pull at once as `errors.Unauthorized`, not retried."""
    challenge = Reply(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})
    async with FakeRegistry(artifact, _on("GET", "/manifests/", lambda _: challenge)) as registry:
        with pytest.raises(errors.Unauthorized, match="realm"):
            await _within_deadline(store.pull(registry.reference, credentials=CREDENTIALS))
    assert registry.requests("GET", "/manifests/") == 1
    _assert_nothing_kept(store)


# -- manifests too large to hold ----------------------------------------------------------------

ENDLESS = 1024 * MiB
"""Where the "endless" manifest stream stops if the client never hangs up."""


class Firehose:
    """Streams a manifest of ``size`` bytes (``None``: endless, no ``Content-Length``) and
    counts how much of it the client let onto the wire before hanging up."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.sent = 0
        self.finished = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET" or "/manifests/" not in request.path:
            return await _send(request, Reply(status=404))
        response = web.StreamResponse(headers={"Content-Type": formats.OCI_MANIFEST})
        if self.size is None:
            response.enable_chunked_encoding()
        else:
            response.content_length = self.size
        chunk = b" " * (64 * 1024)
        try:
            await response.prepare(request)
            while self.sent < (self.size if self.size is not None else ENDLESS):
                await response.write(chunk)
                self.sent += len(chunk)
        except ConnectionError:
            pass  # the client hung up, as it should
        finally:
            self.finished.set()
        return response


@pytest.mark.parametrize("size", [50 * MiB, None], ids=["50MiB", "endless"])
async def test_a_huge_manifest_is_refused_at_the_cap_without_being_read_whole(
    artifact: Artifact, store: ModuleStore, size: int | None
) -> None:
    """A manifest over ``max_manifest_bytes`` (4 MiB, the size the Distribution spec tells
    registries to accept at least) is refused with `errors.ModuleTooLarge` naming the cap, and
    the client hangs up there: far less than the whole body ever leaves the server."""
    firehose = Firehose(size)
    async with LoopbackProxy(f"http://127.0.0.1:{free_port()}", intercept=firehose) as server:
        ref = parse_reference(f"{server.host}/{REPOSITORY}@{artifact.manifest_digest}")
        with pytest.raises(errors.ModuleTooLarge, match=f"more than {FAST.max_manifest_bytes}"):
            await _within_deadline(store.pull(ref))
        await asyncio.wait_for(firehose.finished.wait(), PULL_DEADLINE)
    assert FAST.max_manifest_bytes == 4 * MiB
    assert FAST.max_manifest_bytes < firehose.sent < 25 * MiB
    assert len(server.requests("GET", "/manifests/")) == 1
    _assert_nothing_kept(store)


# -- any answer at all --------------------------------------------------------------------------

# Placeholders in generated header values, filled in per request: this server's URL and
# host:port, a port nobody listens on, the path asked for, and the artifact's digests.
_SELF, _HOST, _CLOSED, _PATH = "<self>", "<host>", "<closed>", "<path>"
_MANIFEST, _LAYER = "<manifest>", "<layer>"
# Free text has no ':', so it never names a scheme: no generated value sends the client to
# DNS or to a host off this machine (plain-HTTP ones are refused before any lookup).
_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters=":"), max_size=40
)
_STATUSES = st.one_of(
    st.sampled_from([200, 201, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404]),
    st.sampled_from([405, 416, 429, 500, 502, 503, 504]),
    st.integers(min_value=200, max_value=599),
)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.one_of(
            st.sampled_from([*sorted(formats.MANIFEST_ACCEPT), formats.WASM_LAYER]),
            st.sampled_from(
                ["application/json", "application/vnd.docker.distribution.manifest.v1+prettyjws"]
            ),
            _TEXT,
        ),
        "Docker-Content-Digest": st.one_of(
            st.sampled_from([_MANIFEST, _LAYER, f"sha256:{'0' * 64}", f"sha512:{'ab' * 64}"]),
            st.sampled_from(["sha256:", "sha256:XYZ", "md5:d41d8cd98f00b204e9800998ecf8427e"]),
            _TEXT,
        ),
        "Location": st.one_of(
            st.sampled_from([f"{_SELF}{_PATH}", f"{_SELF}/v2/{REPOSITORY}/blobs/{_LAYER}"]),
            st.sampled_from([f"{_SELF}/v2/{REPOSITORY}/manifests/{_MANIFEST}", f"{_SELF}/token"]),
            st.sampled_from([f"http://127.0.0.1:{_CLOSED}/bucket", f"https://{_HOST}/tls"]),
            st.sampled_from(["http://[::1", "http://127.0.0.1:99999/", "http://127.0.0.1:x/"]),
            st.sampled_from(["file:///etc/passwd", "http://storage.example/bucket", ""]),
            _TEXT,
        ),
        "Retry-After": st.one_of(
            st.sampled_from(["0", "1", "-1", "0.5", "nan", "inf", "-inf", "1e400", ""]),
            st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT"]),
            st.floats(allow_nan=True, allow_infinity=True).map(str),
            _TEXT,
        ),
        "WWW-Authenticate": st.one_of(
            st.sampled_from(['Basic realm="registry"', f'Bearer realm="{_SELF}/token"']),
            st.sampled_from([f'Bearer realm="{_SELF}/token",service="fake",scope="x:y:pull"']),
            st.sampled_from([f'Bearer realm="http://127.0.0.1:{_CLOSED}/token"']),
            st.sampled_from(['Bearer realm="http://[::1"', 'Bearer realm="ftp://127.0.0.1/"']),
            st.sampled_from(['Bearer realm="http://auth.example/token"', "Bearer", "Negotiate"]),
            st.sampled_from([f'Basic realm="r", Bearer realm="{_SELF}/token"', 'Bearer x="']),
            _TEXT,
        ),
    },
)
BodyKind = Literal["honest", "flipped", "shorter", "longer", "index", "other-manifest"]
_BODIES = st.one_of(
    st.sampled_from(["honest", "flipped", "shorter", "longer", "index", "other-manifest"]),
    st.binary(max_size=512),
)
_LENGTHS = st.one_of(
    st.sampled_from(["exact", "chunked"]), st.integers(min_value=0, max_value=128 * 1024)
)


@dataclass(frozen=True)
class Answer:
    """One generated answer: ``body`` is bytes, or a kind of body `Scripted` makes."""

    status: int
    headers: Mapping[str, str]
    body: bytes | BodyKind
    length: int | Literal["exact", "chunked"]


_SCRIPTS = st.lists(
    st.one_of(st.none(), st.builds(Answer, _STATUSES, _HEADERS, _BODIES, _LENGTHS)), max_size=6
)
# Requests one pull may make, at most: up to 6 exchanges (HEAD, its GET fallback, the manifest,
# an index's child, and 2 blob downloads), each up to 3 rounds (2 attempts and a challenge) of
# up to 2 token requests and `max_redirects` + 1 hops.
REQUEST_BOUND = 6 * 3 * (FAST.max_attempts + FAST.max_redirects + 1)


def _index(artifact: Artifact) -> bytes:
    """An image index whose Wasm entry is the artifact's manifest."""
    entry = {
        "mediaType": formats.OCI_MANIFEST,
        "digest": artifact.manifest_digest,
        "size": len(artifact.manifest),
        "platform": {"os": "wasip1", "architecture": "wasm"},
    }
    document = {"schemaVersion": 2, "mediaType": formats.OCI_INDEX, "manifests": [entry]}
    return json.dumps(document).encode()


class Scripted:
    """Answers the requests, in order, from a generated script (None: the honest answer);
    every request after the script runs out gets the honest answer."""

    def __init__(self, artifact: Artifact, script: list[Answer | None]) -> None:
        self.artifact = artifact
        self.script = list(script)
        self.closed = free_port()
        self.registry = FakeRegistry(artifact, self)
        self.made: dict[str, bytes] = {
            "index": _index(artifact),
            "other-manifest": _artifact(_flipped(artifact.module)).manifest,
        }

    def _fill(self, request: web.Request, value: str) -> str:
        for placeholder, actual in (
            (_SELF, self.registry.url),
            (_HOST, self.registry.proxy.host),
            (_CLOSED, str(self.closed)),
            (_PATH, request.path),
            (_MANIFEST, self.artifact.manifest_digest),
            (_LAYER, self.artifact.module_digest),
        ):
            value = value.replace(placeholder, actual)
        return value

    def _body(self, kind: bytes | BodyKind, honest: bytes) -> bytes:
        if isinstance(kind, bytes):
            return kind
        if kind in self.made:
            return self.made[kind]
        changed = {"flipped": _flipped(honest) if honest else honest, "shorter": honest[:-1]}
        return {**changed, "longer": honest + b"\0"}.get(kind, honest)

    async def __call__(self, request: web.Request) -> Reply | None:
        answer = self.script.pop(0) if self.script else None
        if answer is None:
            return None
        honest = _honest(self.artifact, request)
        headers = {name: self._fill(request, value) for name, value in answer.headers.items()}
        return Reply(
            status=answer.status,
            body=self._body(answer.body, honest.body),
            headers={**honest.headers, **headers},
            length=answer.length,
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=_SCRIPTS,
    by_tag=st.booleans(),
    policy=st.sampled_from([PullPolicy.IF_NOT_PRESENT, PullPolicy.ALWAYS]),
    credentials=st.sampled_from([None, CREDENTIALS]),
)
async def test_any_registry_answer_yields_the_right_module_or_a_registry_error(
    wasm_modules: dict[str, Path],
    script: list[Answer | None],
    by_tag: bool,
    policy: PullPolicy,
    credentials: Credentials | None,
) -> None:
    """Whatever status, headers and body each request gets, a pull by digest returns exactly
    the module that digest pins (by tag: a module whose bytes hash to the digest the pull
    reports), or raises `errors.RegistryError` with a message: never another exception, never
    a hang, never more than `REQUEST_BOUND` requests, nothing half-cached."""
    artifact = _artifact(wasm_modules["hello-c"].read_bytes())  # not a fixture: a short repr
    scripted = Scripted(artifact, script)
    with tempfile.TemporaryDirectory() as scratch:
        store = ModuleStore(Path(scratch) / "cache", 64 * MiB, client_factory=_fast_client)
        async with scripted.registry as registry:
            ref = registry.tagged if by_tag else registry.reference
            try:
                outcome = await _pulled_or_refused(
                    store.pull(ref, policy=policy, credentials=credentials)
                )
            finally:
                await store.close()
            if isinstance(outcome, errors.RegistryError):
                event(f"refused: {type(outcome).__name__}")
                assert str(outcome), f"{type(outcome).__name__} without a message"
                _assert_nothing_kept(store)
            else:
                event("pulled")
                module = outcome.path.read_bytes()
                assert sha256_digest(module) == outcome.module_digest
                if not by_tag:
                    assert outcome.manifest_digest == artifact.manifest_digest
                    assert module == artifact.module
        assert len(registry.proxy.seen) <= REQUEST_BOUND
