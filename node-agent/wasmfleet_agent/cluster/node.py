"""``wasmfleet-agent node``: the agent as a member of a cluster.

Starts everything one node needs, in this order: the admin endpoints, the WasmAgent object
(retried until the API server answers), the heartbeat Lease, the status writer, and the watch
on this node's bindings, which drives the `NodeRunner`. On SIGTERM it stops serving, then
stops the heartbeat; the operator notices the Lease lapse and moves the replicas.

When the API server becomes unreachable the agent keeps serving every replica it has; it
resumes watching, reporting and heartbeating when the server is back.

The heartbeat, the status writer, the binding watch and the allocation report run under a
`Supervisor`: one that ends for any reason is logged and restarted, and while a critical one
is down or keeps dying the agent is not ready (``/readyz``, the WasmAgent's condition) and does
not renew its Lease, so the operator moves its replicas rather than trusting a blind agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from wasmfleet_agent.cluster.bindings import StatusWriter, watch_bindings
from wasmfleet_agent.cluster.plans import JobLimits
from wasmfleet_agent.cluster.registration import (
    AgentIdentity,
    ApiContact,
    NodeArchitecture,
    apply_agent,
    check_node_label,
    heartbeat,
    render_lease,
)
from wasmfleet_agent.cluster.runner import NodeRunner, RunnerSettings
from wasmfleet_agent.runtime.engine import Runtime
from wasmfleet_agent.server.admin import build_admin_app
from wasmfleet_agent.server.budget import MemoryBudget
from wasmfleet_agent.server.inline import INLINE_BUDGET
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.serving import InProcessServer, Server
from wasmfleet_agent.server.workers import WorkerPool
from wasmfleet_agent.store import ModuleStore
from wasmfleet_api.units import format_time
from wasmfleet_common.kube import API_ERRORS, KubeClient, KubeConfig, retry_until_stopped
from wasmfleet_common.supervisor import Supervisor
from wasmfleet_oci.client import ClientSettings, RegistryClient

__all__ = ["NodeOptions", "run_node"]

log = logging.getLogger(__name__)
FIELD_MANAGER = "wasmfleet-agent"


@dataclass(frozen=True)
class NodeOptions:
    identity: AgentIdentity
    state_dir: Path
    kube: KubeConfig
    netns: Path | None = None
    registry: ClientSettings = field(default_factory=ClientSettings)
    cache_max_bytes: int = 2 << 30
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    workers: int = 64
    processes: int = 1
    inline_budget: float = INLINE_BUDGET
    """CPU seconds a short run may take on the event loop's thread (0: none run there)."""
    unload_idle_seconds: float = 600.0
    drain_seconds: float = 2.0
    config_refresh_seconds: float = 10.0
    jobs: JobLimits = field(default_factory=JobLimits)
    memory_budget: int | None = None
    """Bytes of instance memory all requests together may hold (None: unbounded)."""
    fault_injection: bool = False


async def _register(
    kube: KubeClient,
    identity: AgentIdentity,
    stop: asyncio.Event,
    *,
    since: str,
    node: NodeArchitecture,
) -> bool:
    """Applies the WasmAgent, ready ``since``, retrying with backoff; False if stopped first."""

    async def register() -> None:
        await check_node_label(kube, identity, node)
        await apply_agent(kube, identity, allocated=0, ready=True, since=since, node=node)

    return await retry_until_stopped(
        register,
        stop,
        on_error=lambda error, delay: log.warning(
            "registration failed (%s); retrying in %.1fs", error, delay
        ),
    )


async def _drain(kube: KubeClient, identity: AgentIdentity, seconds: float) -> None:
    """Gives the Lease up, so that the operator takes this node's endpoints away at once, then
    keeps serving for ``seconds`` while that change reaches every client's kube-proxy."""
    try:
        await asyncio.wait_for(
            kube.apply(render_lease(identity, released=True)),
            timeout=max(1.0, identity.lease_duration_seconds / 2),
        )
    except (*API_ERRORS, TimeoutError) as error:
        log.warning("lease not released (%s); endpoints go when it lapses", error)
        return
    log.info("lease released; draining before the replicas stop", extra={"seconds": seconds})
    await asyncio.sleep(seconds)


async def report_allocation(
    kube: KubeClient,
    identity: AgentIdentity,
    replicas: Sized,
    stop: asyncio.Event,
    *,
    interval: float = 10.0,
    health: Callable[[], tuple[bool, str]] | None = None,
    since: str | None = None,
    node: NodeArchitecture | None = None,
    label_every: int = 6,
) -> None:
    """Keeps WasmAgent.status (``allocated``, the Ready condition from ``health``, and whether
    the Node's architecture label agrees, read every ``label_every`` intervals) current, one
    write per ``interval`` at most. The Ready condition keeps the time it last changed (its
    status; ``since`` is the registration's), however often the allocation does."""
    reported: tuple[int, bool, str, str | None] = (0, True, "", node.label if node else None)
    since = since or format_time()
    rounds = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        rounds += 1
        if node is not None and rounds % label_every == 0 and not stop.is_set():
            await check_node_label(kube, identity, node)
        ready, why = health() if health is not None else (True, "")
        current = (len(replicas), ready, "" if ready else why, node.label if node else None)
        if current != reported and not stop.is_set():
            changed = since if ready == reported[1] else format_time()
            try:
                await apply_agent(
                    kube,
                    identity,
                    allocated=current[0],
                    ready=current[1],
                    why=current[2],
                    since=changed,
                    node=node,
                )
                reported, since = current, changed
            except API_ERRORS as error:
                log.warning("agent status not written: %s", error)


