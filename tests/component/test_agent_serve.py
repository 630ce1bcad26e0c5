"""``wasmfleet-agent serve`` as a real process: HTTP in, WAGI to real modules, HTTP out.

``probe_agent`` (in ``conftest.py``) serves the probe module in one process and in two worker
processes; every test here runs against both.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from wasmfleet_harness.agent import ServedModule, agent_command
from wasmfleet_harness.processes import Workspace, wait_until


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _get(
    http: aiohttp.ClientSession, url: str, **kwargs: object
) -> tuple[int, dict[str, str], str]:
    async with http.request(str(kwargs.pop("method", "GET")), url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, dict(response.headers), await response.text()


async def test_method_path_query_headers_and_body_reach_the_module(
    probe_agent: ServedModule, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await _get(
        http,
        probe_agent.url + "/echo?a=1&b=two",
        method="PUT",
        headers={"X-Test": "hello", "Content-Type": "text/x-test"},
        data=b"the body",
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["x-echo-method"] == "PUT"
    lines = dict(line.split("=", 1) for line in body.splitlines() if "=" in line)
    assert lines["method"] == "PUT"
    assert lines["path"] == "/echo"
    assert lines["query"] == "a=1&b=two"
    assert lines["x-test"] == "hello"
    assert lines["content-type"] == "text/x-test"
    assert lines["content-length"] == "8"
    assert lines["server-port"] == str(probe_agent.port)
    assert lines["remote-addr"] == "127.0.0.1"
    assert lines["body"] == "the body"


async def test_status_and_headers_reach_the_client(
    probe_agent: ServedModule, http: aiohttp.ClientSession
) -> None:
    status, _, body = await _get(http, probe_agent.url + "/status?status=418")
    assert (status, body) == (418, "status 418\n")
    async with http.get(
        probe_agent.url + "/status?status=307&to=/elsewhere", allow_redirects=False
    ) as response:
        assert response.status == 307
        assert response.headers["Location"] == "/elsewhere"
    status, _, body = await _get(http, probe_agent.url + "/nothing-here")
    assert status == 404
    assert "no such probe: /nothing-here" in body


async def test_a_module_that_only_prints_is_served_as_text(
    probe_agent: ServedModule, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await _get(http, probe_agent.url + "/plain")
    assert (status, body) == (200, "just text, no headers\n")
    assert headers["Content-Type"].startswith("text/plain")


async def test_the_module_sees_only_its_own_environment(
    probe_agent: ServedModule, http: aiohttp.ClientSession
) -> None:
    _, _, body = await _get(http, probe_agent.url + "/env", headers={"Proxy": "evil:1"})
    names = {line.split("=", 1)[0] for line in body.splitlines() if "=" in line}
    assert "GIVEN" in names
    assert "REQUEST_METHOD" in names
    assert not names & {"PATH", "HOME", "USER", "PYTHONPATH", "HTTP_PROXY"}
    _, _, body = await _get(http, probe_agent.url + "/open?/etc/passwd")
    assert body.startswith("denied /etc/passwd")


async def test_a_timeout_answers_504_in_time_while_others_are_served(
    probe_agent: ServedModule, http: aiohttp.ClientSession, probe_deadline: float
) -> None:
    async def timed(path: str) -> tuple[int, float, str]:
        started = time.monotonic()
        status, headers, _ = await _get(http, probe_agent.url + path)
        return status, time.monotonic() - started, headers.get("x-wasmfleet-error-id", "")

    slow = [asyncio.create_task(timed(p)) for p in ("/loop", "/sleep?60000", "/loop")]
    await asyncio.sleep(0)
    quick_started = time.monotonic()
    quick = [await timed("/echo") for _ in range(20)]
    quick_elapsed = time.monotonic() - quick_started
    results = await asyncio.gather(*slow)
    for status, seconds, error_id in results:
        assert status == 504
        # In time: at the deadline, not when the guest would have ended (a 60 s sleep, never
        # for a loop); the margin allows for a loaded 2-core machine.
        assert probe_deadline <= seconds < probe_deadline + 0.5
        assert len(error_id) == 12
    assert all(status == 200 for status, _, _ in quick)
    assert quick_elapsed < probe_deadline  # served while the slow ones were still running
    log = probe_agent.process.log_path.read_text()
    assert results[0][2] in log


async def test_a_memory_bomb_is_a_500_and_the_agent_stays_healthy(
    probe_agent: ServedModule, http: aiohttp.ClientSession
) -> None:
    status, _, body = await _get(http, probe_agent.url + "/membomb")
    assert status == 500
    assert "module ran out of memory" in body
    status, _, body = await _get(http, probe_agent.admin_url + "/healthz")
    assert status == 200
    status, _, body = await _get(http, probe_agent.url + "/plain")
    assert status == 200


async def test_endless_output_is_capped(
    probe_agent: ServedModule, http: aiohttp.ClientSession, probe_deadline: float
) -> None:
    started = time.monotonic()
    status, _, body = await _get(http, probe_agent.url + "/flood")
    assert status == 502
    assert "module response too large" in body
    assert time.monotonic() - started < probe_deadline


@pytest.mark.parametrize(
    ("path", "status"),
    [("/unterminated", 502), ("/recurse", 500)],
)
async def test_broken_modules_get_a_clear_status(
    probe_agent: ServedModule, http: aiohttp.ClientSession, path: str, status: int
) -> None:
    got, headers, _ = await _get(http, probe_agent.url + path)
    assert got == status
    assert "x-wasmfleet-error-id" in headers


async def test_limits_before_the_sandbox_answer_413_and_503(
    probe_agent: ServedModule, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await _get(http, probe_agent.url + "/echo", method="POST", data=b"x" * 70000)
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 8192

    status, _, _ = await _get(http, probe_agent.url + "/echo", method="POST", data=chunks())
    assert status == 413
    sleepers = [asyncio.create_task(_get(http, probe_agent.url + "/sleep?400")) for _ in range(16)]
    full = 'wasmfleet_agent_requests_in_flight{service="'
    await asyncio.to_thread(
        wait_until,
        lambda: any(
            line.startswith(full) and line.endswith(" 16.0")
            for line in probe_agent.metrics().splitlines()
        ),
        timeout=10,
        message="the 16 slow requests never were all in flight",
    )
    status, _, _ = await _get(http, probe_agent.url + "/plain")
    assert status == 503
    answers = await asyncio.gather(*sleepers)
    assert all(status == 200 for status, _, _ in answers)


async def test_a_thousand_slow_requests_at_once_are_shed_not_queued(
    probe_agent: ServedModule,
) -> None:
    """Beyond maxConcurrency (16 here) the agent answers 503 at once; nothing piles up, and
    the agent answers a fast request and its health check right after."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as flood:

        async def slow() -> int:
            async with flood.get(probe_agent.url + "/sleep?300") as response:
                await response.read()
                return response.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(slow() for _ in range(1000)))
        elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 503}
    # 16 slots, each busy for at least 0.3 s per admitted request: no more can have run
    most = 16 * (elapsed / 0.3 + 1)
    assert 1 <= statuses.count(200) <= most, "admitted beyond the limit"
    assert elapsed < 30, f"1000 shed requests took {elapsed:.1f}s"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        assert (await _get(http, probe_agent.admin_url + "/healthz"))[0] == 200
        assert (await _get(http, probe_agent.url + "/plain"))[0] == 200


