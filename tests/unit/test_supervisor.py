"""The supervisor notices every long-running task that ends, and acts by its policy."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest

from wasmfleet_common.backoff import Backoff
from wasmfleet_common.supervisor import Supervisor


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _replaced(supervisor: Supervisor, name: str, old: asyncio.Task[None] | None) -> bool:
    task = supervisor.task(name)
    return task is not None and task is not old and not task.done()


async def test_a_task_that_raises_is_restarted_and_counted() -> None:
    stop = asyncio.Event()
    runs: list[int] = []
    restarted: list[str] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("boom")
        await stop.wait()

    supervisor = Supervisor(
        stop, restart=True, on_restart=restarted.append, backoff=Backoff(0.01, 0.01)
    )
    supervisor.start("flaky", flaky)
    await _until(lambda: len(runs) == 3)
    assert restarted == ["flaky", "flaky"]
    stop.set()
    await supervisor.close()


async def test_health_is_false_while_a_critical_task_is_down_and_when_it_keeps_dying() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop, restart=True, backoff=Backoff(0.2, 0.2), tolerated=2, window=60)

    async def forever() -> None:
        await stop.wait()

    supervisor.start("watch", forever)
    supervisor.start("optional", forever, critical=False)
    await _until(lambda: supervisor.task("watch") is not None)
    assert supervisor.health() == (True, "every task runs")
    assert supervisor.crash("watch")
    await _until(lambda: not supervisor.health()[0])
    assert "task watch is down" in supervisor.health()[1]
    await _until(lambda: supervisor.health()[0])  # back after its backoff
    for _ in range(2):
        running = supervisor.task("watch")
        assert supervisor.crash("watch")
        await _until(functools.partial(_replaced, supervisor, "watch", running))
    healthy, why = supervisor.health()
    assert not healthy
    assert "ended 3 times" in why
    assert supervisor.crash("optional")
    assert not supervisor.crash("nonexistent")
    stop.set()
    await supervisor.close()


async def test_without_restarts_wait_names_the_first_task_that_ended() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop, restart=False)

    async def forever() -> None:
        await stop.wait()

    async def returns() -> None:
        await asyncio.sleep(0)

    supervisor.start("steady", forever)
    supervisor.start("short", returns)
    assert await supervisor.wait() == "short"
    stop.set()
    await supervisor.close()


async def test_a_stop_is_not_an_end() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop, restart=False)

    async def forever() -> None:
        await stop.wait()

    supervisor.start("steady", forever)
    stop.set()
    assert await supervisor.wait() is None
    await supervisor.close()


async def test_names_are_unique() -> None:
    supervisor = Supervisor(asyncio.Event(), restart=False)

    async def nothing() -> None:
        return None

    supervisor.start("a", nothing)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("a", nothing)
    await supervisor.close()
