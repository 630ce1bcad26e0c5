"""A TCP relay from inside a network namespace to a server on this process's loopback.

A node of the local cluster has a network namespace of its own, so its ``127.0.0.1`` is not
the host's: containerd there could not pull from the test registry, which listens on the
host's loopback only. `NamespaceRelay` listens on the same address and port inside the node's
namespace and relays every connection to the host's server, so an image reference such as
``127.0.0.1:5000/wasmfleet/probe:tag`` means the same on the host and on every node, and the
registry needs no address on the node LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path

from wasmfleet_agent.sockets import bind_in_namespace

__all__ = ["NamespaceRelay"]

_CHUNK = 65536


class NamespaceRelay:
    """Relays ``address:port`` inside ``netns`` to ``target_host:target_port`` outside it,
    on a thread of its own."""

    def __init__(
        self,
        netns: Path,
        port: int,
        *,
        address: str = "127.0.0.1",
        target_host: str = "127.0.0.1",
        target_port: int | None = None,
    ) -> None:
        self.netns = netns
        self.address = address
        self.port = port
        self.target_host = target_host
        self.target_port = target_port if target_port is not None else port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"relay-{netns.name}", daemon=True
        )

    def start(self) -> None:
        # The socket is made in the namespace by this thread; the relay's own connections to
        # the target are then made from the loop's thread, which stays in this namespace.
        listening = bind_in_namespace(self.netns, self.address, self.port)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._listen(listening), self._loop)
        started.result(timeout=10)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self, listening: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accept, sock=listening)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
        finally:
            for each in (writer, upstream_writer):
                each.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while True:
        try:
            data = await source.read(_CHUNK)
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(OSError):
                sink.write_eof()
            return
        sink.write(data)
        try:
            await sink.drain()
        except OSError:
            return