async def test_metrics_count_requests_by_status(
    probe_agent: ServedModule, http: aiohttp.ClientSession
) -> None:
    await _get(http, probe_agent.url + "/plain")
    text = probe_agent.metrics()
    assert 'wasmfleet_agent_requests_total{code="200"' in text
    assert "wasmfleet_agent_request_duration_seconds_bucket" in text
    assert "wasmfleet_agent_compile_seconds" in text
    assert "wasmfleet_agent_pulls_total" in text


@pytest.mark.parametrize("module", ["hello-rust", "hello-go", "hello-c", "echo-rust"])
async def test_hello_modules_in_each_language_are_served(
    workspace: Workspace,
    wasm_modules: dict[str, Path],
    http: aiohttp.ClientSession,
    module: str,
) -> None:
    with ServedModule(workspace.subdir(f"serve-{module}"), wasm_modules[module]) as served:
        status, headers, body = await _get(
            http, served.url + "/p?status=201", method="POST", data=b"ping"
        )
    if module == "echo-rust":
        assert status == 201
        assert headers["Content-Type"] == "application/x-echo"
        assert headers["x-lang"] == "rust"
        assert body == "POST /p status=201\nx-test=\nping"
    else:
        language = {"hello-rust": "Rust", "hello-go": "Go", "hello-c": "C"}[module]
        assert (status, body) == (200, f"Hello from a {language} Wasm microservice!\n")


def test_serve_refuses_a_missing_module_clearly(tmp_path: Path) -> None:
    done = subprocess.run(
        [*agent_command(), "serve", "--module", str(tmp_path / "nope.wasm"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "nope.wasm" in done.stderr
    assert "Traceback" not in done.stderr
