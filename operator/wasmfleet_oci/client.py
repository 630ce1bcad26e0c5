"""The one place that talks to OCI registries: an async Distribution API client on aiohttp.

It owns the rules that keep a pull safe whatever the registry does: every byte is checked
against the digest and size that named it while it streams; redirects are followed by hand so
credentials never travel to another origin (blob storage behind a redirect gets a bare
request); the ``WWW-Authenticate`` challenge flow starts anonymous and answers Basic or Bearer,
with tokens cached per registry, scope and credentials (so one caller's token never serves
another's request); transient failures (connection errors, 5xx, 429) are retried with bounded
exponential backoff; plain HTTP is used only for registries listed as insecure or on loopback.

The ``aiohttp.ClientSession`` is injectable: tests and the agent can pass their own (the client
then never closes it). Public methods all do I/O and take keyword arguments only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

import aiohttp
from yarl import URL

from wasmfleet_common.backoff import Backoff
from wasmfleet_oci import atomic, auth, errors, formats
from wasmfleet_oci.reference import Reference, parse_digest

__all__ = [
    "ClientSettings",
    "FetchedManifest",
    "RegistryClient",
    "plan_retry_delay",
    "plan_scheme",
    "sha256_digest",
]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_ERROR_BODY = 16 * 1024
_CHUNK = 64 * 1024
_Kind = Literal["manifest", "blob", "upload"]
_Origin = tuple[str, str, int | None]


REQUEST_BACKOFF = Backoff(base=0.2, cap=5.0)
"""Waits between tries of one registry request (a numeric Retry-After wins, up to the cap)."""


@dataclass(frozen=True)
class ClientSettings:
    """How the client reaches registries; one value for the whole agent."""

    insecure_registries: frozenset[str] = frozenset()
    """Registries (``host`` or ``host:port``) spoken to over plain HTTP."""
    ca_file: Path | None = None
    """PEM bundle trusted for HTTPS in addition to the system's CAs."""
    plain_http_for_loopback: bool = True
    """Use plain HTTP for ``localhost``, ``127.0.0.0/8`` and ``::1`` without listing them."""
    max_attempts: int = 4
    """Tries per request (connection errors, 5xx, 429); at least 1."""
    backoff: Backoff = REQUEST_BACKOFF
    """Waits between tries."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    """Longest silence while reading a response; a large blob may take longer in total."""
    max_redirects: int = 5
    max_manifest_bytes: int = 4 * 1024 * 1024
    user_agent: str = "wasmfleet-agent"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest's bytes as served, with the sha256 digest they hash to."""

    digest: str
    media_type: str | None
    body: bytes = field(repr=False)


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def plan_retry_delay(attempt: int, *, retry_after: str | None, backoff: Backoff) -> float:
    """The wait before retry number ``attempt`` (1-based): a numeric ``Retry-After`` up to
    the backoff's cap, else the backoff's own delay."""
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, min(backoff.cap, float(retry_after.strip())))
    return backoff.delay(attempt)


