"""The host side of the ``wasi:http/proxy`` world, written on wasmtime's component API.

wasmtime-py links wasmtime's own WASI 0.2 host, but gives an embedder no way to make an
incoming request, a response outparam or a ``wasi:io`` stream of its own, so a component that
exports ``wasi:http/incoming-handler`` is served by this module instead: every interface the
proxy world imports is defined here, in Python, over one request's state (an `Exchange`):

- ``wasi:http/types``: fields (headers and trailers), the incoming request and its body, the
  outgoing response and its body, the response outparam, and the outgoing request, its
  options and its future response;
- ``wasi:http/outgoing-handler``: a request to an origin the service lists is sent through
  `outbound` (at most `MAX_OUTGOING` per incoming request); any other gets the spec's
  ``HTTP-request-denied``;
- ``wasi:io``: errors, pollables (always ready, or ready at an instant of the monotonic clock)
  and streams over the request body, the response body and the guest's stdout and stderr;
- ``wasi:clocks`` and ``wasi:random``; ``wasi:cli`` environment (the service's variables),
  arguments, stdio, exit and terminals (none), which language runtimes import beside the
  proxy world.

A proxy component gets no files and no sockets: ``wasi:filesystem/preopens`` lists no
directory, and every other function of ``wasi:filesystem`` and ``wasi:sockets`` (which language
runtimes import) is linked to a function that traps, saying what was called.

Bodies stream through the client's connection (`link`): the request body past what the run
was given is read from it as the guest reads (``read`` then waits for the next part, as
``blocking-read`` does), and the response goes out once it holds `link.STREAM_AFTER` bytes,
or once the guest waits (a pollable, the request body, an outgoing request) after flushing;
otherwise it is held until the run ends, so that a failed run still gets a clean 5xx.
Bytes the guest flushes are sent before it next waits, not at the flush: a response written
and finished without a wait stays one response with a length. A run on the event loop's
thread (a try, see `sandbox.may_block`) never streams: it stops instead, and runs again on a
thread. The bodies of outgoing requests and of their responses are held in memory, within
``max_output``.

Limits: a guest blocked in a host call (a pollable's ``block``, ``poll``, a read of the
request body, a write the client is slow to take) wakes by the run's deadline and traps there,
like a guest running code; a response body past ``max_output`` stops the run.

Value shapes follow wasmtime-py's conversions: a ``result`` or ``option`` whose cases take
values of distinct Python classes is passed untagged (the value, or None for a case without
one), otherwise as a `Variant` (``Variant("ok")``); each function below says which.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import wasmtime
from wasmtime.component import (
    Component,
    ComponentInstanceType,
    FuncType,
    Linker,
    Record,
    ResourceAny,
    ResourceHost,
    ResourceType,
    Variant,
)

from wasmfleet_agent.runtime import conversions, outbound, sandbox
from wasmfleet_agent.runtime.link import STREAM_AFTER, BodyLink, LinkError

__all__ = [
    "Exchange",
    "GuestResponse",
    "IncomingHttp",
    "define",
    "exchange",
]

# ---------------------------------------------------------------------------------------------
# One request's state


@dataclass(frozen=True)
class IncomingHttp:
    """The request as the guest sees it."""

    method: str
    path_with_query: str
    scheme: str
    authority: str
    headers: tuple[tuple[str, bytes], ...]
    body: bytes
    rest: BodyLink | None = None
    """Where the rest of the body comes from, when ``body`` is not all of it."""


@dataclass
class GuestResponse:
    """What the guest answered: filled by ``response-outparam.set`` and the body's writes."""

    status: int = 200
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    """What the guest wrote and the client has not been sent."""
    finished: bool = False
    """``outgoing-body.finish`` was called (a body dropped unfinished is a broken response)."""
    error: str | None = None
    """The error code the guest set instead of a response."""
    started: bool = False
    """The status and headers went to the client: the response streams."""
    sent: int = 0
    """Bytes of the body the client has been sent."""
    flushed: bool = False
    """The guest flushed bytes it wrote: they go out before it next waits."""

    @property
    def length(self) -> int:
        """The body's length so far, sent or held."""
        return self.sent + len(self.body)


@dataclass
class Exchange:
    """One request served by one instance: the guest's resources live here, by handle."""

    request: IncomingHttp
    max_output: int
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    response: GuestResponse | None = None
    """Set once the guest has called ``response-outparam.set``."""
    log: bytearray = field(default_factory=bytearray)
    """The guest's stdout and stderr, the first `_MAX_LOG` bytes."""
    outbound: outbound.OutboundPolicy = field(default_factory=lambda: outbound.OutboundPolicy())
    """The origins the guest may send requests to."""
    outgoing: list[tuple[str, str]] = field(default_factory=list)
    """Each outgoing request's outcome (``sent``, ``refused``, ``failed``) and what
    happened, in order."""
    link: BodyLink | None = None
    """The client's connection, for a response that streams (None: held whole)."""
    objects: dict[int, object] = field(default_factory=dict)
    _next: int = 1

    def add(self, obj: object) -> int:
        rep = self._next
        self._next += 1
        self.objects[rep] = obj
        return rep

    def handle(self, obj: object, kind: int) -> ResourceHost:
        """A new owned handle on ``obj``, for the guest."""
        return conversions.Handle(self.add(obj), kind)


_MAX_LOG = 64 << 10
_local = threading.local()


class exchange:  # noqa: N801 - a context manager, named as the state it installs
    """Makes ``state`` the exchange of the host calls on this thread while in the block."""

    def __init__(self, state: Exchange) -> None:
        self.state = state

    def __enter__(self) -> Exchange:
        _local.exchange = self.state
        return self.state

    def __exit__(self, *exc: object) -> None:
        _local.exchange = None


def _current() -> Exchange:
    state: Exchange | None = getattr(_local, "exchange", None)
    if state is None:
        raise RuntimeError("a wasi:http host call outside of a request")
    return state


