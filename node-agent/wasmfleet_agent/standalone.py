"""``wasmfleet-agent serve`` and ``run``: the runtime without a cluster.

``serve`` pulls (or reads) one module, compiles it (or loads its cached machine code) and
serves it over HTTP on ``--port``, with ``/healthz``, ``/readyz`` and ``/metrics`` on
``--admin-port``. ``run`` runs a module to completion the way the wasmtime CLI does, with
the terminal's stdio, and exits with the module's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from wasmfleet_agent.runtime.engine import CompiledModule, EngineSettings, Runtime
from wasmfleet_agent.runtime.errors import ModuleLoadError, SandboxConfigError
from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, SandboxSpec
from wasmfleet_agent.runtime.service import check_fits, run_job
from wasmfleet_agent.server.admin import build_admin_app
from wasmfleet_agent.server.http import HttpLimits
from wasmfleet_agent.server.inline import INLINE_BUDGET
from wasmfleet_agent.server.metrics import AgentMetrics
from wasmfleet_agent.server.orders import ServeOrder
from wasmfleet_agent.server.serving import InProcessServer, ServeError, Server
from wasmfleet_agent.server.workers import WorkerPool
from wasmfleet_agent.sockets import bind_group
from wasmfleet_agent.store import LocatedModule, ModuleStore, PullPolicy, locate
from wasmfleet_oci import auth, errors
from wasmfleet_oci.client import ClientSettings, RegistryClient

__all__ = ["TRAP_EXIT_CODE", "ModuleOptions", "run_module", "serve"]

_log = logging.getLogger(__name__)

TRAP_EXIT_CODE = 134
"""Exit code of ``run`` when the module traps or times out (as the wasmtime CLI on Unix)."""


@dataclass(frozen=True)
class ModuleOptions:
    """What both commands share: where the module is, how to fetch it, what it may see."""

    source: str
    cache_dir: Path
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[Preopen, ...] = ()
    outbound: tuple[str, ...] = ()
    """Origins a wasi:http component may send requests to."""
    memory_limit: int = 64 << 20
    fuel: int | None = None
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    insecure_registries: frozenset[str] = frozenset()
    ca_file: Path | None = None
    docker_config: Path | None = None
    cache_max_bytes: int = 2 << 30
    unload_idle_seconds: float = 600.0
    """Drop a served module's machine code after this long without a request (0: never)."""


@dataclass
class _Loaded:
    runtime: Runtime
    store: ModuleStore
    located: LocatedModule
    compiled: CompiledModule
    metrics: AgentMetrics = field(default_factory=AgentMetrics)


def _credentials(options: ModuleOptions) -> auth.Credentials | None:
    if options.docker_config is None or options.source.startswith(("/", "./", "../")):
        return None
    configs = auth.parse_docker_config(options.docker_config.read_bytes())
    registry = options.source.split("/", 1)[0]
    return auth.find_credentials(configs, registry=registry)


async def _load(options: ModuleOptions, metrics: AgentMetrics) -> _Loaded:
    settings = ClientSettings(
        insecure_registries=options.insecure_registries, ca_file=options.ca_file
    )

    runtime = Runtime(
        options.cache_dir / "compiled",
        on_compile=metrics.observe_load,
        unload_idle_seconds=options.unload_idle_seconds,
    )
    metrics.modules_loaded.set_function(runtime.loaded_count)
    store = ModuleStore(
        options.cache_dir / "modules",
        options.cache_max_bytes,
        client_factory=lambda: RegistryClient(settings=settings),
    )
    try:
        located = await locate(
            options.source,
            store,
            policy=options.pull_policy,
            credentials=_credentials(options),
        )
    except BaseException:
        metrics.pulls.labels("error").inc()
        await store.close()
        runtime.close()
        raise
    metrics.pulls.labels("cached" if located.cached else "pulled").inc()
    engine = EngineSettings(fuel=options.fuel is not None)
    try:
        compiled = await asyncio.to_thread(runtime.load, located.path, located.digest, engine)
    except BaseException:
        await store.close()
        runtime.close()
        raise
    _log.info(
        "module ready",
        extra={
            "wasm_module": located.source,
            "digest": located.digest,
            "machine_code": compiled.source,
            "seconds": round(compiled.seconds, 4),
        },
    )
    return _Loaded(runtime, store, located, compiled, metrics)


def _spec(options: ModuleOptions, args: tuple[str, ...]) -> SandboxSpec:
    program = Path(options.source.split("@", 1)[0].rsplit("/", 1)[-1]).name or "module.wasm"
    return SandboxSpec(
        args=(program, *args),
        env=options.env,
        preopens=options.dirs,
        memory_limit=options.memory_limit,
        fuel=options.fuel,
        outbound=options.outbound,
    )


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int | None = None
    timeout: float = 30.0
    max_concurrency: int = 64
    max_request_body: int = 1 << 20
    max_response: int = 16 << 20
    idle_timeout: float = 75.0
    processes: int = 1
    """Processes answering requests: 1 is this one; more starts that many worker processes."""
    inline_budget: float = INLINE_BUDGET
    """CPU seconds a short run may take on the event loop's thread (0: none run there)."""


