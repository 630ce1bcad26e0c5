"""The operator process: leader election, then kopf's watches feeding the reconciler.

kopf watches the five kinds the operator reads (WasmServices, WasmBindings, WasmAgents, the
agents' heartbeat Leases and Nodes) and the two it writes for routing (Services and
EndpointSlices with its label, so that one deleted or changed by hand is repaired at once)
with its reconnecting list-and-watch streams; every event only updates a cache and queues the
affected WasmServices. The reconcile workers, a fleet
monitor (which notices heartbeats that lapse, an event no watch delivers) and a periodic
resync do the work. Everything starts only once this replica holds the leader Lease, and the
caches are filled from a full list before the first pass, so a fresh leader never mistakes a
node it has not heard of yet for a lost one.

Those long-running tasks (kopf, the workers, the event writer, the monitor, the leader
Lease's renewal) run under a `Supervisor`: if any ends while the operator runs, the process
logs which and why, hands the leader Lease back (unless that task was the one holding it) and
exits 1. A standby takes over at once and Kubernetes restarts this replica: an operator never
goes on leading with a part of itself missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from wasmfleet_api.agent import WasmAgent
from wasmfleet_api.base import API_VERSION, GROUP, VERSION
from wasmfleet_common.kube import (
    KubeClient,
    KubeConfig,
    load_configuration,
    resource_for,
    retry_until_stopped,
)
from wasmfleet_common.supervisor import Supervisor
from wasmfleet_oci.client import ClientSettings
from wasmfleet_operator.fleet import Fleet, Liveness
from wasmfleet_operator.leader import LeaderElector, LostLeadershipError
from wasmfleet_operator.metrics import OperatorMetrics, serve_health
from wasmfleet_operator.reconciler import Reconciler, ReconcilerSettings, invalid_spec_message
from wasmfleet_operator.render import LABEL_SERVICE
from wasmfleet_operator.resolver import Resolver

__all__ = ["OperatorOptions", "run_operator"]

log = logging.getLogger(__name__)
FIELD_MANAGER = "wasmfleet-operator"
AGENT_LEASE_LABEL = "wasmfleet.dev/agent"


@dataclass(frozen=True)
class OperatorOptions:
    kube: KubeConfig
    kubeconfig_path: str | None = None
    namespace: str = "wasmfleet-system"
    """Where the leader Lease and the agents' heartbeat Leases live."""
    leader_lease: str = "wasmfleet-operator"
    leader_lease_duration: float = 15.0
    leader_retry: float = 2.0
    node_grace_period: float = 40.0
    workers: int = 4
    resync_seconds: float = 60.0
    monitor_seconds: float = 1.0
    registry: ClientSettings = field(default_factory=ClientSettings)
    health_port: int | None = None
    health_host: str = "0.0.0.0"
    fault_injection: bool = False
    identity: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )


def build_registry(reconciler: Reconciler, options: OperatorOptions) -> kopf.OperatorRegistry:
    """The kopf handlers: each event updates a cache and queues work, nothing more."""
    registry = kopf.OperatorRegistry()
    fleet = reconciler.fleet

    def deleted(event: Mapping[str, Any]) -> bool:
        return event.get("type") == "DELETED"

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our Events are written by the reconciler
        settings.scanning.disabled = True  # no CRD-wide permissions needed
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.peering.standalone = True  # leadership is our Lease, not kopf peering

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return _connection_info(options.kubeconfig_path)

    @kopf.on.event(GROUP, VERSION, "wasmservices", registry=registry)
    async def on_service(event: Mapping[str, Any], **_: Any) -> None:
        reconciler.on_service(event["object"], deleted=deleted(event))

    @kopf.on.event(GROUP, VERSION, "wasmbindings", registry=registry)
    async def on_binding(event: Mapping[str, Any], **_: Any) -> None:
        reconciler.on_binding(event["object"], deleted=deleted(event))

    @kopf.on.event(GROUP, VERSION, "wasmagents", registry=registry)
    async def on_agent(event: Mapping[str, Any], **_: Any) -> None:
        agent = _parse_agent(event["object"])
        if agent is None:
            return
        before = fleet.agents.get(agent.metadata["name"])
        fleet.update_agent(agent, deleted=deleted(event))
        # status.allocated changes all the time and the planner counts bindings itself
        if _agent_view(before) != _agent_view(agent) or deleted(event):
            reconciler.enqueue_all()

    @kopf.on.event(
        "coordination.k8s.io",
        "v1",
        "leases",
        labels={AGENT_LEASE_LABEL: "true"},
        registry=registry,
    )
    async def on_lease(event: Mapping[str, Any], **_: Any) -> None:
        if event["object"]["metadata"].get("namespace") == options.namespace:
            fleet.update_lease(event["object"], deleted=deleted(event))

    @kopf.on.event("", "v1", "services", labels={LABEL_SERVICE: kopf.PRESENT}, registry=registry)
    async def on_owned_service(event: Mapping[str, Any], **_: Any) -> None:
        reconciler.on_owned("Service", event["object"], deleted=deleted(event))

    @kopf.on.event(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        labels={LABEL_SERVICE: kopf.PRESENT},
        registry=registry,
    )
    async def on_owned_slice(event: Mapping[str, Any], **_: Any) -> None:
        reconciler.on_owned("EndpointSlice", event["object"], deleted=deleted(event))

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def on_node(event: Mapping[str, Any], **_: Any) -> None:
        obj = event["object"]
        before = fleet.nodes.get(obj["metadata"]["name"], {})
        fleet.update_node(obj, deleted=deleted(event))
        if _scheduling_view(before) != _scheduling_view(obj) or deleted(event):
            reconciler.enqueue_all()

    return registry


