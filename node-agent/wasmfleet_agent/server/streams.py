"""The client's connection, lent to a ``wasi:http`` run on another thread (`link.BodyLink`).

The run's thread asks; the event loop reads and writes: each call is a coroutine handed to the
loop, and the thread waits for its result within the time the run has left. A body that
breaks the request's limits (too large, too slow, cut off) fails the read, and the handler
answers with the status that says so (`refusal`) instead of what the guest made of it, unless
the response has started by then.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from aiohttp import web

from wasmfleet_agent.runtime.link import LinkError
from wasmfleet_agent.server import semantics

__all__ = ["ClientLink", "copy_headers"]

_T = TypeVar("_T")


def copy_headers(response: web.StreamResponse, headers: Iterable[tuple[str, str]]) -> None:
    """Gives ``response`` the module's headers that a client may see (`semantics`)."""
    for key, value in semantics.forwardable_headers(headers):
        if key.lower() == "content-type":
            response.headers["Content-Type"] = value
        else:
            response.headers.add(key, value)


class ClientLink:
    """A `BodyLink` over one aiohttp request, for the run answering it."""

    def __init__(
        self,
        request: web.BaseRequest,
        loop: asyncio.AbstractEventLoop,
        *,
        received: int,
        max_body: int,
        body_deadline: float | None,
    ) -> None:
        self.request = request
        self.loop = loop
        self.received = received
        """Bytes of the body read so far."""
        self.max_body = max_body
        self.body_deadline = body_deadline
        """When the whole body must be in, on `time.monotonic` (None: no limit)."""
        self.response: web.StreamResponse | None = None
        """The response, once started."""
        self.refusal: tuple[int, str] | None = None
        """The status and text the request gets because its body broke a limit."""

    # called from the run's thread

    def receive(self, timeout: float | None) -> bytes:
        return self._call(self._receive(), timeout, "the client to send more of the body")

    def start(self, status: int, headers: list[tuple[str, str]], timeout: float | None) -> None:
        self._call(self._start(status, headers), timeout, "the response to start")

    def send(self, data: bytes, timeout: float | None) -> None:
        self._call(self._send(data), timeout, "the client to take the response")

    def _call(self, work: Coroutine[Any, Any, _T], timeout: float | None, waiting: str) -> _T:
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LinkError(f"timed out waiting for {waiting}", timed_out=True) from None
        except concurrent.futures.CancelledError:
            raise LinkError("the agent is stopping") from None
        except (ConnectionError, RuntimeError) as error:  # aiohttp: a closing transport
            raise LinkError(f"the client went away ({error})") from None

    # run on the loop

    async def _receive(self) -> bytes:
        if self.refusal is not None:
            raise LinkError(self.refusal[1])
        left = None if self.body_deadline is None else self.body_deadline - time.monotonic()
        try:
            async with asyncio.timeout(left):
                chunk = await self.request.content.readany()
        except TimeoutError:
            self.refusal = (408, "request body not received in time")
            raise LinkError(self.refusal[1]) from None
        except (web.RequestPayloadError, ConnectionResetError):
            self.refusal = (400, "malformed or incomplete request body")
            raise LinkError(self.refusal[1]) from None
        self.received += len(chunk)
        if self.received > self.max_body:
            self.refusal = (413, "request body too large")
            raise LinkError(self.refusal[1])
        return chunk

    async def _start(self, status: int, headers: list[tuple[str, str]]) -> None:
        response = web.StreamResponse(status=status)
        copy_headers(response, headers)
        length = next((v for k, v in headers if k.lower() == "content-length"), None)
        if length is not None:
            response.content_length = int(length)  # checked by the run before it starts
        await response.prepare(self.request)
        self.response = response

    async def _send(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    # on the loop, once the run is over

    def abort(self) -> None:
        """Cuts the connection of a response that started and cannot end well: the client
        sees its body end short (no last chunk, fewer bytes than its length)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()
