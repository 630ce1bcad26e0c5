"""Two services in one agent process, each on its own port: what `neighbour_bench` loads.

The agent's `InProcessServer` serves the probe module twice (its ``/echo`` is short, its
``/sleep`` sleeps), as an agent serves two bindings: one thread pool, one event loop, one
runtime. Prints ``ready`` once both answer; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wasmfleet_agent.runtime.engine import EngineSettings, Runtime
from wasmfleet_agent.runtime.sandbox import RunLimits, SandboxSpec
from wasmfleet_agent.server.http import HttpLimits
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.orders import ServeOrder
from wasmfleet_agent.server.serving import InProcessServer
from wasmfleet_agent.sockets import bind_in_namespace


async def serve(
    module: Path, ports: list[int], cache: Path, deadline: float, inline: float
) -> None:
    runtime = Runtime(cache)
    data = await asyncio.to_thread(module.read_bytes)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    compiled = await asyncio.to_thread(runtime.load, module, digest, EngineSettings())
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="wasm-request")
    server = InProcessServer(
        runtime=runtime, pool=pool, metrics=AgentMetrics(), inline_budget=inline
    )
    for index, port in enumerate(ports):
        order = ServeOrder(
            key=f"bench/service-{index}",
            name=f"service-{index}",
            module_path=module,
            digest=digest,
            fuel=False,
            spec=SandboxSpec(args=("probe.wasm",)),
            limits=RunLimits(deadline_seconds=deadline),
            http=HttpLimits(max_concurrency=64, body_timeout=deadline),
            module=runtime.slot(module, compiled),
        )
        await server.serve(order, bind_in_namespace(None, "127.0.0.1", port))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close()
    pool.shutdown(wait=False)
    runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", type=Path, required=True)
    parser.add_argument("--ports", type=int, nargs=2, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--deadline", type=float, default=1.0)
    parser.add_argument("--inline-budget", type=float, default=0.002)
    args = parser.parse_args()
    asyncio.run(serve(args.module, args.ports, args.cache_dir, args.deadline, args.inline_budget))


if __name__ == "__main__":
    main()