class GuestError(Exception):
    """A guest's misuse of an interface: the call traps with this message."""


# ---------------------------------------------------------------------------------------------
# Resource kinds: one host resource type each, shared by every interface that uses it


_KINDS = (
    "fields",
    "incoming-request",
    "outgoing-request",
    "request-options",
    "response-outparam",
    "incoming-response",
    "incoming-body",
    "future-trailers",
    "outgoing-response",
    "outgoing-body",
    "future-incoming-response",
    "error",
    "pollable",
    "input-stream",
    "output-stream",
    "terminal-input",
    "terminal-output",
)
_ALIASES = {"headers": "fields", "trailers": "fields", "io-error": "error"}
_KIND = {name: 0x7766_0000 + index for index, name in enumerate(_KINDS)}
"""The host resource type id of each kind (``0x7766`` is "wf")."""


def _kind_of(resource: str) -> int | None:
    return _KIND.get(_ALIASES.get(resource, resource))


def _rep(handle: int | ResourceAny | ResourceHost) -> int:
    """The rep of a handle the guest passed: as `conversions` hands a parameter over (an
    int), or inside a list (a handle object)."""
    if type(handle) is int:
        return handle
    host = handle if isinstance(handle, ResourceHost) else handle.to_host(_store())  # type: ignore[union-attr]
    return int(host.rep)


def _get(handle: int | ResourceAny | ResourceHost, kind: type[Any]) -> Any:
    """The object behind a handle the guest passed (own or borrow)."""
    obj = _current().objects.get(_rep(handle))
    if not isinstance(obj, kind):
        raise GuestError(f"a handle of the wrong kind (wanted {kind.__name__})")
    return obj


def _take(handle: int | ResourceAny | ResourceHost, kind: type[Any]) -> Any:
    """The object behind an owned handle the guest gave up."""
    obj = _current().objects.pop(_rep(handle), None)
    if not isinstance(obj, kind):
        raise GuestError(f"a handle of the wrong kind (wanted {kind.__name__})")
    return obj


def _store() -> Any:
    store = getattr(_local, "store", None)
    if store is None:
        raise RuntimeError("no store for this host call")
    return store


# ---------------------------------------------------------------------------------------------
# Objects behind the handles

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
FORBIDDEN_FIELDS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)
"""Fields a guest may not set: they belong to the connection, which the agent owns."""


class _Fields:
    def __init__(self, entries: list[tuple[str, bytes]], mutable: bool = True) -> None:
        self.entries = entries
        self.mutable = mutable


def _field_error(name: str, value: bytes | None = None) -> Variant | None:
    if not _TOKEN.fullmatch(name.encode("utf-8", "replace")):
        return Variant("invalid-syntax")
    if value is not None and (_BAD_VALUE.search(value) or value != value.strip(b" \t")):
        return Variant("invalid-syntax")
    if name.lower() in FORBIDDEN_FIELDS:
        return Variant("forbidden")
    return None


@dataclass
class _InputStream:
    data: memoryview
    position: int = 0
    rest: BodyLink | None = None
    """Where more comes from once ``data`` is read (None: the stream ends there)."""


@dataclass
class _OutputStream:
    write: Callable[[bytes], None]
    closed: Callable[[], bool] = lambda: False
    flush: Callable[[], None] = lambda: None


@dataclass
class _IncomingRequest:
    request: IncomingHttp
    consumed: bool = False


@dataclass
class _IncomingBody:
    data: bytes
    rest: BodyLink | None = None
    streamed: bool = False


@dataclass
class _FutureTrailers:
    pass


@dataclass
class _OutgoingResponse:
    headers: _Fields
    status: int = 200
    body_taken: bool = False
    body: _OutgoingBody | None = None


@dataclass
class _OutgoingBody:
    response: GuestResponse | None = None
    """Where writes go, once the response is set (writes before that are kept here)."""
    pending: bytearray = field(default_factory=bytearray)
    stream_taken: bool = False
    finished: bool = False
    of_request: bool = False
    """The body of an outgoing request (not of the guest's response)."""
    on_finish: Callable[[], None] | None = None
    flushed: bool = False
    """Flushed before the response was set (then the response's ``flushed``)."""

    def write(self, data: bytes) -> None:
        if self.finished:
            raise GuestError("a write to a finished outgoing-body")
        state, response = _current(), self.response
        length = len(self.pending) if response is None else response.length
        if length + len(data) > state.max_output:
            if self.of_request:
                raise GuestError(f"an outgoing request body larger than {state.max_output} bytes")
            sandbox.stop_run("output")
            raise GuestError(f"the response body is larger than {state.max_output} bytes")
        if response is None:
            self.pending += data
            return
        response.body += data
        if len(response.body) >= STREAM_AFTER:
            _push(state, response)

    def flush(self) -> None:
        if self.response is None:
            self.flushed = True
        else:
            self.response.flushed = True


@dataclass
class _ResponseOutparam:
    used: bool = False


@dataclass
class _OutgoingRequest:
    headers: _Fields
    method: Variant = field(default_factory=lambda: Variant("get"))
    path_with_query: str | None = None
    scheme: Variant | None = None
    authority: str | None = None
    body_taken: bool = False
    body: _OutgoingBody | None = None


@dataclass
class _IncomingResponse:
    response: outbound.OutboundResponse
    consumed: bool = False


