"""The operator's own Prometheus metrics and its /healthz, /readyz and /metrics endpoints.

They are served from the moment the process starts, leader or standby, so that a liveness
probe never restarts a healthy standby; ``wasmfleet_operator_leader`` says which one leads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["OperatorMetrics", "serve_health"]


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.leader = Gauge(
            "wasmfleet_operator_leader", "1 while this replica holds the leader Lease.", registry=r
        )
        self.reconciles = Counter(
            "wasmfleet_operator_reconciles",
            "Reconcile passes, by result (ok, retry, error).",
            ["result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "wasmfleet_operator_reconcile_duration_seconds",
            "Time one reconcile pass of one WasmService took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.queue_depth = Gauge(
            "wasmfleet_operator_queue_depth", "WasmServices waiting for a pass.", registry=r
        )
        self.agents = Gauge(
            "wasmfleet_operator_agents",
            "Agents known, by state (ready, notready, lost).",
            ["state"],
            registry=r,
        )
        self.placements = Counter(
            "wasmfleet_operator_placement_changes",
            "Bindings created and deleted, by action.",
            ["action"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_health(
    metrics: OperatorMetrics,
    port: int,
    state: Callable[[], str],
    host: str = "0.0.0.0",
    crash: Callable[[str], bool] | None = None,
) -> web.AppRunner:
    """Starts the endpoints; ``state`` names what the process is doing (for /readyz). With
    ``crash`` (``--fault-injection``, for tests), ``POST /debug/crash/TASK`` ends that task."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        return web.Response(text=f"{state()}\n")

    async def metrics_page(_request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def crash_task(request: web.Request) -> web.Response:
        assert crash is not None
        task = request.match_info["task"]
        if not crash(task):
            return web.Response(status=404, text=f"no running task {task}\n")
        return web.Response(text=f"task {task} ended\n")

    app = web.Application()
    if crash is not None:
        app.router.add_post("/debug/crash/{task}", crash_task)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
