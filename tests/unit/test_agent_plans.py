"""What a binding needs to run, planned from its spec and configuration; and the refresh of
that configuration while it serves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from wasmfleet_agent.cluster.config import ConfigError, ResolvedConfig
from wasmfleet_agent.cluster.plans import (
    JobLimits,
    plan_engine,
    plan_job,
    plan_sandbox,
    plan_serve_order,
)
from wasmfleet_agent.cluster.refresh import refresh_config
from wasmfleet_agent.runtime.errors import SandboxConfigError
from wasmfleet_agent.runtime.sandbox import Preopen
from wasmfleet_agent.server.orders import SERVER_SOFTWARE
from wasmfleet_api.workload import WorkloadSpec


def _workload(**spec: Any) -> WorkloadSpec:
    return WorkloadSpec.model_validate(
        {"module": {"image": "r.example.com/team/hello:1.2@sha256:" + "a" * 64}, **spec}
    )


CONFIG = ResolvedConfig(
    env=(("GREETING", "hi"),), mounts=((Path("/var/x/files/0"), "/data", True),)
)


def test_the_sandbox_is_named_after_the_image_and_holds_what_the_configuration_resolved() -> None:
    workload = _workload(args=["-v"], resources={"memory": "32Mi", "fuel": 1000}, http={})
    sandbox = plan_sandbox(workload, CONFIG)
    assert sandbox.args == ("hello", "-v")
    assert sandbox.env == (("GREETING", "hi"),)
    assert sandbox.preopens == (Preopen(Path("/var/x/files/0"), "/data", writable=True),)
    assert (sandbox.memory_limit, sandbox.fuel) == (32 << 20, 1000)
    assert plan_engine(workload).fuel
    assert not plan_engine(_workload(http={})).fuel


def test_the_http_spec_becomes_the_orders_limits_in_the_agents_units() -> None:
    workload = _workload(
        http={
            "timeout": "1500ms",
            "maxConcurrency": 7,
            "maxRequestBodySize": "2Ki",
            "maxResponseSize": "1Mi",
        }
    )
    assert workload.http is not None
    sandbox = plan_sandbox(workload, CONFIG)
    order = plan_serve_order(
        key="team/hello-r1-abc",
        name="team/hello",
        http=workload.http,
        sandbox=sandbox,
        module_path=Path("/cache/blob"),
        digest="sha256:" + "b" * 64,
    )
    assert (order.key, order.name, order.spec, order.digest) == (
        "team/hello-r1-abc",
        "team/hello",
        sandbox,
        "sha256:" + "b" * 64,
    )
    assert (order.limits.deadline_seconds, order.limits.max_output) == (1.5, 1 << 20)
    assert (order.http.max_concurrency, order.http.max_request_body) == (7, 2048)
    assert order.http.body_timeout == 1.5  # as long to send a body as the module has to answer
    assert (order.fuel, order.server_software, order.module) == (False, SERVER_SOFTWARE, None)


def test_a_jobs_runs_have_its_deadline_and_retries_with_doubling_backoff() -> None:
    workload = _workload(job={"backoffLimit": 2, "backoff": "5s", "timeout": "1m"})
    assert workload.job is not None
    plan = plan_job(workload.job, plan_sandbox(workload, CONFIG))
    assert (plan.timeout, plan.backoff_limit) == (60.0, 2)
    assert [plan.backoff.delay(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert plan.backoff.delay(20) == 300.0
    assert plan.max_output == JobLimits().max_output
    untimed = _workload(job={}).job
    assert untimed is not None
    assert plan_job(untimed, plan.sandbox).timeout == JobLimits().default_timeout
    agent = JobLimits(default_timeout=90.0, max_output=4096)
    assert (plan_job(untimed, plan.sandbox, agent).timeout, plan.timeout) == (90.0, 60.0)
    assert plan_job(untimed, plan.sandbox, agent).max_output == 4096


async def test_the_refresh_reports_an_unreadable_configuration_once_and_applies_changes() -> None:
    """An API server out of reach is no news; a configuration that cannot be read is."""
    reads: list[ResolvedConfig | Exception] = [
        ResolvedConfig((), (), fingerprint="f1"),  # unchanged: nothing to do
        ConnectionRefusedError(),  # the API server out of reach: nothing changes
        TimeoutError(),
        ConfigError("Secret s1 not found"),
        ConfigError("Secret s1 not found"),  # the same error again: reported once
        ResolvedConfig((), (), fingerprint="f2"),  # readable again, and changed
        ResolvedConfig((("A", "x"),), (), fingerprint="f3"),  # refused by the sandbox
    ]
    happened: list[tuple[str, str | None]] = []
    done = asyncio.Event()

    async def read() -> ResolvedConfig:
        if not reads:
            done.set()
            await asyncio.Event().wait()  # as a read that never returns
        result = reads.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    async def apply(config: ResolvedConfig) -> None:
        if config.env:
            raise SandboxConfigError("refused")
        happened.append(("applied", config.fingerprint))

    task = asyncio.create_task(
        refresh_config(
            every=0.001,
            fingerprint="f1",
            read=read,
            apply=apply,
            report=lambda why: happened.append(("report", why)),
            key="team/hello-r1",
        )
    )
    try:
        await asyncio.wait_for(done.wait(), timeout=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert happened == [
        ("report", "Secret s1 not found"),
        ("report", None),
        ("applied", "f2"),
    ]
