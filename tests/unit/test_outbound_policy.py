"""The outbound policy of wasi:http guests: which origins, which addresses."""

from __future__ import annotations

import threading
import time

import pytest

from wasmfleet_agent.runtime.outbound import (
    OutboundError,
    OutboundPolicy,
    OutboundRequest,
    check,
    resolve,
)


def _request(scheme: str, authority: str) -> OutboundRequest:
    return OutboundRequest("GET", scheme, authority, "/", (), b"")


POLICY = OutboundPolicy.parse(
    [
        "https://API.example.com",
        "http://svc.team.svc:8080",
        "http://[fd00::5]:81",
        "http://10.0.0.5",
    ]
)


def test_origins_are_kept_with_their_port_and_in_lower_case() -> None:
    assert POLICY.allowed == (
        "http://10.0.0.5:80",
        "http://[fd00::5]:81",
        "http://svc.team.svc:8080",
        "https://api.example.com:443",
    )


@pytest.mark.parametrize(
    ("scheme", "authority"),
    [
        ("https", "api.example.com"),
        ("https", "Api.Example.com:443"),
        ("http", "svc.team.svc:8080"),
        ("http", "[fd00::5]:81"),
        ("http", "10.0.0.5:80"),
    ],
)
def test_a_listed_origin_passes(scheme: str, authority: str) -> None:
    check(POLICY, _request(scheme, authority))


@pytest.mark.parametrize(
    ("scheme", "authority", "code"),
    [
        ("http", "api.example.com", "HTTP-request-denied"),  # listed for https only
        ("https", "api.example.com:8443", "HTTP-request-denied"),
        ("https", "evil.example.com", "HTTP-request-denied"),
        ("http", "svc.team.svc", "HTTP-request-denied"),  # port 80, not 8080
        ("ftp", "api.example.com", "HTTP-request-denied"),
        ("https", "user@api.example.com", "HTTP-request-URI-invalid"),
        ("https", "api.example.com/path", "HTTP-request-URI-invalid"),
        ("https", "", "HTTP-request-URI-invalid"),
    ],
)
def test_anything_else_is_refused_with_the_spec_error(
    scheme: str, authority: str, code: str
) -> None:
    with pytest.raises(OutboundError) as refused:
        check(POLICY, _request(scheme, authority))
    assert refused.value.code == code


def test_nothing_is_allowed_by_default() -> None:
    with pytest.raises(OutboundError, match="HTTP-request-denied"):
        check(OutboundPolicy(), _request("https", "api.example.com"))


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0", "224.0.0.1"]
)
def test_an_address_listed_literally_is_reached_as_listed(address: str) -> None:
    assert resolve(address, 80) == address


def test_a_name_that_resolves_to_loopback_is_prohibited() -> None:
    with pytest.raises(OutboundError) as refused:
        resolve("localhost", 80)
    assert refused.value.code == "destination-IP-prohibited"


def test_a_name_that_does_not_resolve_is_a_dns_error() -> None:
    with pytest.raises(OutboundError) as failed:
        resolve("no-such-host.invalid", 80)
    assert failed.value.code == "DNS-error"


def test_a_lookup_slower_than_its_time_is_a_dns_timeout_within_that_time() -> None:
    release = threading.Event()

    def stuck(host: str, port: int) -> list[str]:
        release.wait(10)  # a resolver that does not answer
        return []

    started = time.monotonic()
    try:
        with pytest.raises(OutboundError) as failed:
            resolve("slow.example.com", 80, timeout=0.2, lookup=stuck)
    finally:
        release.set()
    assert failed.value.code == "DNS-timeout"
    assert 0.2 <= time.monotonic() - started < 1.0


def test_a_lookup_within_its_time_answers() -> None:
    def answers(host: str, port: int) -> list[str]:
        return ["127.0.0.1", "192.0.2.7"]  # loopback skipped: not listed by address

    assert resolve("api.example.com", 443, timeout=1.0, lookup=answers) == "192.0.2.7"


WILD = OutboundPolicy.parse(["https://*.Example.com", "http://*.team.svc:8080"])


@pytest.mark.parametrize(
    ("scheme", "authority"),
    [
        ("https", "api.example.com"),
        ("https", "a.b.c.EXAMPLE.com:443"),
        ("http", "web.team.svc:8080"),
    ],
)
def test_a_wildcard_lets_every_name_under_it_pass(scheme: str, authority: str) -> None:
    assert WILD.allowed == ("http://*.team.svc:8080", "https://*.example.com:443")
    check(WILD, _request(scheme, authority))


@pytest.mark.parametrize(
    ("scheme", "authority", "code"),
    [
        ("https", "example.com", "HTTP-request-denied"),  # the name itself is not under it
        ("https", "badexample.com", "HTTP-request-denied"),
        ("https", "example.com.evil.net", "HTTP-request-denied"),
        ("http", "api.example.com", "HTTP-request-denied"),  # another scheme
        ("https", "api.example.com:8443", "HTTP-request-denied"),  # another port
        ("http", "web.team.svc", "HTTP-request-denied"),
        ("https", "*.example.com", "HTTP-request-URI-invalid"),  # a wildcard is no host
        ("https", "93.184.216.34", "HTTP-request-denied"),  # an address is under no name
    ],
)
def test_a_wildcard_lets_nothing_else_pass(scheme: str, authority: str, code: str) -> None:
    with pytest.raises(OutboundError) as refused:
        check(WILD, _request(scheme, authority))
    assert refused.value.code == code


@pytest.mark.parametrize(
    "origin", ["https://*", "https://*.com", "https://a.*.com", "http://*x.io"]
)
def test_other_wildcards_are_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="not an outbound origin"):
        OutboundPolicy.parse([origin])