@dataclass
class _FutureResponse:
    """An outgoing request's answer: sent once its body is finished (or at once without
    one), then either a response or an error code; ``get`` hands it over once."""

    request: outbound.OutboundRequest | None = None
    options: _RequestOptions | None = None
    response: outbound.OutboundResponse | None = None
    error: outbound.OutboundError | None = None
    taken: bool = False

    @property
    def done(self) -> bool:
        return self.response is not None or self.error is not None

    def send(self) -> None:
        assert self.request is not None
        _before_wait()
        state = _current()
        options = self.options or _RequestOptions()
        seconds = [None if ns is None else ns / 1e9 for ns in (options.connect, options.first_byte)]
        try:
            self.response = outbound.send(
                state.outbound,
                self.request,
                deadline=sandbox.current_deadline(),
                max_body=state.max_output,
                connect_timeout=seconds[0],
                read_timeout=seconds[1],
            )
        except outbound.OutboundError as error:
            state.outgoing.append(("failed", f"{self.request.authority}: {error}"))
            deadline = sandbox.current_deadline()
            if deadline is not None and time.monotonic() >= deadline:
                sandbox.stop_run("deadline")
                raise GuestError(f"deadline exceeded in an outgoing request ({error})") from None
            self.error = error
            return
        state.outgoing.append(("sent", f"{self.request.authority}: {self.response.status}"))


@dataclass
class _RequestOptions:
    connect: int | None = None
    first_byte: int | None = None
    between_bytes: int | None = None


@dataclass
class _Error:
    message: str


@dataclass
class _Pollable:
    ready_at: int | None = None
    """``time.monotonic_ns()`` from which it is ready (None: always ready)."""
    future: _FutureResponse | None = None
    """Ready once this future is done instead (nothing else in the run can make it so)."""

    def ready(self) -> bool:
        if self.future is not None:
            return self.future.done
        return self.ready_at is None or time.monotonic_ns() >= self.ready_at

    def wake_at(self) -> int:
        """When waiting for it ends: its instant, or never (the run's deadline stops it)."""
        if self.future is not None or self.ready_at is None:
            return 2**63 if not self.ready() else 0
        return self.ready_at


def _wait_until(ready_at: int) -> None:
    """Sleeps until ``ready_at`` (monotonic ns), or traps at the run's deadline first."""
    if time.monotonic_ns() >= ready_at:
        return
    _before_wait()
    deadline = sandbox.current_deadline()
    while True:
        now = time.monotonic_ns()
        if now >= ready_at:
            return
        pause = (ready_at - now) / 1e9
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                sandbox.stop_run("deadline")
                raise GuestError("deadline exceeded while blocked in a host call")
            pause = min(pause, left)
        if not sandbox.may_block():
            sandbox.stop_run("budget")
            raise GuestError("a try may not wait in a host call")
        time.sleep(pause)


# Streaming: the client's connection, used from the run's thread


def _time_left(doing: str) -> float | None:
    """Seconds left before the run's deadline (None: no deadline); past it, traps."""
    deadline = sandbox.current_deadline()
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        sandbox.stop_run("deadline")
        raise GuestError(f"deadline exceeded while {doing}")
    return left


def _over_link(doing: str) -> None:
    """Checks that the run may wait on the client's connection: a try may not."""
    if not sandbox.may_block():
        sandbox.stop_run("budget")
        raise GuestError(f"a try may not wait while {doing}")


def _link_failed(error: LinkError, doing: str) -> None:
    """A link call that ran out of the run's time traps; other failures are the guest's to
    see, as a stream error."""
    deadline = sandbox.current_deadline()
    if error.timed_out and deadline is not None and time.monotonic() >= deadline:
        sandbox.stop_run("deadline")
        raise GuestError(f"deadline exceeded while {doing}") from None


def _push(state: Exchange, response: GuestResponse) -> None:
    """Sends what ``response`` holds to the client, starting the response first; a try stops
    instead (it never streams). `LinkError` when the client cannot take it."""
    link = state.link
    if link is None:
        return
    doing = "sending the response"
    _over_link(doing)
    declared = declared_length(response.headers)
    if declared is not None and response.length > declared:
        raise GuestError(f"the response body is longer than its content-length {declared}")
    try:
        if not response.started:
            link.start(response.status, list(header_pairs(response.headers)), _time_left(doing))
            response.started = True
        if response.body:
            data = bytes(response.body)
            response.body.clear()
            link.send(data, _time_left(doing))
            response.sent += len(data)
    except LinkError as error:
        _link_failed(error, doing)
        raise


def _before_wait() -> None:
    """Called before the guest waits: what it flushed goes out first (the response starts,
    even with no body yet, as a stream of events wants)."""
    state = _current()
    response = state.response
    if state.link is None or response is None or not response.flushed:
        return
    if response.error is not None or (response.started and not response.body):
        return
    response.flushed = False
    with contextlib.suppress(LinkError):  # the guest learns it at its next write
        _push(state, response)


def _receive(link: BodyLink) -> bytes:
    """The next part of the request body from the client (``b""`` at its end)."""
    doing = "reading the request body"
    _before_wait()
    _over_link(doing)
    try:
        return link.receive(_time_left(doing))
    except LinkError as error:
        _link_failed(error, doing)
        raise


def _stream_error(message: str) -> ResourceHost:
    """A stream's ``last-operation-failed`` payload: an ``error`` saying ``message``."""
    return _current().handle(_Error(message), _KIND["error"])


# ---------------------------------------------------------------------------------------------
# wasi:http/types


_METHODS = frozenset(
    {"get", "head", "post", "put", "delete", "connect", "options", "trace", "patch"}
)


def _method(name: str) -> Variant:
    lowered = name.lower()
    if name == name.upper() and lowered in _METHODS:
        return Variant(lowered)
    return Variant("other", name)


def _scheme(name: str) -> Variant:
    if name == "http":
        return Variant("HTTP")
    if name == "https":
        return Variant("HTTPS")
    return Variant("other", name)


def _fields_new(_store: Any) -> ResourceHost:
    return _current().handle(_Fields([]), _KIND["fields"])


def _fields_from_list(_store: Any, entries: list[tuple[str, bytes]]) -> ResourceHost | Variant:
    # result<fields, header-error>: a handle, or the error Variant
    kept = []
    for name, value in entries:
        error = _field_error(name, value)
        if error is not None:
            return error
        kept.append((name, value))
    return _current().handle(_Fields(kept), _KIND["fields"])


