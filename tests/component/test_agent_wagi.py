"""The WAGI contract, byte for byte: what the module sees of a request, what the client gets.

Requests go over raw TCP to ``probe_agent`` (one process, and two worker processes), so the
client sends exactly what a test says and sees exactly what the agent answers. Request
variables follow RFC 3875 as WAGI does: ``QUERY_STRING`` and ``REQUEST_URI`` are the raw
bytes of the request target, ``PATH_INFO`` is the path percent-decoded, headers become
``HTTP_*``. On the way back every status the module can write gets a valid final answer:
its own when it is a final status (200-599), 502 otherwise, never an interim 1xx that would
shift every later answer on the connection.
"""

from __future__ import annotations

import asyncio
import gzip
import re
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from wasmfleet_harness import rawhttp
from wasmfleet_harness.agent import ServedModule

PLAIN = b"GET /plain HTTP/1.1\r\nHost: wagi\r\n\r\n"
PLAIN_BODY = b"just text, no headers\n"


def _environment(body: bytes) -> dict[str, str]:
    """The probe's ``/env`` output: one ``NAME=value`` a line."""
    pairs = (line.split("=", 1) for line in body.decode().splitlines() if "=" in line)
    return dict(pairs)


def _echoed(body: bytes) -> dict[str, bytes]:
    """The probe's ``/echo`` output; ``body`` is everything after ``body=``."""
    head, _, rest = body.partition(b"\nbody=")
    fields = dict(line.split(b"=", 1) for line in head.splitlines() if b"=" in line)
    fields[b"body"] = rest[:-1]  # the probe ends the body with a newline
    return {key.decode(): value for key, value in fields.items()}


async def _ask(agent: ServedModule, raw: bytes) -> rawhttp.Answer:
    answer = await rawhttp.exchange(agent.port, raw)
    assert answer is not None, f"the agent closed without answering {raw[:200]!r}"
    return answer


async def _env(agent: ServedModule, target: bytes, *headers: bytes) -> dict[str, str]:
    lines = b"".join(header + b"\r\n" for header in headers)
    answer = await _ask(agent, b"GET " + target + b" HTTP/1.1\r\nHost: wagi\r\n" + lines + b"\r\n")
    assert answer.status == 200, answer
    return _environment(answer.body)


def _module_writes(header_block: bytes) -> bytes:
    """A request that makes the probe write ``header_block`` (then a blank line and a body)."""
    return (
        b"GET /rawheader?" + quote(header_block, safe="").encode() + b" HTTP/1.1\r\nHost: w\r\n\r\n"
    )


# ---- the request, as the module sees it ------------------------------------------------------


async def test_the_query_string_reaches_the_module_exactly_as_sent(
    probe_agent: ServedModule,
) -> None:
    query = b"a=%3Cscript%3E&b=%253C&c=x+y&d=%00hidden&e=%E9"
    answer = await _ask(probe_agent, b"GET /echo?" + query + b" HTTP/1.1\r\nHost: wagi\r\n\r\n")
    assert answer.status == 200
    assert _echoed(answer.body)["query"] == query


async def test_a_percent_encoded_nul_in_the_query_does_not_cut_any_variable(
    probe_agent: ServedModule,
) -> None:
    env = await _env(probe_agent, b"/env/x?a=%00&b=after")
    assert env["QUERY_STRING"] == "a=%00&b=after"
    assert env["REQUEST_URI"] == "/env/x?a=%00&b=after"
    assert env["X_FULL_URL"] == f"http://wagi:{probe_agent.port}/env/x?a=%00&b=after"
    assert env["PATH_INFO"] == "/env/x"


async def test_the_path_is_percent_decoded_and_the_request_uri_is_raw(
    probe_agent: ServedModule,
) -> None:
    env = await _env(probe_agent, b"/env/caf%C3%A9/a%2Fb/%2e%2e/+")
    assert env["PATH_INFO"] == "/env/café/a/b/../+"
    assert env["REQUEST_URI"] == "/env/caf%C3%A9/a%2Fb/%2e%2e/+"
    assert env["QUERY_STRING"] == ""


@pytest.mark.parametrize("target", [b"/env/%FF", b"/env/%C3", b"/env/a%00b"])
async def test_a_path_that_decodes_to_no_valid_text_is_a_400(
    probe_agent: ServedModule, target: bytes
) -> None:
    answer = await _ask(probe_agent, b"GET " + target + b" HTTP/1.1\r\nHost: wagi\r\n\r\n")
    assert answer.status == 400, answer


