"""One way to serve a module, whether this process answers its requests or worker processes do.

A `ServeOrder` says everything a module needs to be served (its machine code, its sandbox,
its limits). A `Server` serves an order on a listening socket its caller opened, puts a new
order in place of the one standing under the same key (a changed configuration: the next
requests see it) and stops serving a key. `InProcessServer` answers in the process it runs
in, one aiohttp server per order: the agent with one process, and each request-worker
process (`worker`). `workers.WorkerPool` hands the orders to its worker processes. The
agent's runner and ``serve`` are written against `Server`, never against either one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from wasmfleet_agent.runtime.engine import EngineSettings, Runtime
from wasmfleet_agent.runtime.service import HttpModule
from wasmfleet_agent.server.budget import MemoryBudget
from wasmfleet_agent.server.http import ServiceHandler
from wasmfleet_agent.server.inflight import ServiceCells
from wasmfleet_agent.server.inline import INLINE_BUDGET, InlinePolicy
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.orders import ServeOrder

__all__ = ["InProcessServer", "ServeError", "Server"]


class ServeError(RuntimeError):
    """A server refused an order (or could not carry it out)."""


class Server(Protocol):
    """Serves modules on listening sockets, each under its order's key."""

    listeners: int
    """How many sockets of one ``SO_REUSEPORT`` group it accepts on (`sockets.bind_group`):
    one per process that accepts."""

    async def serve(
        self, order: ServeOrder, listener: socket.socket, siblings: Sequence[socket.socket] = ()
    ) -> None:
        """Serves ``order`` on ``listener`` and ``siblings`` (listening sockets of its
        ``SO_REUSEPORT`` group, up to `listeners` in all), which the server owns from now on
        (closed by it if serving fails); raises `ServeError` when it refuses."""
        ...

    async def update(self, order: ServeOrder) -> None:
        """Puts ``order`` in place of the one served under its key: new requests see it."""
        ...

    async def stop(self, key: str) -> None:
        """Stops serving ``key``; requests under way finish first (a key not served: no-op)."""
        ...

    async def close(self) -> None:
        """Stops serving everything."""
        ...


@dataclass
class _Site:
    runner: web.BaseRunner
    handler: ServiceHandler


class InProcessServer:
    """A `Server` that answers in this process: an aiohttp server per order, Wasm on ``pool``.

    An order that carries its machine code (``order.module``) is served with it; one that does
    not, as in a worker process, loads it from ``runtime``'s compiled-code cache.
    """

    def __init__(
        self,
        *,
        runtime: Runtime,
        pool: Executor,
        metrics: AgentMetrics,
        budget: MemoryBudget | None = None,
        inline_budget: float = INLINE_BUDGET,
    ) -> None:
        self.runtime = runtime
        self.pool = pool
        self.metrics = metrics
        self.budget = budget
        """Memory every served module's instances share (None: unbounded)."""
        self.inline_budget = inline_budget
        """Seconds a short run may take on the loop's thread (0: every run on the pool)."""
        self._sites: dict[str, _Site] = {}

    def serves(self, key: str) -> bool:
        return key in self._sites

    listeners = 1

    async def serve(
        self,
        order: ServeOrder,
        listener: socket.socket,
        siblings: Sequence[socket.socket] = (),
        *,
        shared: ServiceCells | None = None,
    ) -> None:
        """As `Server.serve` (one process: ``siblings`` are closed, ``listener`` is enough);
        ``shared`` counts the service's requests in flight across processes (None: this
        process only)."""
        for sibling in siblings:
            sibling.close()
        try:
            if order.key in self._sites:
                raise ServeError(f"{order.key} is served already")
            module = await self._module(order)
            self._budget_for(order.key, module)
            handler = ServiceHandler(
                name=order.name,
                execute=module.execute,
                limits=order.http,
                pool=self.pool,
                metrics=self.metrics,
                shared=shared,
                budget=self.budget,
                key=order.key,
                instance_bytes=module.instance_bytes,
                decode_path=module.cgi,
                streams=not module.cgi,
                inline=self._inline_policy(module),
                attempt=module.attempt,
                ready=lambda: module.ready,
            )
            runner = await handler.runner()
        except BaseException:
            listener.close()
            if self.budget is not None:
                self.budget.remove_service(order.key)
            raise
        try:
            await web.SockSite(runner, listener).start()
        except BaseException:
            await runner.cleanup()
            listener.close()
            if self.budget is not None:
                self.budget.remove_service(order.key)
            raise
        self._sites[order.key] = _Site(runner, handler)

    async def update(self, order: ServeOrder) -> None:
        site = self._sites.get(order.key)
        if site is None:
            raise ServeError(f"{order.key} is not served")
        module = await self._module(order)
        self._budget_for(order.key, module)
        site.handler.execute = module.execute
        site.handler.inline = self._inline_policy(module)
        site.handler.attempt = module.attempt
        site.handler.ready = lambda: module.ready
        site.handler.instance_bytes = module.instance_bytes
        site.handler.decode_path = module.cgi
        site.handler.streams = not module.cgi
        site.handler.limits = order.http

    async def stop(self, key: str) -> None:
        site = self._sites.pop(key, None)
        if site is not None:
            await site.runner.cleanup()
        if self.budget is not None:
            self.budget.remove_service(key)

    def _inline_policy(self, module: HttpModule) -> InlinePolicy | None:
        if self.inline_budget <= 0 or not module.repeatable:
            return None
        return InlinePolicy(budget=self.inline_budget)

    def _budget_for(self, key: str, module: HttpModule) -> None:
        """Keeps room for one instance of ``module`` in the budget; `ServeError` if one
        instance could never fit there."""
        if self.budget is not None:
            try:
                self.budget.add_service(key, module.instance_bytes)
            except ValueError as error:
                raise ServeError(str(error)) from None

    async def close(self) -> None:
        for key in list(self._sites):
            await self.stop(key)

    async def _module(self, order: ServeOrder) -> HttpModule:
        compiled = order.module
        if compiled is None:
            loaded = await asyncio.to_thread(
                self.runtime.load, order.module_path, order.digest, EngineSettings(fuel=order.fuel)
            )
            compiled = self.runtime.slot(order.module_path, loaded)
        return HttpModule(
            name=order.name,
            compiled=compiled,
            spec=order.spec,
            limits=order.limits,
            server_software=order.server_software,
        )
