"""Malformed and hostile HTTP, byte by byte, to a real ``wasmfleet-agent serve``.

Requests go over raw TCP (asyncio streams), so nothing tidies them up on the way: request lines
and headers far over aiohttp's limits, broken chunked bodies and contradictory framing, clients
that stop half-way through the request line or the body, and Hypothesis-generated requests.
For each the agent (``probe_agent``: one process, and two worker processes) must answer a
well-formed 4xx, or close the connection, or, for a request the probe module is documented to
fail, the module's 5xx. It must never answer a 5xx of its own (aiohttp's "500 Internal Server
Error" when a handler raises), never hang (every read has a deadline), never lose a process
or a worker, and a normal request right after must be answered 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from wasmfleet_harness import rawhttp
from wasmfleet_harness.agent import ServedModule
from wasmfleet_harness.processes import Workspace

T = TypeVar("T")

PATIENCE = 1.5
"""Seconds a fuzzed request waits for an answer before the client ends its side of the
connection: the agent may rightly wait for bytes a request still promises."""
HELD = 200
"""Half-open connections the slow-client test holds at once."""
MAX_CONCURRENCY = 16
"""``probe_agent``'s ``--max-concurrency``."""
MAX_REQUEST_BODY = 64 * 1024
"""``probe_agent``'s ``--max-request-body``."""

PLAIN = b"GET /plain HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n"

_LOG_RECORD = re.compile(r"\n(?=\d{4}-\d\d-\d\d |\{)")


# ---- the agent is unharmed ---------------------------------------------------------------------


def _log_size(agent: ServedModule) -> int:
    return agent.process.log_path.stat().st_size


def _log_since(agent: ServedModule, offset: int) -> str:
    with agent.process.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