def _fields_get(_store: Any, this: Any, name: str) -> list[bytes]:
    fields: _Fields = _get(this, _Fields)
    lowered = name.lower()
    return [value for key, value in fields.entries if key.lower() == lowered]


def _fields_has(_store: Any, this: Any, name: str) -> bool:
    return bool(_fields_get(_store, this, name))


def _fields_set(_store: Any, this: Any, name: str, values: list[bytes]) -> Variant | None:
    # result<_, header-error>: None, or the error Variant
    fields: _Fields = _get(this, _Fields)
    if not fields.mutable:
        return Variant("immutable")
    checks: list[bytes | None] = [*values] if values else [None]
    for value in checks:
        error = _field_error(name, value)
        if error is not None:
            return error
    lowered = name.lower()
    fields.entries = [(k, v) for k, v in fields.entries if k.lower() != lowered]
    fields.entries.extend((name, value) for value in values)
    return None


def _fields_delete(_store: Any, this: Any, name: str) -> Variant | None:
    fields: _Fields = _get(this, _Fields)
    if not fields.mutable:
        return Variant("immutable")
    error = _field_error(name)
    if error is not None:
        return error
    lowered = name.lower()
    fields.entries = [(k, v) for k, v in fields.entries if k.lower() != lowered]
    return None


def _fields_append(_store: Any, this: Any, name: str, value: bytes) -> Variant | None:
    fields: _Fields = _get(this, _Fields)
    if not fields.mutable:
        return Variant("immutable")
    error = _field_error(name, value)
    if error is not None:
        return error
    fields.entries.append((name, value))
    return None


def _fields_entries(_store: Any, this: Any) -> list[tuple[str, bytes]]:
    return list(_get(this, _Fields).entries)


def _fields_clone(_store: Any, this: Any) -> ResourceHost:
    fields: _Fields = _get(this, _Fields)
    return _current().handle(_Fields(list(fields.entries)), _KIND["fields"])


def _request_method(_store: Any, this: Any) -> Variant:
    return _method(_get(this, _IncomingRequest).request.method)


def _request_path(_store: Any, this: Any) -> str | None:
    request: _IncomingRequest = _get(this, _IncomingRequest)
    return request.request.path_with_query


def _request_scheme(_store: Any, this: Any) -> Variant | None:
    return _scheme(_get(this, _IncomingRequest).request.scheme)


def _request_authority(_store: Any, this: Any) -> str | None:
    return _get(this, _IncomingRequest).request.authority or None


def _request_headers(_store: Any, this: Any) -> ResourceHost:
    request: _IncomingRequest = _get(this, _IncomingRequest)
    fields = _Fields(list(request.request.headers), mutable=False)
    return _current().handle(fields, _KIND["fields"])


def _request_consume(_store: Any, this: Any) -> ResourceHost | None:
    # result<incoming-body>: a handle, or None for the error (consumed already)
    request: _IncomingRequest = _get(this, _IncomingRequest)
    if request.consumed:
        return None
    request.consumed = True
    body = _IncomingBody(request.request.body, request.request.rest)
    return _current().handle(body, _KIND["incoming-body"])


def _body_stream(_store: Any, this: Any) -> ResourceHost | None:
    body: _IncomingBody = _get(this, _IncomingBody)
    if body.streamed:
        return None
    body.streamed = True
    stream = _InputStream(memoryview(body.data), rest=body.rest)
    return _current().handle(stream, _KIND["input-stream"])


def _body_finish(_store: Any, this: Any) -> ResourceHost:
    _take(this, _IncomingBody)
    return _current().handle(_FutureTrailers(), _KIND["future-trailers"])


def _trailers_subscribe(_store: Any, this: Any) -> ResourceHost:
    _get(this, _FutureTrailers)
    return _current().handle(_Pollable(), _KIND["pollable"])


def _trailers_get(_store: Any, this: Any) -> Variant:
    # option<result<result<option<trailers>, error-code>>>: ready, no trailers
    _get(this, _FutureTrailers)
    return Variant("ok", None)


def _response_new(_store: Any, headers: Any) -> ResourceHost:
    fields: _Fields = _take(headers, _Fields)
    fields.mutable = False
    return _current().handle(_OutgoingResponse(fields), _KIND["outgoing-response"])


def _response_status(_store: Any, this: Any) -> int:
    return int(_get(this, _OutgoingResponse).status)


def _response_set_status(_store: Any, this: Any, status: int) -> Variant:
    # result (no payloads): tagged
    response: _OutgoingResponse = _get(this, _OutgoingResponse)
    if not 100 <= status <= 999:
        return Variant("err")
    response.status = status
    return Variant("ok")


def _response_headers(_store: Any, this: Any) -> ResourceHost:
    response: _OutgoingResponse = _get(this, _OutgoingResponse)
    return _current().handle(response.headers, _KIND["fields"])


def _response_body(_store: Any, this: Any) -> ResourceHost | None:
    response: _OutgoingResponse = _get(this, _OutgoingResponse)
    if response.body_taken:
        return None
    response.body_taken = True
    response.body = _OutgoingBody()
    return _current().handle(response.body, _KIND["outgoing-body"])


def _outgoing_body_write(_store: Any, this: Any) -> ResourceHost | None:
    body: _OutgoingBody = _get(this, _OutgoingBody)
    if body.stream_taken:
        return None
    body.stream_taken = True
    stream = _OutputStream(body.write, lambda: body.finished, body.flush)
    return _current().handle(stream, _KIND["output-stream"])


def _outgoing_body_finish(_store: Any, this: Any, trailers: Any) -> Variant | None:
    # result<_, error-code>: None, or the error Variant
    body: _OutgoingBody = _take(this, _OutgoingBody)
    if trailers is not None:
        _take(trailers, _Fields)  # trailers are accepted and not sent (HTTP/1.1 responses)
    body.finished = True
    response = body.response
    if response is not None:
        response.finished = True
        if response.started and response.body:
            try:
                _push(_current(), response)
            except LinkError:
                return Variant("internal-error", "the client went away")
    if body.on_finish is not None:
        body.on_finish()
    return None


