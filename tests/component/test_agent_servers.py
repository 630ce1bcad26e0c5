"""The two servers of the agent keep one contract: serve an order, put a new one in its place,
stop it. The agent's runner and ``serve`` use whichever they are given, never asking which.

Real parts throughout: the probe module, the agent's runtime and compiled-code cache, the
worker processes and a real listening socket.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from wasmfleet_agent.runtime.engine import EngineSettings, Runtime
from wasmfleet_agent.runtime.sandbox import RunLimits, SandboxSpec, instance_bytes
from wasmfleet_agent.server.budget import MemoryBudget
from wasmfleet_agent.server.http import HttpLimits
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.orders import ServeOrder
from wasmfleet_agent.server.serving import InProcessServer, ServeError, Server
from wasmfleet_agent.server.workers import WorkerPool
from wasmfleet_agent.sockets import bind_in_namespace
from wasmfleet_harness.processes import Workspace


def _probe_order(path: Path, spec: SandboxSpec) -> ServeOrder:
    """The order that serves the probe module at ``path`` with ``spec``, loaded from the cache."""
    return ServeOrder(
        key="team/probe-1",
        name="team/probe",
        module_path=path,
        digest="sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
        fuel=False,
        spec=spec,
        limits=RunLimits(deadline_seconds=5.0),
        http=HttpLimits(max_concurrency=8),
    )


@pytest.fixture(params=["in-process", "two-workers"])
async def served(
    request: pytest.FixtureRequest, workspace: Workspace, wasm_modules: dict[str, Path]
) -> AsyncIterator[tuple[Server, ServeOrder]]:
    """A server of either kind and the order for the probe it is about to serve."""
    cache = workspace.subdir(f"servers-{request.param}")
    path = wasm_modules["probe"]
    order = _probe_order(path, SandboxSpec(args=("probe.wasm",), env=(("GIVEN", "first"),)))
    runtime = Runtime(cache)
    compiled = await asyncio.to_thread(runtime.load, path, order.digest, EngineSettings())
    order = replace(order, module=runtime.slot(path, compiled))
    pool = ThreadPoolExecutor(max_workers=4)
    server: Server
    if request.param == "in-process":
        server = InProcessServer(runtime=runtime, pool=pool, metrics=AgentMetrics())
    else:
        workers = WorkerPool(2, cache_dir=cache, threads=4, max_services=4)
        await workers.start()
        server = workers
    try:
        yield server, order
    finally:
        await server.close()
        pool.shutdown(wait=False)
        runtime.close()


async def _env(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/env") as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_a_server_serves_an_order_takes_a_new_one_in_its_place_and_stops_it(
    served: tuple[Server, ServeOrder],
) -> None:
    server, order = served
    listener = bind_in_namespace(None, "127.0.0.1", 0)
    port = int(listener.getsockname()[1])
    await server.serve(order, listener)
    assert "GIVEN=first" in await _env(port)

    await server.update(replace(order, spec=replace(order.spec, env=(("GIVEN", "second"),))))
    assert "GIVEN=second" in await _env(port)

    await server.stop(order.key)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _env(port)


async def test_a_server_refuses_a_second_order_under_a_key_it_serves_and_closes_its_socket(
    served: tuple[Server, ServeOrder],
) -> None:
    server, order = served
    await server.serve(order, bind_in_namespace(None, "127.0.0.1", 0))
    second = bind_in_namespace(None, "127.0.0.1", 0)
    with pytest.raises(ServeError):
        await server.serve(order, second)
    assert second.fileno() == -1, "the refused order's socket was left open"
    with pytest.raises(ServeError):
        await server.update(replace(order, key="team/unknown"))


@pytest.mark.parametrize("kind", ["in-process", "two-workers"])
async def test_a_module_whose_instance_exceeds_a_process_share_of_the_budget_is_refused(
    kind: str, workspace: Workspace, wasm_modules: dict[str, Path]
) -> None:
    """64Mi of memory and its tables (80Mi an instance) against a budget of 120Mi: it fits
    one process, not two processes' halves. The refusal names both sizes."""
    cache = workspace.subdir(f"budget-{kind}")
    path = wasm_modules["probe"]
    order = _probe_order(path, SandboxSpec(args=("probe.wasm",), memory_limit=64 << 20))
    budget = 120 << 20
    runtime = Runtime(cache)
    pool = ThreadPoolExecutor(max_workers=4)
    server: Server
    if kind == "in-process":
        server = InProcessServer(
            runtime=runtime, pool=pool, metrics=AgentMetrics(), budget=MemoryBudget(budget)
        )
    else:
        server = WorkerPool(2, cache_dir=cache, threads=4, max_services=4, memory_budget=budget)
        await server.start()
    try:
        await asyncio.to_thread(runtime.load, path, order.digest, EngineSettings())
        listener = bind_in_namespace(None, "127.0.0.1", 0)
        if kind == "in-process":
            await server.serve(order, listener)
            port = int(listener.getsockname()[1])
            assert "GIVEN" not in await _env(port)
        else:
            with pytest.raises(ServeError, match=f"{80 << 20} bytes.*budget of {60 << 20}"):
                await server.serve(order, listener)
    finally:
        await server.close()
        pool.shutdown(wait=False)
        runtime.close()


async def test_requests_beyond_the_budget_wait_for_room_then_get_503(
    workspace: Workspace, wasm_modules: dict[str, Path]
) -> None:
    """Room for two 16Mi instances: of six concurrent one-second sleeps two run at once, two
    more get the room the first give back within the budget's wait of 1.5 s, the last two
    find none by then and get 503 (the second pair ends half a second after that)."""
    cache = workspace.subdir("budget-wait")
    path = wasm_modules["probe"]
    order = _probe_order(path, SandboxSpec(args=("probe.wasm",), memory_limit=16 << 20))
    runtime = Runtime(cache)
    compiled = await asyncio.to_thread(runtime.load, path, order.digest, EngineSettings())
    order = replace(order, module=runtime.slot(path, compiled))
    pool = ThreadPoolExecutor(max_workers=8)
    budget = MemoryBudget(2 * instance_bytes(16 << 20) + 4096, wait_seconds=1.5)
    server = InProcessServer(runtime=runtime, pool=pool, metrics=AgentMetrics(), budget=budget)
    listener = bind_in_namespace(None, "127.0.0.1", 0)
    port = int(listener.getsockname()[1])
    try:
        await server.serve(order, listener)

        async def one(session: aiohttp.ClientSession) -> tuple[int, str]:
            async with session.get(f"http://127.0.0.1:{port}/sleep?1000") as response:
                return response.status, await response.text()

        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(*(one(session) for _ in range(6)))
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200, 200, 200, 200, 503, 503], answers
        assert {text for status, text in answers if status == 503} == {
            "agent memory budget exhausted\n"
        }
        assert budget.held == 0
    finally:
        await server.close()
        pool.shutdown(wait=False)
        runtime.close()
