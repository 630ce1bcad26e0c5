"""Short runs on the event loop's thread (`server.inline`), against the real agent and modules.

The probe's ``/echo`` is short; ``/loop`` spins and ``/sleep`` sleeps. Requests are sent one
after another, so which run went inline is exact: a service goes inline after eight short
threaded runs, and after a try stopped at the budget it needs sixteen.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from wasmfleet_harness.agent import ServedModule
from wasmfleet_harness.processes import Workspace

DEADLINE = 1.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def probe(
    request: pytest.FixtureRequest, workspace: Workspace, wasm_modules: dict[str, Path]
) -> Iterator[ServedModule]:
    """The probe served alone, so that every count below is this test's."""
    processes = int(request.param)
    name = f"inline-{request.node.name}".replace("[", "-").replace("]", "")
    served = ServedModule(
        workspace.subdir(name),
        wasm_modules["probe"],
        extra=["--timeout", f"{int(DEADLINE * 1000)}ms", "--processes", str(processes)],
        name=name,
    )
    with served:
        yield served


def _inline(agent: ServedModule) -> dict[str, float]:
    """``wasmfleet_agent_inline_runs_total`` by outcome (all processes together)."""
    counts = {"finished": 0.0, "stopped": 0.0}
    for family in text_string_to_metric_families(agent.metrics()):
        if family.name == "wasmfleet_agent_inline_runs":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["outcome"]] += sample.value
    return counts


async def _echo(http: aiohttp.ClientSession, agent: ServedModule, n: int) -> None:
    async with http.post(f"{agent.url}/echo?n={n}", data=f"body {n}") as response:
        text = await response.text()
    assert response.status == 200, text
    assert f"query=n={n}\n" in text
    assert f"body=body {n}\n" in text


async def _echoes(http: aiohttp.ClientSession, agent: ServedModule, count: int) -> None:
    for n in range(count):
        await _echo(http, agent, n)


async def test_short_runs_go_inline_and_answer_alike(
    probe: ServedModule, http: aiohttp.ClientSession
) -> None:
    # each worker process keeps its own count of short runs: enough requests for both
    await _echoes(http, probe, 60)
    counts = _inline(probe)
    assert counts["stopped"] == 0
    assert counts["finished"] >= 60 - 2 * 8


async def _after_going_inline(
    http: aiohttp.ClientSession, agent: ServedModule, path: str
) -> tuple[int, float, dict[str, float], dict[str, float]]:
    """``path`` asked once /echo runs inline: its status, seconds, and the inline counts
    before and after it."""
    await _echoes(http, agent, 60)
    before = _inline(agent)
    started = time.monotonic()
    async with http.get(agent.url + path) as response:
        await response.read()
    return response.status, time.monotonic() - started, before, _inline(agent)


async def test_a_try_that_spins_is_stopped_and_its_deadline_still_holds(
    probe: ServedModule, http: aiohttp.ClientSession
) -> None:
    status, elapsed, before, after = await _after_going_inline(http, probe, "/loop")
    assert status == 504
    # the run on a thread gets what the try left of the deadline: not a second deadline
    assert DEADLINE <= elapsed < DEADLINE + 0.5
    assert after["stopped"] == before["stopped"] + 1
    assert "an inline run overran its budget" in probe.process.log_path.read_text()
    # /echo is still answered, on threads until sixteen short runs in a row (eight in a
    # worker that ran none of these: eight requests go inline nowhere, whichever took them)
    await _echoes(http, probe, 8)
    assert _inline(probe)["finished"] == after["finished"]
    await _echoes(http, probe, 40)
    assert _inline(probe)["finished"] > after["finished"]


async def test_a_try_that_would_sleep_is_stopped_at_once_and_the_sleep_is_whole(
    probe: ServedModule, http: aiohttp.ClientSession
) -> None:
    status, elapsed, before, after = await _after_going_inline(http, probe, "/sleep?200")
    assert status == 200
    assert elapsed >= 0.2
    assert after["stopped"] == before["stopped"] + 1


async def test_a_module_that_always_sleeps_never_runs_inline(
    probe: ServedModule, http: aiohttp.ClientSession
) -> None:
    for _ in range(30):
        async with http.get(probe.url + "/sleep?1") as response:
            await response.read()
        assert response.status == 200
    assert _inline(probe) == {"finished": 0, "stopped": 0}


@pytest.mark.parametrize("case", ["turned-off", "writable-directory"])
async def test_no_run_goes_inline_when_turned_off_or_when_a_run_leaves_files_behind(
    case: str, workspace: Workspace, wasm_modules: dict[str, Path], http: aiohttp.ClientSession
) -> None:
    extra = {
        "turned-off": ["--inline-budget", "0s"],
        "writable-directory": ["--dir", f"{workspace.subdir('inline-scratch-dir')}:/scratch:rw"],
    }[case]
    with ServedModule(
        workspace.subdir(f"inline-{case}"), wasm_modules["probe"], extra=extra, name=case
    ) as agent:
        await _echoes(http, agent, 30)
        assert _inline(agent) == {"finished": 0, "stopped": 0}


async def test_a_wasi_http_component_goes_inline_unless_it_may_call_out(
    workspace: Workspace, wasm_modules: dict[str, Path], http: aiohttp.ClientSession
) -> None:
    allowed = ["--allow-outbound", "http://127.0.0.1:9"]
    for outbound, expect_inline in (([], True), (allowed, False)):
        name = f"inline-component-{expect_inline}"
        with ServedModule(
            workspace.subdir(name), wasm_modules["hello-http-component"], extra=outbound, name=name
        ) as agent:
            for _ in range(60):
                async with http.get(agent.url + "/") as response:
                    assert response.status == 200
                    assert "Hello" in await response.text()
            # a thread's first run costs more (its own set-up) and counts as long: most
            # runs, not all but eight, go inline
            finished = _inline(agent)["finished"]
            assert (finished >= 30) if expect_inline else finished == 0
