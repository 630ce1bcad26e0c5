"""One served module behind aiohttp: limits before the sandbox, Wasm off the event loop.

`ServiceHandler` is the aiohttp handler of one module (one binding, or ``serve``'s module). It
refuses what it will not run before any Wasm runs: an HTTP version other than 1.0 and 1.1 gets
505, a target that names no path (``CONNECT``, ``OPTIONS *``) 501, a malformed target or Host
400 (`semantics`), an expectation other than ``100-continue`` 417; beyond ``max_concurrency``
requests in flight it answers 503 at once, a body over the limit gets 413, one that cannot be
read (the client gone mid-body) 400, and one that does not arrive within ``body_timeout`` 408.
With a `budget.MemoryBudget`, a request runs only once its instance's memory is set aside
there; one that finds no room within the budget's wait gets 503 with ``Retry-After``.
``Expect: 100-continue`` is answered once the request is accepted. Bodies reach the module as
sent, ``Content-Encoding`` and all: decoding is the module's business, as in CGI, and a
compressed bomb never inflates inside the agent. A request counts as in flight only once its
body is in, so clients that stop sending half-way hold their own connections, never the
service's capacity; for a ``wasi:http`` component (``streams``), once the first
`STREAM_AFTER` bytes are in: the rest streams to the run (`streams.ClientLink`), and a body
that breaks a limit while the guest reads it gets the status above all the same (a response
that started streaming by then is cut short instead).

Accepted requests run on a thread pool (wasmtime releases the GIL while guest code runs; the
event loop waits on Wasm only for a service whose runs are short, tried on the loop's own
thread within a small budget, see `inline`), each on a fresh instance. Failures inside the
sandbox (trap, timeout, memory, output limit) become that request's 5xx with an error id that
is also in the log, so one bad request never affects another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import HttpVersion10, HttpVersion11, hdrs, web

from wasmfleet_agent.runtime.link import STREAM_AFTER
from wasmfleet_agent.runtime.service import HttpOutcome, IncomingRequest
from wasmfleet_agent.server import semantics
from wasmfleet_agent.server.budget import MemoryBudget
from wasmfleet_agent.server.inflight import ServiceCells
from wasmfleet_agent.server.inline import InlinePolicy
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.streams import ClientLink, copy_headers

__all__ = ["HttpLimits", "ServiceHandler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpLimits:
    max_concurrency: int = 64
    max_request_body: int = 1 << 20
    body_timeout: float | None = None
    """Seconds a client has to send the whole body once its headers are in (None: no limit).

    Also what ends a request whose body the parser gave up on after the handler started (a
    chunk size that is not hex, sent after the headers): aiohttp's C parser then drops the
    body stream without failing it, and the read would otherwise wait for the client to go.
    """
    idle_timeout: float = 75.0
    """Seconds a connection may go without a complete request, whether idle between
    keep-alive requests or stuck in the middle of its headers (a slowloris), before it is
    closed (aiohttp's keep-alive timeout; nginx's is 75 s too)."""


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class ServiceHandler:
    """The aiohttp handler of one module; ``execute`` runs one request to completion."""

    name: str
    execute: Callable[[IncomingRequest, float], HttpOutcome]
    """``execute(request, spent)``: `HttpModule.execute`."""
    limits: HttpLimits
    pool: Executor
    metrics: AgentMetrics
    shared: ServiceCells | None = None
    """The service's in-flight counts across worker processes (None: this process only)."""
    budget: MemoryBudget | None = None
    """The process's memory budget, shared with its other services (None: unbounded)."""
    key: str = ""
    """This service's key in ``budget``."""
    instance_bytes: int = 0
    """What one request's instance may take, set aside in ``budget`` while it runs."""
    decode_path: bool = True
    """The module reads the path percent-decoded (as CGI's ``PATH_INFO``), so a path that
    does not decode to UTF-8 text without NUL is refused."""
    inline: InlinePolicy | None = None
    """Set for a module whose runs can be repeated (`HttpModule.repeatable`): its short
    runs are tried on the loop's thread, with ``attempt``."""
    attempt: Callable[[IncomingRequest, float], HttpOutcome | None] | None = None
    """``attempt(request, budget)``: `HttpModule.attempt`."""
    ready: Callable[[], bool] = lambda: True
    """Whether the module's machine code is in memory (an inline run never reads the disk)."""
    streams: bool = False
    """The module's bodies stream (a ``wasi:http`` component, `link`): its requests run once
    the first `STREAM_AFTER` bytes of the body are in, and its runs get the connection."""
    in_flight: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        # the label children are looked up once, not on every request
        metrics, name = self.metrics, self.name
        self._gauge = metrics.in_flight.labels(name)
        self._latency = metrics.request_seconds.labels(name)
        self._instantiate = metrics.instantiate_seconds.labels(name)
        self._over_capacity = metrics.rejected.labels(name, "concurrency")
        self._over_body = metrics.rejected.labels(name, "body")
        self._over_memory = metrics.rejected.labels(name, "memory")
        self._outbound = {
            outcome: metrics.outbound.labels(name, outcome)
            for outcome in ("sent", "refused", "failed")
        }
        self._by_status: dict[int, Any] = {}
        self._inline_finished = metrics.inline_runs.labels(name, "finished")
        self._inline_stopped = metrics.inline_runs.labels(name, "stopped")

    async def runner(self, *, shutdown_timeout: float = 5.0) -> web.ServerRunner:
        """A set-up runner that sends every request to this handler, for sockets to start.

        aiohttp's low-level server: a module owns every path and method of its port, so an
        application with a router would only add work to each request.
        """
        server = web.Server(
            self,
            access_log=None,
            keepalive_timeout=self.limits.idle_timeout,
            auto_decompress=False,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        return runner

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        shared = self.shared
        if request.version not in (HttpVersion10, HttpVersion11):
            return self._refuse(started, 505, "only HTTP/1.0 and HTTP/1.1 are served")
        if request.method == hdrs.METH_CONNECT:
            # A tunnel is not a resource a module answers for; and the connection cannot be
            # reused: after a CONNECT the parser no longer frames requests on it.
            response = self._refuse(started, 501, "CONNECT is not served")
            response.force_close()
            return response
        try:
            target = semantics.parse_target(request.raw_path, decode=self.decode_path)
            server_name = _server_name(request, target)
        except semantics.TargetError as error:
            return self._refuse(started, error.status, str(error))
        except semantics.HostError as error:
            return self._refuse(started, 400, str(error))
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None and expect.strip().lower() != "100-continue":
            return self._refuse(started, 417, "the only expectation served is 100-continue")
        if self._busy() >= self.limits.max_concurrency:
            return self._shed(started)
        if (
            request.content_length is not None
            and request.content_length > self.limits.max_request_body
        ):
            self._over_body.inc()
            return self._done(started, web.Response(status=413, text="request body too large\n"))
        if expect is not None and request.version == HttpVersion11 and request.can_read_body:
            # The request is accepted so far: let the client send its body (RFC 9110 §10.1.1).
            await request.writer.write(_CONTINUE)
        body_started = time.monotonic()
        try:
            body, more = await self._read_body(request)
        except _BodyTooLargeError:
            self._over_body.inc()
            return self._done(started, web.Response(status=413, text="request body too large\n"))
        except TimeoutError:
            text = f"request body not received within {self.limits.body_timeout:g}s\n"
            return self._done(started, web.Response(status=408, text=text))
        except (web.RequestPayloadError, ConnectionResetError):
            # a Content-Encoding that does not decode, or the client gone before the body's end
            text = "malformed or incomplete request body\n"
            return self._done(started, web.Response(status=400, text=text))
        # Checked again now that the body is in: a request takes a slot only from here on.
        if self._busy() >= self.limits.max_concurrency:
            return self._shed(started)
        # A request waiting for room in the memory budget holds its slot (and its body), so
        # maxConcurrency bounds the waiters too.
        self.in_flight += 1
        if shared is not None:
            shared.add(1)
        self._gauge.inc()
        budget, need, taken = self.budget, self.instance_bytes, False
        link: ClientLink | None = None
        try:
            if budget is not None and not (taken := await budget.take(self.key, need)):
                self._over_memory.inc()
                response = web.Response(
                    status=503,
                    text="agent memory budget exhausted\n",
                    headers={"Retry-After": "1"},
                )
                return self._done(started, response)
            if self.streams:
                link = ClientLink(
                    request,
                    asyncio.get_running_loop(),
                    received=len(body),
                    max_body=self.limits.max_request_body,
                    body_deadline=None
                    if self.limits.body_timeout is None
                    else body_started + self.limits.body_timeout,
                )
            incoming = _incoming(request, body, target, server_name, link, more)
            outcome = await self._run(incoming)
        finally:
            self.in_flight -= 1
            if shared is not None:
                shared.add(-1)
            self._gauge.dec()
            if taken:
                assert budget is not None
                budget.give_back(self.key, need)
        self._instantiate.observe(outcome.instantiate_seconds)
        for result in outcome.outbound:
            self._outbound[result].inc()
        if link is not None and link.response is not None:
            return await self._end_stream(started, request, link, outcome)
        if link is not None and link.refusal is not None:
            # the body broke a limit while the guest read it: that is the answer
            status, text = link.refusal
            if status == 413:
                self._over_body.inc()
            return self._done(started, web.Response(status=status, text=text + "\n"))
        if outcome.error is not None:
            error_id = self._log_failure(request, outcome)
            response = web.Response(
                status=outcome.status,
                text=f"{outcome.error.split(':', 1)[0]} (error id {error_id})\n",
                headers={"x-wasmfleet-error-id": error_id},
            )
            return self._done(started, response)
        response = web.Response(status=outcome.status, body=outcome.body)
        copy_headers(response, outcome.headers)
        return self._done(started, response)

    async def _end_stream(
        self, started: float, request: web.BaseRequest, link: ClientLink, outcome: HttpOutcome
    ) -> web.StreamResponse:
        """Ends a response that streamed: its last chunk, or, for a run that failed after it
        started, a cut connection (its status went out already) and the failure in the log."""
        response = link.response
        assert response is not None
        if link.refusal is not None:  # the body broke a limit: the guest's answer is not whole
            status, text = link.refusal
            outcome = HttpOutcome(status, error=text)
        if outcome.error is None:
            with contextlib.suppress(ConnectionError):  # the client left at the very end
                await response.write_eof()
            return self._done(started, response)
        self._log_failure(request, outcome, streamed=True)
        link.abort()
        return self._done(started, response, status=outcome.status)

    def _log_failure(
        self, request: web.BaseRequest, outcome: HttpOutcome, *, streamed: bool = False
    ) -> str:
        """Logs a failed run under a new error id, which it returns."""
        error_id = uuid.uuid4().hex[:12]
        log.warning(
            "request failed after its response started" if streamed else "request failed",
            extra={
                "service": self.name,
                "error_id": error_id,
                "status": outcome.status,
                "error": outcome.error,
                "path": request.path,
            },
        )
        return error_id

    async def _run(self, incoming: IncomingRequest) -> HttpOutcome:
        """Runs the request inline when its service's runs are short (`inline`), else, or
        when the inline try is stopped at its budget, on a thread of the pool."""
        policy, attempt, spent = self.inline, self.attempt, 0.0
        if (
            policy is not None
            and attempt is not None
            and policy.inline
            and not incoming.more_body  # a try never waits for the client
            and self.ready()
        ):
            tried = time.perf_counter()
            outcome = attempt(incoming, policy.budget)
            if outcome is not None:
                self._inline_finished.inc()
                policy.ran(outcome.cpu_seconds, waited=outcome.waited)
                return outcome
            spent = time.perf_counter() - tried
            self._inline_stopped.inc()
            policy.overran()
            log.info(
                "an inline run overran its budget; running it on a thread",
                extra={"service": self.name, "seconds": round(spent, 4)},
            )
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self.pool, self.execute, incoming, spent)
        if policy is not None:
            policy.ran(outcome.cpu_seconds, waited=outcome.waited)
        return outcome

    def _busy(self) -> int:
        """Requests of this service in flight, across worker processes when shared."""
        return self.in_flight if self.shared is None else self.shared.total()

    def _refuse(self, started: float, status: int, reason: str) -> web.Response:
        return self._done(started, web.Response(status=status, text=reason + "\n"))

    def _shed(self, started: float) -> web.Response:
        self._over_capacity.inc()
        return self._done(started, web.Response(status=503, text="over capacity\n"))

    async def _read_body(self, request: web.BaseRequest) -> tuple[bytes, bool]:
        """The body, or for a module whose bodies stream (``streams``) its first
        `STREAM_AFTER` bytes; and whether more is to come."""
        if not request.can_read_body:
            return b"", False
        chunks: list[bytes] = []
        size = 0
        content = request.content
        async with asyncio.timeout(self.limits.body_timeout):
            while not (self.streams and size >= STREAM_AFTER):
                chunk = await content.readany()
                if not chunk:
                    return b"".join(chunks), False
                size += len(chunk)
                if size > self.limits.max_request_body:
                    raise _BodyTooLargeError
                chunks.append(chunk)
        return b"".join(chunks), not content.at_eof()

    def _done(self, started: float, response: _R, *, status: int | None = None) -> _R:
        """Counts ``response`` (under ``status`` if given: a streamed response's status went
        out before its run failed) and returns it."""
        code = response.status if status is None else status
        counter = self._by_status.get(code)
        if counter is None:
            counter = self._by_status[code] = self.metrics.requests.labels(self.name, str(code))
        counter.inc()
        self._latency.observe(time.perf_counter() - started)
        return response