async def test_an_absolute_form_target_names_the_server_and_the_path(
    probe_agent: ServedModule,
) -> None:
    answer = await _ask(
        probe_agent,
        b"GET http://other.example:81/env/p?q=1 HTTP/1.1\r\nHost: ignored.example\r\n\r\n",
    )
    assert answer.status == 200, answer
    env = _environment(answer.body)
    assert env["SERVER_NAME"] == "other.example"
    assert env["PATH_INFO"] == "/env/p"
    assert env["QUERY_STRING"] == "q=1"
    assert env["REQUEST_URI"] == "/env/p?q=1"
    assert env["X_FULL_URL"] == f"http://other.example:{probe_agent.port}/env/p?q=1"


@pytest.mark.parametrize(
    "host",
    [b"a/b?c#d", b"a b", b"user@host", b"host:port", b"host:99999", b"[::1", b"caf\xc3\xa9"],
)
async def test_a_host_header_that_is_not_a_host_is_a_400(
    probe_agent: ServedModule, host: bytes
) -> None:
    answer = await _ask(probe_agent, b"GET /env HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert answer.status == 400, answer


@pytest.mark.parametrize(
    ("host", "name"),
    [(b"svc.example:8080", "svc.example"), (b"[::1]:80", "::1"), (b"10.1.2.3", "10.1.2.3")],
)
async def test_a_valid_host_header_names_the_server(
    probe_agent: ServedModule, host: bytes, name: str
) -> None:
    answer = await _ask(probe_agent, b"GET /env HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert answer.status == 200, answer
    assert _environment(answer.body)["SERVER_NAME"] == name


async def test_the_server_protocol_is_the_requests_own(probe_agent: ServedModule) -> None:
    answer = await _ask(probe_agent, b"GET /env HTTP/1.0\r\n\r\n")
    assert answer.status == 200
    assert _environment(answer.body)["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert (await _env(probe_agent, b"/env"))["SERVER_PROTOCOL"] == "HTTP/1.1"


@pytest.mark.parametrize("request_line", [b"GET /env\r\n", b"GET /env HTTP/2.0\r\nHost: w\r\n"])
async def test_http_versions_other_than_1_0_and_1_1_are_refused(
    probe_agent: ServedModule, request_line: bytes
) -> None:
    answer = await rawhttp.exchange(probe_agent.port, request_line + b"\r\n")
    assert answer is None or answer.status in (400, 505), answer


@pytest.mark.parametrize(
    "request_line", [b"CONNECT example.com:443 HTTP/1.1", b"OPTIONS * HTTP/1.1"]
)
async def test_targets_that_name_no_path_never_reach_the_module(
    probe_agent: ServedModule, request_line: bytes
) -> None:
    answer = await _ask(probe_agent, request_line + b"\r\nHost: example.com:443\r\n\r\n")
    assert answer.status == 501, answer
    assert b"raw header body" not in answer.body


@pytest.mark.parametrize("encoding", [b"gzip", b"GZIP", b"x-gzip", b"gzip, gzip", b"br"])
async def test_an_encoded_body_reaches_the_module_as_sent_with_its_encoding(
    probe_agent: ServedModule, encoding: bytes
) -> None:
    body = gzip.compress(b"hello")
    head = (
        b"POST /echo HTTP/1.1\r\nHost: wagi\r\nContent-Encoding: "
        + encoding
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    answer = await _ask(probe_agent, head + body)
    assert answer.status == 200, answer
    assert _echoed(answer.body)["body"] == body
    env = await _env(probe_agent, b"/env", b"Content-Encoding: " + encoding)
    assert env["HTTP_CONTENT_ENCODING"] == encoding.decode()


# ---- Expect: 100-continue ------------------------------------------------------------------


async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    probe_agent: ServedModule,
) -> None:
    body = b"b" * 32_000
    head = (
        b"POST /echo HTTP/1.1\r\nHost: wagi\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    async with rawhttp.connected(probe_agent.port) as (reader, writer):
        await rawhttp.send(writer, head)
        interim = await rawhttp.within(reader.readuntil(b"\r\n\r\n"), "the 100 Continue")
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        await rawhttp.send(writer, body)
        answer = await rawhttp.read_answer(reader, bodiless=False)
    assert answer is not None
    assert answer.status == 200
    assert _echoed(answer.body)["body"] == body


async def test_expect_100_continue_with_a_body_over_the_limit_gets_413_at_once(
    probe_agent: ServedModule,
) -> None:
    head = (
        b"POST /echo HTTP/1.1\r\nHost: wagi\r\nExpect: 100-continue\r\n"
        b"Content-Length: 900000\r\n\r\n"
    )
    async with rawhttp.connected(probe_agent.port) as (reader, writer):
        await rawhttp.send(writer, head)
        answer = await rawhttp.read_answer(reader, bodiless=False)
    assert answer is not None
    assert answer.status == 413


async def test_an_expectation_the_agent_cannot_meet_is_a_417(probe_agent: ServedModule) -> None:
    answer = await _ask(
        probe_agent,
        b"POST /echo HTTP/1.1\r\nHost: wagi\r\nExpect: teapot\r\nContent-Length: 0\r\n\r\n",
    )
    assert answer.status == 417


# ---- the response, as the client gets it ---------------------------------------------------


@pytest.mark.parametrize("code", [b"100 Continue", b"101 Switching", b"102 Processing", b"199"])
async def test_an_interim_status_from_the_module_is_a_502_and_the_connection_stays_in_step(
    probe_agent: ServedModule, code: bytes
) -> None:
    async with rawhttp.connected(probe_agent.port) as (reader, writer):
        await rawhttp.send(writer, _module_writes(b"Status: " + code))
        first = await rawhttp.read_answer(reader, bodiless=False)
        await rawhttp.send(writer, PLAIN)
        second = await rawhttp.read_answer(reader, bodiless=False)
    assert first is not None
    assert first.status == 502
    assert "x-wasmfleet-error-id" in first.headers
    assert second is not None
    assert (second.status, second.body) == (200, PLAIN_BODY)


@pytest.mark.parametrize(
    "code", [b"\xb2\xb2\xb2 x", b"\xc2\xb2\xc2\xb2\xc2\xb2 x", b"\xd9\xa2\xd9\xa0\xd9\xa0", b"600"]
)
async def test_a_status_that_is_not_three_ascii_digits_in_range_is_a_502_with_an_error_id(
    probe_agent: ServedModule, code: bytes
) -> None:
    answer = await _ask(probe_agent, _module_writes(b"Status: " + code))
    assert answer.status == 502, answer
    assert "x-wasmfleet-error-id" in answer.headers


async def test_the_agent_owns_server_date_and_the_hop_by_hop_headers(
    probe_agent: ServedModule,
) -> None:
    block = b"\n".join(
        [
            b"Server: evil/1.0",
            b"Date: Thu, 01 Jan 1970 00:00:00 GMT",
            b"Proxy-Connection: keep-alive",
            b"TE: trailers",
            b"Trailer: X-Checksum",
            b"Keep-Alive: timeout=1",
            b"Upgrade: h2c",
            b"Transfer-Encoding: chunked",
            b"Proxy-Authenticate: Basic",
            b"Connection: close, X-Private",
            b"X-Private: secret",
            b"X-Kept: yes",
        ]
    )
    async with rawhttp.connected(probe_agent.port) as (reader, writer):
        await rawhttp.send(writer, _module_writes(block))
        answer = await rawhttp.read_answer(reader, bodiless=False)
        # the module's "Connection: close" is not the agent's: the connection stays usable
        await rawhttp.send(writer, PLAIN)
        after = await rawhttp.read_answer(reader, bodiless=False)
    assert answer is not None
    assert answer.status == 200, answer
    assert answer.body == b"raw header body\n"
    assert answer.header_lines("X-Kept") == [b"yes"]
    assert answer.header_lines("Server") != [b"evil/1.0"]
    assert len(answer.header_lines("Server")) == 1
    assert len(answer.header_lines("Date")) == 1
    assert b"1970" not in answer.header_lines("Date")[0]
    for name in (
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Keep-Alive",
        "Upgrade",
        "Transfer-Encoding",
        "Proxy-Authenticate",
        "X-Private",
    ):
        assert answer.header_lines(name) == [], name
    assert after is not None
    assert (after.status, after.body) == (200, PLAIN_BODY)


async def test_utf8_header_values_reach_the_client_byte_for_byte(
    probe_agent: ServedModule,
) -> None:
    answer = await _ask(probe_agent, _module_writes(b"X-Name: caf\xc3\xa9 \xe2\x9c\x93"))
    assert answer.status == 200, answer
    assert answer.header_lines("X-Name") == [b"caf\xc3\xa9 \xe2\x9c\x93"]


async def test_a_header_value_that_is_not_utf8_is_a_502(probe_agent: ServedModule) -> None:
    answer = await _ask(probe_agent, _module_writes(b"X-Name: caf\xe9"))
    assert answer.status == 502, answer


# ---- properties over both directions ----------------------------------------------------------

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SUB_DELIMS = "!$&'()*+,;="
_PCT = st.builds(lambda n: f"%{n:02X}", st.integers(0x20, 0xFF).filter(lambda n: n != 0x7F))
_SEGMENT = st.lists(st.one_of(st.sampled_from(_UNRESERVED + _SUB_DELIMS + ":@"), _PCT), max_size=8)
_QUERY = st.lists(st.one_of(st.sampled_from(_UNRESERVED + _SUB_DELIMS + ":@/?"), _PCT), max_size=20)
# Headers the agent or the HTTP layer handles itself: framing, connection management, Host.
_OWN_HEADERS = {
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "expect",
    "upgrade",
    "te",
    "trailer",
    "proxy",
}
_HEADER_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda name: name.lower() not in _OWN_HEADERS
)
_HEADER_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E) | st.sampled_from("é✓ "),
    max_size=30,
).map(str.strip)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[str, str]]]:
    segments = draw(st.lists(_SEGMENT.map("".join), max_size=4))
    path = ("/env/" + "/".join(segments)).encode()
    query = draw(st.none() | _QUERY.map("".join)) or None
    headers = draw(st.lists(st.tuples(_HEADER_NAME, _HEADER_VALUE), max_size=6))
    return path, (query.encode() if query is not None else b""), headers


