"""What a binding needs to run, decided from its spec and the configuration read for it.

The runner reads (ConfigMaps, Secrets, the module), then asks these functions what to run,
then runs it: the engine settings to load the module with, the sandbox every instance gets,
and either the `ServeOrder` a `serving.Server` serves or the `JobPlan` of a job. Nothing here
does I/O, so every rule of the translation from the API's units and defaults lives in one
place and is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wasmfleet_agent.cluster.config import ResolvedConfig
from wasmfleet_agent.runtime.engine import CompiledModule, EngineSettings, ModuleSlot
from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, SandboxSpec
from wasmfleet_agent.server.http import HttpLimits
from wasmfleet_agent.server.orders import ServeOrder
from wasmfleet_api.binding import ModuleInfo, ModuleKind
from wasmfleet_api.units import parse_duration, parse_quantity
from wasmfleet_api.workload import HttpSpec, JobSpec, WorkloadSpec
from wasmfleet_common.backoff import Backoff

__all__ = [
    "JobLimits",
    "JobPlan",
    "describe",
    "plan_engine",
    "plan_job",
    "plan_sandbox",
    "plan_serve_order",
]

_JOB_BACKOFF_CAP = 300.0
"""A job's wait between runs doubles from ``job.backoff`` up to five minutes."""


def describe(compiled: CompiledModule) -> ModuleInfo:
    """What a loaded module is, as its binding's status says it."""
    kind = ModuleKind.COMPONENT if compiled.kind == "component" else ModuleKind.MODULE
    return ModuleInfo(kind=kind, world=compiled.world)


def plan_engine(workload: WorkloadSpec) -> EngineSettings:
    """The engine the module is compiled for: with fuel metering only when it sets fuel."""
    return EngineSettings(fuel=workload.resources.fuel is not None)


def plan_sandbox(workload: WorkloadSpec, config: ResolvedConfig) -> SandboxSpec:
    """What every instance of the module sees: its arguments (``argv[0]`` named after the
    image), the environment and directories ``config`` resolved, its memory and fuel."""
    program = workload.module.image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return SandboxSpec(
        args=(program or "module.wasm", *workload.args),
        env=config.env,
        preopens=tuple(
            Preopen(host=host, guest=guest, writable=writable)
            for host, guest, writable in config.mounts
        ),
        memory_limit=parse_quantity(workload.resources.memory),
        fuel=workload.resources.fuel,
        outbound=tuple(workload.network.allowed_outbound_hosts if workload.network else ()),
    )


def plan_serve_order(
    *,
    key: str,
    name: str,
    http: HttpSpec,
    sandbox: SandboxSpec,
    module_path: Path,
    digest: str,
    module: ModuleSlot | None = None,
) -> ServeOrder:
    """The order that serves the module at ``module_path`` (``module``: its machine code,
    loaded in this process) under ``key``."""
    return ServeOrder(
        key=key,
        name=name,
        module_path=module_path,
        digest=digest,
        fuel=sandbox.fuel is not None,  # the engine `plan_engine` chose for this workload
        spec=sandbox,
        limits=RunLimits(
            deadline_seconds=parse_duration(http.timeout),
            max_output=parse_quantity(http.max_response_size),
        ),
        # a client has as long to send its body as the module has to answer it
        http=HttpLimits(
            http.max_concurrency,
            parse_quantity(http.max_request_body_size),
            body_timeout=parse_duration(http.timeout),
        ),
        module=module,
    )


@dataclass(frozen=True)
class JobLimits:
    """What the agent gives every job (its ``--job-timeout`` and ``--job-max-output``): a
    job's output goes to the agent's own log, shared by every replica on the node, and a job
    that never ends would hold its replica forever, so neither is left unbounded."""

    default_timeout: float = 3600.0
    """A run's deadline when the job sets no ``timeout``."""
    max_output: int = 1 << 20
    """Most bytes of stdout and stderr together one run may write; the run stops there."""


@dataclass(frozen=True)
class JobPlan:
    """How a job runs: each run's sandbox, deadline and output cap, and its retries."""

    sandbox: SandboxSpec
    timeout: float
    max_output: int
    backoff_limit: int
    backoff: Backoff


def plan_job(job: JobSpec, sandbox: SandboxSpec, limits: JobLimits = JobLimits()) -> JobPlan:
    """The runs of ``job``: ``backoffLimit`` retries after the first, ``backoff`` doubling,
    each run stopped at its ``timeout`` (the agent's default without one) or at the agent's
    output cap."""
    return JobPlan(
        sandbox=sandbox,
        timeout=(
            parse_duration(job.timeout) if job.timeout is not None else limits.default_timeout
        ),
        max_output=limits.max_output,
        backoff_limit=job.backoff_limit,
        backoff=Backoff(base=parse_duration(job.backoff), cap=_JOB_BACKOFF_CAP),
    )
