"""A wasi:http service in Python that answers with what it fetched from another service.

``GET /`` fetches the URL in the ``UPSTREAM`` variable and answers ``relayed: <its body>``;
``GET /?url=URL`` fetches URL instead, so a request to an origin the WasmService does not
list shows the agent's refusal (``HTTP-request-denied``) in the answer, with status 502.
"""

import os
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, types


def _read_all(message) -> bytes:
    body = message.consume()
    stream = body.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(64 * 1024)
        except Err:
            break
    stream.__exit__(None, None, None)
    types.IncomingBody.finish(body)
    return bytes(data)


def _fetch(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET of ``url``; an error becomes (502, its name)."""
    parts = urlsplit(url)
    request = types.OutgoingRequest(types.Fields())
    request.set_scheme(types.Scheme_Https() if parts.scheme == "https" else types.Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    try:
        future = outgoing_handler.handle(request, None)
        while (result := future.get()) is None:
            future.subscribe().block()
    except Err as error:
        return 502, f"refused: {type(error.value).__name__}\n".encode()
    if isinstance(result.value, Err):
        return 502, f"failed: {type(result.value.value).__name__}\n".encode()
    response = result.value.value
    return 200, b"relayed: " + _read_all(response)


def _answer(out, status: int, text: bytes) -> None:
    headers = types.Fields.from_list(
        [("content-type", b"text/plain; charset=utf-8"), ("content-length", b"%d" % len(text))]
    )
    response = types.OutgoingResponse(headers)
    response.set_status_code(status)
    body = response.body()
    types.ResponseOutparam.set(out, Ok(response))
    stream = body.write()
    stream.blocking_write_and_flush(text)
    stream.__exit__(None, None, None)
    types.OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
        query = parse_qs(urlsplit(request.path_with_query() or "/").query)
        url = query.get("url", [os.environ.get("UPSTREAM", "")])[0]
        if not url:
            _answer(response_out, 500, b"UPSTREAM is not set\n")
            return
        status, text = _fetch(url)
        _answer(response_out, status, text)