def _expected_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


def test_what_the_module_sees_is_what_the_client_sent(probe_agent: ServedModule) -> None:
    """For generated paths, queries and headers: ``QUERY_STRING`` is the raw query,
    ``REQUEST_URI`` the raw target, ``PATH_INFO`` the path percent-decoded (or the request a
    400 when that is not UTF-8 text), and every header arrives as its ``HTTP_*`` variable,
    repeated ones joined with ``, ``."""
    with asyncio.Runner() as runner:

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(request=_requests())
        def one(request: tuple[bytes, bytes, list[tuple[str, str]]]) -> None:
            path, query, headers = request
            target = path + (b"?" + query if query else b"")
            lines = b"".join(f"{n}: {v}\r\n".encode() for n, v in headers)
            raw = b"GET " + target + b" HTTP/1.1\r\nHost: prop\r\n" + lines + b"\r\n"
            note(f"sent {raw!r}")
            answer = runner.run(_ask(probe_agent, raw))
            decoded = unquote_to_bytes(path)
            try:
                expected_path = decoded.decode() if b"\0" not in decoded else None
            except UnicodeDecodeError:
                expected_path = None
            if expected_path is None:
                assert answer.status == 400, answer
                return
            assert answer.status == 200, answer
            env = _environment(answer.body)
            assert env["PATH_INFO"] == expected_path
            assert env["QUERY_STRING"] == query.decode()
            assert env["REQUEST_URI"] == target.decode()
            seen = {k: v for k, v in env.items() if k.startswith("HTTP_") and k != "HTTP_HOST"}
            assert seen == _expected_headers(headers)

        one()