def _connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """kopf's credentials from the same kubeconfig (or service account) as our client."""
    if kubeconfig is not None:
        configuration, token = load_configuration(kubeconfig)
    else:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        token = configuration.api_key.get("BearerToken") or configuration.api_key.get(
            "authorization"
        )
        if token is not None and token.lower().startswith("bearer "):
            token = token[len("bearer ") :]
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme="Bearer" if token else None,
        token=token,
    )


def _parse_agent(obj: Mapping[str, Any]) -> WasmAgent | None:
    """The WasmAgent as its agent wrote it; None (logged) if it does not parse, which leaves
    what the fleet knew of that agent as it was."""
    try:
        return WasmAgent.model_validate(obj)
    except ValidationError as error:
        log.error(
            "unreadable WasmAgent",
            extra={"agent": obj["metadata"].get("name"), "error": invalid_spec_message(error)},
        )
        return None


def _agent_view(agent: WasmAgent | None) -> Any:
    """What the scheduler reads of an agent: everything but ``status.allocated``."""
    if agent is None:
        return None
    status = agent.status.model_copy(update={"allocated": 0}) if agent.status else None
    return agent.spec, status, agent.metadata.get("labels")


def _scheduling_view(node: Mapping[str, Any]) -> Any:
    return (
        (node.get("metadata") or {}).get("labels"),
        (node.get("spec") or {}).get("taints"),
        (node.get("spec") or {}).get("unschedulable"),
    )


async def _prime(
    kube: KubeClient, reconciler: Reconciler, namespace: str, stop: asyncio.Event
) -> bool:
    """Fills every cache from full lists before the first reconcile pass, retrying while the
    API server cannot answer yet (e.g. 429 while its storage initializes after CRDs are
    created); False if stopped first."""
    return await retry_until_stopped(
        lambda: _list_everything(kube, reconciler, namespace),
        stop,
        on_error=lambda error, delay: log.warning(
            "caches not filled (%s); retrying in %.1fs", error, delay
        ),
    )


async def _list_everything(kube: KubeClient, reconciler: Reconciler, namespace: str) -> None:
    fleet = reconciler.fleet

    def _update_agent(obj: Mapping[str, Any]) -> None:
        agent = _parse_agent(obj)
        if agent is not None:
            fleet.update_agent(agent)

    listings: list[tuple[str, Callable[[Mapping[str, Any]], None], dict[str, str]]] = [
        ("WasmAgent", _update_agent, {}),
        ("Node", lambda o: fleet.update_node(o), {}),
        ("Lease", lambda o: fleet.update_lease(o), {"label_selector": f"{AGENT_LEASE_LABEL}=true"}),
        ("WasmBinding", lambda o: reconciler.on_binding(o, deleted=False), {}),
        ("WasmService", lambda o: reconciler.on_service(o, deleted=False), {}),
    ]
    for kind in ("Service", "EndpointSlice"):
        api_version = "v1" if kind == "Service" else "discovery.k8s.io/v1"
        owned = await kube.list(resource_for(api_version, kind), label_selector=LABEL_SERVICE)
        reconciler.seed_owned(kind, owned["items"])
    for kind, update, query in listings:
        api_version = {
            "Node": "v1",
            "Lease": "coordination.k8s.io/v1",
        }.get(kind, API_VERSION)
        resource = resource_for(api_version, kind)
        ns = namespace if kind == "Lease" else None
        listing = await kube.list(resource, namespace=ns, **query)
        for obj in listing["items"]:
            obj.setdefault("apiVersion", api_version)
            obj.setdefault("kind", kind)
            update(obj)


