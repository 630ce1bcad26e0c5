"""A recording reverse proxy on loopback, to put in front of a real server in a test.

Tests use it to observe what a client really sends (count the blob downloads of concurrent
pulls, check which requests carried an ``Authorization`` header) and to add behaviour a real
registry behind it does not have, such as redirecting blob downloads to another origin the way
registries backed by object storage do. It runs on the test's own event loop.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import web

from wasmfleet_harness.registry import BasicAuth

__all__ = ["Intercept", "LoopbackProxy", "SeenRequest"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class SeenRequest:
    """One request the proxy received, with its headers as the client sent them."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


Intercept = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
"""Answers a request itself (a response) or lets the proxy forward it (None)."""


class LoopbackProxy:
    """Forwards every request to ``upstream`` and records it in `seen`.

    ``upstream_auth`` replaces whatever ``Authorization`` the client sent with the proxy's own
    Basic credentials (what a presigned-URL blob store does on the registry's behalf).
    ``Location`` headers that point at the upstream are rewritten to point at the proxy.
    """

    def __init__(
        self,
        upstream: str,
        *,
        upstream_auth: BasicAuth | None = None,
        intercept: Intercept | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.upstream_auth = upstream_auth
        self.intercept = intercept
        self.seen: list[SeenRequest] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def host(self) -> str:
        """``127.0.0.1:port``, usable as an image reference's registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def requests(self, method: str, path_part: str = "") -> list[SeenRequest]:
        """The recorded requests with this method whose path contains ``path_part``."""
        return [r for r in self.seen if r.method == method and path_part in r.path]

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> LoopbackProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            SeenRequest(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers={k.lower(): v for k, v in request.headers.items()},
            )
        )
        if self.intercept is not None:
            answer = await self.intercept(request)
            if answer is not None:
                return answer
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if self.upstream_auth is not None:
            pair = f"{self.upstream_auth.username}:{self.upstream_auth.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            reply_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            }
            location = reply_headers.get("Location")
            if location is not None and location.startswith(self.upstream):
                reply_headers["Location"] = self.url + location[len(self.upstream) :]
            response = web.Response(status=upstream.status, headers=reply_headers, body=payload)
            if request.method == "HEAD" and upstream.content_length is not None:
                # Keep the upstream's length on HEAD, where the body is empty by definition.
                response.headers["Content-Length"] = str(upstream.content_length)
            return response
