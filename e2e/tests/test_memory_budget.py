"""An agent's memory budget against a service that tries to exhaust it, on the real control plane.

One agent (``budget-a``, one process, ``--memory-budget``) runs ``neighbor`` (hello-c) beside
``hog`` (the probe module, a 128Mi memory cap) whose requests each allocate and touch 120 MiB
and hold it. A burst of concurrent hog requests would need several GiB; the budget lets only
as many run as fit, the rest get 503 with ``Retry-After``, the agent's resident memory stays
within the budget plus its own, and the neighbour answers every request meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from wasmfleet_agent.runtime.sandbox import instance_bytes
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.fleet import LocalFleet, endpoints_of, fetch
from wasmfleet_harness.netns import netns_available
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.registry import Registry
from wasmfleet_harness.services import apply_object, wait_ready, wasm_service

pytestmark = pytest.mark.skipif(
    not netns_available(), reason="agents need network namespaces (root and iproute2)"
)

NODE = "budget-a"
MI = 1 << 20
BUDGET = 640 * MI
HOG_CAP = 128 * MI
HOG_HOLDS = "120:1500"  # MiB touched, milliseconds held
BURST = 24


@pytest.fixture(scope="module")
def fleet(wasmfleet_crds: ControlPlane, workspace: Workspace) -> Iterator[LocalFleet]:
    local = LocalFleet(wasmfleet_crds, workspace.subdir("fleet-budget"))
    try:
        local.add_agent(
            NODE,
            labels={"kubernetes.io/arch": "amd64"},
            extra_args=["--memory-budget", f"{BUDGET // MI}Mi"],
        )
        local.start_operator("operator-budget")
        wait_until(lambda: local.leader() is not None, timeout=30, message=local.logs)
        yield local
    finally:
        local.close()


def _on_node(name: str, image: str, **spec: object) -> dict[str, object]:
    return wasm_service(
        name, image, placement={"nodeSelector": {"kubernetes.io/hostname": NODE}}, **spec
    )


def _peak_resident(pid: int) -> int:
    """The process's peak resident memory (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_service_exhausting_the_agents_memory_gets_503s_while_its_neighbour_answers(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    hello = f"{registry.host}/{namespace}/neighbor:1.0"
    push_module(wasm_modules["hello-c"], hello)
    probe = f"{registry.host}/{namespace}/probe:1.0"
    push_module(wasm_modules["probe"], probe)
    apply_object(
        plane, namespace, _on_node("neighbor", hello, http={}, resources={"memory": "16Mi"})
    )
    apply_object(
        plane,
        namespace,
        _on_node(
            "hog",
            probe,
            http={"timeout": "10s", "maxConcurrency": 64},
            resources={"memory": f"{HOG_CAP // MI}Mi"},
        ),
    )
    wait_ready(fleet, namespace, "neighbor", 1)
    wait_ready(fleet, namespace, "hog", 1)
    (neighbor,) = endpoints_of(plane, namespace, "neighbor")
    (hog,) = endpoints_of(plane, namespace, "hog")
    pid = fleet.agents[NODE].process.pid
    assert pid is not None
    status, body = fetch(hog, f"/hold?{HOG_HOLDS}")
    assert (status, body.strip()) == (200, "held 120 MiB for 1500 ms")
    before = _peak_resident(pid)

    # What fits at once: the hog's instances while room for the neighbour's one is kept.
    hog_instance = instance_bytes(HOG_CAP)
    room = (BUDGET - instance_bytes(16 * MI)) // hog_instance
    assert 1 <= room < BURST

    statuses: Counter[int] = Counter()
    refusals: set[tuple[str, str | None]] = set()

    def burst() -> None:
        async def run() -> None:
            timeout = aiohttp.ClientTimeout(total=60)
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

                async def one() -> None:
                    url = f"http://{hog.address}:{hog.port}/hold?{HOG_HOLDS}"
                    async with session.get(url) as response:
                        text = await response.text()
                        statuses[response.status] += 1
                        if response.status != 200:
                            refusals.add((text.strip(), response.headers.get("Retry-After")))

                await asyncio.gather(*(one() for _ in range(BURST)))

        asyncio.run(run())

    thread = threading.Thread(target=burst)
    thread.start()
    neighbour: Counter[int] = Counter()
    try:
        for _ in range(2_000):  # bounded; the burst ends within a few seconds
            if not thread.is_alive():
                break
            neighbour[fetch(neighbor)[0]] += 1
    finally:
        thread.join(timeout=90)
    assert not thread.is_alive()

    assert set(statuses) == {200, 503}, statuses
    assert room <= statuses[200] < BURST
    assert refusals == {("agent memory budget exhausted", "1")}
    assert set(neighbour) == {200}, neighbour
    assert neighbour[200] >= 1
    # Without the budget the burst would touch BURST x 120 MiB (about 2.8 GiB) at once.
    grown = _peak_resident(pid) - before
    assert grown <= room * hog_instance, (grown, room)
    # and the agent counts what it refused, by service and reason
    admin = f"http://127.0.0.1:{fleet.agents[NODE].admin_port}/metrics"
    with urllib.request.urlopen(admin, timeout=10) as response:
        metrics = response.read().decode()
    (refused,) = [
        line
        for line in metrics.splitlines()
        if line.startswith("wasmfleet_agent_requests_rejected_total{")
        and 'reason="memory"' in line
        and "hog" in line
    ]
    assert float(refused.rsplit(" ", 1)[1]) == statuses[503]
