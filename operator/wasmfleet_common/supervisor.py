"""Long-running tasks that must not die quietly.

An asyncio task that raises is only noticed when someone awaits it; the agent's binding watch
once died of an error nobody handled, and the agent went on renewing its Lease, blind, for
as long as it ran. A `Supervisor` owns a process's long-running tasks and notices any that
ends while the process is still running, whatever the cause (an exception, a cancellation, a
return), and logs it with its traceback. Then, by policy:

- ``restart=True`` (the agent, whose process also serves every replica of its node): the task
  starts again after a backoff (0.5 s, doubling to 30 s, reset once it has run for a minute).
  `health` turns false while a critical task is down or once it has ended three times within a
  minute, so that the agent stops claiming to be alive (its heartbeat stops renewing the
  Lease) instead of carrying on half-alive;
- ``restart=False`` (the operator, which has a standby waiting): `wait` returns the name of
  the first task that ended, and the process exits so that the standby takes over and
  Kubernetes restarts it.

`crash` ends a task on purpose; the processes expose it only with ``--fault-injection``, for
the tests that show each task's death is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from wasmfleet_common.backoff import Backoff

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
TASK_BACKOFF = Backoff(base=0.5, cap=30.0)
"""Waits before a task that ended starts again (``restart=True``)."""


@dataclass
class _Entry:
    name: str
    factory: TaskFactory
    critical: bool
    task: asyncio.Task[None] | None = None
    keeper: asyncio.Task[None] | None = None
    down_since: float | None = None
    ended: deque[float] = field(default_factory=deque)
    last_error: str = ""


class Supervisor:
    """Runs named long-running tasks; see the module docstring for the two policies."""

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        restart: bool,
        on_restart: Callable[[str], None] | None = None,
        backoff: Backoff = TASK_BACKOFF,
        window: float = 60.0,
        tolerated: int = 2,
    ) -> None:
        self.stop = stop
        self.restart = restart
        self.on_restart = on_restart
        self.backoff = backoff
        self.window = window
        """Seconds over which ends are counted, and a task must run to reset its backoff."""
        self.tolerated = tolerated
        """Ends of one task within ``window`` that still count as healthy."""
        self._entries: dict[str, _Entry] = {}
        self._ended: asyncio.Queue[str] = asyncio.Queue()

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The task now running as ``name``, if any."""
        entry = self._entries.get(name)
        return entry.task if entry is not None else None

    def start(self, name: str, factory: TaskFactory, *, critical: bool = True) -> None:
        """Starts ``factory()`` as the task ``name``."""
        if name in self._entries:
            raise ValueError(f"a task named {name!r} is already supervised")
        entry = self._entries[name] = _Entry(name, factory, critical)
        if self.restart:
            entry.keeper = asyncio.create_task(self._keep(entry), name=f"keep {name}")
        else:
            entry.task = asyncio.create_task(factory(), name=name)
            entry.task.add_done_callback(lambda task: self._noticed(entry, task))

    async def wait(self) -> str | None:
        """Returns when ``stop`` is set (None) or a task ends (its name; ``restart=False``)."""
        stopping = asyncio.ensure_future(self.stop.wait())
        ended = asyncio.ensure_future(self._ended.get())
        try:
            await asyncio.wait({stopping, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not ended.done():
                ended.cancel()
        if ended.done() and not ended.cancelled():
            return ended.result()
        return None

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """(healthy, a sentence why not): false while a critical task is down or has ended
        more than ``tolerated`` times within ``window`` seconds."""
        now = asyncio.get_running_loop().time() if now is None else now
        for entry in self._entries.values():
            if not entry.critical:
                continue
            recent = [t for t in entry.ended if now - t <= self.window]
            if entry.down_since is not None:
                return False, f"task {entry.name} is down ({entry.last_error}); restarting it"
            if len(recent) > self.tolerated:
                return False, (
                    f"task {entry.name} ended {len(recent)} times in {self.window:g}s "
                    f"(last: {entry.last_error})"
                )
        return True, "every task runs"

    def crash(self, name: str) -> bool:
        """Ends the running task ``name`` as a crash would (fault injection); False if there
        is no such task running."""
        entry = self._entries.get(name)
        if entry is None or entry.task is None or entry.task.done():
            return False
        entry.task.cancel("fault injected")
        return True

    async def close(self) -> None:
        """Cancels every task (``stop`` should be set first, so that none counts as ended)."""
        tasks = [t for e in self._entries.values() for t in (e.keeper, e.task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- internals -----------------------------------------------------------------

    def _noticed(self, entry: _Entry, task: asyncio.Task[None]) -> bool:
        """Records that ``task`` ended; False when that was the process stopping."""
        if self.stop.is_set():
            return False
        loop = asyncio.get_running_loop()
        entry.ended.append(loop.time())
        while entry.ended and loop.time() - entry.ended[0] > self.window:
            entry.ended.popleft()
        if task.cancelled():
            entry.last_error = "cancelled"
            log.error("task %s was cancelled while the process runs", entry.name)
        elif (error := task.exception()) is not None:
            entry.last_error = f"{type(error).__name__}: {error}"
            log.error(
                "task %s ended with an error",
                entry.name,
                exc_info=(type(error), error, error.__traceback__),
            )
        else:
            entry.last_error = "returned"
            log.error("task %s returned while the process runs", entry.name)
        self._ended.put_nowait(entry.name)
        return True

    async def _keep(self, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.stop.is_set():
            entry.task = asyncio.create_task(entry.factory(), name=entry.name)
            started = loop.time()
            entry.down_since = None
            await asyncio.wait({entry.task})  # the task's own end never raises here
            if not self._noticed(entry, entry.task):
                return
            entry.down_since = loop.time()
            failures = 1 if loop.time() - started >= self.window else failures + 1
            delay = self.backoff.delay(failures)
            log.warning("restarting task %s in %.1fs", entry.name, delay)
            if self.on_restart is not None:
                self.on_restart(entry.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