_R = TypeVar("_R", bound=web.StreamResponse)


class _BodyTooLargeError(Exception):
    pass


def _incoming(
    request: web.BaseRequest,
    body: bytes,
    target: semantics.Target,
    server_name: str,
    link: ClientLink | None = None,
    more_body: bool = False,
) -> IncomingRequest:
    return IncomingRequest(
        method=request.method,
        path=target.path,
        query=target.query or "",
        headers=tuple(request.headers.items()),
        body=body,
        remote_addr=request.remote or "",
        server_name=server_name,
        server_port=_server_port(request),
        scheme=request.scheme,
        request_uri=target.request_uri,
        protocol=f"HTTP/{request.version.major}.{request.version.minor}",
        link=link,
        more_body=more_body,
    )


def _server_name(request: web.BaseRequest, target: semantics.Target) -> str:
    """SERVER_NAME: an absolute target's host, else the Host header's (without its port).

    Both are checked even when the target's wins (RFC 9112 §3.2: a Host with an invalid
    value is a 400). Without a Host (HTTP/1.0), the address the request arrived on.
    """
    host = request.headers.get(hdrs.HOST)
    name = semantics.parse_host(host)[0] if host is not None else None
    if target.authority is not None:
        name = semantics.parse_host(target.authority)[0]
    if name is None:
        name = request.host  # aiohttp falls back to the socket's own address
    return name or "localhost"


def _server_port(request: web.BaseRequest) -> int:
    """SERVER_PORT: the port the request arrived on (RFC 3875 §4.1.15)."""
    transport = request.transport
    if transport is not None:
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            return int(local[1])
    return 80
