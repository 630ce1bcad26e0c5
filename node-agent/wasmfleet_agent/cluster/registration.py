"""An agent announces itself (its WasmAgent) and proves it is alive (its Lease).

The WasmAgent carries what the scheduler needs and changes rarely; the heartbeat is a
coordination.k8s.io Lease renewed every third of its duration, so liveness costs one small
write per agent per few seconds and never wakes watchers of WasmAgents. Both are written
with server-side apply, so a restarted agent simply re-applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from wasmfleet_api.agent import AgentCapacity, WasmAgent, WasmAgentSpec, WasmAgentStatus
from wasmfleet_api.base import API_VERSION, Condition
from wasmfleet_api.units import format_micro_time, format_time
from wasmfleet_common.kube import API_ERRORS, ApiError, KubeClient, resource_for

__all__ = [
    "ARCH_LABEL",
    "LEASE_LABEL",
    "AgentIdentity",
    "ApiContact",
    "NodeArchitecture",
    "apply_agent",
    "check_node_label",
    "heartbeat",
    "kube_architecture",
    "read_node_label",
    "render_agent",
    "render_agent_event",
    "render_agent_writes",
    "render_lease",
]

log = logging.getLogger(__name__)
LEASE_LABEL = "wasmfleet.dev/agent"
ARCH_LABEL = "kubernetes.io/arch"
NODES = resource_for("v1", "Node")
_MACHINE_TO_KUBE = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def kube_architecture(machine: str | None = None) -> str:
    """This machine's architecture as Kubernetes names it (amd64, arm64)."""
    raw = (machine or platform.machine()).lower()
    return _MACHINE_TO_KUBE.get(raw, raw)


@dataclass(frozen=True)
class AgentIdentity:
    """What an agent says about itself."""

    node_name: str
    address: str
    architecture: str
    lease_namespace: str = "wasmfleet-system"
    lease_duration_seconds: int = 20
    capacity: int = 256
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    """This run of the agent: the bindings' statuses it writes carry it."""


@dataclass
class NodeArchitecture:
    """Whether the Node's ``kubernetes.io/arch`` label says what this agent's CPU is.

    The operator places replicas by the agent's own report, whatever the label says; a label
    that disagrees still misleads everything else that reads it (the kube-scheduler, a
    DaemonSet's image selection, people), so the agent says so: the ``ArchitectureMatchesNode``
    condition of its WasmAgent and a Warning Event when the disagreement starts.
    """

    architecture: str
    label: str | None = None
    """The label as last read; None: no Node of this name (or not read yet)."""
    since: str = ""

    def observe(self, label: str | None) -> bool:
        """Records a read of the label; True when the agent now newly disagrees with it."""
        before = self.agrees
        self.label = label
        if self.agrees != before:
            self.since = format_time()
        return before is not False and self.agrees is False

    @property
    def agrees(self) -> bool | None:
        """None when there is no label to compare with."""
        if not self.label:
            return None
        return self.label == self.architecture

    def message(self) -> str:
        if self.agrees is None:
            return ""
        if self.agrees:
            return f"the Node's {ARCH_LABEL} label is {self.label}, as this agent's CPU"
        return (
            f"the Node is labelled {ARCH_LABEL}={self.label} but this agent runs on "
            f"{self.architecture}; replicas are placed by the agent's {self.architecture}"
        )

    def condition(self) -> Condition | None:
        if self.agrees is None:
            return None
        return Condition(
            type="ArchitectureMatchesNode",
            status="True" if self.agrees else "False",
            reason="NodeLabelMatches" if self.agrees else "NodeLabelMismatch",
            message=self.message(),
            last_transition_time=self.since or format_time(),
        )


async def read_node_label(kube: KubeClient, node_name: str, label: str) -> str | None:
    """``label`` of the Node ``node_name`` ("" when unset); None when there is no such Node or
    the API server did not answer (logged)."""
    try:
        node = await kube.get(NODES, node_name)
    except API_ERRORS as error:
        if not (isinstance(error, ApiError) and error.not_found):
            log.warning("node %s not read: %s", node_name, error)
        return None
    labels = (node.get("metadata") or {}).get("labels") or {}
    return str(labels.get(label, ""))


