"""Prometheus metrics of one agent process, in a registry of its own (no global state).

Names follow Prometheus conventions (``wasmfleet_agent_*``, base units, ``_total`` for
counters). Services are labelled ``namespace/name`` (or the module for a standalone
``serve``); the label set is bounded by what the agent hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["AgentMetrics", "Snapshot", "snapshot"]

Snapshot = list[dict[str, Any]]
"""A registry's metrics as plain data, to cross from a worker process to the agent."""

# Request latencies of interest run from tens of microseconds to the timeout.
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_COMPILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class AgentMetrics:
    """Every metric the agent exports."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "wasmfleet_agent_requests",
            "HTTP requests served, by status code.",
            ["service", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "wasmfleet_agent_request_duration_seconds",
            "Time from request received to response ready.",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.instantiate_seconds = Histogram(
            "wasmfleet_agent_instantiate_seconds",
            "Time to create a fresh instance for one request or run.",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "wasmfleet_agent_requests_in_flight",
            "Requests running now.",
            ["service"],
            registry=r,
        )
        self.rejected = Counter(
            "wasmfleet_agent_requests_rejected",
            "Requests refused before running: over concurrency or the memory budget (503), "
            "or the body limit (413).",
            ["service", "reason"],
            registry=r,
        )
        self.outbound = Counter(
            "wasmfleet_agent_outbound_requests",
            "Outgoing HTTP requests of wasi:http guests, by outcome: sent (an answer came "
            "back), refused (an origin the service does not list, or past the per-request "
            "limit), failed (lookup, connection, TLS, timeout or size).",
            ["service", "outcome"],
            registry=r,
        )
        self.inline_runs = Counter(
            "wasmfleet_agent_inline_runs",
            "Requests of a service with short runs tried on the event loop's thread, by "
            "outcome: finished, or stopped at the inline budget and run again on a thread.",
            ["service", "outcome"],
            registry=r,
        )
        self.compile_seconds = Histogram(
            "wasmfleet_agent_compile_seconds",
            "Time to compile a module, or to load it from the compiled-code cache.",
            ["source"],
            buckets=_COMPILE_BUCKETS,
            registry=r,
        )
        self.compile_cache = Counter(
            "wasmfleet_agent_compile_cache",
            "Compiled-code cache lookups.",
            ["result"],
            registry=r,
        )
        self.pulls = Counter(
            "wasmfleet_agent_pulls",
            "Module pulls, by result.",
            ["result"],
            registry=r,
        )
        self.task_restarts = Counter(
            "wasmfleet_agent_task_restarts",
            "Long-running tasks (watch, heartbeat, status writer) that ended and were restarted.",
            ["task"],
            registry=r,
        )
        self.modules_loaded = Gauge(
            "wasmfleet_agent_modules_loaded",
            "Served modules whose machine code is in memory (idle ones are unloaded).",
            registry=r,
        )
        self.bindings = Gauge(
            "wasmfleet_agent_bindings",
            "Bindings hosted, by phase.",
            ["phase"],
            registry=r,
        )

    def observe_load(self, source: str, seconds: float) -> None:
        """A module loaded: ``source`` is ``compiled`` or ``cache`` (the `Runtime` callback)."""
        self.compile_seconds.labels(source).observe(seconds)
        self.compile_cache.labels("hit" if source == "cache" else "miss").inc()

    def render(self, others: Sequence[Snapshot] = ()) -> bytes:
        """The text exposition format, for ``/metrics``.

        ``others`` are the snapshots of the agent's worker processes: each sample is summed
        with the same sample of this process (creation times take the earliest), so a
        service's counters and histograms cover every process that served it.
        """
        if not others:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Merged([snapshot(self.registry), *others]))
        return generate_latest(merged)


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Every metric family of ``registry`` with its samples, as JSON-ready data."""
    return [
        {
            "name": family.name,
            "documentation": family.documentation,
            "type": family.type,
            "unit": family.unit,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
        for family in registry.collect()
    ]


class _Merged(Collector):
    def __init__(self, snapshots: Iterable[Snapshot]) -> None:
        self.families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for families in snapshots:
            for family in families:
                name = family["name"]
                if name not in self.families:
                    self.families[name] = Metric(
                        name, family["documentation"], family["type"], family["unit"]
                    )
                    sums[name] = {}
                values = sums[name]
                for sample_name, labels, value in family["samples"]:
                    key = (sample_name, tuple(sorted(labels.items())))
                    if key not in values:
                        values[key] = value
                    elif sample_name.endswith("_created"):
                        values[key] = min(values[key], value)
                    else:
                        values[key] += value
        for name, values in sums.items():
            for (sample_name, labels), value in values.items():
                self.families[name].add_sample(sample_name, dict(labels), value)

    def collect(self) -> Iterator[Metric]:
        yield from self.families.values()