async def run_node(options: NodeOptions, stop: asyncio.Event | None = None) -> int:
    """Runs the agent until ``stop`` is set (or SIGTERM/SIGINT); returns the exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    identity = options.identity
    metrics = AgentMetrics()
    runtime = Runtime(
        options.state_dir / "compiled",
        on_compile=metrics.observe_load,
        unload_idle_seconds=options.unload_idle_seconds,
    )
    metrics.modules_loaded.set_function(runtime.loaded_count)
    store = ModuleStore(
        options.state_dir / "modules",
        options.cache_max_bytes,
        client_factory=lambda: RegistryClient(settings=options.registry),
    )
    pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="wasm-request")
    workers: WorkerPool | None = None
    server: Server
    if options.processes > 1:
        server = workers = WorkerPool(
            options.processes,
            cache_dir=options.state_dir / "compiled",
            threads=options.workers,
            # room for every replica plus a rollout's new ones beside them
            max_services=2 * identity.capacity + 16,
            unload_idle_seconds=options.unload_idle_seconds,
            memory_budget=options.memory_budget,
            inline_budget=options.inline_budget,
        )
        await workers.start()
    else:
        budget = MemoryBudget(options.memory_budget) if options.memory_budget else None
        server = InProcessServer(
            runtime=runtime,
            pool=pool,
            metrics=metrics,
            budget=budget,
            inline_budget=options.inline_budget,
        )
    kube = KubeClient(options.kube, field_manager=FIELD_MANAGER)
    status = StatusWriter(kube)
    contact = ApiContact(kube, timeout=identity.lease_duration_seconds / 2)
    runner = NodeRunner(
        kube=kube,
        contact=contact,
        settings=RunnerSettings(
            address=identity.address,
            netns=options.netns,
            bindings_dir=options.state_dir / "bindings",
            drain_seconds=options.drain_seconds,
            config_refresh_seconds=options.config_refresh_seconds,
            jobs=options.jobs,
            instance=identity.instance,
        ),
        runtime=runtime,
        store=store,
        server=server,
        metrics=metrics,
        status=status,
    )
    supervisor = Supervisor(
        stop, restart=True, on_restart=lambda name: metrics.task_restarts.labels(name).inc()
    )
    admin: web.AppRunner | None = None
    if options.admin_port is not None:

        def ready() -> tuple[bool, str]:
            healthy, why = supervisor.health()
            if not healthy:
                return False, why
            if runner.synced.is_set():
                return True, f"serving {len(runner.replicas)} binding(s)"
            return False, "waiting for the first list of bindings"

        app = build_admin_app(
            metrics=metrics,
            ready_check=ready,
            other_metrics=workers.metrics if workers is not None else None,
            crash=supervisor.crash if options.fault_injection else None,
        )
        admin = web.AppRunner(app, access_log=None)
        await admin.setup()
        await web.TCPSite(admin, options.admin_host, options.admin_port).start()
    registered = format_time()  # when this agent became ready, as its WasmAgent says
    joined = False
    try:
        node_arch = NodeArchitecture(identity.architecture)
        if await _register(kube, identity, stop, since=registered, node=node_arch):
            joined = True
            log.info(
                "agent registered",
                extra={"node": identity.node_name, "address": identity.address},
            )
            supervisor.start(
                "heartbeat",
                lambda: heartbeat(
                    kube, identity, stop=stop, contact=contact, healthy=supervisor.health
                ),
            )
            supervisor.start("status", lambda: status.run(stop))
            supervisor.start(
                "bindings",
                lambda: watch_bindings(
                    kube, node_name=identity.node_name, runner=runner, stop=stop, contact=contact
                ),
            )
            supervisor.start(
                "allocation",
                lambda: report_allocation(
                    kube,
                    identity,
                    runner.replicas,
                    stop,
                    health=supervisor.health,
                    since=registered,
                    node=node_arch,
                ),
                critical=False,
            )
            await stop.wait()
    finally:
        stop.set()
        await supervisor.close()
        if joined:
            await _drain(kube, identity, options.drain_seconds)
        await runner.close()
        await server.close()
        if admin is not None:
            await admin.cleanup()
        pool.shutdown(wait=False, cancel_futures=True)
        await store.close()
        runtime.close()
        await kube.close()
    return 0
