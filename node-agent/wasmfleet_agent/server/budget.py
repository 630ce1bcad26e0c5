"""The memory one process's instances may hold at once, shared fairly by its services.

Each instance's linear memories and tables are capped (`sandbox.instance_bytes`), but an agent
runs as many instances at once as it has threads, for every service on the node: without a
bound across them, one service with a large ``resources.memory`` and many concurrent requests
takes the agent past its container's memory limit, and the kernel kills it with every other
replica on the node. `MemoryBudget` sets aside each instance's cap before it runs and gives it
back after; a request that does not fit waits up to ``wait_seconds`` for room, then is refused
(the handler answers 503), so the budget is never exceeded.

Fairness: every service served here is always left room for one instance. A service that
holds nothing may take any room there is; one that already runs an instance may take more only
while room for one instance of each other service that runs none is still left over. So a
service that floods the agent with big requests is held back before its neighbours are, and
its neighbours keep answering, as long as one instance of every service fits in the budget at
once (the budget is then what `--memory-budget` says; beyond that, first come first served).

The budget is per process and in memory only: with request-worker processes each gets its
share of the agent's budget (`--memory-budget` divided by the processes).
"""

from __future__ import annotations

import asyncio

__all__ = ["MemoryBudget"]


class MemoryBudget:
    """Bytes of instance memory a process's services may hold at once (not thread-safe: used
    from its event loop only)."""

    def __init__(self, total: int, *, wait_seconds: float = 1.0) -> None:
        if total <= 0:
            raise ValueError("a memory budget must be positive")
        self.total = total
        self.wait_seconds = wait_seconds
        self.held = 0
        self._by_service: dict[str, int] = {}
        """Bytes each service holds now."""
        self._one_instance: dict[str, int] = {}
        """Each service's instance size, for every service served here."""
        self._kept_for_idle = 0
        """Room for one instance of every service that holds nothing."""
        self._waiters: list[asyncio.Future[None]] = []

    def add_service(self, key: str, instance: int) -> None:
        """Serves ``key``, whose instances take up to ``instance`` bytes (again: its new size).

        Raises ``ValueError`` when one instance could never fit in the budget.
        """
        if instance > self.total:
            raise ValueError(
                f"one instance may take {instance} bytes (its memory and tables), more than "
                f"this agent's memory budget of {self.total} bytes per process"
            )
        self.remove_service(key)
        self._one_instance[key] = instance
        self._by_service.setdefault(key, 0)
        if self._by_service[key] == 0:
            self._kept_for_idle += instance

    def remove_service(self, key: str) -> None:
        """Stops keeping room for ``key`` (what its requests under way hold stays held)."""
        instance = self._one_instance.pop(key, None)
        if instance is not None and self._by_service.get(key, 0) == 0:
            self._kept_for_idle -= instance
        self._wake()

    def fits(self, key: str, need: int) -> bool:
        """Whether ``need`` bytes for ``key`` fit now, keeping room for every idle service."""
        if self.held + need > self.total:
            return False
        holds = self._by_service.get(key, 0)
        if holds == 0:
            return True  # its first instance: room was kept for it
        return self.held + need + self._kept_for_idle <= self.total

    def try_take(self, key: str, need: int) -> bool:
        """Takes ``need`` bytes for ``key`` if they fit now."""
        if not self.fits(key, need):
            return False
        holds = self._by_service.get(key, 0)
        if holds == 0 and key in self._one_instance:
            self._kept_for_idle -= self._one_instance[key]
        self._by_service[key] = holds + need
        self.held += need
        return True

    async def take(self, key: str, need: int) -> bool:
        """Takes ``need`` bytes for ``key``, waiting up to ``wait_seconds`` for room; False
        when there was none by then."""
        if self.try_take(key, need):
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while (left := deadline - loop.time()) > 0:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return self.try_take(key, need)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self.try_take(key, need):
                return True
        return False

    def give_back(self, key: str, need: int) -> None:
        """Returns what `take` gave ``key``; waiting requests look again."""
        holds = self._by_service.get(key, 0) - need
        self.held -= need
        if holds <= 0:
            self._by_service.pop(key, None)
            if key in self._one_instance:
                self._by_service[key] = 0
                self._kept_for_idle += self._one_instance[key]
        else:
            self._by_service[key] = holds
        self._wake()

    def _wake(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
