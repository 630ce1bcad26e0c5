"""HTTP's rules at the agent's edge: request targets, Host values, forwardable headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasmfleet_agent.server.semantics import (
    HostError,
    Target,
    TargetError,
    forwardable_headers,
    parse_host,
    parse_target,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", Target("/", None, "/")),
        ("/a?", Target("/a", "", "/a")),
        ("/a%2Fb/caf%C3%A9?x=%3C+y", Target("/a%2Fb/caf%C3%A9", "x=%3C+y", "/a/b/café")),
        ("/p?a=%00&b=?c", Target("/p", "a=%00&b=?c", "/p")),
        ("http://h.example:81/p?q", Target("/p", "q", "/p", "h.example:81")),
        ("HTTPS://h?q", Target("/", "q", "/", "h")),
    ],
)
def test_targets_split_into_raw_and_decoded_parts(raw: str, expected: Target) -> None:
    assert parse_target(raw) == expected


def test_the_request_uri_is_the_origin_form_as_sent() -> None:
    assert parse_target("http://h/p%20q?").request_uri == "/p%20q?"
    assert parse_target("/p").request_uri == "/p"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("*", 501),
        ("example.com:443", 501),
        ("ftp://h/p", 501),
        ("/p#frag", 400),
        ("/%00", 400),
        ("/%FF", 400),
        ("/a b", 400),
        ("/é", 400),
        ("/\x7f", 400),
    ],
)
def test_targets_that_cannot_be_served_say_how(raw: str, status: int) -> None:
    with pytest.raises(TargetError) as refused:
        parse_target(raw)
    assert refused.value.status == status


@pytest.mark.parametrize("raw", ["/%00", "/%FF/x", "/a%2Fb"])
def test_a_target_for_a_wasi_http_component_is_not_decoded(raw: str) -> None:
    """A component gets the target as sent: nothing in it must decode."""
    target = parse_target(raw + "?q=%00", decode=False)
    assert target == Target(raw, "q=%00", raw)
    with pytest.raises(TargetError):
        parse_target("/a b", decode=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("svc", ("svc", None)),
        ("svc.ns.svc.cluster.local:8080", ("svc.ns.svc.cluster.local", 8080)),
        ("10.0.0.1:", ("10.0.0.1", None)),
        ("[::1]:80", ("::1", 80)),
        ("[2001:db8::2]", ("2001:db8::2", None)),
    ],
)
def test_host_values_give_a_name_and_a_port(value: str, expected: tuple[str, int | None]) -> None:
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "a/b?c#d", "user@host", "a b", "h:p", "h:65536", "h:1:2", "[::1", "[nothost]", "%41"],
)
def test_host_values_that_are_not_hosts_are_refused(value: str) -> None:
    with pytest.raises(HostError):
        parse_host(value)


def test_hop_by_hop_connection_named_and_server_owned_headers_are_dropped() -> None:
    headers = [
        ("Content-Type", "text/plain"),
        ("Connection", "close, X-Private"),
        ("x-private", "1"),
        ("Keep-Alive", "timeout=1"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Sum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Content-Length", "5"),
        ("Server", "evil"),
        ("Date", "yesterday"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert forwardable_headers(headers) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_any_ascii_target_parses_or_is_refused_with_a_status(raw: str) -> None:
    status = None
    try:
        target = parse_target(raw)
    except TargetError as error:
        status = error.status
    if status is not None:
        assert status in (400, 501)
        return
    assert "\0" not in target.path
    assert target.request_uri.startswith("/")


@given(st.text(max_size=40))
def test_any_host_value_parses_or_is_refused(value: str) -> None:
    try:
        name, port = parse_host(value)
    except HostError:
        return
    assert name
    assert port is None or 0 <= port <= 65535
    assert not set("/?#@ ") & set(name)
