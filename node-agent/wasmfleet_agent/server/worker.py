"""A request-worker process: answers requests for the modules its agent orders it to serve.

Started by `workers.WorkerPool` as ``python -m wasmfleet_agent.server.worker``. It has no
access to the cluster: the main process sends it `orders.ServeOrder`s with a listening
socket for each, ``stop`` orders, and ``metrics`` requests, over a socket pair; it answers
each message with ``{"id": ..., "ok": ...}``. Every worker accepts on the same listening
sockets, so the kernel spreads connections over the processes and their GILs.

Machine code comes from the compiled-code cache the main process has just filled, so a
worker only deserializes (a memory map of the same file in every process). The worker exits
when its channel closes or its parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from wasmfleet_agent.runtime.engine import Runtime
from wasmfleet_agent.server.budget import MemoryBudget
from wasmfleet_agent.server.inflight import InFlightCells
from wasmfleet_agent.server.inline import INLINE_BUDGET
from wasmfleet_agent.server.metrics import AgentMetrics, snapshot
from wasmfleet_agent.server.orders import ServeOrder, read_message, receive_fd, write_message
from wasmfleet_agent.server.serving import InProcessServer
from wasmfleet_common import logs

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class Worker:
    def __init__(
        self,
        control: socket.socket,
        reply: socket.socket,
        cache_dir: Path,
        threads: int,
        cells: InFlightCells,
        index: int,
        unload_idle_seconds: float = 0.0,
        memory_budget: int | None = None,
        inline_budget: float = INLINE_BUDGET,
    ) -> None:
        self.control = control
        self.reply = reply
        self.cells = cells
        self.index = index
        self.runtime = Runtime(cache_dir, unload_idle_seconds=unload_idle_seconds)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wasm-request")
        self.metrics = AgentMetrics()
        self.metrics.modules_loaded.set_function(self.runtime.loaded_count)
        self.server = InProcessServer(
            runtime=self.runtime,
            pool=self.pool,
            metrics=self.metrics,
            budget=MemoryBudget(memory_budget) if memory_budget is not None else None,
            inline_budget=inline_budget,
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[dict[str, Any], int | None] | None] = asyncio.Queue()

        def read() -> None:
            try:
                while True:
                    message = read_message(self.control)
                    fd = receive_fd(self.control) if message.get("fd") else None
                    loop.call_soon_threadsafe(inbox.put_nowait, (message, fd))
            except (EOFError, OSError, ValueError) as error:
                if not isinstance(error, EOFError):
                    log.error("worker channel broken", extra={"error": str(error)})
                loop.call_soon_threadsafe(inbox.put_nowait, None)

        threading.Thread(target=read, name="worker-channel", daemon=True).start()
        try:
            while (item := await inbox.get()) is not None:
                message, fd = item
                answer: dict[str, Any] = {"id": message.get("id"), "ok": True}
                try:
                    answer.update(await self._handle(message, fd))
                except Exception as error:  # the order fails, the worker stays
                    answer = {"id": message.get("id"), "ok": False, "error": str(error)}
                write_message(self.reply, answer)
        finally:
            await self.server.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.runtime.close()
            self.cells.close()
        return 0

    async def _handle(self, message: dict[str, Any], fd: int | None) -> dict[str, Any]:
        op = message.get("op")
        if op == "serve":
            await self._serve(ServeOrder.from_json(message["order"]), int(message["slot"]), fd)
            return {}
        if op == "stop":
            await self.server.stop(str(message["key"]))
            return {}
        if op == "metrics":
            return {"families": snapshot(self.metrics.registry)}
        if fd is not None:
            socket.close(fd)
        raise ValueError(f"unknown order {op!r}")

    async def _serve(self, order: ServeOrder, slot: int, fd: int | None) -> None:
        """A serve order: a new one (with its socket), or a standing one again (an update,
        or the pool re-sending its orders after a restart of another worker)."""
        if self.server.serves(order.key):
            if fd is not None:
                socket.close(fd)
            await self.server.update(order)
            return
        if fd is None:
            raise ValueError(f"no socket for {order.key}")
        listener = socket.socket(fileno=fd)
        listener.setblocking(False)
        await self.server.serve(order, listener, shared=self.cells.service(slot, self.index))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmfleet-agent-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--inflight-fd", type=int, required=True)
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--unload-idle", type=float, default=0.0, help="seconds")
    parser.add_argument("--memory-budget", type=int, help="bytes this process's instances share")
    parser.add_argument("--inline-budget", type=float, default=INLINE_BUDGET, help="seconds")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    args = parser.parse_args(argv)
    logs.configure(level=args.log_level, json_format=args.log_format == "json")
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when workers stop
    control = socket.socket(fileno=args.control_fd)
    reply = socket.socket(fileno=args.reply_fd)
    cells = InFlightCells(args.inflight_fd, slots=args.slots, workers=args.workers)
    worker = Worker(
        control,
        reply,
        args.cache_dir,
        args.threads,
        cells,
        args.index,
        args.unload_idle,
        args.memory_budget,
        args.inline_budget,
    )
    return asyncio.run(worker.run())


if __name__ == "__main__":
    sys.exit(main())
