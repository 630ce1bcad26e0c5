"""A job replica's runs: each in a fresh sandbox off the event loop, retried with backoff.

The runner moves the replica to Running, hands the compiled module and the `plans.JobPlan`
here, hears of each failed run (the replica stays Running, one restart more) and moves it to
Succeeded or Failed by the last run. A run's output goes to the agent's log, line by line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from wasmfleet_agent.cluster.plans import JobPlan
from wasmfleet_agent.runtime.engine import CompiledModule
from wasmfleet_agent.runtime.sandbox import RunResult
from wasmfleet_agent.runtime.service import JobAttempt, JobRunner, run_job

__all__ = ["run_job_replica"]


async def run_job_replica(
    compiled: CompiledModule,
    plan: JobPlan,
    *,
    name: str,
    on_failed_run: Callable[[JobAttempt], None],
) -> JobAttempt:
    """Runs the job until a run succeeds or its retries are spent; returns the last run.

    ``on_failed_run`` hears of every run that failed, before the wait that follows it.
    """

    async def run_once() -> RunResult:
        return await asyncio.to_thread(
            run_job,
            compiled,
            plan.sandbox,
            timeout=plan.timeout,
            max_output=plan.max_output,
            name=name,
        )

    def on_attempt(attempt: JobAttempt) -> None:
        if not attempt.ok:
            on_failed_run(attempt)

    attempts = await JobRunner(
        run_once=run_once,
        backoff_limit=plan.backoff_limit,
        backoff=plan.backoff,
        on_attempt=on_attempt,
    ).run()
    return attempts[-1]
