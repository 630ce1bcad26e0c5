"""What the control bench times and counts while the services of one scale become Ready.

Over a started `simulator.Cluster` it creates the services as fast as ``create_concurrency``
allows (replicas alternate between 1 and 2) and measures, until every service is Ready or the
scale's deadline passes:

- the time until all are Ready, the latency per service, and placements (WasmBindings
  created) per second: from a watch on each kind (a timestamp per object, where polling would
  cost a full list of every service each time), confirmed at the end by a plain list;
- the operator's CPU seconds and peak RSS (``/proc/<pid>/stat`` and ``status``), and the CPU of
  kube-apiserver, etcd and the simulated agents;
- API requests per second (``apiserver_request_total`` from the API server's /metrics, before
  and after) with the server's mean time per verb and resource, split by client (user and user
  agent, from the audit log), and the operator's own reconcile and placement counters;
- the objects that exist at the end.

With a profile directory it samples the operator with py-spy (not a project dependency:
``.venv/bin/pip install py-spy``) during the window and writes collapsed stacks there.
Everything lands in a `ScaleResult`; turning results into tables is the `report`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from control.probes import cpu_seconds, memory_kib, parse_samples
from control.simulator import (
    AGENTS,
    BINDINGS,
    NAMESPACE,
    NODES,
    SERVICES,
    SYSTEM_NAMESPACE,
    Cluster,
)
from wasmfleet_api.base import API_VERSION
from wasmfleet_common.kube import ApiError, KubeClient, Resource, resource_for
from wasmfleet_harness.processes import ManagedProcess, wait_until

__all__ = [
    "COUNTED",
    "Measurement",
    "ScaleResult",
    "Snapshot",
    "Timeline",
    "audit_requests",
    "classify",
    "count",
    "is_ready",
]

COUNTED: tuple[tuple[str, Resource, str | None], ...] = (
    ("WasmServices", SERVICES, NAMESPACE),
    ("WasmBindings", BINDINGS, NAMESPACE),
    ("Services", resource_for("v1", "Service"), NAMESPACE),
    ("EndpointSlices", resource_for("discovery.k8s.io/v1", "EndpointSlice"), NAMESPACE),
    ("Events", resource_for("events.k8s.io/v1", "Event"), NAMESPACE),
    ("WasmAgents", AGENTS, None),
    ("Leases", resource_for("coordination.k8s.io/v1", "Lease"), SYSTEM_NAMESPACE),
    ("Nodes", NODES, None),
)
"""The objects counted at the end of a scale: name, resource, namespace."""


def _request_key(labels: Mapping[str, str]) -> str:
    resource = labels.get("resource", "")
    if labels.get("subresource"):
        resource += "/" + labels["subresource"]
    return f"{labels.get('verb', '')} {resource}"


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Whether a WasmService says Ready with at least as many ready replicas as it asks for."""
    status = obj.get("status") or {}
    desired = int((obj.get("spec") or {}).get("replicas", 1))
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return ready and int(status.get("readyReplicas") or 0) >= desired


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class Snapshot:
    """Counters read at one moment."""

    monotonic: float
    wall: float
    cpu: dict[str, float]
    requests: dict[str, float]
    latency: dict[str, float]
    """Seconds the API server spent answering, summed per verb and resource."""
    operator: dict[str, float]