_STATUS_VALUE = st.one_of(
    st.integers(0, 999).map(lambda n: f"{n:03d}".encode()),
    st.integers(0, 999).map(lambda n: f"{n} Reason Phrase".encode()),
    st.binary(max_size=12).filter(lambda b: b"\n" not in b and b"\r" not in b),
)
_VALID_STATUS = re.compile(rb"([0-9]{3})(?:[ \t].*)?", re.DOTALL)


def test_every_status_the_module_writes_gets_one_valid_final_answer(
    probe_agent: ServedModule,
) -> None:
    """For any ``Status:`` value a module writes, the client gets one final answer: that
    status when it is three ASCII digits from 200 to 599, else 502; and the next request on
    the same connection gets its own answer."""
    with asyncio.Runner() as runner:

        async def two_requests(first: bytes) -> tuple[rawhttp.Answer, rawhttp.Answer]:
            async with rawhttp.connected(probe_agent.port) as (reader, writer):
                await rawhttp.send(writer, first)
                one = await rawhttp.read_answer(reader, bodiless=False)
                await rawhttp.send(writer, PLAIN)
                two = await rawhttp.read_answer(reader, bodiless=False)
            assert one is not None
            assert two is not None
            return one, two

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(value=_STATUS_VALUE)
        def one(value: bytes) -> None:
            note(f"the module writes Status: {value!r}")
            answer, after = runner.run(two_requests(_module_writes(b"Status: " + value)))
            stripped = value.strip(b" \t")
            matched = _VALID_STATUS.fullmatch(stripped)
            has_control = any((c < 32 and c != 9) or c == 127 for c in stripped)
            if matched and 200 <= int(matched[1]) <= 599 and not has_control:
                assert answer.status == int(matched[1]), answer
            else:
                assert answer.status == 502, answer
            assert (after.status, after.body) == (200, PLAIN_BODY)

        one()
