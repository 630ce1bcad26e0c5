"""Outbound HTTP for wasi:http guests: denied unless the service lists the origin.

`OutboundPolicy` holds the origins (scheme, host, port) a WasmService lists in
``spec.network.allowedOutboundHosts``; `send` makes one request for a guest, on the guest's
own thread, within the run's deadline:

- a request to an origin not listed fails with ``HTTP-request-denied`` before anything is
  resolved or connected;
- the agent resolves a listed name itself and connects to the address it checked (no second
  lookup): a name that resolves to a loopback, link-local, unspecified or multicast address
  fails with ``destination-IP-prohibited``, unless the origin was listed by that address, so
  a DNS record cannot turn an allowed name into a way to the node's own services or a cloud
  metadata endpoint;
- redirects are not followed (the guest gets the 3xx and may ask for the next origin, which
  is checked again);
- the name lookup, connecting and every read end by the run's deadline (and by the guest's
  own ``request-options`` timeouts when shorter; a lookup still running then fails with
  ``DNS-timeout``, its thread left to the resolver's own timeouts, at most
  `LOOKUP_THREADS` of them at once); a response body larger than the cap fails with
  ``HTTP-response-body-size``;
- HTTPS verifies the server's certificate for the listed name against the system's CA store
  (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured).

The response is read whole (within the cap) before the guest sees it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from wasmfleet_api.workload import WILDCARD, parse_outbound_host, render_outbound_host

__all__ = [
    "OutboundError",
    "OutboundPolicy",
    "OutboundRequest",
    "OutboundResponse",
    "check",
    "send",
]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class OutboundError(Exception):
    """A request that failed, with the ``wasi:http`` error code that says how."""

    def __init__(self, code: str, detail: str = "", payload: object = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.payload = payload


@dataclass(frozen=True)
class OutboundPolicy:
    """The origins a service may send requests to, as ``scheme://host:port`` strings."""

    allowed: tuple[str, ...] = ()

    @classmethod
    def parse(cls, origins: Iterable[str]) -> OutboundPolicy:
        """From what a WasmService lists (raises ValueError for an entry that is no origin)."""
        return cls(tuple(sorted({render_outbound_host(*parse_outbound_host(o)) for o in origins})))

    @cached_property
    def _triples(self) -> frozenset[tuple[str, str, int]]:
        return frozenset(parse_outbound_host(origin) for origin in self.allowed)

    def allows(self, scheme: str, host: str, port: int) -> bool:
        """Whether a request to ``host`` may go: listed as it is, or a name under a listed
        ``*.`` name (never an address, never the listed name itself)."""
        host = host.lower()
        if (scheme, host, port) in self._triples:
            return True
        if _literal(host) is not None:
            return False
        labels = host.split(".")
        return any(
            (scheme, WILDCARD + ".".join(labels[start:]), port) in self._triples
            for start in range(1, len(labels) - 1)
        )


@dataclass(frozen=True)
class OutboundRequest:
    method: str
    scheme: str
    authority: str
    path_with_query: str
    headers: tuple[tuple[str, bytes], ...]
    body: bytes


@dataclass(frozen=True)
class OutboundResponse:
    status: int
    headers: tuple[tuple[str, bytes], ...]
    body: bytes


def check(policy: OutboundPolicy, request: OutboundRequest) -> tuple[str, int]:
    """The request's ``(host, port)`` if the policy allows it; `OutboundError` otherwise."""
    if request.scheme not in ("http", "https"):
        raise OutboundError("HTTP-request-denied", f"scheme {request.scheme!r} is not served")
    try:  # the authority as an origin: host (name, IPv4, [IPv6]) and optional port, no user
        _, host, port = parse_outbound_host(f"{request.scheme}://{request.authority}")
        if host.startswith(WILDCARD):
            raise ValueError("a wildcard is no host to send to")
    except ValueError:
        raise OutboundError(
            "HTTP-request-URI-invalid", f"bad authority {request.authority[:100]!r}"
        ) from None
    if not policy.allows(request.scheme, host, port):
        origin = render_outbound_host(request.scheme, host, port)
        raise OutboundError("HTTP-request-denied", f"{origin} is not an allowed outbound host")
    return host, port


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    return None


def _prohibited(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
    )