def _outparam_set(_store: Any, param: Any, response: Any) -> None:
    outparam: _ResponseOutparam = _take(param, _ResponseOutparam)
    state = _current()
    if outparam.used or state.response is not None:
        raise GuestError("response-outparam.set called twice")
    outparam.used = True
    if isinstance(response, Variant):  # err(error-code)
        state.response = GuestResponse(error=_error_code_text(response))
        return
    outgoing: _OutgoingResponse = _take(response, _OutgoingResponse)
    guest = GuestResponse(status=outgoing.status, headers=list(outgoing.headers.entries))
    body = outgoing.body
    if body is None:
        guest.finished = True  # no body asked for: an empty one
    else:
        guest.body += body.pending
        guest.finished = body.finished
        guest.flushed = body.flushed
        body.response = guest
        body.pending = bytearray()
    state.response = guest
    if len(guest.body) >= STREAM_AFTER and not guest.finished:
        with contextlib.suppress(LinkError):  # the guest learns it at its next write
            _push(state, guest)


def _outparam_informational(_store: Any, this: Any, status: int, headers: Any) -> Variant | None:
    _get(this, _ResponseOutparam)
    _take(headers, _Fields)
    return Variant("HTTP-protocol-error")


def _error_code_text(code: Variant) -> str:
    if code.payload is None:
        return code.tag
    return f"{code.tag}({code.payload!r})"


def _http_error_code(_store: Any, error: Any) -> None:
    _get(error, _Error)  # no error of this host carries an HTTP error code


# outgoing requests: built by the guest, sent or refused by the outgoing handler


def _outgoing_request_new(_store: Any, headers: Any) -> ResourceHost:
    fields: _Fields = _take(headers, _Fields)
    fields.mutable = False
    return _current().handle(_OutgoingRequest(fields), _KIND["outgoing-request"])


def _outgoing_request_body(_store: Any, this: Any) -> ResourceHost | None:
    request: _OutgoingRequest = _get(this, _OutgoingRequest)
    if request.body_taken:
        return None
    request.body_taken = True
    request.body = _OutgoingBody(of_request=True)
    return _current().handle(request.body, _KIND["outgoing-body"])


def _getter(kind: type[Any], attribute: str) -> Callable[..., Any]:
    """A method returning ``attribute`` of a ``kind`` object (outgoing requests, options)."""

    def get(_store: Any, this: Any) -> Any:
        return getattr(_get(this, kind), attribute)

    return get


def _setter(kind: type[Any], attribute: str) -> Callable[..., Any]:
    """A method setting ``attribute`` of a ``kind`` object; ``result`` (tagged) ok."""

    def set_(_store: Any, this: Any, value: Any) -> Variant:
        setattr(_get(this, kind), attribute, value)
        return Variant("ok")

    return set_


def _accessors(
    resource: str, kind: type[Any], attributes: dict[str, str]
) -> dict[str, Callable[..., Any]]:
    """The getter and ``set-`` method of each WIT name in ``attributes`` (to the Python name)."""
    methods = {}
    for name, attribute in attributes.items():
        methods[f"[method]{resource}.{name}"] = _getter(kind, attribute)
        methods[f"[method]{resource}.set-{name}"] = _setter(kind, attribute)
    return methods


def _outgoing_request_headers(_store: Any, this: Any) -> ResourceHost:
    request: _OutgoingRequest = _get(this, _OutgoingRequest)
    return _current().handle(request.headers, _KIND["fields"])


def _options_new(_store: Any) -> ResourceHost:
    return _current().handle(_RequestOptions(), _KIND["request-options"])


MAX_OUTGOING = 64
"""Outgoing requests one incoming request may make (sent or refused); the rest are refused
with ``connection-limit-reached``, so a guest cannot turn one request into a flood."""
_METHOD_NAMES = {name: name.upper() for name in _METHODS}
_SCHEME_NAMES = {"HTTP": "http", "HTTPS": "https"}


def _outbound_request(request: _OutgoingRequest) -> outbound.OutboundRequest:
    method, scheme = request.method, request.scheme
    other = method.tag == "other"
    method_name = str(method.payload) if other else _METHOD_NAMES[method.tag]
    if scheme is None:
        scheme_name = "https"
    elif scheme.tag == "other":
        scheme_name = str(scheme.payload)
    else:
        scheme_name = _SCHEME_NAMES[scheme.tag]
    return outbound.OutboundRequest(
        method=method_name,
        scheme=scheme_name,
        authority=request.authority or "",
        path_with_query=request.path_with_query or "/",
        headers=tuple(request.headers.entries),
        body=bytes(request.body.pending) if request.body is not None else b"",
    )


def _outgoing_handle(_store: Any, request: Any, options: Any) -> ResourceHost | Variant:
    # result<future-incoming-response, error-code>: a handle, or the error Variant
    outgoing: _OutgoingRequest = _take(request, _OutgoingRequest)
    chosen = _take(options, _RequestOptions) if options is not None else None
    state = _current()
    asked = _outbound_request(outgoing)
    try:
        if len(state.outgoing) >= MAX_OUTGOING:
            raise outbound.OutboundError(
                "connection-limit-reached",
                f"a request may make at most {MAX_OUTGOING} outgoing requests",
            )
        outbound.check(state.outbound, asked)
    except outbound.OutboundError as error:
        state.outgoing.append(("refused", str(error)))
        return _error_code(error)
    future = _FutureResponse(asked, chosen)
    body = outgoing.body
    if body is None or body.finished:
        future.send()
    else:  # sent once the guest finishes the body
        future.request = None

        def finished() -> None:
            future.request = _outbound_request(outgoing)
            future.send()

        body.on_finish = finished
    return state.handle(future, _KIND["future-incoming-response"])


