"""A wasi:http probe in Python: each path exercises one part of the agent's wasi:http host.

GET /echo...      the request as the guest saw it, as JSON (method, path with query, scheme,
                  authority, header entries, body length and SHA-256)
/status?N         answers status N
/headers          a response with a repeated header and mixed-case names
/refused          what the fields API refuses (forbidden names, bad syntax, immutable headers)
/outbound?URL     a GET of URL; answers with the error code the host gave, or the response
                  (status, headers, body)
/outbound-post?URL  the same as a POST of this request's body (written after handle)
/many-outbound?N&URL  N GETs of URL; answers with how many ended how
/loop             never returns (a busy loop)
/sleep?MS         blocks on a monotonic-clock pollable for MS milliseconds
/big?BYTES        a response body of BYTES bytes, written in 64 KiB writes
/big-then-raise?BYTES  writes BYTES bytes of body, then raises (the instance traps)
/stream-echo      answers with the request body, each part written and flushed as it is read
/ticks?N&MS       N lines, each written and flushed, MS milliseconds apart
/alloc?MIB        allocates MIB mebibytes and answers with their count
/env              the environment the guest was given
/file             tries to open a file (no filesystem is granted)
/print            writes a line to stdout and one to stderr, then answers
/raise            an uncaught Python exception (the instance traps)
/noresponse       returns without setting a response
/unfinished       sets a response and drops its body without finishing it
/error            sets an error code instead of a response
"""

import hashlib
import json
import os
import sys

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import monotonic_clock, outgoing_handler, types

CHUNK = 64 * 1024


def _method_name(method: types.Method) -> str:
    if isinstance(method, types.Method_Other):
        return method.value
    return type(method).__name__.split("_", 1)[1].upper()


def _scheme_name(scheme) -> str:
    if scheme is None:
        return ""
    if isinstance(scheme, types.Scheme_Other):
        return scheme.value
    return type(scheme).__name__.split("_", 1)[1].lower()


def _read_body(message) -> bytes:
    """The whole body of an incoming request or response."""
    body = message.consume()
    stream = body.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(CHUNK)
        except Err:
            break
    stream.__exit__(None, None, None)
    types.IncomingBody.finish(body)
    return bytes(data)


def _respond(out, status: int, body: bytes, headers=None, finish: bool = True) -> None:
    fields = types.Fields.from_list(headers or [("content-type", b"text/plain")])
    response = types.OutgoingResponse(fields)
    response.set_status_code(status)
    outgoing = response.body()
    types.ResponseOutparam.set(out, Ok(response))
    stream = outgoing.write()
    for start in range(0, len(body), CHUNK):
        stream.check_write()
        stream.write(body[start : start + CHUNK])
    stream.blocking_flush()
    stream.__exit__(None, None, None)
    if finish:
        types.OutgoingBody.finish(outgoing, None)


def _stream_echo(request, out) -> None:
    """Writes back each part of the request body as soon as it is read."""
    fields = types.Fields.from_list([("content-type", b"application/octet-stream")])
    response = types.OutgoingResponse(fields)
    outgoing = response.body()
    types.ResponseOutparam.set(out, Ok(response))
    sink = outgoing.write()
    body = request.consume()
    source = body.stream()
    while True:
        try:
            data = source.blocking_read(CHUNK)
        except Err:
            break
        for start in range(0, len(data), 4096):  # blocking-write-and-flush takes 4 KiB at most
            sink.blocking_write_and_flush(data[start : start + 4096])
    source.__exit__(None, None, None)
    types.IncomingBody.finish(body)
    sink.__exit__(None, None, None)
    types.OutgoingBody.finish(outgoing, None)


def _ticks(out, count: int, pause_ms: int) -> None:
    response = types.OutgoingResponse(types.Fields.from_list([("content-type", b"text/plain")]))
    outgoing = response.body()
    types.ResponseOutparam.set(out, Ok(response))
    sink = outgoing.write()
    for index in range(count):
        if index:
            monotonic_clock.subscribe_duration(pause_ms * 1_000_000).block()
        sink.blocking_write_and_flush(b"tick %d\n" % index)
    sink.__exit__(None, None, None)
    types.OutgoingBody.finish(outgoing, None)


def _json(out, value) -> None:
    _respond(out, 200, json.dumps(value).encode(), [("content-type", b"application/json")])


def _error_name(error) -> str:
    value = error.value if isinstance(error, Err) else error
    return type(value).__name__


def _refused() -> dict:
    found = {}
    for name, value in (("connection", b"close"), ("bad name", b"x"), ("x-ok", b"a\r\nb")):
        try:
            types.Fields.from_list([(name, value)])
            found[name] = "accepted"
        except Err as error:
            found[name] = _error_name(error)
    return found


