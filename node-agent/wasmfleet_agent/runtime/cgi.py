"""The WAGI request model: a request as CGI variables, the module's stdout as a response.

Input (RFC 3875 names): ``REQUEST_METHOD``, ``PATH_INFO`` (percent-decoded),
``QUERY_STRING`` (exactly as sent: CGI leaves decoding to the program, so ``%3C`` stays
``%3C`` and ``+`` stays ``+``), ``SCRIPT_NAME`` (empty: the module is mounted at the root),
``REQUEST_URI`` (the target as sent), WAGI's ``X_FULL_URL`` and
``X_MATCHED_ROUTE`` (``/...``: every path), ``SERVER_NAME``, ``SERVER_PORT``,
``SERVER_PROTOCOL``, ``SERVER_SOFTWARE``, ``GATEWAY_INTERFACE``, ``REMOTE_ADDR``,
``REMOTE_HOST``, ``CONTENT_TYPE`` and ``CONTENT_LENGTH`` when there is a body, and one
``HTTP_<NAME>`` per request header (upper case, ``-`` as ``_``; repeated headers joined with
``, ``). A ``Proxy`` header is never passed (``HTTP_PROXY`` would poison the guest's proxy
setting), nor is a header whose name has anything but letters, digits and ``-`` (with an
underscore, ``X_Token`` would arrive as the same variable as ``X-Token``, as nginx also
guards against), nor a value with a NUL byte or with bytes that are not UTF-8 (HTTP allows
any byte from 0x80 up in a value; a WASI environment holds only UTF-8). A server name that
is not UTF-8 (from such a ``Host`` header) becomes ``localhost``.

Output: when stdout starts with a header line (``name: value``), it is a CGI response: header
lines up to the first empty line, then the body. ``status: 404 Not Found`` sets the status;
``location:`` without a status redirects (302); a missing ``content-type`` defaults to
``text/plain``. Anything else is a module that just prints: the whole output is the body of a
``200 text/plain`` response. A header block without its terminating empty line, a malformed
header line in the block, a header value that is not UTF-8 (the agent writes headers as UTF-8,
so anything else would reach the client changed) or a status that is not a final one (three
ASCII digits from 200 to 599: an interim 1xx answers nothing, and the connection's next answer
would be read as this one's) is the module's fault and answers 502.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from wasmfleet_api.workload import CGI_RESERVED_ENV

__all__ = [
    "CGI_VARIABLES",
    "CgiError",
    "CgiResponse",
    "parse_output",
    "request_variables",
]

CGI_VARIABLES = frozenset(CGI_RESERVED_ENV)
"""Names the agent sets per request; a module's own env may not use them (nor ``HTTP_*``)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_NAME = re.compile(r"[0-9A-Za-z-]+")
_STATUS = re.compile(r"([0-9]{3})(?:[ \t].*)?", re.DOTALL)
# Both are used with fullmatch: "$" would also match before a trailing newline.
_SKIPPED_HEADERS = frozenset({"content-type", "content-length", "proxy"})
_MAX_HEADER_BLOCK = 64 * 1024


def reserved(name: str) -> bool:
    """True for a variable name the agent sets per request."""
    return name in CGI_VARIABLES or name.startswith("HTTP_")