def _error_code(error: outbound.OutboundError) -> Variant:
    if error.code == "DNS-error":
        payload: Any = Record()
        payload.rcode = None
        setattr(payload, "info-code", None)  # a WIT field name that is no Python identifier
        return Variant("DNS-error", payload)
    if error.code in ("HTTP-response-body-size", "internal-error"):
        return Variant(error.code, error.payload)
    return Variant(error.code)


def _future_subscribe(_store: Any, this: Any) -> ResourceHost:
    future: _FutureResponse = _get(this, _FutureResponse)
    return _current().handle(_Pollable(future=future), _KIND["pollable"])


def _future_get(_store: Any, this: Any) -> Variant:
    # option<result<result<incoming-response, error-code>>>: tagged option, then untagged
    # results (the response handle or the error Variant; None when taken already)
    future: _FutureResponse = _get(this, _FutureResponse)
    if not future.done:
        return Variant("none")
    if future.taken:
        return Variant("some", None)
    future.taken = True
    if future.error is not None:
        return Variant("some", _error_code(future.error))
    assert future.response is not None
    incoming = _IncomingResponse(future.response)
    return Variant("some", _current().handle(incoming, _KIND["incoming-response"]))


def _incoming_response_status(_store: Any, this: Any) -> int:
    return int(_get(this, _IncomingResponse).response.status)


def _incoming_response_headers(_store: Any, this: Any) -> ResourceHost:
    response: _IncomingResponse = _get(this, _IncomingResponse)
    fields = _Fields(list(response.response.headers), mutable=False)
    return _current().handle(fields, _KIND["fields"])


def _incoming_response_consume(_store: Any, this: Any) -> ResourceHost | None:
    response: _IncomingResponse = _get(this, _IncomingResponse)
    if response.consumed:
        return None
    response.consumed = True
    return _current().handle(_IncomingBody(response.response.body), _KIND["incoming-body"])


# ---------------------------------------------------------------------------------------------
# wasi:io


def _error_debug(_store: Any, this: Any) -> str:
    return str(_get(this, _Error).message)


def _pollable_ready(_store: Any, this: Any) -> bool:
    return bool(_get(this, _Pollable).ready())


def _pollable_block(_store: Any, this: Any) -> None:
    pollable: _Pollable = _get(this, _Pollable)
    if not pollable.ready():
        _wait_until(pollable.wake_at())


def _poll(_store: Any, pollables: list[Any]) -> list[int]:
    if not pollables:
        raise GuestError("poll of an empty list")
    items: list[_Pollable] = [_get(p, _Pollable) for p in pollables]
    ready = [index for index, item in enumerate(items) if item.ready()]
    if ready:
        return ready
    _wait_until(min(item.wake_at() for item in items))
    return [index for index, item in enumerate(items) if item.ready()]


def _subscribe_ready(_store: Any, this: Any) -> ResourceHost:
    return _current().handle(_Pollable(), _KIND["pollable"])


def _fill(stream: _InputStream) -> ResourceHost | None:
    """Makes sure ``stream`` has bytes to hand out, reading the next part of a streamed body
    when it has none; None if it has (or is at its end), else the failure for the guest."""
    while stream.position >= len(stream.data) and stream.rest is not None:
        try:
            chunk = _receive(stream.rest)
        except LinkError as error:
            stream.rest = None
            return _stream_error(str(error))
        if not chunk:
            stream.rest = None
        stream.data, stream.position = memoryview(chunk), 0
    return None


def _read(_store: Any, this: Any, length: int) -> bytes | ResourceHost | None:
    # result<list<u8>, stream-error>: the bytes, or the error's handle (last-operation-failed)
    # or None (closed)
    stream: _InputStream = _get(this, _InputStream)
    failed = _fill(stream)
    if failed is not None:
        return failed
    if stream.position >= len(stream.data):
        return None
    end = min(len(stream.data), stream.position + min(length, 1 << 20))
    chunk = bytes(stream.data[stream.position : end])
    stream.position = end
    return chunk


def _skip(_store: Any, this: Any, length: int) -> int | ResourceHost | None:
    stream: _InputStream = _get(this, _InputStream)
    failed = _fill(stream)
    if failed is not None:
        return failed
    if stream.position >= len(stream.data):
        return None
    end = min(len(stream.data), stream.position + length)
    skipped = end - stream.position
    stream.position = end
    return skipped


_WRITE_ROOM = 1 << 20


def _check_write(_store: Any, this: Any) -> int | None:
    # result<u64, stream-error>: the room, or None for closed
    stream: _OutputStream = _get(this, _OutputStream)
    return None if stream.closed() else _WRITE_ROOM


def _write(_store: Any, this: Any, contents: bytes) -> Variant:
    # result<_, stream-error>: tagged (both cases may be None)
    return _write_to(_get(this, _OutputStream), contents)


def _write_to(stream: _OutputStream, contents: bytes) -> Variant:
    if stream.closed():
        return Variant("err", None)
    try:
        stream.write(contents)
    except LinkError as error:
        return Variant("err", _stream_error(str(error)))
    return Variant("ok")


def _flush(_store: Any, this: Any) -> Variant:
    stream: _OutputStream = _get(this, _OutputStream)
    if stream.closed():
        return Variant("err", None)
    stream.flush()
    return Variant("ok")


def _write_and_flush(_store: Any, this: Any, contents: bytes) -> Variant:
    stream: _OutputStream = _get(this, _OutputStream)
    written = _write_to(stream, contents)
    if written.tag == "ok":
        stream.flush()
    return written


def _write_zeroes(_store: Any, this: Any, length: int) -> Variant:
    return _write(_store, this, bytes(min(length, _WRITE_ROOM)))


