"""HTTP over a raw socket, byte for byte, for tests that must see exactly what a server sends.

Client libraries tidy requests up and hide what a server did wrong (an interim response read
as the final one, a header block cut short). These helpers send the bytes a test gives and
read one response with a deadline on every step, so a hang fails the test instead of stalling
it. `until_read` asks the kernel (``/proc/net/tcp``) whether the server has read what was sent,
for tests whose next bytes must reach a handler that is already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "ESTABLISHED",
    "READ_DEADLINE",
    "Answer",
    "NoAnswerError",
    "Socket",
    "close",
    "connected",
    "exchange",
    "poll",
    "read_answer",
    "send",
    "server_side",
    "tcp_sockets",
    "until_read",
    "within",
]

T = TypeVar("T")

READ_DEADLINE = 5.0
"""Seconds a server has to answer (or close) once it has all it will get; past it, a hang."""

ESTABLISHED = 0x01
"""The state number of an established connection in ``/proc/net/tcp``."""

_STATUS_LINE = re.compile(rb"HTTP/\d\.\d ([1-5]\d\d)(?: [^\r\n]*)?")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?([^\r\n]*)")


@dataclass(frozen=True)
class Answer:
    """One well-formed HTTP response, as read off the socket."""

    status: int
    headers: dict[str, str]
    """Lower-cased names; of a repeated header, its last value."""
    body: bytes
    head: bytes = b""
    """The status line and header lines exactly as they arrived."""

    def header_lines(self, name: str) -> list[bytes]:
        """The raw values of every ``name`` header line, in order."""
        wanted = name.lower().encode()
        found = []
        for line in self.head.split(b"\r\n")[1:]:
            field = _HEADER_LINE.fullmatch(line)
            if field and field[1].lower() == wanted:
                found.append(field[2])
        return found


class NoAnswerError(Exception):
    """The agent neither answered nor closed within the time allowed."""


async def within(awaitable: Awaitable[T], what: str, seconds: float = READ_DEADLINE) -> T:
    """``awaitable``'s result; one that outlasts ``seconds`` fails the test as a hang."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"the agent hung: {what} took over {seconds}s") from None


async def read_answer(
    reader: asyncio.StreamReader, *, bodiless: bool, patience: float = READ_DEADLINE
) -> Answer | None:
    """The response on ``reader``, or None when the agent closed without answering.

    Raises `NoAnswerError` if nothing at all arrives within ``patience`` seconds; a response
    cut short, a malformed status or header line, or a body shorter than its Content-Length
    fails the test.
    """
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), patience)
    except TimeoutError:
        raise NoAnswerError from None
    except asyncio.IncompleteReadError as error:
        head = error.partial
    except ConnectionResetError:
        return None
    if not head.endswith(b"\r\n\r\n"):
        assert head == b"", f"the agent cut its response short: {head[:300]!r}"
        return None
    status_line, *header_lines = head[:-4].split(b"\r\n")
    matched = _STATUS_LINE.fullmatch(status_line)
    assert matched, f"malformed status line {status_line[:200]!r}"
    headers: dict[str, str] = {}
    for line in header_lines:
        field = _HEADER_LINE.fullmatch(line)
        assert field, f"malformed header line {line[:200]!r}"
        headers[field[1].decode().lower()] = field[2].decode("latin-1")
    status = int(matched[1])
    if bodiless or status < 200 or status in (204, 304):
        return Answer(status, headers, b"", head)
    if "content-length" in headers:
        length = int(headers["content-length"])
        body = await within(reader.readexactly(length), f"a {length}-byte body")
    else:
        body = await within(reader.read(), "a body up to the connection's end")
    return Answer(status, headers, body, head)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port), "connecting")
    try:
        yield reader, writer
    finally:
        await close(writer)


async def send(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Writes ``data``; False when the agent has already closed the connection (it may refuse
    a request before reading all of it)."""
    try:
        writer.write(data)
        await within(writer.drain(), f"sending {len(data)} bytes")
    except ConnectionError:
        return False
    return True


async def exchange(
    port: int,
    *parts: bytes,
    end_after: bool = False,
    bodiless: bool = False,
) -> Answer | None:
    """Sends ``parts`` on one connection and reads one answer (None: closed without one).

    Between parts it waits until the agent has read everything sent so far, so that a part
    after the head reaches a request whose handler is already running (as a body that a
    client sends after its headers does). ``end_after`` then ends the client's side, which
    tells the agent that no more bytes will come.
    """
    async with connected(port) as (reader, writer):
        client_port = int(writer.get_extra_info("sockname")[1])
        for index, part in enumerate(parts):
            if index:
                await until_read(port, client_port)
            if not await send(writer, part):
                break
        if end_after and not writer.is_closing():
            with contextlib.suppress(ConnectionError):
                writer.write_eof()
        try:
            return await read_answer(reader, bodiless=bodiless)
        except NoAnswerError:
            raise AssertionError(f"the agent hung: no answer within {READ_DEADLINE}s") from None


# What the kernel knows about a server's sockets.


@dataclass(frozen=True)
class Socket:
    local_port: int
    remote_port: int
    state: int
    unread: int
    """Bytes the kernel received on it that the process has not read yet."""


def tcp_sockets() -> list[Socket]:
    """Every IPv4 TCP socket of this network namespace, from ``/proc/net/tcp``."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        found.append(
            Socket(
                local_port=int(fields[1].rsplit(":", 1)[1], 16),
                remote_port=int(fields[2].rsplit(":", 1)[1], 16),
                state=int(fields[3], 16),
                unread=int(fields[4].split(":")[1], 16),
            )
        )
    return found


def server_side(port: int, client_ports: set[int]) -> list[Socket]:
    """The agent's ends of the connections from ``client_ports`` that are still open."""
    return [
        s
        for s in tcp_sockets()
        if s.local_port == port and s.remote_port in client_ports and s.state == ESTABLISHED
    ]


async def poll(condition: Callable[[], bool], what: str, seconds: float = READ_DEADLINE) -> None:
    """Returns once ``condition()`` holds; fails the test after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"{what} (not after {seconds}s)"
        await asyncio.sleep(0.01)


async def until_read(port: int, client_port: int) -> None:
    """Waits until the agent has read all that was sent from ``client_port`` (or closed the
    connection: the kernel then holds nothing unread for it either)."""

    def read_all() -> bool:
        return not any(
            s.local_port == port and s.remote_port == client_port and s.unread
            for s in tcp_sockets()
        )

    await poll(read_all, f"the agent never read what was sent from port {client_port}")