LOOKUP_THREADS = 4
"""Name lookups under way at once in one process; more wait their turn (within their time)."""
_lookups = concurrent.futures.ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="lookup")

Lookup = Callable[[str, int], list[str]]
"""The addresses a name resolves to (``socket.gaierror`` when it does not)."""


def _getaddrinfo(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def resolve(
    host: str, port: int, *, timeout: float | None = None, lookup: Lookup = _getaddrinfo
) -> str:
    """The address to connect to for ``host``: the literal itself, or the first address its
    name resolves to that is not prohibited (`OutboundError` when there is none). A lookup
    that takes longer than ``timeout`` seconds fails with ``DNS-timeout`` (None: the system
    resolver's own timeouts alone)."""
    if _literal(host) is not None:
        return host
    try:
        addresses = _lookups.submit(lookup, host, port).result(timeout)
    except concurrent.futures.TimeoutError:
        raise OutboundError("DNS-timeout", f"{host}: no answer within {timeout:.3g}s") from None
    except socket.gaierror as error:
        raise OutboundError("DNS-error", f"{host}: {error.strerror}") from None
    for text in addresses:
        address = _literal(text)
        if address is not None and not _prohibited(address):
            return text
    raise OutboundError(
        "destination-IP-prohibited",
        f"{host} resolves to {', '.join(sorted(set(addresses)))}: loopback, link-local and "
        "multicast addresses are reached only when listed by address",
    )


def send(
    policy: OutboundPolicy,
    request: OutboundRequest,
    *,
    deadline: float | None,
    max_body: int,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
) -> OutboundResponse:
    """Sends ``request`` if the policy allows it and returns the whole response (blocking).
    Raises `OutboundError` with the error code for every failure."""
    host, port = check(policy, request)

    def left(limit: float | None) -> float:
        remaining = 3600.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            raise OutboundError("HTTP-response-timeout", "the request's deadline passed")
        return remaining if limit is None else min(remaining, limit)

    address = resolve(host, port, timeout=left(connect_timeout))
    try:
        raw = socket.create_connection((address, port), timeout=left(connect_timeout))
    except ConnectionRefusedError:
        raise OutboundError("connection-refused", f"{address}:{port}") from None
    except TimeoutError:
        raise OutboundError("connection-timeout", f"{address}:{port}") from None
    except OSError as error:
        raise OutboundError("destination-unavailable", f"{address}:{port}: {error}") from None
    connection = http.client.HTTPConnection(host, port)
    try:
        sock: socket.socket = raw
        if request.scheme == "https":
            context = tls if tls is not None else ssl.create_default_context()
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
            except ssl.SSLCertVerificationError as error:
                raise OutboundError("TLS-certificate-error", str(error.verify_message)) from None
            except (ssl.SSLError, OSError) as error:
                raise OutboundError("TLS-protocol-error", str(error)) from None
        sock.settimeout(left(read_timeout))
        connection.sock = sock
        return _exchange(connection, request, max_body)
    finally:
        connection.close()


def _exchange(
    connection: http.client.HTTPConnection,
    request: OutboundRequest,
    max_body: int,
) -> OutboundResponse:
    try:
        connection.putrequest(
            request.method, request.path_with_query, skip_host=True, skip_accept_encoding=True
        )
        connection.putheader("Host", request.authority)
        for name, value in request.headers:
            if name.lower() not in ("host", "content-length"):
                connection.putheader(name, value)
        if request.body or request.method in ("POST", "PUT", "PATCH"):
            connection.putheader("Content-Length", str(len(request.body)))
        connection.endheaders(request.body or None)
        response = connection.getresponse()
        headers = tuple(
            (name, value.encode("latin-1"))
            for name, value in response.getheaders()
            if name.lower() not in _HOP_BY_HOP
        )
        body = response.read(max_body + 1)
    except TimeoutError:
        raise OutboundError("HTTP-response-timeout", "no answer by the deadline") from None
    except http.client.HTTPException as error:
        raise OutboundError("HTTP-protocol-error", repr(error)) from None
    except OSError as error:
        raise OutboundError("connection-terminated", str(error)) from None
    if len(body) > max_body:
        raise OutboundError(
            "HTTP-response-body-size", f"more than {max_body} bytes", payload=max_body
        )
    return OutboundResponse(response.status, headers, body)
