"""Runs the bindings of one node: pull, compile, serve (or run to completion), report.

`NodeRunner.sync` receives the whole desired set of bindings whenever it changes and compares
it with what runs: a new binding gets a `Replica` and a task that walks the lifecycle of
`wasmfleet_agent.lifecycle`; a binding that is gone is drained and stopped. Each replica
reports every state change through the `StatusWriter`, so what ``kubectl get wasmbindings``
shows is what the agent does.

An HTTP replica listens on a port of its own at the node's address (inside the node's network
namespace when it has one); the operator lists that address and port in the service's
EndpointSlices once the replica reports Ready. A stopped replica keeps answering for
``drain_seconds`` after its binding is gone, so that clients still holding the old endpoint
finish cleanly while the EndpointSlice change reaches them, and beyond that until the API
server has answered the agent again (see `ApiContact`): while it is down, that change cannot
reach anyone.

One failing replica never touches the others: every failure becomes that replica's state
(PullBackOff, CrashLoopBackOff, Failed) with the error in its status, and is retried with
exponential backoff. Every state change is a move of `lifecycle.advance`.

The runner reads and acts; what to run is decided by the pure builders of `plans` (the
sandbox, the engine, the serve order, the job's runs). It serves through a `serving.Server`,
in this process or in worker processes alike; `refresh` re-reads the configuration while a
replica serves and `jobs` runs a job's attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wasmfleet_agent.cluster.bindings import StatusWriter
from wasmfleet_agent.cluster.config import (
    ConfigError,
    ResolvedConfig,
    reads_objects,
    resolve_config,
)
from wasmfleet_agent.cluster.jobs import run_job_replica
from wasmfleet_agent.cluster.plans import (
    JobLimits,
    JobPlan,
    describe,
    plan_engine,
    plan_job,
    plan_sandbox,
    plan_serve_order,
)
from wasmfleet_agent.cluster.refresh import refresh_config
from wasmfleet_agent.cluster.registration import ApiContact
from wasmfleet_agent.lifecycle import (
    RESTART_BACKOFF,
    BindingState,
    advance,
    render_binding_status,
    stale_config,
)
from wasmfleet_agent.runtime.engine import CompiledModule, Runtime
from wasmfleet_agent.runtime.errors import ModuleLoadError, SandboxConfigError
from wasmfleet_agent.runtime.service import JobAttempt, check_fits
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.orders import ServeOrder
from wasmfleet_agent.server.serving import ServeError, Server
from wasmfleet_agent.sockets import bind_group
from wasmfleet_agent.store import ModuleStore
from wasmfleet_api.binding import BindingPhase, ModuleInfo, WasmBinding
from wasmfleet_common.backoff import Backoff
from wasmfleet_common.kube import KubeClient
from wasmfleet_oci import auth, errors
from wasmfleet_oci.reference import parse_reference

__all__ = ["NodeRunner", "Replica", "RunnerSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerSettings:
    address: str
    netns: Path | None = None
    bindings_dir: Path = Path("/var/lib/wasmfleet/bindings")
    drain_seconds: float = 2.0
    config_refresh_seconds: float = 10.0
    backoff: Backoff = RESTART_BACKOFF
    jobs: JobLimits = field(default_factory=JobLimits)
    """What every job run gets: a deadline when it sets none, and an output cap."""
    instance: str | None = None
    """This run of the agent (`AgentIdentity.instance`), written with every status."""


@dataclass
class Replica:
    """One binding on this node and what runs it."""

    key: str
    binding: WasmBinding
    state: BindingState = field(default_factory=BindingState)
    port: int | None = None
    module_digest: str | None = None
    module: ModuleInfo | None = None
    """What the loaded module is (kind and world), for its status."""
    task: asyncio.Task[None] | None = None
    pinned: str | None = None

    @property
    def namespace(self) -> str:
        return str(self.binding.metadata["namespace"])

    @property
    def name(self) -> str:
        return str(self.binding.metadata["name"])

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.binding.spec.service_name}"


class NodeRunner:
    """Keeps the replicas of this node equal to its bindings."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        settings: RunnerSettings,
        runtime: Runtime,
        store: ModuleStore,
        server: Server,
        metrics: AgentMetrics,
        status: StatusWriter,
        contact: ApiContact | None = None,
    ) -> None:
        self.kube = kube
        self.contact = contact
        self.server = server
        self.settings = settings
        self.runtime = runtime
        self.store = store
        self.metrics = metrics
        self.status = status
        self.replicas: dict[str, Replica] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.synced = asyncio.Event()

    # ---- desired state in --------------------------------------------------------

    async def sync(self, desired: Mapping[str, WasmBinding]) -> None:
        for key in list(self.replicas):
            current = self.replicas[key]
            wanted = desired.get(key)
            if wanted is None:
                self._stop(key, drain=True)
            elif wanted.spec != current.binding.spec:
                # Bindings are per revision, so this is an edit by hand: start over.
                log.info("binding changed; restarting it", extra={"binding": key})
                self._stop(key, drain=False)
            else:
                current.binding = wanted
        for key, binding in desired.items():
            if key not in self.replicas:
                replica = Replica(key, binding)
                self.replicas[key] = replica
                replica.task = asyncio.create_task(self._run(replica), name=f"replica {key}")
        self.synced.set()

    def _stop(self, key: str, *, drain: bool) -> None:
        replica = self.replicas.pop(key)
        task = asyncio.create_task(self._teardown(replica, drain=drain), name=f"stop {key}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stops every replica at once (the agent is shutting down)."""
        for key in list(self.replicas):
            self._stop(key, drain=False)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def _teardown(self, replica: Replica, *, drain: bool) -> None:
        if replica.task is not None:
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await replica.task
        if replica.port is not None:
            if drain and self.settings.drain_seconds > 0:
                await asyncio.sleep(self.settings.drain_seconds)
            if drain and self.contact is not None:
                await self.contact.confirm(
                    on_wait=lambda: log.warning(
                        "API server unreachable; the removed replica keeps serving until it "
                        "answers (clients may still hold its endpoint)",
                        extra={"binding": replica.key},
                    )
                )
            await self.server.stop(replica.key)
        if replica.pinned is not None:
            self.store.unpin(replica.pinned)
        shutil.rmtree(self._files_dir(replica), ignore_errors=True)
        log.info("replica stopped", extra={"binding": replica.key})

    # ---- one replica -------------------------------------------------------------

    def _files_dir(self, replica: Replica) -> Path:
        return self.settings.bindings_dir / replica.namespace / replica.name

    def _move(
        self,
        replica: Replica,
        to: BindingPhase,
        *,
        error: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        replica.state = advance(replica.state, to, error=error, exit_code=exit_code)
        self._report(replica)
        level = logging.WARNING if to.failing or error else logging.INFO
        log.log(
            level,
            "replica %s",
            to.value,
            extra={
                "binding": replica.key,
                **({"error": error} if error else {}),
                **({"port": replica.port} if to is BindingPhase.READY else {}),
            },
        )

    def _report(self, replica: Replica) -> None:
        status = render_binding_status(
            replica.binding,
            replica.state,
            address=self.settings.address,
            port=replica.port,
            module_digest=replica.module_digest,
            module=replica.module,
            agent_instance=self.settings.instance,
        )
        self.status.report(replica.namespace, replica.name, status)

    async def _run(self, replica: Replica) -> None:
        self._report(replica)
        while True:
            try:
                await self._run_once(replica)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # one replica's bug must not stop the others
                log.exception("replica failed unexpectedly", extra={"binding": replica.key})
                # Whatever state it was in: an unexpected error backs off before a retry.
                self._move(
                    replica, BindingPhase.CRASH_LOOP_BACKOFF, error=f"internal error: {error}"
                )
            await asyncio.sleep(self._backoff(replica))

    def _backoff(self, replica: Replica) -> float:
        return self.settings.backoff.delay(replica.state.failures)

    async def _run_once(self, replica: Replica) -> None:
        """Pull, compile, then serve or run: each failure a state with its backoff."""
        workload = replica.binding.spec.workload
        while True:
            self._move(replica, BindingPhase.PULLING)
            config: ResolvedConfig | None = None
            config_error: ConfigError | None = None
            try:
                config = await self._read_config(replica)
            except ConfigError as error:
                config_error = error  # the pull goes ahead without pull secrets
            try:
                path = await self._pull(replica, config)
            except (errors.RegistryError, OSError) as error:
                self._move(replica, BindingPhase.PULL_BACKOFF, error=f"pull failed: {error}")
                await asyncio.sleep(self._backoff(replica))
                continue
            self._move(replica, BindingPhase.COMPILING)
            try:
                if config_error is not None:
                    raise config_error
                assert config is not None
                compiled = await asyncio.to_thread(
                    self.runtime.load, path, replica.module_digest, plan_engine(workload)
                )
                replica.module = describe(compiled)
                sandbox = plan_sandbox(workload, config)
                sandbox.check()
                check_fits(compiled, sandbox, job=workload.job is not None)
            except (ModuleLoadError, SandboxConfigError, ConfigError, OSError) as error:
                self._move(replica, BindingPhase.CRASH_LOOP_BACKOFF, error=str(error))
                await asyncio.sleep(self._backoff(replica))
                continue
            if workload.http is not None:
                # the serve order for a sandbox: this one now, a new one when config changes
                order = functools.partial(
                    plan_serve_order,
                    key=replica.key,
                    name=replica.label,
                    http=workload.http,
                    module_path=path,
                    digest=compiled.digest,
                    module=self.runtime.slot(path, compiled),
                )
                try:
                    await self._serve(replica, order(sandbox=sandbox))
                except ServeError as error:
                    self._move(replica, BindingPhase.CRASH_LOOP_BACKOFF, error=str(error))
                    await asyncio.sleep(self._backoff(replica))
                    continue
                self._move(replica, BindingPhase.READY)
                await self._refresh(replica, order, config.fingerprint)
            else:
                assert workload.job is not None
                await self._run_job(
                    replica, compiled, plan_job(workload.job, sandbox, self.settings.jobs)
                )
            return

    async def _read_config(self, replica: Replica) -> ResolvedConfig:
        return await resolve_config(
            self.kube,
            replica.namespace,
            replica.binding.spec.workload,
            self._files_dir(replica) / "files",
        )

    async def _pull(self, replica: Replica, config: ResolvedConfig | None) -> Path:
        spec = replica.binding.spec
        reference = parse_reference(spec.workload.module.image).with_digest(spec.digest)
        credentials = None
        if config is not None:
            credentials = auth.find_credentials(config.credentials, registry=reference.registry)
        try:
            pulled = await self.store.pull(
                reference,
                policy=spec.workload.module.pull_policy,
                credentials=credentials,
                pin=True,
            )
        except errors.RegistryError:
            self.metrics.pulls.labels("error").inc()
            raise
        self.metrics.pulls.labels("cached" if pulled.cached else "pulled").inc()
        if replica.pinned is not None:
            self.store.unpin(replica.pinned)
        replica.pinned = pulled.module_digest
        replica.module_digest = pulled.module_digest
        return pulled.path

    # ---- http --------------------------------------------------------------------

    async def _serve(self, replica: Replica, order: ServeOrder) -> None:
        """Serves ``order`` on a port of the replica's own, or in place of what it serves
        there (a retry after a crash keeps its port, so its endpoint stays the same)."""
        if replica.port is None:
            listener, *siblings = bind_group(
                self.settings.netns, self.settings.address, 0, self.server.listeners
            )
            port = int(listener.getsockname()[1])
            await self.server.serve(order, listener, siblings)
            replica.port = port
        else:
            await self.server.update(order)

    async def _refresh(
        self, replica: Replica, order: functools.partial[ServeOrder], fingerprint: str
    ) -> None:
        """While serving: new values of its ConfigMaps and Secrets reach new instances
        (``order`` is the serve order for a sandbox; ``fingerprint``, the configuration's)."""
        workload = replica.binding.spec.workload
        if not reads_objects(workload):
            return  # nothing it sees can change without a new binding

        async def apply(config: ResolvedConfig) -> None:
            sandbox = plan_sandbox(workload, config)
            sandbox.check()
            await self.server.update(order(sandbox=sandbox))

        def report(unreadable: str | None) -> None:
            replica.state = stale_config(replica.state, unreadable)
            self._report(replica)

        await refresh_config(
            every=self.settings.config_refresh_seconds,
            fingerprint=fingerprint,
            read=lambda: self._read_config(replica),
            apply=apply,
            report=report,
            key=replica.key,
        )

    # ---- jobs --------------------------------------------------------------------

    async def _run_job(self, replica: Replica, compiled: CompiledModule, plan: JobPlan) -> None:
        self._move(replica, BindingPhase.RUNNING)

        def failed(run: JobAttempt) -> None:
            # The replica stays Running (a run failed, the job runs again or ends Failed).
            error = f"attempt {run.attempt} failed: {run.why}"
            self._move(replica, BindingPhase.RUNNING, error=error, exit_code=run.exit_code)

        last = await run_job_replica(compiled, plan, name=replica.label, on_failed_run=failed)
        if last.ok:
            self._move(replica, BindingPhase.SUCCEEDED, exit_code=0)
        else:
            error = replica.state.last_error or "failed"
            self._move(replica, BindingPhase.FAILED, error=error, exit_code=last.exit_code)