@dataclass
class Timeline:
    """When each service and binding was created, placed and Ready, as the watches saw it."""

    expected: int
    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    placed: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)

    def on_service(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind != "DELETED" and name not in self.ready and is_ready(obj):
            self.ready[name] = time.monotonic()
            if len(self.ready) >= self.expected:
                self.all_ready.set()

    def on_binding(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            return
        name = obj["metadata"]["name"]
        now = time.monotonic()
        self.placed.setdefault(name, now)
        if (obj.get("status") or {}).get("ready"):
            self.acked.setdefault(name, now)


async def follow(
    kube: KubeClient,
    resource: Resource,
    on_event: Callable[[str, Mapping[str, Any]], None],
    started: asyncio.Event,
) -> None:
    """Lists, then watches ``resource`` in the bench namespace, feeding every event."""
    while True:
        listing = await kube.list(resource, namespace=NAMESPACE)
        for item in listing["items"]:
            on_event("ADDED", item)
        started.set()
        try:
            async for kind, obj in kube.watch(
                resource,
                resource_version=listing["metadata"]["resourceVersion"],
                namespace=NAMESPACE,
            ):
                if kind != "BOOKMARK":
                    on_event(kind, obj)
        except ApiError as error:
            if error.status != 410:
                raise


def classify(user: str) -> str:
    """Which component a request came from, by its authenticated user."""
    if user.endswith(":wasmfleet-operator"):
        return "operator"
    if user.endswith(":wasmfleet-agent"):
        return "agents"
    if user == "wasmfleet-admin":
        return "bench"
    if user.startswith(("system:serviceaccount:kube-system:", "system:kube-controller-manager")):
        return "controllers"
    return "other"


def audit_requests(log: Path, since: float, until: float) -> dict[str, dict[str, int]]:
    """Requests received in [since, until] per client and user agent, then per verb."""
    seen: dict[str, tuple[str, str]] = {}
    if not log.is_file():
        return {}
    with log.open() as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            if not since <= received <= until:
                continue
            user = str((event.get("user") or {}).get("username", ""))
            agent = str(event.get("userAgent", "")).split(" ", 1)[0].split("/", 1)[0]
            client = f"{classify(user)} ({agent or '?'})"
            seen[event["auditID"]] = (client, str(event.get("verb", "")))
    table: dict[str, dict[str, int]] = {}
    for client, verb in seen.values():
        per_verb = table.setdefault(client, {})
        per_verb[verb] = per_verb.get(verb, 0) + 1
    return table


# ---- one scale ------------------------------------------------------------------------------


@dataclass
class ScaleResult:
    """One scale's figures: what `Measurement` fills in, ``control.json`` holds per scale and
    the `report` renders."""

    services: int
    agents: int
    replicas: int
    operator_from: str = ""
    """Which operator ran: "" for this tree's, else "baseline <revision>"."""
    outcome: str = "not run"
    deadline_s: float = 0.0
    load_before: float = 0.0
    """The machine's 1-minute load average as the scale started (other work competes)."""
    setup_s: float = 0.0
    create_s: float | None = None
    all_ready_s: float | None = None
    ready_services: int = 0
    placed: int = 0
    acked: int = 0
    last_placement_s: float | None = None
    placements_per_s: float | None = None
    ready_replicas_per_s: float | None = None
    service_latency_p50_s: float | None = None
    service_latency_p90_s: float | None = None
    ack_latency_p50_s: float | None = None
    window_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    operator_peak_rss_mib: float = 0.0
    operator_rss_mib: float = 0.0
    agents_peak_rss_mib: float = 0.0
    """Summed over the simulated agents' processes."""
    api_requests: int = 0
    api_requests_per_s: float = 0.0
    requests_by_resource: dict[str, int] = field(default_factory=dict)
    api_latency_ms: dict[str, float] = field(default_factory=dict)
    """Mean time the API server took per request, per verb and resource."""
    requests_by_client: dict[str, dict[str, int]] = field(default_factory=dict)
    operator: dict[str, float] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def time_per_service_ms(self) -> float | None:
        return None if self.all_ready_s is None else self.all_ready_s / self.services * 1000

    @property
    def operator_cpu_per_service_ms(self) -> float | None:
        cpu = self.cpu_s.get("operator")
        return None if cpu is None or not self.services else cpu / self.services * 1000

    def client_requests(self, client: str) -> int:
        return sum(
            sum(verbs.values())
            for name, verbs in self.requests_by_client.items()
            if name.startswith(f"{client} ")
        )


class Measurement:
    """One scale's measured window over a started cluster; fills in ``result``."""

    def __init__(
        self,
        cluster: Cluster,
        result: ScaleResult,
        *,
        image: str,
        create_concurrency: int,
        profile: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.result = result
        self.image = image
        self.create_concurrency = create_concurrency
        self.profile = profile
        self.profiler: ManagedProcess | None = None

    async def snapshot(self) -> Snapshot:
        """The counters now: CPU per component, the API server's requests and time, and the
        operator's reconcile and placement counters."""
        now, wall = time.monotonic(), time.time()
        cpu = {
            name: sum(cpu_seconds(p) for p in pids) for name, pids in self.cluster.pids().items()
        }
        page = await asyncio.to_thread(self.cluster.plane.get_raw, "/metrics", timeout=30)
        requests: Counter[str] = Counter()
        for labels, value in parse_samples(page, "apiserver_request_total"):
            requests[_request_key(labels)] += int(value)
        latency: dict[str, float] = {}
        for labels, value in parse_samples(page, "apiserver_request_duration_seconds_sum"):
            key = _request_key(labels)
            latency[key] = latency.get(key, 0.0) + value
        operator: dict[str, float] = {}
        text = await self.cluster.operator_metrics()
        for labels, value in parse_samples(text, "wasmfleet_operator_reconciles_total"):
            operator[f"reconciles_{labels.get('result', '')}"] = value
        for labels, value in parse_samples(text, "wasmfleet_operator_placement_changes_total"):
            operator[f"placements_{labels.get('action', '')}"] = value
        for suffix in ("sum", "count"):
            for _, value in parse_samples(
                text, f"wasmfleet_operator_reconcile_duration_seconds_{suffix}"
            ):
                operator[f"reconcile_seconds_{suffix}"] = value
        return Snapshot(now, wall, cpu, dict(requests), dict(latency), operator)

    async def run(self, deadline_s: float) -> None:
        """Creates the services and measures until all are Ready or ``deadline_s`` passes."""
        admin = self.cluster.admin
        assert admin is not None, "the cluster is not started"
        result = self.result
        result.deadline_s = deadline_s
        timeline = Timeline(expected=result.services)
        started = [asyncio.Event(), asyncio.Event()]
        watchers = [
            asyncio.create_task(follow(admin, SERVICES, timeline.on_service, started[0])),
            asyncio.create_task(follow(admin, BINDINGS, timeline.on_binding, started[1])),
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=30)
            before = await self.snapshot()
            begin = before.monotonic
            self._start_profile()
            deadline = begin + deadline_s
            await self._create_services(admin, timeline)
            result.create_s = time.monotonic() - begin
            progress = begin
            while not timeline.all_ready.is_set() and time.monotonic() < deadline:
                self.cluster.check_alive()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(timeline.all_ready.wait(), timeout=1.0)
                if time.monotonic() - progress >= 10:
                    progress = time.monotonic()
                    print(
                        f"    {progress - begin:5.0f}s: {len(timeline.placed)} placed, "
                        f"{len(timeline.acked)} acknowledged, "
                        f"{len(timeline.ready)}/{result.services} services Ready",
                        flush=True,
                    )
            after = await self.snapshot()
        finally:
            self._stop_profile()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        self._summarize(timeline, before, after)
        # Confirm with a plain list what the watch said, and count what exists.
        listing = await admin.list(SERVICES, namespace=NAMESPACE)
        result.ready_services = sum(is_ready(s) for s in listing["items"])
        result.outcome = (
            "complete" if result.ready_services == result.services else "deadline passed"
        )
        result.objects = {name: await count(admin, res, ns) for name, res, ns in COUNTED}
        if self.cluster.settings.audit:
            result.requests_by_client = await asyncio.to_thread(
                audit_requests, self.cluster.audit_log, before.wall, after.wall
            )

    def _start_profile(self) -> None:
        """py-spy on the operator for the measured window, when ``--profile DIR`` asks."""
        operator = self.cluster.operator
        if self.profile is None or operator is None:
            return
        name = f"operator-{self.result.services}x{self.result.agents}"
        self.profile.mkdir(parents=True, exist_ok=True)
        self.profiler = ManagedProcess(
            "py-spy",
            [
                py_spy(),
                "record",
                "--pid",
                str(operator.pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str((self.profile / f"{name}.txt").resolve()),
            ],
            log_path=self.cluster.workdir / "logs" / "py-spy.log",
        )
        self.profiler.start()

    def _stop_profile(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            # SIGINT: py-spy writes what it sampled, then exits.
            profiler.signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not profiler.alive(), timeout=20, interval=0.1)
            profiler.stop(grace=5)

    async def _create_services(self, admin: KubeClient, timeline: Timeline) -> None:
        gate = asyncio.Semaphore(self.create_concurrency)

        async def create(index: int) -> None:
            name = f"svc-{index:04d}"
            body = {
                "apiVersion": API_VERSION,
                "kind": "WasmService",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"module": {"image": self.image}, "replicas": 1 + index % 2, "http": {}},
            }
            async with gate:
                await admin.create(body)
            timeline.created[name] = time.monotonic()

        await asyncio.gather(*(create(i) for i in range(self.result.services)))

    def _summarize(self, timeline: Timeline, before: Snapshot, after: Snapshot) -> None:
        result = self.result
        begin = before.monotonic
        result.window_s = after.monotonic - begin
        result.placed = len(timeline.placed)
        result.acked = len(timeline.acked)
        if timeline.all_ready.is_set():
            result.all_ready_s = max(timeline.ready.values()) - begin
            result.ready_replicas_per_s = result.replicas / result.all_ready_s
        if timeline.placed:
            result.last_placement_s = max(timeline.placed.values()) - begin
            result.placements_per_s = result.placed / result.last_placement_s
        latencies = [
            t - timeline.created[n] for n, t in timeline.ready.items() if n in timeline.created
        ]
        result.service_latency_p50_s = _percentile(latencies, 0.5)
        result.service_latency_p90_s = _percentile(latencies, 0.9)
        acks = [t - timeline.placed[n] for n, t in timeline.acked.items() if n in timeline.placed]
        result.ack_latency_p50_s = _percentile(acks, 0.5)
        result.cpu_s = {k: round(after.cpu[k] - before.cpu.get(k, 0.0), 3) for k in after.cpu}
        operator = self.cluster.operator
        pid = operator.pid if operator else None
        result.operator_peak_rss_mib = memory_kib(pid, "VmHWM") / 1024
        result.operator_rss_mib = memory_kib(pid, "VmRSS") / 1024
        result.agents_peak_rss_mib = (
            sum(memory_kib(a.pid, "VmHWM") for a in self.cluster.agents) / 1024
        )
        delta = {
            k: int(v - before.requests.get(k, 0))
            for k, v in after.requests.items()
            if v - before.requests.get(k, 0) > 0
        }
        result.requests_by_resource = dict(sorted(delta.items(), key=lambda kv: -kv[1]))
        result.api_latency_ms = {
            key: round((after.latency.get(key, 0.0) - before.latency.get(key, 0.0)) / n * 1000, 2)
            for key, n in result.requests_by_resource.items()
            if not key.startswith("WATCH")
        }
        result.api_requests = sum(delta.values())
        result.api_requests_per_s = result.api_requests / result.window_s
        result.operator = {
            k: round(v - before.operator.get(k, 0.0), 4) for k, v in after.operator.items()
        }


def py_spy() -> str:
    """The py-spy next to this interpreter (``.venv/bin/pip install py-spy``), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


async def count(kube: KubeClient, resource: Resource, namespace: str | None) -> int:
    """How many objects of ``resource`` exist, without listing them all."""
    page = await kube.request("GET", resource.path(namespace), query={"limit": "1"})
    metadata = page.get("metadata") or {}
    if "remainingItemCount" in metadata or not metadata.get("continue"):
        return len(page["items"]) + int(metadata.get("remainingItemCount") or 0)
    return len((await kube.list(resource, namespace=namespace))["items"])