def _split_host_port(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.partition(":")
    return host.lower(), int(port) if port else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _plain_http_allowed(host: str, port: int | None, settings: ClientSettings) -> bool:
    host = host.lower()
    shown = f"[{host}]" if ":" in host else host
    names = {host, shown} | ({f"{shown}:{port}"} if port is not None else set())
    if names & {entry.lower() for entry in settings.insecure_registries}:
        return True
    return settings.plain_http_for_loopback and _is_loopback(host)


def plan_scheme(registry: str, *, settings: ClientSettings) -> Literal["http", "https"]:
    """``http`` for insecure-listed and (by default) loopback registries, else ``https``."""
    host, port = _split_host_port(registry)
    return "http" if _plain_http_allowed(host, port, settings) else "https"


def _origin(url: URL) -> _Origin:
    return (url.scheme, (url.host or "").lower(), url.port)


def _display(url: URL) -> str:
    # Signed redirect targets carry credentials in their query: never show it.
    return str(url.with_user(None).with_query(None).with_fragment(None))


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise errors.ModuleTooLarge(
                    f"{_display(response.url)} sent more than {limit} bytes; refusing it"
                )
            chunks.append(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as error:
        # A body cut short (e.g. before its Content-Length) is a broken transfer, like a
        # dropped connection: transient, and reported in this module's terms.
        raise errors.RegistryUnavailable(
            f"reading {_display(response.url)} failed after {total} bytes: {type(error).__name__}"
        ) from error
    return b"".join(chunks)


def _error_text(body: bytes) -> str:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(document, dict) or not isinstance(document.get("errors"), list):
        return ""
    parts = []
    for item in document["errors"][:3]:
        if isinstance(item, dict):
            parts.append(f"{item.get('code', '?')}: {item.get('message', '')}".strip())
    return "; ".join(parts)[:300]


class RegistryClient:
    """A Distribution API client for any number of registries.

    Use it as an async context manager, or call `close`; a session passed in is not closed.
    """

    def __init__(
        self,
        *,
        settings: ClientSettings | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else ClientSettings()
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._clock = clock
        self._ssl: ssl.SSLContext | bool = True
        if self.settings.ca_file is not None:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=str(self.settings.ca_file))
            self._ssl = context
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.settings.connect_timeout,
            sock_read=self.settings.read_timeout,
        )
        self._challenges: dict[str, auth.Challenge] = {}
        self._tokens: dict[tuple[str, str, str], auth.BearerToken] = {}
        self._token_locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self.settings.user_agent},
                timeout=self._timeout,
            )
        return self._session

    # -- URLs ---------------------------------------------------------------------------------

    def _base(self, reference: Reference) -> URL:
        scheme = plan_scheme(reference.api_host, settings=self.settings)
        return URL(f"{scheme}://{reference.api_host}")

    def _manifest_url(self, reference: Reference) -> URL:
        return self._base(reference).with_path(
            f"/v2/{reference.repository}/manifests/{reference.identifier}"
        )

    def _blob_url(self, reference: Reference, digest: str) -> URL:
        return self._base(reference).with_path(f"/v2/{reference.repository}/blobs/{digest}")

    # -- public operations --------------------------------------------------------------------

    async def fetch_digest(
        self, *, reference: Reference, credentials: auth.Credentials | None = None
    ) -> str:
        """The digest of the manifest ``reference`` names (a tag resolved, a digest checked).

        Asks with HEAD and reads ``Docker-Content-Digest``; falls back to GET (hashing the
        manifest) when HEAD is refused or the header is missing.
        """
        header: str | None = None
        try:
            async with self._open(
                "HEAD",
                self._manifest_url(reference),
                reference=reference,
                actions="pull",
                credentials=credentials,
                headers={"Accept": ", ".join(formats.MANIFEST_ACCEPT)},
                kind="manifest",
            ) as response:
                header = response.headers.get("Docker-Content-Digest")
        except (errors.NotFound, errors.Unauthorized, errors.RegistryUnavailable):
            raise
        except errors.RegistryError:
            header = None  # e.g. 405: this registry does not answer HEAD on manifests
        try:
            digest = parse_digest(header) if header is not None else None
        except ValueError:
            digest = None  # another algorithm: hash the manifest ourselves
        if digest is not None:
            if reference.digest is not None and digest != reference.digest:
                raise errors.DigestMismatch(
                    f"{reference} is served as {digest}, not as the digest asked for"
                )
            return digest
        return (await self.fetch_manifest(reference=reference, credentials=credentials)).digest

    async def fetch_manifest(
        self, *, reference: Reference, credentials: auth.Credentials | None = None
    ) -> FetchedManifest:
        """The manifest ``reference`` names, verified against its digest when it has one."""
        async with self._open(
            "GET",
            self._manifest_url(reference),
            reference=reference,
            actions="pull",
            credentials=credentials,
            headers={"Accept": ", ".join(formats.MANIFEST_ACCEPT)},
            kind="manifest",
        ) as response:
            body = await _read_limited(response, self.settings.max_manifest_bytes)
            header = response.headers.get("Docker-Content-Digest")
            media_type = response.headers.get("Content-Type")
        digest = sha256_digest(body)
        if reference.digest is not None and digest != reference.digest:
            raise errors.DigestMismatch(
                f"the manifest served for {reference} hashes to {digest}; refusing it"
            )
        if header is not None and header.startswith("sha256:") and header != digest:
            raise errors.DigestMismatch(
                f"the manifest served for {reference} hashes to {digest}, but the registry "
                f"says {header}; refusing it"
            )
        return FetchedManifest(digest=digest, media_type=media_type, body=body)

    async def fetch_blob(
        self,
        *,
        reference: Reference,
        descriptor: formats.Descriptor,
        destination: Path,
        credentials: auth.Credentials | None = None,
    ) -> None:
        """Streams a blob into ``destination``, verifying its sha256 digest and size.

        The bytes go to a temporary file beside ``destination`` that is renamed into place
        only once digest and size match; on any failure it is deleted and ``destination`` is
        untouched. A connection lost mid-stream restarts the download (bounded attempts).
        """
        attempt = 0
        while True:
            handle, partial = atomic.open_temporary(destination.parent)
            try:
                await self._stream_blob(reference, descriptor, handle, credentials)
                await asyncio.to_thread(atomic.commit_temporary, handle, partial, destination)
                return
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
                atomic.discard_temporary(handle, partial)
                attempt += 1
                if attempt >= self.settings.max_attempts:
                    raise errors.RegistryUnavailable(
                        f"downloading {descriptor.digest} from {reference.name} failed "
                        f"{attempt} times; last: {type(e).__name__}"
                    ) from e
                await self._sleep(self._backoff(attempt))
            except BaseException:
                atomic.discard_temporary(handle, partial)
                raise

    async def fetch_blob_bytes(
        self,
        *,
        reference: Reference,
        descriptor: formats.Descriptor,
        credentials: auth.Credentials | None = None,
        max_bytes: int = 1024 * 1024,
    ) -> bytes:
        """A small blob (an image config) in memory, verified like `fetch_blob`."""
        if descriptor.size > max_bytes:
            raise errors.ModuleTooLarge(
                f"blob {descriptor.digest} has {descriptor.size} bytes, more than {max_bytes}"
            )
        async with self._open(
            "GET",
            self._blob_url(reference, descriptor.digest),
            reference=reference,
            actions="pull",
            credentials=credentials,
            headers={"Accept-Encoding": "identity"},
            kind="blob",
        ) as response:
            try:
                body = await _read_limited(response, descriptor.size)
            except errors.ModuleTooLarge:
                raise errors.DigestMismatch(
                    f"blob {descriptor.digest} of {reference.name} is longer than the "
                    f"{descriptor.size} bytes its descriptor says; refusing it"
                ) from None
        _verify(body_digest=sha256_digest(body), size=len(body), descriptor=descriptor)
        return body

    async def has_blob(
        self,
        *,
        reference: Reference,
        digest: str,
        credentials: auth.Credentials | None = None,
        for_push: bool = False,
    ) -> bool:
        """Whether the repository already holds the blob ``digest`` (HEAD)."""
        try:
            async with self._open(
                "HEAD",
                self._blob_url(reference, parse_digest(digest)),
                reference=reference,
                actions="pull,push" if for_push else "pull",
                credentials=credentials,
                kind="blob",
            ):
                return True
        except errors.NotFound:
            return False

    async def push_blob(
        self,
        *,
        reference: Reference,
        data: bytes,
        credentials: auth.Credentials | None = None,
    ) -> str:
        """Uploads ``data`` as a blob in one piece (POST, then PUT ``?digest=``).

        Skips the upload when the registry already has the blob. Returns its digest.
        """
        digest = sha256_digest(data)
        if await self.has_blob(
            reference=reference, digest=digest, credentials=credentials, for_push=True
        ):
            return digest
        start = self._base(reference).with_path(f"/v2/{reference.repository}/blobs/uploads/")
        async with self._open(
            "POST",
            start,
            reference=reference,
            actions="pull,push",
            credentials=credentials,
            headers={"Content-Length": "0"},
            data=b"",
            ok=(202,),
            kind="upload",
        ) as response:
            location = response.headers.get("Location")
            upload = response.url
        if not location:
            raise errors.RegistryError(
                f"{reference.registry} started an upload to {reference.repository} "
                "without a Location"
            )
        target = upload.join(URL(location, encoded=True))
        separator = "&" if target.raw_query_string else "?"
        put = URL(f"{target}{separator}digest={digest}", encoded=True)
        async with self._open(
            "PUT",
            put,
            reference=reference,
            actions="pull,push",
            credentials=credentials,
            headers={"Content-Type": "application/octet-stream"},
            data=data,
            ok=(201, 204),
            kind="upload",
        ):
            pass
        return digest

    async def push_manifest(
        self,
        *,
        reference: Reference,
        body: bytes,
        media_type: str,
        credentials: auth.Credentials | None = None,
    ) -> str:
        """Stores a manifest under the reference's tag (or digest); returns its digest."""
        digest = sha256_digest(body)
        if reference.digest is not None and reference.digest != digest:
            raise ValueError(f"the manifest hashes to {digest}, not to {reference.digest}")
        async with self._open(
            "PUT",
            self._manifest_url(reference),
            reference=reference,
            actions="pull,push",
            credentials=credentials,
            headers={"Content-Type": media_type},
            data=body,
            ok=(201,),
            kind="manifest",
        ) as response:
            header = response.headers.get("Docker-Content-Digest")
        if header is not None and header.startswith("sha256:") and header != digest:
            raise errors.DigestMismatch(
                f"{reference.registry} stored the manifest as {header}, but it hashes to {digest}"
            )
        return digest

    # -- streaming ----------------------------------------------------------------------------

    async def _stream_blob(
        self,
        reference: Reference,
        descriptor: formats.Descriptor,
        handle: BinaryIO,
        credentials: auth.Credentials | None,
    ) -> None:
        hasher = hashlib.sha256()
        received = 0
        async with self._open(
            "GET",
            self._blob_url(reference, descriptor.digest),
            reference=reference,
            actions="pull",
            credentials=credentials,
            headers={"Accept-Encoding": "identity"},
            kind="blob",
        ) as response:
            declared = response.content_length
            if declared is not None and declared != descriptor.size:
                raise errors.DigestMismatch(
                    f"blob {descriptor.digest} of {reference.name} is served with "
                    f"{declared} bytes, but its descriptor says {descriptor.size}; refusing it"
                )
            async for chunk in response.content.iter_chunked(_CHUNK):
                received += len(chunk)
                if received > descriptor.size:
                    raise errors.DigestMismatch(
                        f"blob {descriptor.digest} of {reference.name} is longer than the "
                        f"{descriptor.size} bytes its descriptor says; refusing it"
                    )
                hasher.update(chunk)
                handle.write(chunk)
        _verify(body_digest="sha256:" + hasher.hexdigest(), size=received, descriptor=descriptor)

    # -- the request loop: redirects, challenges, retries ---------------------------------------

    def _backoff(self, attempt: int) -> float:
        return self.settings.backoff.delay(attempt)

    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        url: URL,
        *,
        reference: Reference,
        actions: str,
        credentials: auth.Credentials | None,
        kind: _Kind,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        response = await self._exchange(
            method,
            url,
            reference=reference,
            scope=f"repository:{reference.repository}:{actions}",
            credentials=credentials,
            kind=kind,
            headers=dict(headers or {}),
            data=data,
            ok=ok,
        )
        try:
            yield response
        finally:
            response.release()

    async def _exchange(
        self,
        method: str,
        url: URL,
        *,
        reference: Reference,
        scope: str,
        credentials: auth.Credentials | None,
        kind: _Kind,
        headers: dict[str, str],
        data: bytes | None,
        ok: tuple[int, ...],
    ) -> aiohttp.ClientResponse:
        registry_origin = _origin(self._base(reference))
        attempt = 0
        challenged = False
        while True:
            authorization = await self._authorization(reference, scope, credentials)
            try:
                response = await self._follow(
                    method,
                    url,
                    authorization=authorization,
                    registry_origin=registry_origin,
                    headers=headers,
                    data=data,
                )
            except aiohttp.ClientSSLError as error:
                # A certificate that does not verify will not verify on a retry either.
                raise errors.RegistryError(
                    f"{method} {_display(url)}: TLS failed ({type(error).__name__}); is the "
                    "registry's CA in the CA bundle?"
                ) from error
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                attempt += 1
                if attempt >= self.settings.max_attempts:
                    raise errors.RegistryUnavailable(
                        f"{method} {_display(url)} failed {attempt} times; "
                        f"last: {type(error).__name__}: {error}"
                    ) from error
                await self._sleep(self._backoff(attempt))
                continue
            except aiohttp.ClientError as error:
                raise errors.RegistryError(
                    f"{method} {_display(url)} failed: {type(error).__name__}"
                ) from None
            status = response.status
            if status == 401 and not challenged and _origin(response.url) == registry_origin:
                challenge_header = ", ".join(response.headers.getall("WWW-Authenticate", []))
                response.release()
                challenged = True
                self._learn_challenge(
                    reference,
                    challenge_header,
                    scope=scope,
                    credentials=credentials,
                    sent=authorization,
                )
                continue
            if (status == 429 or status >= 500) and attempt + 1 < self.settings.max_attempts:
                attempt += 1
                delay = plan_retry_delay(
                    attempt,
                    retry_after=response.headers.get("Retry-After"),
                    backoff=self.settings.backoff,
                )
                response.release()
                await self._sleep(delay)
                continue
            if status in ok:
                return response
            raise await self._error_from(
                response,
                method=method,
                url=url,
                reference=reference,
                kind=kind,
                authorization=authorization,
            )

    async def _follow(
        self,
        method: str,
        url: URL,
        *,
        authorization: str | None,
        registry_origin: _Origin,
        headers: dict[str, str],
        data: bytes | None,
    ) -> aiohttp.ClientResponse:
        """Sends one request and follows redirects by hand.

        ``Authorization`` goes only to the registry's own origin; once a redirect leaves it,
        the credentials are dropped for good (also if a later hop comes back).
        """
        session = self._get_session()
        current = url
        for _hop in range(self.settings.max_redirects + 1):
            send = dict(headers)
            if authorization is not None and _origin(current) == registry_origin:
                send["Authorization"] = authorization
            response = await session.request(
                method,
                current,
                headers=send,
                # A fresh stream per send, so retries and redirects replay the whole body
                # (and large bodies are written without blocking the event loop).
                data=io.BytesIO(data) if data else data,
                allow_redirects=False,
                ssl=self._ssl,
                timeout=self._timeout,
            )
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            response.release()
            target = self._redirect_target(current, location)
            if response.status == 303 or (
                response.status in (301, 302) and method not in ("GET", "HEAD")
            ):
                method, data = "GET", None
            if _origin(target) != registry_origin:
                authorization = None
            current = target
        raise errors.RegistryError(
            f"{_display(url)} redirected more than {self.settings.max_redirects} times"
        )

    def _redirect_target(self, current: URL, location: str) -> URL:
        """Where ``Location`` points, if the client may follow it there."""
        try:
            target = current.join(URL(location, encoded=True))
            _origin(target)  # yarl parses host and port lazily: a bad one raises here
        except ValueError:
            # Not shown: the Location may carry a signed query string.
            raise errors.RegistryError(
                f"{_display(current)} redirected to a malformed Location; refusing to follow"
            ) from None
        self._check_redirect(current, target)
        return target

    def _check_redirect(self, current: URL, target: URL) -> None:
        if target.scheme not in ("http", "https") or not target.host:
            raise errors.RegistryError(f"{_display(current)} redirected to a non-HTTP location")
        if target.scheme == "http" and not _plain_http_allowed(
            target.host, target.explicit_port, self.settings
        ):
            raise errors.RegistryError(
                f"{_display(current)} redirected to plain HTTP at {target.host}, which is not "
                "an insecure registry; refusing to follow"
            )

    # -- authentication -----------------------------------------------------------------------

    def _token_key(
        self, reference: Reference, scope: str, credentials: auth.Credentials | None
    ) -> tuple[str, str, str]:
        return (reference.registry, scope, credentials.fingerprint() if credentials else "")

    async def _authorization(
        self, reference: Reference, scope: str, credentials: auth.Credentials | None
    ) -> str | None:
        challenge = self._challenges.get(reference.registry)
        if challenge is None:
            return None  # anonymous until the registry asks for more
        if challenge.scheme == "basic":
            return credentials.basic_header() if credentials is not None else None
        key = self._token_key(reference, scope, credentials)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is None or not token.valid(now=self._clock()):
                token = await self._fetch_token(challenge, scope, credentials)
                self._tokens[key] = token
        return f"Bearer {token.token}"

    async def _fetch_token(
        self, challenge: auth.Challenge, scope: str, credentials: auth.Credentials | None
    ) -> auth.BearerToken:
        try:
            realm = URL(challenge.realm or "")
            port = realm.explicit_port
        except ValueError:
            raise errors.Unauthorized(
                "the token realm of the registry's Bearer challenge is not a valid URL"
            ) from None
        if realm.scheme == "http" and not _plain_http_allowed(
            realm.host or "", port, self.settings
        ):
            raise errors.Unauthorized(
                f"the token realm {_display(realm)} uses plain HTTP and is not an insecure "
                "registry; refusing to ask it for a token"
            )
        attempt = 0
        while True:
            try:
                return await auth.fetch_bearer_token(
                    session=self._get_session(),
                    challenge=challenge,
                    scopes=[scope],
                    credentials=credentials,
                    ssl=self._ssl,
                )
            except errors.RegistryUnavailable:
                attempt += 1
                if attempt >= self.settings.max_attempts:
                    raise
                await self._sleep(self._backoff(attempt))

    def _learn_challenge(
        self,
        reference: Reference,
        header: str,
        *,
        scope: str,
        credentials: auth.Credentials | None,
        sent: str | None,
    ) -> None:
        try:
            challenges = auth.parse_www_authenticate(header)
        except ValueError:
            challenges = []
        by_scheme = {c.scheme: c for c in reversed(challenges)}
        if "bearer" in by_scheme:
            self._challenges[reference.registry] = by_scheme["bearer"]
            # The token we sent (if any) was refused or expired: fetch a fresh one.
            self._tokens.pop(self._token_key(reference, scope, credentials), None)
            return
        if "basic" in by_scheme:
            self._challenges[reference.registry] = by_scheme["basic"]
            if credentials is None:
                raise errors.Unauthorized(
                    f"{reference.registry} requires credentials for {reference.repository} "
                    "and none were given"
                )
            if sent is not None and sent.startswith("Basic "):
                raise errors.Unauthorized(
                    f"{reference.registry} refused access to {reference.repository} with the "
                    "credentials given"
                )
            return
        raise errors.Unauthorized(
            f"{reference.registry} answered 401 without a Basic or Bearer challenge"
        )

    async def _error_from(
        self,
        response: aiohttp.ClientResponse,
        *,
        method: str,
        url: URL,
        reference: Reference,
        kind: _Kind,
        authorization: str | None,
    ) -> errors.RegistryError:
        status = response.status
        try:
            body = await response.content.read(_MAX_ERROR_BODY)
        except aiohttp.ClientError:
            body = b""
        finally:
            response.release()
        detail = _error_text(body)
        what = f"{method} {_display(url)} answered {status}" + (f" ({detail})" if detail else "")
        if status in (401, 403):
            if authorization is None:
                how = ""
            elif authorization.startswith("Basic "):
                how = " with the credentials given"
            else:
                how = " with the token its token service issued"
            return errors.Unauthorized(
                f"{reference.registry} refused access to {reference.repository}{how}: {what}"
            )
        if status == 404:
            if kind == "manifest":
                return errors.ManifestUnknown(what)
            if kind == "blob":
                return errors.BlobUnknown(what)
            return errors.NotFound(what)
        if status == 429 or status >= 500:
            return errors.RegistryUnavailable(what)
        return errors.RegistryError(what)


def _verify(*, body_digest: str, size: int, descriptor: formats.Descriptor) -> None:
    if size != descriptor.size:
        raise errors.DigestMismatch(
            f"blob {descriptor.digest} has {size} bytes, but its descriptor says "
            f"{descriptor.size}; refusing it"
        )
    if body_digest != descriptor.digest:
        raise errors.DigestMismatch(
            f"blob {descriptor.digest} hashes to {body_digest}; refusing it"
        )