def _splice(_store: Any, this: Any, source: Any, length: int) -> int | ResourceHost | None:
    # result<u64, stream-error>: the count, or the error's handle, or None (closed)
    data = _read(_store, source, length)
    if not isinstance(data, bytes):
        return data
    written = _write(_store, this, data)
    if written.tag == "err":
        payload: ResourceHost | None = written.payload
        return payload
    return len(data)


def _log_write(data: bytes) -> None:
    log = _current().log
    room = _MAX_LOG - len(log)
    if room > 0:
        log += data[:room]


# ---------------------------------------------------------------------------------------------
# wasi:clocks, wasi:random, wasi:cli


def _monotonic_now(_store: Any) -> int:
    return time.monotonic_ns()


def _monotonic_resolution(_store: Any) -> int:
    return 1


def _subscribe_instant(_store: Any, when: int) -> ResourceHost:
    return _current().handle(_Pollable(when), _KIND["pollable"])


def _subscribe_duration(_store: Any, duration: int) -> ResourceHost:
    return _current().handle(_Pollable(time.monotonic_ns() + duration), _KIND["pollable"])


def _datetime(nanoseconds: int) -> Any:
    value: Any = Record()
    value.seconds, value.nanoseconds = divmod(nanoseconds, 1_000_000_000)
    return value


def _wall_now(_store: Any) -> Any:
    return _datetime(time.time_ns())


def _wall_resolution(_store: Any) -> Any:
    return _datetime(1)


def _random_bytes(_store: Any, length: int) -> bytes:
    if length > 1 << 20:
        raise GuestError("more than 1 MiB of random bytes asked for at once")
    return os.urandom(length)


def _random_u64(_store: Any) -> int:
    return int.from_bytes(os.urandom(8), "little")


def _insecure_seed(_store: Any) -> tuple[int, int]:
    return _random_u64(_store), _random_u64(_store)


def _environment(_store: Any) -> list[tuple[str, str]]:
    return list(_current().env)


def _arguments(_store: Any) -> list[str]:
    return list(_current().args)


def _exit(_store: Any, status: Variant) -> None:
    raise GuestError(f"the component exited ({status.tag}) while handling a request")


def _exit_with_code(_store: Any, code: int) -> None:
    raise GuestError(f"the component exited with code {code} while handling a request")


def _stdout(_store: Any) -> ResourceHost:
    return _current().handle(_OutputStream(_log_write), _KIND["output-stream"])


def _stdin(_store: Any) -> ResourceHost:
    return _current().handle(_InputStream(memoryview(b"")), _KIND["input-stream"])


def _no_terminal(_store: Any) -> None:
    return None


def _no_directories(_store: Any) -> list[Any]:
    return []


# ---------------------------------------------------------------------------------------------
# The linker


_FUNCTIONS: dict[str, dict[str, Callable[..., Any]]] = {
    "wasi:http/types": {
        "[constructor]fields": _fields_new,
        "[static]fields.from-list": _fields_from_list,
        "[method]fields.get": _fields_get,
        "[method]fields.has": _fields_has,
        "[method]fields.set": _fields_set,
        "[method]fields.delete": _fields_delete,
        "[method]fields.append": _fields_append,
        "[method]fields.entries": _fields_entries,
        "[method]fields.clone": _fields_clone,
        "[method]incoming-request.method": _request_method,
        "[method]incoming-request.path-with-query": _request_path,
        "[method]incoming-request.scheme": _request_scheme,
        "[method]incoming-request.authority": _request_authority,
        "[method]incoming-request.headers": _request_headers,
        "[method]incoming-request.consume": _request_consume,
        "[method]incoming-body.stream": _body_stream,
        "[static]incoming-body.finish": _body_finish,
        "[method]future-trailers.subscribe": _trailers_subscribe,
        "[method]future-trailers.get": _trailers_get,
        "[constructor]outgoing-response": _response_new,
        "[method]outgoing-response.status-code": _response_status,
        "[method]outgoing-response.set-status-code": _response_set_status,
        "[method]outgoing-response.headers": _response_headers,
        "[method]outgoing-response.body": _response_body,
        "[method]outgoing-body.write": _outgoing_body_write,
        "[static]outgoing-body.finish": _outgoing_body_finish,
        "[static]response-outparam.set": _outparam_set,
        "[method]response-outparam.send-informational": _outparam_informational,
        "http-error-code": _http_error_code,
        "[constructor]outgoing-request": _outgoing_request_new,
        "[method]outgoing-request.body": _outgoing_request_body,
        **_accessors(
            "outgoing-request",
            _OutgoingRequest,
            {
                "method": "method",
                "path-with-query": "path_with_query",
                "scheme": "scheme",
                "authority": "authority",
            },
        ),
        "[method]outgoing-request.headers": _outgoing_request_headers,
        "[method]future-incoming-response.subscribe": _future_subscribe,
        "[method]future-incoming-response.get": _future_get,
        "[method]incoming-response.status": _incoming_response_status,
        "[method]incoming-response.headers": _incoming_response_headers,
        "[method]incoming-response.consume": _incoming_response_consume,
        "[constructor]request-options": _options_new,
        **_accessors(
            "request-options",
            _RequestOptions,
            {
                "connect-timeout": "connect",
                "first-byte-timeout": "first_byte",
                "between-bytes-timeout": "between_bytes",
            },
        ),
    },
    "wasi:http/outgoing-handler": {"handle": _outgoing_handle},
    "wasi:io/error": {"[method]error.to-debug-string": _error_debug},
    "wasi:io/poll": {
        "[method]pollable.ready": _pollable_ready,
        "[method]pollable.block": _pollable_block,
        "poll": _poll,
    },
    "wasi:io/streams": {
        "[method]input-stream.read": _read,
        "[method]input-stream.blocking-read": _read,
        "[method]input-stream.skip": _skip,
        "[method]input-stream.blocking-skip": _skip,
        "[method]input-stream.subscribe": _subscribe_ready,
        "[method]output-stream.check-write": _check_write,
        "[method]output-stream.write": _write,
        "[method]output-stream.blocking-write-and-flush": _write_and_flush,
        "[method]output-stream.flush": _flush,
        "[method]output-stream.blocking-flush": _flush,
        "[method]output-stream.subscribe": _subscribe_ready,
        "[method]output-stream.write-zeroes": _write_zeroes,
        "[method]output-stream.blocking-write-zeroes-and-flush": _write_zeroes,
        "[method]output-stream.splice": _splice,
        "[method]output-stream.blocking-splice": _splice,
    },
    "wasi:clocks/monotonic-clock": {
        "now": _monotonic_now,
        "resolution": _monotonic_resolution,
        "subscribe-instant": _subscribe_instant,
        "subscribe-duration": _subscribe_duration,
    },
    "wasi:clocks/wall-clock": {"now": _wall_now, "resolution": _wall_resolution},
    "wasi:random/random": {"get-random-bytes": _random_bytes, "get-random-u64": _random_u64},
    "wasi:random/insecure": {
        "get-insecure-random-bytes": _random_bytes,
        "get-insecure-random-u64": _random_u64,
    },
    "wasi:random/insecure-seed": {"insecure-seed": _insecure_seed},
    "wasi:cli/environment": {
        "get-environment": _environment,
        "get-arguments": _arguments,
        "initial-cwd": _no_terminal,
    },
    "wasi:cli/exit": {"exit": _exit, "exit-with-code": _exit_with_code},
    "wasi:cli/stdin": {"get-stdin": _stdin},
    "wasi:cli/stdout": {"get-stdout": _stdout},
    "wasi:cli/stderr": {"get-stderr": _stdout},
    "wasi:filesystem/preopens": {"get-directories": _no_directories},
    "wasi:cli/terminal-stdin": {"get-terminal-stdin": _no_terminal},
    "wasi:cli/terminal-stdout": {"get-terminal-stdout": _no_terminal},
    "wasi:cli/terminal-stderr": {"get-terminal-stderr": _no_terminal},
}
"""The host functions, by interface (without its version) and function name."""


