"""The client's connection as a ``wasi:http`` run sees it, for bodies that do not wait to be whole.

A request to a ``wasi:http/proxy`` component runs once the first `STREAM_AFTER` bytes of its
body are in; the rest comes in through a `BodyLink` while the guest reads it. Its response is
held until the run ends, unless it grows past `STREAM_AFTER` bytes or the guest waits (on a
pollable, on the request body, on an outgoing request) after flushing what it wrote: the
response then starts (status and headers), and from then on what the guest writes goes out
as it writes it. The server implements the link over its connection; a run calls it from its
own thread and blocks there, each call bounded by the run's deadline.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["STREAM_AFTER", "BodyLink", "LinkError"]

STREAM_AFTER = 64 << 10
"""Bytes of a body held before it streams: the part of a request body read before the run
starts, and of a response kept back so that a failure can still be answered with a 5xx."""


class LinkError(Exception):
    """The link failed: the client went away, its body broke a limit, or time ran out."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class BodyLink(Protocol):
    """The connection a request came in on, as the run's thread may use it: each call blocks
    for at most ``timeout`` seconds (None: no limit)."""

    def receive(self, timeout: float | None) -> bytes:
        """The next part of the request body past what the run was given (``b""`` at its
        end), waiting at most ``timeout`` seconds; `LinkError` when it cannot be had."""
        ...

    def start(self, status: int, headers: list[tuple[str, str]], timeout: float | None) -> None:
        """Sends the response's status and headers (a ``content-length`` among them, if any,
        is the length the body must have); `LinkError` when the client is gone."""
        ...

    def send(self, data: bytes, timeout: float | None) -> None:
        """Sends part of the started response's body, waiting at most ``timeout`` seconds
        for the client to take it; `LinkError` when it cannot."""
        ...