async def check_node_label(
    kube: KubeClient, identity: AgentIdentity, node: NodeArchitecture
) -> None:
    """Reads the Node's architecture label into ``node``; posts a Warning Event when the
    agent newly disagrees with it."""
    label = await read_node_label(kube, identity.node_name, ARCH_LABEL)
    if not node.observe(label):
        return
    log.warning("node label disagrees with this agent", extra={"why": node.message()})
    try:
        await kube.create(
            render_agent_event(
                identity, type_="Warning", reason="ArchitectureMismatch", note=node.message()
            )
        )
    except API_ERRORS as error:
        log.warning("event not recorded: %s", error)


def render_agent_event(
    identity: AgentIdentity, *, type_: str, reason: str, note: str
) -> dict[str, Any]:
    """An Event about this agent's WasmAgent (cluster-scoped, so in ``default``, as the
    kubelet's Events about its Node are)."""
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": f"{identity.node_name}.{uuid.uuid4().hex[:16]}",
            "namespace": "default",
        },
        "eventTime": format_micro_time(),
        "reportingController": "wasmfleet.dev/agent",
        "reportingInstance": identity.node_name[:128],
        "action": "Register",
        "type": type_,
        "reason": reason,
        "note": note[:1024],
        "regarding": {
            "apiVersion": API_VERSION,
            "kind": "WasmAgent",
            "name": identity.node_name,
        },
    }


def render_agent(
    identity: AgentIdentity,
    *,
    allocated: int,
    ready: bool,
    why: str = "",
    since: str | None = None,
    node: NodeArchitecture | None = None,
) -> WasmAgent:
    """The WasmAgent of this agent, status included (``why`` it is not ready; ``since``: when
    it last became ready or not, now if not given; ``node``: what its Node's label says)."""
    extra = node.condition() if node is not None else None
    return WasmAgent(
        metadata={"name": identity.node_name, "labels": {LEASE_LABEL: "true"}},
        spec=WasmAgentSpec(node_name=identity.node_name, lease_namespace=identity.lease_namespace),
        status=WasmAgentStatus(
            architecture=identity.architecture,
            os=platform.system().lower(),
            agent_version=metadata.version("wasmfleet"),
            wasmtime_version=metadata.version("wasmtime"),
            address=identity.address,
            capacity=AgentCapacity(services=identity.capacity),
            allocated=allocated,
            lease_duration_seconds=identity.lease_duration_seconds,
            instance=identity.instance,
            conditions=[
                Condition(
                    type="Ready",
                    status="True" if ready else "False",
                    reason="AgentReady" if ready else "AgentUnhealthy",
                    message="the agent serves its bindings" if ready else why or "starting",
                    last_transition_time=since or format_time(),
                ),
                *([extra] if extra is not None else []),
            ],
        ),
    )


def render_agent_writes(agent: WasmAgent) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two server-side applies that write ``agent``: the object, then its status.

    An apply owns every field it sends, and the agent shares its WasmAgent's spec with the
    administrator: the object carries only the spec fields the agent sets, so a cordon
    (``unschedulable``) survives the agent's next write. The status is the agent's alone.
    """
    whole = agent.to_kube()
    without_status = {key: value for key, value in whole.items() if key != "status"}
    return {**without_status, "spec": agent.spec.to_kube(only_set=True)}, whole


def render_lease(
    identity: AgentIdentity, *, renew_time: str | None = None, released: bool = False
) -> dict[str, Any]:
    """The heartbeat Lease, named after the node, renewed now (or at ``renew_time``); with
    ``released``, given up (no holder): the agent is shutting down."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": identity.node_name,
            "namespace": identity.lease_namespace,
            "labels": {LEASE_LABEL: "true"},
        },
        "spec": {
            "holderIdentity": "" if released else identity.node_name,
            "leaseDurationSeconds": identity.lease_duration_seconds,
            "renewTime": renew_time or format_micro_time(),
        },
    }


