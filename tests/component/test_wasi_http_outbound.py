"""Outbound HTTP from a wasi:http guest: only to the origins a service lists.

The Python probe component (``tests/modules/http-probe-python``) sends requests through the
agent's ``wasi:http/outgoing-handler`` to real upstream servers on loopback, plain and TLS
(a certificate from a CA made for the test, trusted through ``SSL_CERT_FILE``, and one from a
CA the agent does not trust). Each upstream counts what reaches it, so a refusal is shown to
happen before any connection.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wasmfleet_harness.agent import ServedModule
from wasmfleet_harness.pki import CertificateAuthority
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.upstream import Upstream

DEADLINE = 3.0
"""Room for a thousand outgoing requests from the Python guest (about 0.8 s here)."""
SLACK = 0.5
MAX_RESPONSE = 256 << 10


def _tls(ca: CertificateAuthority, stem: str) -> ssl.SSLContext:
    pair = ca.issue(stem, common_name="127.0.0.1", server_hosts=("127.0.0.1",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return context


@dataclass
class Setup:
    agent: ServedModule
    plain: Upstream
    secure: Upstream
    untrusted: Upstream
    unlisted: Upstream
    closed_port: int


@pytest.fixture(scope="module")
def setup(workspace: Workspace, wasm_modules: dict[str, Path]) -> Iterator[Setup]:
    directory = workspace.subdir("wasi-http-outbound")
    trusted = CertificateAuthority(directory / "trusted")
    stranger = CertificateAuthority(directory / "stranger", name="not-trusted-ca")
    plain, unlisted = Upstream(big=MAX_RESPONSE + 1), Upstream()
    secure = Upstream(tls=_tls(trusted, "secure"))
    untrusted = Upstream(tls=_tls(stranger, "untrusted"))
    closed = Upstream()
    closed_port = closed.port
    closed.close()  # listed, but nothing listens there any more
    allowed = [
        plain.origin,
        secure.origin,
        untrusted.origin,
        f"http://127.0.0.1:{closed_port}",
        # a name that resolves to loopback: listed, and still refused
        f"http://localhost:{plain.port}",
        # every name under wild.invalid (a reserved name: none of them resolves)
        f"http://*.wild.invalid:{plain.port}",
    ]
    agent = ServedModule(
        directory,
        wasm_modules["http-probe-python"],
        extra=[
            "--timeout",
            f"{int(DEADLINE * 1000)}ms",
            "--max-response",
            str(MAX_RESPONSE),
            *(argument for origin in allowed for argument in ("--allow-outbound", origin)),
        ],
        name="wasi-http-outbound",
    )
    agent.process.env = {**os.environ, "SSL_CERT_FILE": str(trusted.cert_path)}
    try:
        with agent:
            yield Setup(agent, plain, secure, untrusted, unlisted, closed_port)
    finally:
        for upstream in (plain, secure, untrusted, unlisted):
            upstream.close()


def _probe(setup: Setup, path: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(setup.agent.url + path, data=body)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"text": error.read().decode(errors="replace")}


def test_a_listed_origin_answers_and_the_upstream_sees_the_guests_request(setup: Setup) -> None:
    before = len(setup.plain.seen)
    status, answer = _probe(setup, f"/outbound?{setup.plain.origin}/data?x=1")
    assert status == 200
    assert answer["status"] == 200
    assert answer["body"] == "upstream says hi\n"
    assert ["X-Upstream", "yes"] in answer["headers"]  # type: ignore[operator]
    (seen,) = setup.plain.seen[before:]
    assert (seen["method"], seen["path"]) == ("GET", "/data?x=1")
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["host"] == f"127.0.0.1:{setup.plain.port}"
    assert headers["x-from"] == "probe"


def test_a_request_body_written_after_handle_is_sent_whole(setup: Setup) -> None:
    before = len(setup.plain.seen)
    status, answer = _probe(setup, f"/outbound-post?{setup.plain.origin}/upload", b"a" * 5000)
    assert (status, answer["status"]) == (200, 200)
    (seen,) = setup.plain.seen[before:]
    assert (seen["method"], seen["body"]) == ("POST", "a" * 5000)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("unlisted", "ErrorCode_HttpRequestDenied"),
        ("https-to-a-plain-origin", "ErrorCode_HttpRequestDenied"),
        ("name-resolving-to-loopback", "ErrorCode_DestinationIpProhibited"),
    ],
)
def test_a_refused_request_never_reaches_the_upstream(
    setup: Setup, target: str, error: str
) -> None:
    url, upstream = {
        "unlisted": (f"{setup.unlisted.origin}/x", setup.unlisted),
        "https-to-a-plain-origin": (f"https://127.0.0.1:{setup.plain.port}/x", setup.plain),
        "name-resolving-to-loopback": (f"http://localhost:{setup.plain.port}/x", setup.plain),
    }[target]
    before = len(upstream.seen)
    status, answer = _probe(setup, f"/outbound?{url}")
    assert (status, answer) == (200, {"error": error})
    assert len(upstream.seen) == before


def test_a_name_under_a_listed_wildcard_is_let_through_and_the_wildcards_own_name_is_not(
    setup: Setup,
) -> None:
    port = setup.plain.port
    # let through the policy: the lookup is what fails (the name does not exist)
    status, answer = _probe(setup, f"/outbound?http://api.wild.invalid:{port}/x")
    assert status == 200
    assert str(answer.get("error", "")).startswith("ErrorCode_Dns"), answer
    for url in (f"http://wild.invalid:{port}/x", f"http://api.wild.invalid:{port + 1}/x"):
        assert _probe(setup, f"/outbound?{url}") == (200, {"error": "ErrorCode_HttpRequestDenied"})


def test_redirects_are_handed_to_the_guest_not_followed(setup: Setup) -> None:
    status, answer = _probe(setup, f"/outbound?{setup.plain.origin}/redirect")
    assert (status, answer["status"]) == (200, 302)
    assert ["Location", "http://127.0.0.1:9/elsewhere"] in answer["headers"]  # type: ignore[operator]


def test_an_upstream_too_slow_for_the_deadline_ends_the_request_at_the_deadline(
    setup: Setup,
) -> None:
    started = time.monotonic()
    status, answer = _probe(setup, f"/outbound?{setup.plain.origin}/slow")
    seconds = time.monotonic() - started
    setup.plain.release.set()
    assert status == 504, answer
    assert DEADLINE <= seconds < DEADLINE + SLACK


def test_an_upstream_body_past_the_cap_is_the_spec_error(setup: Setup) -> None:
    status, answer = _probe(setup, f"/outbound?{setup.plain.origin}/big")
    assert (status, answer) == (200, {"error": "ErrorCode_HttpResponseBodySize"})


def test_a_listed_origin_with_nothing_listening_is_connection_refused(setup: Setup) -> None:
    status, answer = _probe(setup, f"/outbound?http://127.0.0.1:{setup.closed_port}/x")
    assert (status, answer) == (200, {"error": "ErrorCode_ConnectionRefused"})


def test_https_verifies_the_upstreams_certificate(setup: Setup) -> None:
    status, answer = _probe(setup, f"/outbound?{setup.secure.origin}/tls")
    assert (status, answer["status"], answer["body"]) == (200, 200, "upstream says hi\n")
    before = len(setup.untrusted.seen)
    status, answer = _probe(setup, f"/outbound?{setup.untrusted.origin}/tls")
    assert (status, answer) == (200, {"error": "ErrorCode_TlsCertificateError"})
    assert len(setup.untrusted.seen) == before, "no request went over the unverified channel"


def _metric(setup: Setup, outcome: str) -> float:
    name = "wasmfleet_agent_outbound_requests_total"
    for line in setup.agent.metrics().splitlines():
        if line.startswith(name) and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_refusal_is_counted_and_logged_on_the_agent(setup: Setup) -> None:
    before = _metric(setup, "refused")
    origin = setup.unlisted.origin
    assert _probe(setup, f"/outbound?{origin}/x")[1] == {"error": "ErrorCode_HttpRequestDenied"}
    assert _metric(setup, "refused") == before + 1
    line = f"{origin} is not an allowed outbound host"
    wait_until(
        lambda: any(
            "outbound request refused" in text and line in text
            for text in setup.agent.process.log_tail(200).splitlines()
        ),
        timeout=10,
        message=setup.agent.process.log_tail,
    )


def test_a_guest_asking_for_a_thousand_requests_gets_64_and_its_neighbours_are_unaffected(
    setup: Setup,
) -> None:
    before = len(setup.plain.seen)
    sent = _metric(setup, "sent")
    status, outcomes = _probe(setup, f"/many-outbound?1000&{setup.plain.origin}/many")
    assert status == 200, outcomes
    assert outcomes == {"200": 64, "ErrorCode_ConnectionLimitReached": 936}
    assert len(setup.plain.seen) - before == 64
    assert _metric(setup, "sent") == sent + 64
    status, answer = _probe(setup, f"/outbound?{setup.plain.origin}/after")
    assert (status, answer["status"]) == (200, 200), "the next request has its own 64"
