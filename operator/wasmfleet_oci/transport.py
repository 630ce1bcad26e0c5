"""How requests reach a registry and answers come back: the one place with an HTTP session.

The rules that hold for every request whatever it asks for live here: plain HTTP only for
registries listed as insecure or on loopback (and redirects may not step down to it);
certificates checked against the system's CAs plus an optional bundle; redirects followed by
hand, so ``Authorization`` goes to the registry's own origin and never further; transient
failures (connection errors, 5xx, 429) retried by the one `Backoff` policy, a numeric
``Retry-After`` honoured up to its cap; a 401 handed to the auth dance (`authorizer`) once
per request, which decides what to send next.

The transport knows nothing of the Distribution API: what a URL means, which status is
success and what a failure is called belong to `client`. The ``aiohttp.ClientSession`` is
injectable (a session passed in is never closed here).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiohttp
from yarl import URL

from wasmfleet_common.backoff import Backoff
from wasmfleet_oci import errors

__all__ = [
    "CHUNK_BYTES",
    "REQUEST_BACKOFF",
    "Authentication",
    "ClientSettings",
    "Origin",
    "Sent",
    "Transport",
    "plan_origin",
    "plan_plain_http",
    "plan_retry_delay",
    "plan_scheme",
    "read_body",
    "render_safe_url",
]

CHUNK_BYTES = 64 * 1024
"""The size of the pieces a body is read in."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Origin = tuple[str, str, int | None]
"""Scheme, lower-case host and port: what decides where credentials may go."""


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


# -- the pure rules ---------------------------------------------------------------------------


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


def plan_plain_http(host: str, port: int | None, *, settings: ClientSettings) -> bool:
    """Whether plain HTTP may be spoken to ``host`` (and ``port``): listed as insecure, with or
    without the port, or on loopback while the settings allow that."""
    host = host.lower()
    shown = f"[{host}]" if ":" in host else host
    names = {host, shown} | ({f"{shown}:{port}"} if port is not None else set())
    if names & {entry.lower() for entry in settings.insecure_registries}:
        return True
    return settings.plain_http_for_loopback and _is_loopback(host)


def plan_scheme(registry: str, *, settings: ClientSettings) -> Literal["http", "https"]:
    """``http`` for insecure-listed and (by default) loopback registries, else ``https``."""
    host, port = _split_host_port(registry)
    return "http" if plan_plain_http(host, port, settings=settings) else "https"


def plan_origin(url: URL) -> Origin:
    """The origin of ``url``; raises ValueError for a host or port yarl cannot parse."""
    return (url.scheme, (url.host or "").lower(), url.port)


def render_safe_url(url: URL) -> str:
    """``url`` as it may be shown in a message or log: without user info, query or fragment."""
    # Signed redirect targets carry credentials in their query: never show it.
    return str(url.with_user(None).with_query(None).with_fragment(None))


# -- reading answers --------------------------------------------------------------------------


