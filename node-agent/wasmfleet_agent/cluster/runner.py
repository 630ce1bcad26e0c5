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
exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from wasmfleet_agent.cluster.bindings import StatusWriter
from wasmfleet_agent.cluster.config import (
    ConfigError,
    ResolvedConfig,
    reads_objects,
    resolve_config,
)
from wasmfleet_agent.cluster.registration import ApiContact
from wasmfleet_agent.lifecycle import (
    RESTART_BACKOFF,
    BindingState,
    advance,
    render_binding_status,
    stale_config,
)
from wasmfleet_agent.runtime.engine import CompiledModule, EngineSettings, ModuleSlot, Runtime
from wasmfleet_agent.runtime.errors import ModuleLoadError, SandboxConfigError
from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, RunResult, SandboxSpec
from wasmfleet_agent.runtime.service import JobAttempt, JobRunner, run_job
from wasmfleet_agent.server.http import HttpLimits
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.orders import ServeOrder
from wasmfleet_agent.server.serving import ServeError, Server
from wasmfleet_agent.sockets import bind_in_namespace
from wasmfleet_agent.store import ModuleStore
from wasmfleet_api.binding import BindingPhase, WasmBinding
from wasmfleet_api.units import parse_duration, parse_quantity
from wasmfleet_api.workload import HttpSpec, WorkloadSpec
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


@dataclass
class Replica:
    """One binding on this node and what runs it."""

    key: str
    binding: WasmBinding
    state: BindingState = field(default_factory=BindingState)
    port: int | None = None
    module_digest: str | None = None
    config_fingerprint: str = ""
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
        workload = replica.binding.spec.workload
        while True:
            self._move(replica, BindingPhase.PULLING)
            config, config_error = await self._config(replica)
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
                    self.runtime.load,
                    path,
                    replica.module_digest,
                    EngineSettings(fuel=workload.resources.fuel is not None),
                )
                spec = _sandbox(workload, config)
                spec.check()
            except (ModuleLoadError, SandboxConfigError, ConfigError, OSError) as error:
                self._move(replica, BindingPhase.CRASH_LOOP_BACKOFF, error=str(error))
                await asyncio.sleep(self._backoff(replica))
                continue
            replica.config_fingerprint = config.fingerprint
            if workload.http is not None:
                try:
                    await self._serve(replica, compiled, spec, path)
                except ServeError as error:
                    self._move(replica, BindingPhase.CRASH_LOOP_BACKOFF, error=str(error))
                    await asyncio.sleep(self._backoff(replica))
                    continue
            else:
                await self._run_job(replica, compiled, spec)
            return

    async def _config(self, replica: Replica) -> tuple[ResolvedConfig | None, ConfigError | None]:
        try:
            config = await resolve_config(
                self.kube,
                replica.namespace,
                replica.binding.spec.workload,
                self._files_dir(replica) / "files",
            )
        except ConfigError as error:
            return None, error
        return config, None

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

    async def _serve(
        self, replica: Replica, compiled: CompiledModule, spec: SandboxSpec, path: Path
    ) -> None:
        order = _order(replica, self.runtime.slot(path, compiled), spec, path)
        if replica.port is None:
            listener = bind_in_namespace(self.settings.netns, self.settings.address, 0)
            port = int(listener.getsockname()[1])
            await self.server.serve(order, listener)
            replica.port = port
        else:
            await self.server.update(order)
        self._move(replica, BindingPhase.READY)
        await self._watch_config(replica, order)

    async def _watch_config(self, replica: Replica, order: ServeOrder) -> None:
        """While serving: re-reads ConfigMaps and Secrets; new values reach new instances."""
        workload = replica.binding.spec.workload
        if not reads_objects(workload):
            return  # nothing it sees can change without a new binding
        while True:
            await asyncio.sleep(self.settings.config_refresh_seconds)
            config, error = await self._config(replica)
            if error is not None or config is None:
                if replica.state.config_error != str(error):
                    log.warning(
                        "configuration unreadable; keeping the last good one",
                        extra={"binding": replica.key, "error": str(error)},
                    )
                    replica.state = stale_config(replica.state, str(error))
                    self._report(replica)
                continue
            if replica.state.config_error is not None:
                log.info("configuration readable again", extra={"binding": replica.key})
                replica.state = stale_config(replica.state, None)
                self._report(replica)
            if config.fingerprint == replica.config_fingerprint:
                continue
            try:
                spec = _sandbox(workload, config)
                spec.check()
            except SandboxConfigError as failure:
                log.warning("new configuration refused", extra={"error": str(failure)})
                continue
            await self.server.update(replace(order, spec=spec))
            replica.config_fingerprint = config.fingerprint
            log.info("configuration changed; new instances see it", extra={"binding": replica.key})

    # ---- jobs --------------------------------------------------------------------

    async def _run_job(self, replica: Replica, compiled: CompiledModule, spec: SandboxSpec) -> None:
        job = replica.binding.spec.workload.job
        assert job is not None
        timeout = parse_duration(job.timeout) if job.timeout is not None else None
        self._move(replica, BindingPhase.RUNNING)

        async def run_once() -> RunResult:
            return await asyncio.to_thread(
                run_job, compiled, spec, timeout=timeout, name=replica.label
            )

        def on_attempt(attempt: JobAttempt) -> None:
            if attempt.failure is None and attempt.exit_code == 0:
                return
            detail = (
                attempt.failure.detail
                if attempt.failure is not None
                else f"exited with code {attempt.exit_code}"
            )
            self._move(
                replica,
                BindingPhase.RUNNING,
                error=f"attempt {attempt.attempt} failed: {detail}",
                exit_code=attempt.exit_code,
            )

        runner = JobRunner(
            run_once=run_once,
            backoff_limit=job.backoff_limit,
            # job.backoff doubling after each failure, up to five minutes
            backoff=Backoff(base=parse_duration(job.backoff), cap=300.0),
            on_attempt=on_attempt,
        )
        attempts = await runner.run()
        last = attempts[-1]
        if last.failure is None and last.exit_code == 0:
            self._move(replica, BindingPhase.SUCCEEDED, exit_code=0)
        else:
            self._move(
                replica,
                BindingPhase.FAILED,
                error=replica.state.last_error or "failed",
                exit_code=last.exit_code,
            )


def _sandbox(workload: WorkloadSpec, config: ResolvedConfig) -> SandboxSpec:
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
    )


def _http_limits(http: HttpSpec) -> HttpLimits:
    """The handler's limits; a client has as long to send its body as the module to answer."""
    return HttpLimits(
        http.max_concurrency,
        parse_quantity(http.max_request_body_size),
        body_timeout=parse_duration(http.timeout),
    )


def _order(replica: Replica, module: ModuleSlot, spec: SandboxSpec, path: Path) -> ServeOrder:
    http = replica.binding.spec.workload.http
    assert http is not None
    return ServeOrder(
        key=replica.key,
        name=replica.label,
        module_path=path,
        digest=module.digest,
        fuel=module.settings.fuel,
        spec=spec,
        limits=RunLimits(
            deadline_seconds=parse_duration(http.timeout),
            max_output=parse_quantity(http.max_response_size),
        ),
        http=_http_limits(http),
        module=module,
    )