async def _monitor(reconciler: Reconciler, options: OperatorOptions) -> None:
    """Queues the services on agents whose liveness changed; resyncs everything now and then."""
    fleet = reconciler.fleet
    known: dict[str, Liveness] = {}
    loop = asyncio.get_running_loop()
    next_resync = loop.time() + options.resync_seconds
    while True:
        await asyncio.sleep(options.monitor_seconds)
        current = fleet.liveness_all()
        if reconciler.metrics is not None:
            states = {"ready": 0, "notready": 0, "lost": 0}
            for live in current.values():
                states["ready" if live.ready else "lost" if live.lost else "notready"] += 1
            for state, count in states.items():
                reconciler.metrics.agents.labels(state).set(count)
            reconciler.metrics.queue_depth.set(len(reconciler.queue))
        changed = {n for n in current.keys() | known.keys() if current.get(n) != known.get(n)}
        if changed:
            for name in sorted(changed):
                log.info(
                    "agent liveness changed",
                    extra={
                        "node": name,
                        "ready": current[name].ready if name in current else False,
                        "lost": current[name].lost if name in current else True,
                    },
                )
            reconciler.enqueue_all()
        known = current
        if loop.time() >= next_resync:
            reconciler.resync()
            next_resync = loop.time() + options.resync_seconds


async def run_operator(options: OperatorOptions) -> int:
    """Runs until SIGTERM (0) or until leadership is lost (1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    kube = KubeClient(options.kube, field_manager=FIELD_MANAGER)
    elector = LeaderElector(
        kube,
        options.namespace,
        options.leader_lease,
        options.identity,
        duration=options.leader_lease_duration,
        retry=options.leader_retry,
    )
    resolver = Resolver(kube, options.registry)
    metrics = OperatorMetrics()
    role = ["standby"]
    supervisor = Supervisor(stop, restart=False)
    health = (
        await serve_health(
            metrics,
            options.health_port,
            lambda: role[0],
            options.health_host,
            crash=supervisor.crash if options.fault_injection else None,
        )
        if options.health_port is not None
        else None
    )
    code = 0
    try:
        if not await elector.acquire(stop):
            return 0
        role[0] = "leader"
        metrics.leader.set(1)
        reconciler = Reconciler(
            kube,
            resolver,
            Fleet(grace_period=options.node_grace_period),
            ReconcilerSettings(identity=options.identity),
            metrics=metrics,
        )
        if not await _prime(kube, reconciler, options.namespace, stop):
            await elector.release()
            return 0
        # a binding deleted between that listing and the watch's start leaves no event
        reconciler.distrust_bindings()
        log.info(
            "leading; caches filled",
            extra={
                "services": len(reconciler.services),
                "agents": len(reconciler.fleet.agents),
            },
        )
        # Started before kopf: kopf cancels every task created after its own start.
        for i in range(options.workers):
            supervisor.start(f"worker-{i}", reconciler.worker)
        supervisor.start("events", reconciler.event_writer)
        supervisor.start("leader", elector.hold)
        supervisor.start("monitor", lambda: _monitor(reconciler, options))
        kopf_stop = asyncio.Event()
        supervisor.start(
            "kopf",
            lambda: kopf.operator(
                registry=build_registry(reconciler, options),
                clusterwide=True,
                standalone=True,
                stop_flag=kopf_stop,
            ),
        )
        ended = await supervisor.wait()
        if ended is not None:
            log.error("exiting: the %s task ended while leading; a standby takes over", ended)
            code = 1
        stop.set()
        kopf_stop.set()
        operator = supervisor.task("kopf")
        if operator is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(operator, timeout=10)
        await supervisor.close()
        reconciler.queue.close()
        if ended != "leader":  # the Lease is still ours: hand it over at once
            await elector.release()
    except LostLeadershipError:
        code = 1
    finally:
        metrics.leader.set(0)
        if health is not None:
            await health.cleanup()
        await resolver.close()
        await kube.close()
    return code