async def serve(
    options: ModuleOptions, serve_options: ServeOptions, stop: asyncio.Event | None = None
) -> int:
    """Serves the module until ``stop`` is set (or SIGTERM/SIGINT); returns the exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    metrics = AgentMetrics()
    ready = asyncio.Event()
    workers: WorkerPool | None = None
    if serve_options.processes > 1:
        workers = WorkerPool(
            serve_options.processes,
            cache_dir=options.cache_dir / "compiled",
            threads=serve_options.max_concurrency,
            unload_idle_seconds=options.unload_idle_seconds,
            inline_budget=serve_options.inline_budget,
        )
    admin_runner: web.AppRunner | None = None
    if serve_options.admin_port is not None:
        admin = build_admin_app(
            metrics=metrics,
            ready_check=lambda: (
                ready.is_set(),
                "serving" if ready.is_set() else "loading the module",
            ),
            other_metrics=workers.metrics if workers is not None else None,
        )
        admin_runner = web.AppRunner(admin, access_log=None)
        await admin_runner.setup()
        await web.TCPSite(admin_runner, serve_options.host, serve_options.admin_port).start()
    try:
        loaded = await _load(options, metrics)
    except (ModuleLoadError, errors.RegistryError, ValueError, OSError) as error:
        print(f"wasmfleet-agent serve: {error}", file=sys.stderr)
        if admin_runner is not None:
            await admin_runner.cleanup()
        return 1
    name = options.source
    # a client has as long to send its body as the module to answer it
    order = ServeOrder(
        key=name,
        name=name,
        module_path=loaded.located.path,
        digest=loaded.located.digest,
        fuel=options.fuel is not None,
        spec=_spec(options, ()),
        limits=RunLimits(
            deadline_seconds=serve_options.timeout, max_output=serve_options.max_response
        ),
        http=HttpLimits(
            serve_options.max_concurrency,
            serve_options.max_request_body,
            serve_options.timeout,
            serve_options.idle_timeout,
        ),
        module=loaded.runtime.slot(loaded.located.path, loaded.compiled),
    )
    pool: ThreadPoolExecutor | None = None
    server: Server
    if workers is None:
        pool = ThreadPoolExecutor(
            max_workers=serve_options.max_concurrency, thread_name_prefix="wasm-request"
        )
        server = InProcessServer(
            runtime=loaded.runtime,
            pool=pool,
            metrics=metrics,
            inline_budget=serve_options.inline_budget,
        )
    else:
        server = workers
    try:
        order.spec.check()
        check_fits(loaded.compiled, order.spec, job=False)
        if workers is not None:
            await workers.start()
        listener, *siblings = bind_group(
            None, serve_options.host, serve_options.port, server.listeners
        )
        await server.serve(order, listener, siblings)
        ready.set()
        _log.info(
            "serving",
            extra={
                "wasm_module": name,
                "url": f"http://{serve_options.host}:{serve_options.port}/",
                **({"processes": workers.pids} if workers is not None else {}),
            },
        )
        await stop.wait()
    except (SandboxConfigError, ServeError, OSError) as error:
        print(f"wasmfleet-agent serve: {error}", file=sys.stderr)
        return 1
    finally:
        await server.close()
        if admin_runner is not None:
            await admin_runner.cleanup()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        await loaded.store.close()
        loaded.runtime.close()
    return 0


async def run_module(
    options: ModuleOptions, args: tuple[str, ...], deadline: float | None = None
) -> int:
    """Runs the module to completion with the terminal's stdio; the module's exit code."""
    try:
        loaded = await _load(options, AgentMetrics())
    except (ModuleLoadError, errors.RegistryError, ValueError, OSError) as error:
        print(f"wasmfleet-agent run: {error}", file=sys.stderr)
        return 1
    try:
        spec = _spec(options, args)
        spec.check()
        check_fits(loaded.compiled, spec, job=True)
        result = await asyncio.to_thread(
            run_job,
            loaded.compiled,
            spec,
            timeout=deadline,
            name=options.source,
            inherit_stdio=True,
        )
    except SandboxConfigError as error:
        print(f"wasmfleet-agent run: {error}", file=sys.stderr)
        return 1
    finally:
        await loaded.store.close()
        loaded.runtime.close()
    if result.failure is not None:
        print(f"wasmfleet-agent run: {result.failure.detail}", file=sys.stderr)
        return TRAP_EXIT_CODE
    return result.exit_code or 0
