"""The Distribution API operations: the one module callers use to talk to OCI registries.

What a request means lives here: manifests resolved and fetched (``HEAD`` for a digest, ``GET``
hashed and checked against the digest that named it), blobs streamed to disk with every byte
checked against the digest and size that named them (a file that fails never appears under
its name), uploads and manifests pushed, and each failure named by the `errors` hierarchy.

How the requests travel (plain HTTP rules, TLS, redirects, retries, ``Retry-After``) is the
`transport`'s; who may see what (challenges, tokens, credentials) is the `authorizer`'s. A
`RegistryClient` wires one of each together. Its ``aiohttp.ClientSession`` is injectable:
tests and the agent can pass their own (the client then never closes it). Public methods all
do I/O and take keyword arguments only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

import aiohttp
from yarl import URL

from wasmfleet_oci import atomic, auth, errors, formats, transport
from wasmfleet_oci.authorizer import Authorizer
from wasmfleet_oci.reference import Reference, parse_digest

# `ClientSettings` is the transport's, named here too: it is what a `RegistryClient` is made
# with, and callers need only this module to make one.
from wasmfleet_oci.transport import ClientSettings

__all__ = [
    "ClientSettings",
    "FetchedManifest",
    "RegistryClient",
    "sha256_digest",
]

_MAX_ERROR_BODY = 16 * 1024
_Kind = Literal["manifest", "blob", "upload"]


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest's bytes as served, with the sha256 digest they hash to."""

    digest: str
    media_type: str | None
    body: bytes = field(repr=False)


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
    ``sleep`` and ``clock`` stand in for ``asyncio.sleep`` and ``time.monotonic`` in tests.
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
        self._transport = transport.Transport(self.settings, session=session, sleep=sleep)
        self._authorizer = Authorizer(self._transport, clock=clock)

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
        await self._transport.close()

    # -- URLs ---------------------------------------------------------------------------------

    def _manifest_url(self, reference: Reference) -> URL:
        return self._transport.base_url(reference.api_host).with_path(
            f"/v2/{reference.repository}/manifests/{reference.identifier}"
        )

    def _blob_url(self, reference: Reference, digest: str) -> URL:
        return self._transport.base_url(reference.api_host).with_path(
            f"/v2/{reference.repository}/blobs/{digest}"
        )

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
            body = await transport.read_body(response, limit=self.settings.max_manifest_bytes)
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
                await self._transport.back_off(attempt)
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
                body = await transport.read_body(response, limit=descriptor.size)
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
        start = self._transport.base_url(reference.api_host).with_path(
            f"/v2/{reference.repository}/blobs/uploads/"
        )
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
        # Where the bytes go is the registry's choice (often storage elsewhere), but held to
        # the rules of a redirect: no plain HTTP off the allowed registries, nothing but HTTP.
        target = self._transport.check_location(upload, location, what="moved the upload to")
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
            async for chunk in response.content.iter_chunked(transport.CHUNK_BYTES):
                received += len(chunk)
                if received > descriptor.size:
                    raise errors.DigestMismatch(
                        f"blob {descriptor.digest} of {reference.name} is longer than the "
                        f"{descriptor.size} bytes its descriptor says; refusing it"
                    )
                hasher.update(chunk)
                handle.write(chunk)
        _verify(body_digest="sha256:" + hasher.hexdigest(), size=received, descriptor=descriptor)

    # -- one request: its authorization, its answer, its failure ---------------------------------

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
        """Sends the request (with the transport's retries and the auth dance) and yields the
        answer when its status is one of ``ok``; raises what any other status means."""
        sent = await self._transport.exchange(
            method,
            url,
            origin=transport.plan_origin(self._transport.base_url(reference.api_host)),
            authentication=self._authorizer.for_request(
                reference=reference, actions=actions, credentials=credentials
            ),
            headers=dict(headers or {}),
            data=data,
        )
        response = sent.response
        if response.status not in ok:
            raise await self._error_from(
                response,
                method=method,
                url=url,
                reference=reference,
                kind=kind,
                authorization=sent.authorization,
            )
        try:
            yield response
        finally:
            response.release()

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
        what = f"{method} {transport.render_safe_url(url)} answered {status}" + (
            f" ({detail})" if detail else ""
        )
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
