"""The agent's memory budget: never exceeded, room kept for every service's first instance,
waiting requests admitted as room comes back, refused when none does in time."""

from __future__ import annotations

import asyncio

import pytest

from wasmfleet_agent.runtime.sandbox import MAX_TABLES, instance_bytes, table_elements_limit
from wasmfleet_agent.server.budget import MemoryBudget

MI = 1 << 20


def test_an_instance_is_its_memories_and_its_tables() -> None:
    assert instance_bytes(64 * MI) == 64 * MI + MAX_TABLES * table_elements_limit(64 * MI) * 8
    assert instance_bytes(64 * MI) == 80 * MI  # the tables take a quarter of the cap
    assert instance_bytes(64 * MI, (3, 2)) == 3 * 64 * MI + 8 * MI
    # small caps still allow 16,384 elements a table
    assert instance_bytes(MI) == MI + MAX_TABLES * 16_384 * 8


def test_a_service_takes_room_only_while_one_instance_of_each_idle_neighbour_still_fits() -> None:
    budget = MemoryBudget(100)
    budget.add_service("hog", 30)
    budget.add_service("small", 10)
    budget.add_service("other", 20)
    taken = 0
    while budget.try_take("hog", 30):
        taken += 1
    # 30 + 30 + (10 + 20 kept for the idle ones) = 90; a third would need 120
    assert (taken, budget.held) == (2, 60)
    assert budget.try_take("small", 10)  # a neighbour's first instance always has room
    assert budget.try_take("other", 20)
    assert budget.held == 90
    assert budget.try_take("small", 10)  # nothing idle left to keep room for: up to the total
    assert not budget.try_take("small", 10)  # now the total is the bound
    assert not budget.try_take("hog", 30)
    budget.give_back("hog", 30)
    assert budget.try_take("small", 10)  # room came back
    assert budget.held == 80


def test_the_budget_is_never_exceeded_whatever_the_order() -> None:
    budget = MemoryBudget(64)
    for key, size in (("a", 16), ("b", 8), ("c", 24)):
        budget.add_service(key, size)
    taken: list[tuple[str, int]] = []
    for step in range(200):
        key, size = (("a", 16), ("b", 8), ("c", 24))[step * 7 % 3]
        if step % 5 == 4 and taken:
            budget.give_back(*taken.pop(0))
        elif budget.try_take(key, size):
            taken.append((key, size))
        assert budget.held == sum(size for _, size in taken) <= budget.total
    for key, size in taken:
        budget.give_back(key, size)
    assert budget.held == 0


def test_one_instance_larger_than_the_budget_is_refused_when_served() -> None:
    budget = MemoryBudget(64 * MI)
    with pytest.raises(ValueError, match="more than this agent's memory budget"):
        budget.add_service("huge", 80 * MI)


def test_a_removed_service_keeps_no_room_but_its_requests_under_way_give_theirs_back() -> None:
    budget = MemoryBudget(100)
    budget.add_service("a", 40)
    budget.add_service("b", 50)
    assert budget.try_take("a", 40)
    assert not budget.try_take("a", 40)  # 40 + 40 + 50 kept for b
    budget.remove_service("b")
    assert budget.try_take("a", 40)
    budget.remove_service("a")
    budget.give_back("a", 40)
    budget.give_back("a", 40)
    assert budget.held == 0
    budget.add_service("c", 100)
    assert budget.try_take("c", 100)


async def test_a_waiting_request_runs_when_room_comes_back_and_is_refused_when_it_does_not() -> (
    None
):
    budget = MemoryBudget(100, wait_seconds=5.0)
    budget.add_service("a", 60)
    assert await budget.take("a", 60)
    waiting = asyncio.create_task(budget.take("a", 60))
    await asyncio.sleep(0)
    assert not waiting.done()
    budget.give_back("a", 60)
    assert await asyncio.wait_for(waiting, 5)
    assert budget.held == 60

    quick = MemoryBudget(100, wait_seconds=0.05)
    quick.add_service("a", 60)
    assert await quick.take("a", 60)
    assert not await quick.take("a", 60)
    assert quick.held == 60