async def read_body(response: aiohttp.ClientResponse, *, limit: int) -> bytes:
    """The whole body of ``response``, refused with `errors.ModuleTooLarge` as soon as it
    passes ``limit`` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            total += len(chunk)
            if total > limit:
                raise errors.ModuleTooLarge(
                    f"{render_safe_url(response.url)} sent more than {limit} bytes; refusing it"
                )
            chunks.append(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as error:
        # A body cut short (e.g. before its Content-Length) is a broken transfer, like a
        # dropped connection: transient, and reported in this package's terms.
        raise errors.RegistryUnavailable(
            f"reading {render_safe_url(response.url)} failed after {total} bytes: "
            f"{type(error).__name__}"
        ) from error
    return b"".join(chunks)


# -- the transport ----------------------------------------------------------------------------


class Authentication(Protocol):
    """What the transport needs from the auth dance for one request (see `authorizer`)."""

    async def authorization(self) -> str | None:
        """The ``Authorization`` header to send now, or None to go anonymous."""
        ...

    def challenged(self, header: str, *, sent: str | None) -> None:
        """The registry answered 401 with this ``WWW-Authenticate`` to a request that carried
        ``sent``; learn from it for the next try, or raise `errors.Unauthorized`."""
        ...


@dataclass(frozen=True)
class Sent:
    """The final answer to a request (any status), with the ``Authorization`` it carried."""

    response: aiohttp.ClientResponse
    authorization: str | None


class Transport:
    """Requests to any number of registries over one (possibly shared) session."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self.ssl: ssl.SSLContext | bool = True
        """What aiohttp checks certificates with."""
        if settings.ca_file is not None:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=str(settings.ca_file))
            self.ssl = context
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )

    async def close(self) -> None:
        """Closes the session if this transport created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def session(self) -> aiohttp.ClientSession:
        """The session every request goes through (created at first use)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self.settings.user_agent},
                timeout=self._timeout,
            )
        return self._session

    def base_url(self, registry: str) -> URL:
        """``scheme://registry`` with the scheme `plan_scheme` picks."""
        return URL(f"{plan_scheme(registry, settings=self.settings)}://{registry}")

    async def back_off(self, attempt: int) -> None:
        """Waits as the backoff says before retry number ``attempt`` of anything."""
        await self._sleep(self.settings.backoff.delay(attempt))

    async def exchange(
        self,
        method: str,
        url: URL,
        *,
        origin: Origin,
        authentication: Authentication,
        headers: Mapping[str, str],
        data: bytes | None = None,
    ) -> Sent:
        """Sends a request to the registry at ``origin`` until it has an answer to give.

        Connection failures, 5xx and 429 are retried (``max_attempts`` tries in all); the
        first 401 from the registry itself goes to ``authentication``, then the request is
        sent again. The answer after that is returned whatever its status; the caller
        releases it. Raises `errors.RegistryUnavailable` when no answer came in any try.
        """
        attempt = 0
        challenged = False
        while True:
            authorization = await authentication.authorization()
            try:
                response = await self._follow(
                    method,
                    url,
                    authorization=authorization,
                    origin=origin,
                    headers=headers,
                    data=data,
                )
            except aiohttp.ClientSSLError as error:
                # A certificate that does not verify will not verify on a retry either.
                raise errors.RegistryError(
                    f"{method} {render_safe_url(url)}: TLS failed ({type(error).__name__}); is "
                    "the registry's CA in the CA bundle?"
                ) from error
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                attempt += 1
                if attempt >= self.settings.max_attempts:
                    raise errors.RegistryUnavailable(
                        f"{method} {render_safe_url(url)} failed {attempt} times; "
                        f"last: {type(error).__name__}: {error}"
                    ) from error
                await self.back_off(attempt)
                continue
            except aiohttp.ClientError as error:
                raise errors.RegistryError(
                    f"{method} {render_safe_url(url)} failed: {type(error).__name__}"
                ) from None
            status = response.status
            if status == 401 and not challenged and plan_origin(response.url) == origin:
                challenge_header = ", ".join(response.headers.getall("WWW-Authenticate", []))
                response.release()
                challenged = True
                authentication.challenged(challenge_header, sent=authorization)
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
            return Sent(response, authorization)

    def check_location(self, current: URL, location: str, *, what: str = "redirected to") -> URL:
        """Where ``location`` (a ``Location`` header answered for ``current``) points, if the
        client may go there: an http(s) URL, plain HTTP only where `plan_plain_http` allows.

        Raises `errors.RegistryError` saying that ``current`` ``what`` such a place; it names
        ``current``, never the target, which may carry a signed query string.
        """
        try:
            target = current.join(URL(location, encoded=True))
            plan_origin(target)  # yarl parses host and port lazily: a bad one raises here
        except ValueError:
            raise errors.RegistryError(
                f"{render_safe_url(current)} {what} a malformed Location; refusing to follow"
            ) from None
        if target.scheme not in ("http", "https") or not target.host:
            raise errors.RegistryError(f"{render_safe_url(current)} {what} a non-HTTP location")
        if target.scheme == "http" and not plan_plain_http(
            target.host, target.explicit_port, settings=self.settings
        ):
            raise errors.RegistryError(
                f"{render_safe_url(current)} {what} plain HTTP at {target.host}, which is not "
                "an insecure registry; refusing to follow"
            )
        return target

    async def _follow(
        self,
        method: str,
        url: URL,
        *,
        authorization: str | None,
        origin: Origin,
        headers: Mapping[str, str],
        data: bytes | None,
    ) -> aiohttp.ClientResponse:
        """Sends one request and follows redirects by hand.

        ``Authorization`` goes only to the registry's own origin; once a redirect leaves it,
        the credentials are dropped for good (also if a later hop comes back).
        """
        session = self.session()
        current = url
        for _hop in range(self.settings.max_redirects + 1):
            send = dict(headers)
            if authorization is not None and plan_origin(current) == origin:
                send["Authorization"] = authorization
            response = await session.request(
                method,
                current,
                headers=send,
                # A fresh stream per send, so retries and redirects replay the whole body
                # (and large bodies are written without blocking the event loop).
                data=io.BytesIO(data) if data else data,
                allow_redirects=False,
                ssl=self.ssl,
                timeout=self._timeout,
            )
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            response.release()
            target = self.check_location(current, location)
            if response.status == 303 or (
                response.status in (301, 302) and method not in ("GET", "HEAD")
            ):
                method, data = "GET", None
            if plan_origin(target) != origin:
                authorization = None
            current = target
        raise errors.RegistryError(
            f"{render_safe_url(url)} redirected more than {self.settings.max_redirects} times"
        )
