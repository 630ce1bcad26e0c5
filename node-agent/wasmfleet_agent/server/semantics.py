"""HTTP's rules at the agent's edge, as pure functions: the request target, the Host header,
and which response headers a module may set.

A module is a CGI program: it trusts what the agent tells it about the request and cannot
frame the response itself. So the agent checks what HTTP/1.1 (RFC 9112, RFC 9110) requires of
a server before a module runs (a target that names a path, a Host that is a host), and keeps
to itself what belongs to the connection, not to the resource (hop-by-hop headers, ``Date``
and ``Server``), whatever the module writes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = [
    "HOP_BY_HOP",
    "SERVER_OWNED",
    "HostError",
    "Target",
    "TargetError",
    "forwardable_headers",
    "parse_host",
    "parse_target",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers about one connection (RFC 9110 §7.6.1, and the older ``Proxy-Connection``)."""

SERVER_OWNED = frozenset({"content-length", "date", "server"})
"""Headers the agent writes itself: the body's length, and who answered when (as nginx's
``proxy_hide_header`` does for ``Date`` and ``Server`` of an upstream)."""

_ABSOLUTE = re.compile(r"(?i)(https?)://([^/?#]*)(.*)")
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=]+")
_PORT = re.compile(r"[0-9]{0,5}")


class TargetError(ValueError):
    """The request target cannot be served; ``status`` is the answer (400 or 501)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HostError(ValueError):
    """A Host (or an absolute target's authority) that is not a host and an optional port."""


@dataclass(frozen=True)
class Target:
    """A request target in origin form, with what it says decoded where CGI wants it decoded."""

    raw_path: str
    """The path as sent (percent-encoded)."""
    query: str | None
    """The query as sent, without its ``?``; None when the target has no ``?``."""
    path: str
    """The path percent-decoded, as ``PATH_INFO`` (RFC 3875 §4.1.5)."""
    authority: str | None = None
    """The host and port of an absolute-form target (which overrides ``Host``)."""

    @property
    def request_uri(self) -> str:
        """The origin-form target as sent: ``REQUEST_URI``."""
        return self.raw_path if self.query is None else f"{self.raw_path}?{self.query}"


def parse_target(raw: str, *, decode: bool = True) -> Target:
    """The target of a request line; raises `TargetError`.

    Origin form (``/path?query``) and absolute form (``http://host/path?query``) are served.
    The authority form of ``CONNECT`` and the asterisk form of ``OPTIONS *`` name no resource
    a module could answer for (501). A fragment or a byte outside printable ASCII is a
    malformed request (400). With ``decode`` (a module that reads CGI variables), so is a path
    whose percent-decoding is not UTF-8 text without NUL: the path reaches the module as an
    environment value, which holds UTF-8 and ends at a NUL. Without it (a ``wasi:http``
    component, which gets the target as sent), ``path`` is the path as sent.
    """
    if not raw.isascii() or not raw.isprintable() or " " in raw:
        raise TargetError(400, "the request target has bytes outside printable ASCII")
    authority = None
    rest = raw
    if not raw.startswith("/"):
        absolute = _ABSOLUTE.fullmatch(raw)
        if absolute is None:
            raise TargetError(501, "only origin-form and absolute-form request targets are served")
        authority = absolute[2]
        rest = absolute[3] if absolute[3].startswith("/") else "/" + absolute[3]
    if "#" in rest:
        raise TargetError(400, "a request target has no fragment")
    raw_path, question, query = rest.partition("?")
    if not decode:
        return Target(raw_path, query if question else None, raw_path, authority)
    decoded = unquote_to_bytes(raw_path)
    if b"\0" in decoded:
        raise TargetError(400, "a NUL byte (%00) in the path cannot reach the module")
    try:
        path = decoded.decode()
    except UnicodeDecodeError:
        raise TargetError(400, "the path is not UTF-8 once percent-decoded") from None
    return Target(raw_path, query if question else None, path, authority)


def parse_host(value: str) -> tuple[str, int | None]:
    """The host name and port of a ``Host`` value (RFC 9110 §7.2); raises `HostError`.

    A registered name or IPv4 address, or an IPv6 address in brackets (returned without
    them), then an optional ``:port``. Anything else, such as ``a/b?c#d`` or ``user@host``,
    would reach the module's ``SERVER_NAME`` and ``X_FULL_URL`` as a lie about the request.
    """
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise HostError(f"Host {value[:80]!r} has an unclosed IPv6 bracket")
        name, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise HostError(f"Host {value[:80]!r} is not an IPv6 address") from None
    else:
        name, colon, port_text = value.partition(":")
        rest = colon + port_text
        if not _REG_NAME.fullmatch(name):
            raise HostError(f"Host {value[:80]!r} is not a host name or address")
    if not rest:
        return name, None
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
        raise HostError(f"Host {value[:80]!r} has a malformed port")
    if not rest[1:]:
        return name, None
    port = int(rest[1:])
    if port > 65535:
        raise HostError(f"Host {value[:80]!r} has a port beyond 65535")
    return name, port


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The module's response headers the client may see, in order.

    Hop-by-hop headers, those the module's own ``Connection`` header names (RFC 9110
    §7.6.1), and the ones the agent owns are dropped: the agent frames the response and
    manages the connection, so a module's ``Connection: close`` or ``Transfer-Encoding``
    would describe a connection it does not have.
    """
    listed = list(headers)
    named = {
        token.strip().lower()
        for name, value in listed
        if name.lower() == "connection"
        for token in value.split(",")
    }
    dropped = HOP_BY_HOP | SERVER_OWNED | named
    return [(name, value) for name, value in listed if name.lower() not in dropped]
