"""A TCP relay on loopback that a test can cut, to partition one component from a server.

The component is pointed at the relay instead of the server (e.g. an agent's kubeconfig at
the API server). `Relay.cut` models a network partition rather than a crash: nothing is
refused or reset; bytes simply stop arriving, on the connections already open and on new
ones (accepted, then never relayed), so the component learns of the cut only through its
own timeouts. `Relay.heal` lets new connections through again; connections that lived
through the cut stay silent for good, like connection state lost on the way during a long
partition, so a component that waits on one forever never recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from wasmfleet_harness.processes import free_port

__all__ = ["Relay"]

_CHUNK = 65536


@dataclass(eq=False)
class _Connection:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    silent: bool = False


class Relay:
    """Relays 127.0.0.1:``port`` to ``target_host``:``target_port`` on a thread of its own."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = free_port()
        self.cut_now = False
        self.relayed = 0
        """Connections relayed to the server so far."""
        self.held = 0
        """Connections accepted during a cut and never relayed."""
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        started.result(timeout=10)

    def cut(self) -> None:
        """From now on nothing passes, in either direction, on any connection."""
        self._loop.call_soon_threadsafe(self._cut)

    def heal(self) -> None:
        """New connections pass again; the ones that saw the cut stay silent."""
        self._loop.call_soon_threadsafe(self._heal)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # ---- on the relay's loop ---------------------------------------------------------

    def _cut(self) -> None:
        self.cut_now = True
        for connection in self._connections:
            connection.silent = True

    def _heal(self) -> None:
        self.cut_now = False

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closing.set()
        for connection in list(self._connections):
            for writer in connection.writers:
                writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writers=[writer], silent=self.cut_now)
        self._connections.add(connection)
        try:
            if connection.silent:
                self.held += 1
                await self._swallow(reader)
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            connection.writers.append(upstream_writer)
            self.relayed += 1
            await asyncio.gather(
                self._pump(reader, upstream_writer, connection),
                self._pump(upstream_reader, writer, connection),
            )
        finally:
            if not connection.silent:
                self._connections.discard(connection)
                for each in connection.writers:
                    each.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        while True:
            try:
                data = await source.read(_CHUNK)
            except OSError:
                data = b""
            if connection.silent:
                # Lost on the way: keep reading so the peer's writes never block, say nothing.
                if not data:
                    await self._closing.wait()  # a closed end is not reported either
                    return
                continue
            if not data:
                with contextlib.suppress(OSError):
                    sink.write_eof()
                return
            sink.write(data)
            try:
                await sink.drain()
            except OSError:
                return

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(_CHUNK):
                pass
        await self._closing.wait()