async def _assert_unharmed(agent: ServedModule, log_offset: int) -> None:
    """The agent and its workers run, answer their health check and a normal request, and
    since ``log_offset`` logged no worker restart and no request whose handler raised (aiohttp
    logs "Error handling request" with the traceback and answers a 500 of its own)."""
    agent.process.check_alive()
    health = await rawhttp.exchange(
        agent.admin_port, b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    assert _status(health) == 200, _shown(health)
    normal = await rawhttp.exchange(agent.port, PLAIN)
    assert _status(normal) == 200, _shown(normal)
    log = _log_since(agent, log_offset)
    assert "starting it again" not in log, "a request worker died:\n" + log[-3000:]
    raised = [
        record
        for record in _LOG_RECORD.split(log)
        if "Error handling request" in record and "/wasmfleet_agent/" in record
    ]
    assert not raised, "the agent's handler raised (a 500 of its own):\n" + raised[0][:4000]


@pytest.fixture
def log_offset(probe_agent: ServedModule) -> int:
    """Where the agent's log stood when the test began."""
    return _log_size(probe_agent)


def _status(answer: rawhttp.Answer | None) -> int | None:
    """The answer's status; None when the agent closed the connection without one."""
    return None if answer is None else answer.status


def _is_4xx_or_closed(answer: rawhttp.Answer | None) -> bool:
    return answer is None or 400 <= answer.status < 500


def _shown(answer: rawhttp.Answer | None) -> str:
    if answer is None:
        return "closed without an answer"
    return f"{answer.status} {answer.body[:200]!r}"


# ---- huge request lines and headers ------------------------------------------------------------


HUGE_REQUESTS = [
    pytest.param(
        b"GET /echo HTTP/1.1\r\nHost: fuzz\r\nX-Test: " + b"v" * (100 * 1024) + b"\r\n\r\n",
        True,
        id="one-100KiB-header-value",
    ),
    pytest.param(
        b"GET /echo HTTP/1.1\r\nHost: fuzz\r\n"
        + b"".join(b"X-Many-%d: v\r\n" % index for index in range(10_000))
        + b"\r\n",
        True,
        id="10000-header-lines",
    ),
    pytest.param(
        b"GET /echo?" + b"q" * (64 * 1024) + b" HTTP/1.1\r\nHost: fuzz\r\n\r\n",
        True,
        id="64KiB-request-line",
    ),
    # the control: large, but within every limit, so served like any request
    pytest.param(
        b"GET /echo HTTP/1.1\r\nHost: fuzz\r\nX-Test: " + b"v" * 8000 + b"\r\n"
        b"X-Also: " + b"w" * 8000 + b"\r\n" * 2,
        False,
        id="two-headers-just-under-the-field-limit",
    ),
]


@pytest.mark.parametrize(("request_bytes", "refused"), HUGE_REQUESTS)
async def test_huge_request_lines_and_headers_are_refused_with_a_4xx(
    probe_agent: ServedModule, log_offset: int, request_bytes: bytes, refused: bool
) -> None:
    """A request line or header section far over the limits gets a 4xx (aiohttp answers 400)
    or a closed connection, never a 5xx; the agent serves the next request as before."""
    answer = await rawhttp.exchange(probe_agent.port, request_bytes)
    if refused:
        assert _is_4xx_or_closed(answer), _shown(answer)
    else:
        assert _status(answer) == 200, _shown(answer)
    await _assert_unharmed(probe_agent, log_offset)


# ---- bad bodies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadBody:
    head: bytes
    body: bytes
    end_after: bool = False
    """The client ends its side after the body (then stops: it will send nothing more)."""
    status: int | None = None
    """The one status expected; None: any 4xx, or the connection closed."""


def _length_head(*lines: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: fuzz\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n"


def _chunked(data: bytes, size: int) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


BAD_BODIES = {
    "invalid-chunk-size": BadBody(CHUNKED_HEAD, b"zz\r\nabc\r\n0\r\n\r\n"),
    "chunk-longer-than-its-size": BadBody(CHUNKED_HEAD, b"3\r\nabcXY\r\n0\r\n\r\n"),
    "overflowing-chunk-size": BadBody(CHUNKED_HEAD, b"1" + b"0" * 24 + b"\r\nabc\r\n"),
    "chunk-size-beyond-the-data-then-close": BadBody(CHUNKED_HEAD, b"10\r\nabc", end_after=True),
    "no-final-chunk-then-close": BadBody(CHUNKED_HEAD, b"3\r\nabc\r\n", end_after=True),
    "chunk-extensions-are-accepted": BadBody(
        CHUNKED_HEAD, b'3;name=value;quoted="a b"\r\nabc\r\n0;last\r\n\r\n', status=200
    ),
    "content-length-and-transfer-encoding": BadBody(
        _length_head(b"Content-Length: 3", b"Transfer-Encoding: chunked"),
        b"3\r\nabc\r\n0\r\n\r\n",
    ),
    "two-different-content-lengths": BadBody(
        _length_head(b"Content-Length: 3", b"Content-Length: 4"), b"abcd"
    ),
    "negative-content-length": BadBody(_length_head(b"Content-Length: -1"), b"abc"),
    "overflowing-content-length": BadBody(
        _length_head(b"Content-Length: 18446744073709551616"), b"abc"
    ),
    "chunked-body-over-the-limit": BadBody(
        CHUNKED_HEAD, _chunked(b"y" * (MAX_REQUEST_BODY + 4096), 8192), status=413
    ),
    "content-length-over-the-limit": BadBody(
        _length_head(b"Content-Length: %d" % (MAX_REQUEST_BODY + 1)), b"", status=413
    ),
}


@pytest.mark.parametrize("delivery", ["one-write", "head-first"])
@pytest.mark.parametrize("case", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_bad_bodies_get_a_4xx_or_a_closed_connection(
    probe_agent: ServedModule, log_offset: int, case: BadBody, delivery: str
) -> None:
    """Broken chunked framing, contradictory or impossible lengths and bodies over
    ``--max-request-body`` get a 4xx or a closed connection
    in time, never a 5xx or silence, whether the body comes with the head or after the agent
    has read the head and started the request; chunk extensions are legal and served."""
    parts = (case.head + case.body,) if delivery == "one-write" else (case.head, case.body)
    answer = await rawhttp.exchange(probe_agent.port, *parts, end_after=case.end_after)
    if case.status is None:
        assert _is_4xx_or_closed(answer), _shown(answer)
    else:
        assert _status(answer) == case.status, _shown(answer)
    if case.status == 200:
        assert answer is not None
        assert b"\nbody=abc\n" in answer.body
    await _assert_unharmed(probe_agent, log_offset)


@pytest.mark.parametrize(
    "header",
    [b"X-Test: caf\xe9", b"X-Test: \xff\xfe", b"Content-Type: text/\x80"],
    ids=["latin-1-value", "invalid-utf8-value", "invalid-utf8-type"],
)
async def test_header_values_that_are_not_utf8_are_not_passed_to_the_module(
    probe_agent: ServedModule, log_offset: int, header: bytes
) -> None:
    """HTTP lets a header value carry any byte from 0x80 up; the guest's environment only
    holds UTF-8. Such a header is left out of the CGI variables (as one with a NUL is), so
    the request is served, never a 500. (A Host that is not a host name is a 400: see
    ``test_agent_wagi``.)"""
    answer = await rawhttp.exchange(
        probe_agent.port, b"GET /echo HTTP/1.1\r\nHost: fuzz\r\n" + header + b"\r\n\r\n"
    )
    assert _status(answer) == 200, _shown(answer)
    assert answer is not None
    assert b"\nx-test=\n" in answer.body
    assert b"\ncontent-type=\n" in answer.body
    await _assert_unharmed(probe_agent, log_offset)


# ---- slow clients ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _held(
    port: int, count: int, sent: bytes
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``count`` connections that each sent ``sent`` and then nothing more, until exit.

    Opened in batches below the listen backlog, so that none waits for a SYN retry; returned
    once the agent has accepted every one and read what it sent.
    """
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for start in range(0, count, 50):
            batch = await asyncio.gather(
                *(
                    rawhttp.within(asyncio.open_connection("127.0.0.1", port), "connecting")
                    for _ in range(start, min(count, start + 50))
                )
            )
            connections.extend(batch)
            for _, writer in batch:
                writer.write(sent)
            await asyncio.gather(*(rawhttp.within(w.drain(), "sending") for _, w in batch))
        ports = {int(w.get_extra_info("sockname")[1]) for _, w in connections}

        def all_read() -> bool:
            mine = rawhttp.server_side(port, ports)
            return len(mine) == count and all(s.unread == 0 for s in mine)

        await rawhttp.poll(all_read, f"the agent never accepted and read all {count} connections")
        yield connections
    finally:
        await asyncio.gather(*(rawhttp.close(w) for _, w in connections))


async def test_half_sent_request_lines_do_not_keep_others_waiting(
    probe_agent: ServedModule, log_offset: int
) -> None:
    """200 connections that sent half a request line and stopped (slowloris) are accepted and
    held by the agent, yet a normal request and the health check are answered at once, and
    every held connection is still open afterwards (they were really held, not shed)."""
    async with _held(probe_agent.port, HELD, b"GET /echo?slow=") as connections:
        normal = await rawhttp.exchange(probe_agent.port, PLAIN)
        assert _status(normal) == 200, _shown(normal)
        await _assert_unharmed(probe_agent, log_offset)
        ports = {int(w.get_extra_info("sockname")[1]) for _, w in connections}
        assert len(rawhttp.server_side(probe_agent.port, ports)) == HELD
        assert not any(reader.at_eof() for reader, _ in connections)


IDLE_TIMEOUT = 1.0


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def short_idle_agent(
    request: pytest.FixtureRequest, workspace: Workspace, wasm_modules: dict[str, Path]
) -> Iterator[ServedModule]:
    """The probe behind an agent that closes connections after ``IDLE_TIMEOUT`` without a
    complete request (``--idle-timeout``; 75 s by default)."""
    processes = int(request.param)
    served = ServedModule(
        workspace.subdir(f"serve-short-idle-{processes}"),
        wasm_modules["probe"],
        extra=["--idle-timeout", f"{int(IDLE_TIMEOUT * 1000)}ms", "--processes", str(processes)],
        name=f"agent-short-idle-{processes}",
    )
    with served:
        yield served


async def test_half_sent_request_lines_are_closed_after_the_idle_timeout(
    short_idle_agent: ServedModule,
) -> None:
    """A connection that never completes its request line is closed by the agent once
    ``--idle-timeout`` has passed: a slowloris cannot hold the agent's file descriptors for
    long. A complete request on a fresh connection is still answered meanwhile."""
    loop = asyncio.get_running_loop()
    async with _held(short_idle_agent.port, 5, b"GET /echo?slow=") as connections:
        held_at = loop.time()
        normal = await rawhttp.exchange(short_idle_agent.port, PLAIN)
        assert _status(normal) == 200, _shown(normal)
        await rawhttp.poll(
            lambda: all(reader.at_eof() for reader, _ in connections),
            "the agent kept the half-sent requests open",
            seconds=IDLE_TIMEOUT + rawhttp.READ_DEADLINE,
        )
        assert loop.time() - held_at >= IDLE_TIMEOUT * 0.5, "closed before the idle timeout"


async def test_a_body_that_stops_half_way_holds_no_concurrency_slot(
    probe_agent: ServedModule, log_offset: int, probe_deadline: float
) -> None:
    """Twice ``--max-concurrency`` clients that sent their headers and part of the body, then
    stopped: a normal request is still served 200 (a request takes one of the service's
    slots only once its body is in), and each stalled request is answered 408 once the request
    deadline has passed, not held open for as long as the client likes."""
    stalled = b"POST /echo HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 100\r\n\r\nonly-part"
    loop = asyncio.get_running_loop()
    async with _held(probe_agent.port, 2 * MAX_CONCURRENCY, stalled) as connections:

        async def answered(reader: asyncio.StreamReader) -> tuple[rawhttp.Answer | None, float]:
            try:
                answer = await rawhttp.read_answer(reader, bodiless=False)
            except rawhttp.NoAnswerError:
                raise AssertionError("a stalled request was held past the deadline") from None
            return answer, loop.time()

        waiting = [asyncio.create_task(answered(reader)) for reader, _ in connections]
        try:
            normal = await rawhttp.exchange(probe_agent.port, PLAIN)
            normal_done = loop.time()
            assert _status(normal) == 200, _shown(normal)
            results = await asyncio.gather(*waiting)
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
    expected = f"request body not received within {probe_deadline:g}s\n".encode()
    for answer, _ in results:
        assert _status(answer) == 408, _shown(answer)
        assert answer is not None
        assert answer.body == expected
    first_stalled = min(when for _, when in results)
    assert normal_done < first_stalled, "inconclusive: the stalled requests ended first"
    await _assert_unharmed(probe_agent, log_offset)


# ---- any request at all ------------------------------------------------------------------------

# Each part of a request is drawn "clean" (what a client may send, odd as it may be) or "wild"
# (anything at all), so that many requests get past the parser and reach the module.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FRAMING = {b"content-length", b"transfer-encoding"}


def _bytes_from(
    alphabet: Sequence[int], *, min_size: int = 0, max_size: int
) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map(bytes)


_CLEAN_METHODS = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"]
)
_WILD_METHODS = st.one_of(
    st.sampled_from([b"PRI", b"get", b"G\x00T", b"GET\t", b"\xc3\x89T", b"", b"X-CUSTOM"]),
    st.binary(max_size=8),
)
_PROBE_PATHS = [
    *(b"/echo", b"/plain", b"/env", b"/status", b"/nothing-here", b"/", b"*", b"//echo"),
    *(b"/echo/../env", b"/%65cho", b"http://fuzz.example/echo", b"fuzz.example:443"),
]
_CLEAN_TAIL = st.lists(
    st.sampled_from(
        [
            *(b"a", b"/", b"?", b"&", b"=", b"%00", b"%ff", b"%C3%A9", b"%2e", b"%", b"%zz"),
            *(b"..", b"#", b"status=5", b"~", b";", b"+", b"'"),
        ]
    ),
    max_size=12,
).map(b"".join)
_WILD_TAIL = st.lists(
    st.sampled_from([b" ", b"\xc3\xa9", b"\xff", b"\x00", b"\t", b"\x7f", b"\r", b"\n", b"<"]),
    min_size=1,
    max_size=4,
).map(b"".join)
_CLEAN_TARGETS = st.one_of(
    st.tuples(st.sampled_from(_PROBE_PATHS), _CLEAN_TAIL).map(b"".join),
    st.sampled_from([200, 204, 304, 404, 418, 500, 502, 503, 599]).map(
        lambda code: b"/status?status=%d" % code
    ),
)
_WILD_TARGETS = st.one_of(
    st.tuples(_CLEAN_TARGETS, _WILD_TAIL, _CLEAN_TAIL).map(b"".join), st.binary(max_size=40)
)
_CLEAN_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
_WILD_VERSIONS = st.one_of(
    st.sampled_from([b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/11", b""]),
    st.binary(max_size=10),
)
_LINE_ENDS = st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n ", b"\r\n\t", b"\r\n"])
_CLEAN_NAMES = st.one_of(
    st.sampled_from(
        [
            *(b"X-Test", b"Content-Type", b"Cookie", b"Accept", b"Proxy", b"X_Test", b"Expect"),
            *(b"Connection", b"Upgrade", b"Content-Encoding", b"Authorization", b"Forwarded"),
        ]
    ),
    _bytes_from(_TOKEN, min_size=1, max_size=16),
).filter(lambda name: name.lower() not in _FRAMING)
_WILD_NAMES = st.one_of(
    st.sampled_from([b"", b"X-\xc3\xa9", b"X Test", b"X-Test\x00", b"\x7f"]),
    st.binary(max_size=16).filter(lambda name: name.strip().lower() not in _FRAMING),
)
_CLEAN_VALUES = st.one_of(
    st.sampled_from(
        [
            *(b"", b"close", b"keep-alive", b"upgrade", b"websocket", b"100-continue", b"gzip"),
            *(b"deflate", b"br", b"text/plain", b"fuzz:1", b"[::1]", b"caf\xe9", b"\xff\xfe"),
        ]
    ),
    # visible ASCII, spaces, tabs and obs-text (0x80 to 0xFF, often not UTF-8)
    _bytes_from([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)], max_size=40),
    st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=20).map(str.encode),
)
_WILD_VALUES = st.one_of(
    st.sampled_from([b"a\x00b", b"a\rb", b"a\nb", b"\x7f"]), st.binary(max_size=40)
)
_CLEAN_SEPARATORS = st.sampled_from([b": ", b":", b":\t", b":  "])
_WILD_SEPARATORS = st.sampled_from([b" : ", b" :", b"", b"\x00:", b"::"])


@dataclass(frozen=True)
class Fuzzed:
    """A generated request: its bytes, and what the test needs to judge the answer."""

    raw: bytes
    target: bytes
    head_request: bool


@st.composite
def _requests(draw: st.DrawFn) -> Fuzzed:
    # a third of the requests all clean, a third with one wild part, a third wilder still
    mode = draw(st.sampled_from(["clean", "one wild part", "wild"]))
    wild_part = draw(st.integers(min_value=0, max_value=12)) if mode == "one wild part" else -1
    parts = iter(range(1000))

    def part(clean: st.SearchStrategy[bytes], wild: st.SearchStrategy[bytes]) -> bytes:
        index = next(parts)
        if mode == "wild":
            return draw(st.one_of(clean, wild))
        return draw(wild if index == wild_part else clean)

    method = part(_CLEAN_METHODS, _WILD_METHODS)
    target = part(_CLEAN_TARGETS, _WILD_TARGETS)
    version = part(_CLEAN_VERSIONS, _WILD_VERSIONS)
    end = st.just(b"\r\n")
    lines = [method + b" " + target + (b" " + version if version else b"") + part(end, _LINE_ENDS)]
    any_host = st.one_of(st.just(b""), _CLEAN_VALUES.map(lambda v: b"Host: %s\r\n" % v))
    lines.append(part(st.just(b"Host: fuzz\r\n"), any_host))  # HTTP/1.1 requires one
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        name = part(_CLEAN_NAMES, _WILD_NAMES)
        separator = part(_CLEAN_SEPARATORS, _WILD_SEPARATORS)
        value = part(_CLEAN_VALUES, _WILD_VALUES)
        lines.append(name + separator + value + part(end, _LINE_ENDS))
    framings = ["none", "length", "chunked"] + (["unframed"] if mode != "clean" else [])
    framing = draw(st.sampled_from(framings))
    body = b"" if framing == "none" else draw(st.binary(min_size=1, max_size=300))
    if framing == "length":
        lines.append(b"Content-Length: %d\r\n" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked\r\n")
        body = _chunked(body, draw(st.integers(min_value=1, max_value=64)))
    # unframed: the bytes after the head are the start of a next (pipelined) request
    return Fuzzed(b"".join(lines) + b"\r\n" + body, target, method == b"HEAD")


_PROBE_FAILURES = {
    b"/loop": 504,
    b"/sleep": 504,
    b"/membomb": 500,
    b"/recurse": 500,
    b"/flood": 502,
    b"/unterminated": 502,
    b"/badheader": 502,
    b"/rawheader": 502,
    b"/abssleep": 504,
}
"""What the probe module (tests/modules/probe/main.c) fails with, by path: it times out,
traps, or writes too much or a broken response. ``/status`` answers the status its query
asks for, 5xx included (502 when that is not a status)."""


def _probe_path(target: bytes) -> bytes:
    """The path the module sees for a request target (origin or absolute form)."""
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if b"://" in path:
        path = b"/" + path.split(b"://", 1)[1].partition(b"/")[2]
    return unquote_to_bytes(path)


_REFUSALS = {501, 505}
"""The agent's own 5xx, sent before any module runs: a method or target form it does not
serve (``CONNECT``, ``OPTIONS *``) and an HTTP version other than 1.0 and 1.1."""


def _assert_documented(answer: rawhttp.Answer, target: bytes) -> None:
    """A 5xx is the probe's own for that path: a failure the agent reports with an error id,
    or the status ``/status`` was asked for; or one of the agent's documented refusals;
    never one the agent made up."""
    if answer.status in _REFUSALS:
        assert "x-wasmfleet-error-id" not in answer.headers
        return
    path = _probe_path(target)
    if path == b"/status":
        return
    assert answer.status == _PROBE_FAILURES.get(path), f"{_shown(answer)} for {target!r}"
    assert "x-wasmfleet-error-id" in answer.headers


async def _fuzz_once(port: int, request: Fuzzed) -> rawhttp.Answer | None:
    """Sends ``request`` and reads one answer. If none comes within `PATIENCE` (the agent may
    be waiting for more of the request), the client ends its side: then the agent must
    answer or close within `rawhttp.READ_DEADLINE`."""
    async with rawhttp.connected(port) as (reader, writer):
        await rawhttp.send(writer, request.raw)
        try:
            return await rawhttp.read_answer(
                reader, bodiless=request.head_request, patience=PATIENCE
            )
        except rawhttp.NoAnswerError:
            note(f"no answer within {PATIENCE}s: the client ends its side")
        if not writer.is_closing():
            with contextlib.suppress(ConnectionError):
                writer.write_eof()
        try:
            return await rawhttp.read_answer(reader, bodiless=request.head_request)
        except rawhttp.NoAnswerError:
            raise AssertionError(
                f"the agent hung: no answer {rawhttp.READ_DEADLINE}s after the client's end"
            ) from None


KNOWN = [
    # a header value that is not UTF-8 once reached the sandbox and raised there: a 500
    Fuzzed(b"GET /echo HTTP/1.1\r\nHost: fuzz\r\nX-Test: \xff\r\n\r\n", b"/echo", False),
    # an undecodable gzip body raised while it was read: a 500
    Fuzzed(
        b"POST /echo HTTP/1.1\r\nHost: f\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nhi",
        b"/echo",
        False,
    ),
    # a percent-encoded NUL cut the path the module saw: /status%00 ran /status (a 502 here)
    Fuzzed(
        b"GET /status%00?status=5 HTTP/1.1\r\nHost: fuzz\r\n\r\n", b"/status%00?status=5", False
    ),
]


def test_any_request_bytes_get_a_well_formed_answer_or_a_close(
    probe_agent: ServedModule, log_offset: int
) -> None:
    """For any method token, target, version, header lines (non-ASCII, control bytes, NUL,
    stray CR and LF, bad separators) and body: the agent answers a well-formed response with
    a status under 500, or a 5xx that the probe module documents for that path, or closes the
    connection; it never hangs. After the whole batch its /healthz answers 200, the process
    and its workers live, and its own code raised nothing."""
    with asyncio.Runner() as runner:

        @settings(
            max_examples=200,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(request=_requests())
        @example(request=KNOWN[0])
        @example(request=KNOWN[1])
        @example(request=KNOWN[2])
        def one(request: Fuzzed) -> None:
            answer = runner.run(_fuzz_once(probe_agent.port, request))
            if answer is not None and answer.status >= 500:
                note(f"sent {request.raw[:500]!r}")
                _assert_documented(answer, request.target)

        one()
        runner.run(_assert_unharmed(probe_agent, log_offset))
