"""Request-worker processes: the agent's requests on every core, not behind one GIL.

`WorkerPool` starts ``count`` worker processes (`worker`) and keeps them running; it is a
`serving.Server`. Serving a module is an order sent to every worker with a listening socket
the agent opened: one of its own when the agent bound a ``SO_REUSEPORT`` group of `listeners`
sockets (`sockets.bind_group`), so that the kernel spreads connections evenly over the
workers; else the same socket for all. The agent itself keeps the decisions, the cluster
connection and a copy of every socket: a worker that dies is started again and handed every
order that stands, on the same socket as before (connections the kernel gave that socket
meanwhile wait in its backlog), while the others go on answering on theirs.

A service's ``maxConcurrency`` holds across the workers: they count requests in flight in
shared memory (`inflight`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmfleet_agent.server.inflight import InFlightCells
from wasmfleet_agent.server.inline import INLINE_BUDGET
from wasmfleet_agent.server.metrics import Snapshot
from wasmfleet_agent.server.orders import (
    MAX_MESSAGE,
    ServeOrder,
    read_message_async,
    send_fd,
    write_message,
)
from wasmfleet_agent.server.serving import ServeError

__all__ = ["WorkerError", "WorkerPool"]

log = logging.getLogger(__name__)

_ORDER_TIMEOUT = 120.0
_RESTART_DELAY = (0.1, 5.0)


class WorkerError(ServeError):
    """A worker refused an order, or died before answering it."""


@dataclass
class _Process:
    index: int
    process: asyncio.subprocess.Process
    control: socket.socket
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    alive: bool = True


@dataclass
class _Standing:
    order: ServeOrder
    sockets: list[socket.socket]
    """The service's listening sockets: worker ``i`` accepts on ``sockets[i % len]``."""
    slot: int

    def socket_of(self, index: int) -> socket.socket:
        return self.sockets[index % len(self.sockets)]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class WorkerPool:
    """``count`` worker processes serving the same listening sockets."""

    def __init__(
        self,
        count: int,
        *,
        cache_dir: Path,
        threads: int = 64,
        log_level: str | None = None,
        log_format: str = "json",
        max_services: int = 1024,
        unload_idle_seconds: float = 0.0,
        memory_budget: int | None = None,
        inline_budget: float = INLINE_BUDGET,
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one process")
        self.listeners = count
        self.cells = InFlightCells.create(slots=max_services, workers=count)
        self._free_slots = list(range(max_services - 1, -1, -1))
        self.count = count
        self.cache_dir = cache_dir
        self.threads = threads
        self.unload_idle_seconds = unload_idle_seconds
        self.memory_budget = memory_budget
        self.inline_budget = inline_budget
        """The agent's memory budget (None: unbounded); each process gets its share."""
        # by default the workers log at the level this process logs at
        root_level = logging.getLogger().getEffectiveLevel()
        self.log_level = log_level or logging.getLevelName(root_level).lower()
        self.log_format = log_format
        self.restarts = 0
        self._workers: list[_Process | None] = [None] * count
        self._orders: dict[str, _Standing] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        for index in range(self.count):
            self._workers[index] = await self._spawn(index)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for worker in self._workers:
            if worker is None:
                continue
            with contextlib.suppress(OSError):
                worker.control.close()  # the worker stops its sites and exits on EOF
        for worker in self._workers:
            if worker is None:
                continue
            try:
                await asyncio.wait_for(worker.process.wait(), timeout=10)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            worker.writer.close()
        for standing in self._orders.values():
            standing.close()
        self._orders.clear()
        self.cells.close()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None and w.alive]

    async def _spawn(self, index: int) -> _Process:
        control_parent, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reply_parent, reply_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "wasmfleet_agent.server.worker",
                f"--control-fd={control_child.fileno()}",
                f"--reply-fd={reply_child.fileno()}",
                f"--cache-dir={self.cache_dir}",
                f"--threads={self.threads}",
                f"--log-level={self.log_level}",
                f"--log-format={self.log_format}",
                f"--inflight-fd={self.cells.fd}",
                f"--slots={self.cells.slots}",
                f"--workers={self.count}",
                f"--inline-budget={self.inline_budget!r}",
                f"--index={index}",
                f"--unload-idle={self.unload_idle_seconds}",
                *(
                    [f"--memory-budget={self.memory_budget // self.count}"]
                    if self.memory_budget is not None
                    else []
                ),
                pass_fds=(control_child.fileno(), reply_child.fileno(), self.cells.fd),
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "WASMFLEET_WORKER": str(index)},
            )
        finally:
            control_child.close()
            reply_child.close()
        reader, writer = await asyncio.open_unix_connection(sock=reply_parent, limit=MAX_MESSAGE)
        worker = _Process(index, process, control_parent, reader, writer)
        task = asyncio.create_task(self._listen(worker), name=f"worker {index}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("request worker started", extra={"worker": index, "pid": process.pid})
        return worker

    async def _listen(self, worker: _Process) -> None:
        try:
            while True:
                answer = await read_message_async(worker.reader)
                future = worker.pending.pop(int(answer.get("id") or 0), None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        worker.alive = False
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(WorkerError(f"request worker {worker.index} exited"))
        worker.pending.clear()
        if self._closing:
            return
        code = await worker.process.wait()
        log.error(
            "request worker exited; starting it again",
            extra={"worker": worker.index, "pid": worker.process.pid, "exit_code": code},
        )
        worker.control.close()
        worker.writer.close()
        await self._restart(worker.index)

    async def _restart(self, index: int) -> None:
        delay, cap = _RESTART_DELAY
        self.cells.reset_worker(index)  # what it had in flight died with it
        while not self._closing:
            await asyncio.sleep(delay)
            self.restarts += 1
            try:
                fresh = await self._spawn(index)
            except OSError as error:
                log.error("request worker not started: %s", error)
                delay = min(delay * 2, cap)
                continue
            self._workers[index] = fresh
            for key, standing in list(self._orders.items()):
                try:
                    await self._ask(fresh, _serve_message(standing), standing.socket_of(index))
                except WorkerError as error:
                    log.error(
                        "request worker could not take up a service again",
                        extra={"worker": index, "service": key, "error": str(error)},
                    )
            return

    # ---- orders -------------------------------------------------------------------

    async def _ask(
        self, worker: _Process, message: dict[str, Any], listener: socket.socket | None = None
    ) -> dict[str, Any]:
        if not worker.alive:
            raise WorkerError(f"request worker {worker.index} is not running")
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        worker.pending[ident] = future
        try:
            write_message(worker.control, {**message, "id": ident, "fd": listener is not None})
            if listener is not None:
                send_fd(worker.control, listener.fileno())
        except OSError as error:
            worker.pending.pop(ident, None)
            raise WorkerError(f"request worker {worker.index} unreachable: {error}") from None
        try:
            answer = await asyncio.wait_for(future, timeout=_ORDER_TIMEOUT)
        except TimeoutError:
            worker.pending.pop(ident, None)
            raise WorkerError(f"request worker {worker.index} did not answer") from None
        if not answer.get("ok"):
            raise WorkerError(str(answer.get("error", "refused")))
        return answer

    async def _ask_all(
        self, message: dict[str, Any], standing: _Standing | None = None
    ) -> list[dict[str, Any] | BaseException]:
        """Asks every running worker; with ``standing``, each is handed its socket of it."""
        workers = [w for w in self._workers if w is not None and w.alive]
        return await asyncio.gather(
            *(
                self._ask(w, message, None if standing is None else standing.socket_of(w.index))
                for w in workers
            ),
            return_exceptions=True,
        )

    async def serve(
        self, order: ServeOrder, listener: socket.socket, siblings: Sequence[socket.socket] = ()
    ) -> None:
        """Every worker serves ``order``, each on its socket of ``listener`` and ``siblings``
        (sockets the pool now owns)."""
        sockets = [listener, *siblings]
        if order.key in self._orders or not self._free_slots:
            for sock in sockets:
                sock.close()
            if order.key in self._orders:
                raise WorkerError(f"{order.key} is served already")
            raise WorkerError(f"this agent serves {self.cells.slots} services at most")
        standing = _Standing(order, sockets, self._free_slots.pop())
        self.cells.reset_slot(standing.slot)
        answers = await self._ask_all(_serve_message(standing), standing)
        failures = [a for a in answers if isinstance(a, BaseException)]
        if failures or not answers:
            await self._ask_all({"op": "stop", "key": order.key})
            standing.close()
            self._free_slots.append(standing.slot)
            raise WorkerError(str(failures[0]) if failures else "no request worker is running")
        self._orders[order.key] = standing

    async def update(self, order: ServeOrder) -> None:
        """A served module's new sandbox (configuration changed): new requests see it."""
        standing = self._orders.get(order.key)
        if standing is None:
            raise WorkerError(f"{order.key} is not served")
        standing.order = order
        answers = await self._ask_all(_serve_message(standing))
        failures = [a for a in answers if isinstance(a, BaseException)]
        if failures:
            raise WorkerError(str(failures[0]))

    async def stop(self, key: str) -> None:
        standing = self._orders.pop(key, None)
        await self._ask_all({"op": "stop", "key": key})
        if standing is not None:
            standing.close()
            self._free_slots.append(standing.slot)

    async def metrics(self) -> list[Snapshot]:
        answers = await self._ask_all({"op": "metrics"})
        return [a["families"] for a in answers if isinstance(a, dict)]


def _serve_message(standing: _Standing) -> dict[str, Any]:
    return {"op": "serve", "order": standing.order.to_json(), "slot": standing.slot}