def _unversioned(name: str) -> str:
    return name.split("@", 1)[0]


def _drop(_store: Any, rep: int) -> None:
    state: Exchange | None = getattr(_local, "exchange", None)
    if state is not None:
        state.objects.pop(rep, None)


def _calls(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with the store of the call kept for `_get` (to read a handle's rep)."""

    def call(store: Any, *args: Any) -> Any:
        _local.store = store
        return function(store, *args)

    call.__name__ = function.__name__
    return call


def _trap(interface: str, name: str) -> Callable[..., Any]:
    def refuse(_store: Any, *_args: Any) -> Any:
        raise GuestError(
            f"{interface}.{name} is not provided to wasi:http components (no files, no sockets)"
        )

    return refuse


_OTHER_KINDS: dict[str, int] = {}
_other_lock = threading.Lock()


def _other_kind(resource: str) -> int:
    """A host type for a resource of an interface linked to traps, one per name, so that an
    interface using another's resource (``wasi:sockets/tcp`` the ``network``) sees the same."""
    with _other_lock:
        return _OTHER_KINDS.setdefault(resource, 0x7767_0000 + len(_OTHER_KINDS))


def define(linker: Linker, engine: wasmtime.Engine, component: Component) -> None:
    """Defines every interface ``component`` imports in ``linker``: this module's functions
    where it has them, a trap for the rest, and one host resource type per resource kind."""
    conversions.install()
    imports = component.type.imports(engine)
    with linker.root() as root:
        for name, extern in sorted(imports.items()):
            functions = _FUNCTIONS.get(_unversioned(name), {})
            interface = extern.ty
            if not isinstance(interface, ComponentInstanceType):
                raise wasmtime.WasmtimeError(f"import {name} is not an interface instance")
            with root.add_instance(name) as instance:
                for item_name, export in interface.exports(engine).items():
                    item = export.ty
                    if isinstance(item, ResourceType):
                        kind = _kind_of(item_name)
                        if kind is None:
                            kind = _other_kind(item_name)
                        instance.add_resource(item_name, ResourceType.host(kind), _drop)
                    elif isinstance(item, FuncType):
                        function = functions.get(item_name) or _trap(name, item_name)
                        conversions.add_func(instance, item_name, _calls(function), item)


def entry_lowers(engine: wasmtime.Engine, component: Component, entry: str) -> tuple[Any, ...]:
    """How to lower the parameters of ``handle`` in the exported interface ``entry`` (the
    request and the response outparam), for `conversions.call_export`."""
    interface = component.type.exports(engine)[entry].ty
    if not isinstance(interface, ComponentInstanceType):
        raise wasmtime.WasmtimeError(f"export {entry} is not an interface instance")
    handle = interface.exports(engine)["handle"].ty
    if not isinstance(handle, FuncType):
        raise wasmtime.WasmtimeError(f"{entry}.handle is not a function")
    return tuple(conversions.lowerer(ty) for _, ty in handle.params)


def incoming_handles(state: Exchange) -> tuple[ResourceHost, ResourceHost]:
    """The two handles ``handle`` takes: the request and the response outparam."""
    request = state.handle(_IncomingRequest(state.request), _KIND["incoming-request"])
    outparam = state.handle(_ResponseOutparam(), _KIND["response-outparam"])
    return request, outparam


def declared_length(fields: Iterable[tuple[str, bytes]]) -> int | None:
    """The body length a response's ``content-length`` field declares (None: none; -1: a
    value that is no length)."""
    for name, value in fields:
        if name.lower() == "content-length":
            text = value.strip()
            return int(text) if text.isdigit() else -1
    return None


def header_pairs(fields: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, str], ...]:
    """A guest's fields as the agent's response headers (values as Latin-1 text)."""
    return tuple((name, value.decode("latin-1")) for name, value in fields)
