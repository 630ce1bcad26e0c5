"""The agent's admin endpoints: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

They live on a port of their own so that a module, which owns every path of its service
port, can never shadow them. With a ``crash`` callable (``--fault-injection``, for tests only)
``POST /debug/crash/TASK`` also ends one of the agent's long-running tasks as a crash would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from wasmfleet_agent.server.metrics import AgentMetrics, Snapshot

__all__ = ["build_admin_app"]

READY_CHECK: web.AppKey[Callable[[], tuple[bool, str]]] = web.AppKey("ready_check")
METRICS: web.AppKey[AgentMetrics] = web.AppKey("metrics")
OTHER_METRICS: web.AppKey[Callable[[], Awaitable[list[Snapshot]]] | None] = web.AppKey(
    "other_metrics"
)
CRASH: web.AppKey[Callable[[str], bool]] = web.AppKey("crash")


async def _healthz(_request: web.Request) -> web.Response:
    # Answering at all proves the event loop is alive: Wasm never runs on it.
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    ready, detail = request.app[READY_CHECK]()
    return web.Response(status=200 if ready else 503, text=f"{detail}\n")


async def _metrics(request: web.Request) -> web.Response:
    others = request.app[OTHER_METRICS]
    body = request.app[METRICS].render(await others() if others is not None else ())
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def _crash(request: web.Request) -> web.Response:
    task = request.match_info["task"]
    if not request.app[CRASH](task):
        return web.Response(status=404, text=f"no running task {task}\n")
    return web.Response(text=f"task {task} ended\n")


def build_admin_app(
    *,
    metrics: AgentMetrics,
    ready_check: Callable[[], tuple[bool, str]],
    other_metrics: Callable[[], Awaitable[list[Snapshot]]] | None = None,
    crash: Callable[[str], bool] | None = None,
) -> web.Application:
    """``ready_check`` returns (ready, a sentence saying why or why not); ``other_metrics``
    gathers the worker processes' metrics, merged into this process's on ``/metrics``."""
    app = web.Application()
    app[METRICS] = metrics
    app[OTHER_METRICS] = other_metrics
    app[READY_CHECK] = ready_check
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    if crash is not None:
        app[CRASH] = crash
        app.router.add_post("/debug/crash/{task}", _crash)
    return app