def request_variables(
    *,
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    body_length: int,
    remote_addr: str,
    server_name: str,
    server_port: int,
    server_software: str,
    protocol: str = "HTTP/1.1",
    scheme: str = "http",
    request_uri: str | None = None,
) -> list[tuple[str, str]]:
    """The CGI variables of one request (and WAGI's ``X_FULL_URL``, ``X_MATCHED_ROUTE``).

    ``path`` is decoded, ``query`` and ``request_uri`` (the origin-form target, by default
    ``path?query``) are as the client sent them.
    """
    if not _passable(server_name):
        server_name = "localhost"
    uri = request_uri if request_uri is not None else (f"{path}?{query}" if query else path)
    variables = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", method),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
        ("REQUEST_URI", uri),
        ("X_FULL_URL", f"{scheme}://{server_name}:{server_port}{uri}"),
        ("X_MATCHED_ROUTE", "/..."),
        ("SERVER_NAME", server_name),
        ("SERVER_PORT", str(server_port)),
        ("SERVER_PROTOCOL", protocol),
        ("SERVER_SOFTWARE", server_software),
        ("REMOTE_ADDR", remote_addr),
        ("REMOTE_HOST", remote_addr),
    ]
    merged: dict[str, str] = {}
    content_type = None
    for name, value in headers:
        if not _passable(value):
            continue
        lowered = name.lower()
        if lowered == "content-type":
            content_type = value
        if lowered in _SKIPPED_HEADERS or not _HEADER_NAME.fullmatch(name):
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    if body_length or content_type is not None:
        variables.append(("CONTENT_LENGTH", str(body_length)))
        if content_type is not None:
            variables.append(("CONTENT_TYPE", content_type))
    variables.extend(merged.items())
    return variables


def _passable(value: str) -> bool:
    """True when ``value`` can be an environment value: no NUL, and UTF-8 on the wire (aiohttp
    decodes other bytes to lone surrogates, which wasmtime's UTF-8 environment refuses)."""
    if "\0" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class CgiResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class CgiError(ValueError):
    """The module's output is not a valid CGI response."""


def _split_line(line: bytes) -> tuple[bytes, bytes] | None:
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        return None
    return name, value.strip(b" \t")


def parse_output(output: bytes) -> CgiResponse:
    """The response a module's stdout describes; raises `CgiError` when it is malformed."""
    first_end = output.find(b"\n")
    first = output if first_end < 0 else output[:first_end]
    if _split_line(first.rstrip(b"\r")) is None:
        return CgiResponse(200, (("content-type", "text/plain"),), output)
    lf = output.find(b"\n\n")
    crlf = output.find(b"\r\n\r\n")
    ends = [(index, 2) for index in (lf,) if index >= 0] + [
        (index, 4) for index in (crlf,) if index >= 0
    ]
    if not ends:
        raise CgiError("the module's output has header lines but no empty line ending them")
    end, width = min(ends)
    if end > _MAX_HEADER_BLOCK:
        raise CgiError(f"the module's header block is longer than {_MAX_HEADER_BLOCK} bytes")
    body = output[end + width :]
    status: int | None = None
    headers: list[tuple[str, str]] = []
    has_type = False
    location = False
    for raw in output[:end].split(b"\n"):
        line = raw.rstrip(b"\r")
        parsed = _split_line(line)
        if parsed is None:
            shown = line[:60].decode("utf-8", "replace")
            raise CgiError(f"the module wrote an invalid header line: {shown!r}")
        name_bytes, value_bytes = parsed
        name = name_bytes.decode("ascii")  # the token pattern is ASCII
        if any((byte < 32 and byte != 9) or byte == 127 for byte in value_bytes):
            raise CgiError(f"the module wrote control characters in header {name!r}")
        lowered = name.lower()
        if lowered == "status":
            code = _STATUS.fullmatch(value_bytes.decode("latin-1"))
            if code is None or not 200 <= int(code[1]) <= 599:
                shown = value_bytes[:40].decode("utf-8", "replace")
                raise CgiError(
                    f"the module wrote a status that is not a final HTTP status "
                    f"(three digits, 200-599): {shown!r}"
                )
            status = int(code[1])
            continue
        try:
            value = value_bytes.decode()
        except UnicodeDecodeError:
            raise CgiError(f"the module wrote a header {name!r} that is not UTF-8") from None
        if lowered == "content-type":
            has_type = True
        if lowered == "location":
            location = True
        headers.append((name, value))
    if status is None:
        status = 302 if location else 200
    if not has_type:
        headers.append(("content-type", "text/plain"))
    return CgiResponse(status, tuple(headers), body)
