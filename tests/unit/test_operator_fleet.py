"""The operator's node view and its work queue, driven by a fake clock and real asyncio."""

from __future__ import annotations

import asyncio
from typing import Any

from wasmfleet_api.agent import WasmAgent
from wasmfleet_api.binding import WasmBinding
from wasmfleet_operator.fleet import Fleet
from wasmfleet_operator.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _agent(name: str, arch: str = "amd64", **status: Any) -> WasmAgent:
    return WasmAgent.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"nodeName": name},
            "status": {"architecture": arch, "address": "10.0.0.1", **status},
        }
    )


def _binding(name: str, *, node: str) -> WasmBinding:
    return WasmBinding.model_validate(
        {
            "metadata": {"namespace": "n", "name": name},
            "spec": {
                "serviceName": "s",
                "nodeName": node,
                "revision": "r",
                "digest": "sha256:" + "a" * 64,
                "workload": {"module": {"image": "r.example.com/s:1"}, "http": {}},
            },
        }
    )


def _lease(name: str, renew: str, duration: int = 3, holder: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "wasmfleet-system"},
        "spec": {
            "holderIdentity": name if holder is None else holder,
            "renewTime": renew,
            "leaseDurationSeconds": duration,
        },
    }


def test_liveness_follows_when_the_lease_last_changed_not_its_timestamp() -> None:
    clock = Clock()
    fleet = Fleet(grace_period=4, clock=clock)
    fleet.update_agent(_agent("a"))
    assert not fleet.liveness("a").ready  # no heartbeat yet
    # A renewTime far in the past still counts as fresh when we first see it change.
    fleet.update_lease(_lease("a", "2001-01-01T00:00:00.000000Z"))
    assert fleet.liveness("a").ready
    clock.now += 2.9
    fleet.update_lease(_lease("a", "2001-01-01T00:00:00.000000Z"))  # the same renewal again
    clock.now += 0.2
    assert not fleet.liveness("a").ready
    assert not fleet.liveness("a").lost
    clock.now += 4
    assert fleet.liveness("a").lost
    fleet.update_lease(_lease("a", "2001-01-01T00:00:05.000000Z"))  # it renews again
    assert fleet.liveness("a").ready
    assert not fleet.liveness("a").lost


def test_a_released_lease_is_not_ready_at_once_but_lost_only_after_the_grace_period() -> None:
    clock = Clock()
    fleet = Fleet(grace_period=4, clock=clock)
    fleet.update_agent(_agent("a"))
    fleet.update_lease(_lease("a", "2026-01-01T00:00:00.000000Z"))
    assert fleet.liveness("a").ready
    clock.now += 1
    fleet.update_lease(_lease("a", "2026-01-01T00:00:00.000000Z", holder=""))  # shutting down
    assert not fleet.liveness("a").ready
    clock.now += 6.9
    assert not fleet.liveness("a").lost
    fleet.update_lease(_lease("a", "2026-01-01T00:00:09.000000Z"))  # the new Pod renews it
    assert fleet.liveness("a").ready


def test_an_unknown_agent_is_lost_and_the_agents_own_architecture_wins_over_a_node_label() -> None:
    fleet = Fleet(clock=Clock())
    assert fleet.liveness("ghost").lost
    fleet.update_agent(_agent("a", arch="amd64", capacity={"services": 7}))
    fleet.update_node(
        {
            "metadata": {"name": "a", "labels": {"kubernetes.io/arch": "arm64", "disk": "ssd"}},
            "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
        }
    )
    fleet.update_binding(_binding("b1", node="a"))
    (info,) = fleet.node_infos()
    # the label lies: the agent's CPU decides, for architectures and for nodeSelectors alike
    assert info.arch == "amd64"
    assert info.labels["kubernetes.io/arch"] == "amd64"
    assert info.labels["disk"] == "ssd"
    assert info.taints[0].key == "dedicated"
    assert (info.capacity, info.allocated) == (7, 1)
    fleet.update_binding(_binding("b1", node="a"), deleted=True)
    assert fleet.node_infos()[0].allocated == 0
    fleet.update_agent(_agent("a", arch="", capacity={"services": 7}))
    assert fleet.node_infos()[0].arch == "arm64", "the label stands in until the agent reports"


async def test_the_work_queue_never_hands_one_key_to_two_workers() -> None:
    queue = WorkQueue()
    queue.add("x")
    queue.add("x")
    queue.add("y")
    assert len(queue) == 2
    first = await queue.get()
    queue.add(first)  # changed while being worked on: queued again only after done
    second = await queue.get()
    assert {first, second} == {"x", "y"}
    assert len(queue) == 0
    queue.done(first)
    assert len(queue) == 1
    assert await asyncio.wait_for(queue.get(), 1) == first
    queue.done(first)
    queue.done(second)
    queue.add_after("z", 0.01)
    assert await asyncio.wait_for(queue.get(), 1) == "z"
    queue.close()


async def test_the_work_queue_puts_follow_ups_first_without_starving_new_work() -> None:
    queue = WorkQueue()
    for number in range(8):
        queue.add(f"new-{number}")
    queue.add("new-5", soon=True)  # a queued key whose replicas moved is promoted
    queue.add("moved-a", soon=True)
    queue.add("moved-b", soon=True)
    queue.add("moved-a")  # an ordinary add does not demote it
    taken = [await asyncio.wait_for(queue.get(), 1) for _ in range(4)]
    assert taken == ["new-5", "moved-a", "moved-b", "new-0"]
    for number in range(10):  # a stream of follow-ups
        queue.add(f"moved-{number}", soon=True)
    taken = [await asyncio.wait_for(queue.get(), 1) for _ in range(8)]
    assert [k for k in taken if k.startswith("new-")] == ["new-1", "new-2"], "one take in four"

    again = WorkQueue()
    again.add("busy")
    assert await again.get() == "busy"
    again.add("other")
    again.add("busy", soon=True)  # while worked on: at the front once done
    again.add("busy")
    again.done("busy")
    assert await asyncio.wait_for(again.get(), 1) == "busy"


async def test_a_waiting_worker_wakes_when_a_key_arrives() -> None:
    queue = WorkQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.add("late")
    assert await asyncio.wait_for(waiting, 1) == "late"