def _outbound(url: str, body: bytes | None = None) -> dict:
    """One outgoing request (a POST of ``body`` when given, written after ``handle``)."""
    scheme, _, rest = url.partition("://")
    authority, _, path = rest.partition("/")
    request = types.OutgoingRequest(types.Fields.from_list([("x-from", b"probe")]))
    request.set_method(types.Method_Post() if body is not None else types.Method_Get())
    request.set_scheme(types.Scheme_Https() if scheme == "https" else types.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query("/" + path)
    outgoing = request.body() if body is not None else None
    try:
        future = outgoing_handler.handle(request, None)
    except Err as error:
        return {"error": _error_name(error)}
    if outgoing is not None:
        stream = outgoing.write()
        stream.blocking_write_and_flush(body)
        stream.__exit__(None, None, None)
        types.OutgoingBody.finish(outgoing, None)
    while (result := future.get()) is None:
        future.subscribe().block()
    if isinstance(result.value, Err):
        return {"error": _error_name(result.value)}
    response = result.value.value
    headers = [[name, value.decode("latin-1")] for name, value in response.headers().entries()]
    received = _read_body(response)
    return {"status": response.status(), "headers": headers, "body": received.decode("latin-1")}


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
        target = request.path_with_query() or "/"
        path, _, query = target.partition("?")
        if path.startswith("/echo"):
            headers = request.headers()
            entries = [[name, value.decode("latin-1")] for name, value in headers.entries()]
            refused = "accepted"
            try:
                headers.append("x-late", b"1")
            except Err as error:
                refused = _error_name(error)
            headers.__exit__(None, None, None)
            body = _read_body(request)
            _json(
                response_out,
                {
                    "method": _method_name(request.method()),
                    "path_with_query": target,
                    "scheme": _scheme_name(request.scheme()),
                    "authority": request.authority(),
                    "headers": entries,
                    "append_to_request_headers": refused,
                    "body_length": len(body),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                },
            )
        elif path == "/status":
            _respond(response_out, int(query), b"status " + query.encode() + b"\n")
        elif path == "/headers":
            headers = [("Content-Type", b"text/plain"), ("X-Repeated", b"one"),
                       ("x-repeated", b"two"), ("X-Mixed-Case", b"Value")]  # fmt: skip
            _respond(response_out, 200, b"headers\n", headers)
        elif path == "/refused":
            _json(response_out, _refused())
        elif path == "/outbound":
            _json(response_out, _outbound(query))
        elif path == "/many-outbound":
            count, _, url = query.partition("&")
            outcomes: dict[str, int] = {}
            for _ in range(int(count)):
                result = _outbound(url)
                key = str(result.get("error", result.get("status")))
                outcomes[key] = outcomes.get(key, 0) + 1
            _json(response_out, outcomes)
        elif path == "/loop":
            while True:
                pass
        elif path == "/outbound-post":
            _json(response_out, _outbound(query, _read_body(request)))
        elif path == "/sleep":
            monotonic_clock.subscribe_duration(int(query) * 1_000_000).block()
            _respond(response_out, 200, b"slept\n")
        elif path == "/big":
            _respond(response_out, 200, b"x" * int(query))
        elif path == "/big-then-raise":
            _respond(response_out, 200, b"x" * int(query), finish=False)
            raise RuntimeError("the probe raised after writing its body")
        elif path == "/stream-echo":
            _stream_echo(request, response_out)
        elif path == "/ticks":
            count, _, pause = query.partition("&")
            _ticks(response_out, int(count), int(pause))
        elif path == "/alloc":
            block = bytearray(int(query) << 20)
            _respond(response_out, 200, b"%d\n" % (len(block) >> 20))
        elif path == "/env":
            _json(response_out, dict(os.environ))
        elif path == "/file":
            try:
                with open("/etc/hostname", "rb") as handle:
                    _respond(response_out, 200, handle.read())
            except OSError as error:
                _respond(response_out, 200, f"no file: {type(error).__name__}\n".encode())
        elif path == "/print":
            print("to stdout from the probe")
            print("to stderr from the probe", file=sys.stderr)
            _respond(response_out, 200, b"printed\n")
        elif path == "/raise":
            raise RuntimeError("the probe raised")
        elif path == "/noresponse":
            return
        elif path == "/unfinished":
            _respond(response_out, 200, b"partial", finish=False)
        elif path == "/error":
            types.ResponseOutparam.set(response_out, Err(types.ErrorCode_InternalError("probe")))
        else:
            _respond(response_out, 404, b"unknown probe path\n")