async def apply_agent(
    kube: KubeClient,
    identity: AgentIdentity,
    *,
    allocated: int,
    ready: bool,
    why: str = "",
    since: str | None = None,
    node: NodeArchitecture | None = None,
) -> None:
    """Writes the WasmAgent (with what ``node`` last read of the Node's label)."""
    obj, status = render_agent_writes(
        render_agent(identity, allocated=allocated, ready=ready, why=why, since=since, node=node)
    )
    await kube.apply(obj)
    await kube.apply_status(status)


class ApiContact:
    """Whether and when the API server last answered this agent, for what waits on it.

    The heartbeat reports every renewal (`answered`, `lost`). Two things wait on that:

    - a replica whose binding is gone stops only once the server has answered a request sent
      after its drain period (`confirm`): while the server is down, the EndpointSlice change
      that removed the replica cannot reach clients (kube-proxy keeps the endpoints it has),
      so the old replica keeps answering them until the change can propagate;
    - loops backing off from an outage try again at once when it ends (`back`).
    """

    def __init__(self, kube: KubeClient, *, timeout: float) -> None:
        self.kube = kube
        self.timeout = timeout
        self.answered_at = float("-inf")
        """Monotonic time at which the newest request the server answered was sent."""
        self.reachable = True
        """False from a failed renewal until the next answer."""
        self._answered = asyncio.Event()
        self._back = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None

    def answered(self, sent_at: float) -> None:
        self.answered_at = max(self.answered_at, sent_at)
        self._answered = _pulse(self._answered)
        if not self.reachable:
            self.reachable = True
            self._back = _pulse(self._back)

    def lost(self) -> None:
        self.reachable = False

    async def back(self) -> None:
        """Returns when the server answers again after it was lost."""
        await self._back.wait()

    async def confirm(self, on_wait: Callable[[], None] | None = None) -> None:
        """Returns once the server has answered a request sent after this call began: one
        probe (shared by concurrent callers), then, if that fails, the heartbeat's next
        successful renewal. ``on_wait`` is called once if it comes to waiting."""
        since = time.monotonic()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._version())
        with contextlib.suppress(Exception):
            await asyncio.shield(self._probe)
        if self.answered_at < since and on_wait is not None:
            on_wait()
        while self.answered_at < since:
            await self._answered.wait()

    async def _version(self) -> None:
        sent = time.monotonic()
        await asyncio.wait_for(self.kube.request("GET", "/version"), timeout=self.timeout)
        self.answered(sent)


def _pulse(event: asyncio.Event) -> asyncio.Event:
    """Wakes whoever waits on ``event``; returns a fresh one for the next time."""
    event.set()
    return asyncio.Event()


async def heartbeat(
    kube: KubeClient,
    identity: AgentIdentity,
    *,
    stop: asyncio.Event,
    contact: ApiContact,
    healthy: Callable[[], tuple[bool, str]] | None = None,
) -> None:
    """Renews the Lease every third of its duration until ``stop`` is set.

    While ``healthy`` says no (a task the agent needs keeps dying), the Lease is not renewed:
    the operator then sees the agent NotReady and moves its replicas, instead of trusting an
    agent that can no longer see its bindings.

    A renewal gets half the Lease's duration to finish. A failed one is logged and retried at
    the next tick. As the kubelet does after a failed heartbeat, every connection to the API
    server is closed after a failure and once more on the first success after failures: a
    partition can leave connections open but silent, and a watch waiting on one would miss
    everything for minutes after the network is back. Every outcome goes to ``contact``. The
    agent keeps serving what it has while the API server is unreachable.
    """
    interval = identity.lease_duration_seconds / 3
    withheld = False
    while not stop.is_set():
        ok, why = healthy() if healthy is not None else (True, "")
        if not ok:
            if not withheld:
                log.error("not renewing the lease: %s", why)
            withheld = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            continue
        if withheld:
            log.warning("healthy again; renewing the lease")
            withheld = False
        sent = time.monotonic()
        try:
            await asyncio.wait_for(
                kube.apply(render_lease(identity)), timeout=identity.lease_duration_seconds / 2
            )
            if not contact.reachable:
                log.info("lease renewed again; reconnecting watches")
                await kube.drop_connections()
            contact.answered(sent)
        except Exception as error:
            log.warning("lease renewal failed: %s", error or type(error).__name__)
            contact.lost()
            await kube.drop_connections()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
