"""The operator's view of the nodes: agents, their heartbeats, Node labels, and load.

Fed by watch events (WasmAgents and WasmBindings as the API types they are written with;
agent Leases and Nodes as Kubernetes sends them), read by the reconciler through `node_infos`
and `liveness_all`. Liveness is judged as Kubernetes' node lifecycle
controller judges it: by when *this* process last saw a Lease's renewTime change (a monotonic
clock), never by comparing the agent's clock with ours. An agent is NotReady once its Lease
has not changed for ``leaseDurationSeconds``; it is lost (its replicas move) once it has
been NotReady for longer than the grace period.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wasmfleet_api.agent import WasmAgent, WasmAgentStatus
from wasmfleet_api.binding import WasmBinding
from wasmfleet_operator.planner import NodeInfo, Taint

__all__ = ["Fleet", "Liveness"]

ARCH_LABEL = "kubernetes.io/arch"
_NO_STATUS = WasmAgentStatus()
"""An agent that has not reported yet: the API's defaults."""


@dataclass(frozen=True)
class Liveness:
    ready: bool
    lost: bool


@dataclass
class _Heartbeat:
    renew_time: str
    duration: float
    observed: float
    released: bool = False
    """The agent gave its Lease up (an empty holder): it is shutting down and draining."""


@dataclass
class Fleet:
    """Everything the scheduler knows about nodes; updated from watch events."""

    grace_period: float = 40.0
    clock: Any = time.monotonic
    agents: dict[str, WasmAgent] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    heartbeats: dict[str, _Heartbeat] = field(default_factory=dict)
    first_seen: dict[str, float] = field(default_factory=dict)
    binding_nodes: dict[str, str] = field(default_factory=dict)

    # ---- updates -----------------------------------------------------------------

    def update_agent(self, agent: WasmAgent, *, deleted: bool = False) -> None:
        name = agent.metadata["name"]
        if deleted:
            self.agents.pop(name, None)
            self.first_seen.pop(name, None)
            return
        self.agents[name] = agent
        self.first_seen.setdefault(name, self.clock())

    def update_node(self, obj: Mapping[str, Any], *, deleted: bool = False) -> None:
        name = obj["metadata"]["name"]
        if deleted:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = dict(obj)

    def update_lease(self, obj: Mapping[str, Any], *, deleted: bool = False) -> None:
        name = obj["metadata"]["name"]
        if deleted:
            self.heartbeats.pop(name, None)
            return
        spec = obj.get("spec") or {}
        renew = str(spec.get("renewTime") or "")
        duration = float(spec.get("leaseDurationSeconds") or 20)
        released = not spec.get("holderIdentity")
        known = self.heartbeats.get(name)
        if known is None or known.renew_time != renew or known.released != released:
            self.heartbeats[name] = _Heartbeat(renew, duration, self.clock(), released)
        else:
            known.duration = duration

    def update_binding(self, binding: WasmBinding, *, deleted: bool = False) -> None:
        metadata = binding.metadata
        key = f"{metadata['namespace']}/{metadata['name']}"
        if deleted:
            self.binding_nodes.pop(key, None)
        else:
            self.binding_nodes[key] = binding.spec.node_name

    # ---- reads -------------------------------------------------------------------

    def liveness(self, name: str, now: float | None = None) -> Liveness:
        """Whether the agent ``name`` is Ready, and whether it is lost."""
        now = self.clock() if now is None else now
        if name not in self.agents:
            return Liveness(ready=False, lost=True)
        beat = self.heartbeats.get(name)
        if beat is None:
            since = self.first_seen.get(name, now)
            return Liveness(ready=False, lost=now - since > 60 + self.grace_period)
        silent = now - beat.observed
        return Liveness(
            # A released Lease is NotReady at once (its endpoints go while it drains), and
            # lost only after the usual time: a restarting agent comes back before that.
            ready=silent <= beat.duration and not beat.released,
            lost=silent > beat.duration + self.grace_period,
        )

    def liveness_all(self, now: float | None = None) -> dict[str, Liveness]:
        """Every agent's liveness, with the full-disruption guard applied.

        When every agent at once looks silent, the likelier cause is this operator's own view
        (its watch stalled, the API server or etcd was down) rather than every node dying
        together; then no agent is declared lost, as Kubernetes' node lifecycle controller
        stops evicting in a full disruption. Endpoints still follow readiness.
        """
        now = self.clock() if now is None else now
        everyone = {name: self.liveness(name, now) for name in self.agents}
        if len(everyone) > 1 and not any(live.ready for live in everyone.values()):
            return {name: Liveness(ready=False, lost=False) for name in everyone}
        return everyone

    def _status(self, name: str) -> WasmAgentStatus:
        agent = self.agents.get(name)
        return agent.status if agent is not None and agent.status is not None else _NO_STATUS

    def address(self, name: str) -> str:
        return self._status(name).address

    def instance(self, name: str) -> str:
        return self._status(name).instance

    def architecture(self, name: str) -> str:
        """The CPU the node's replicas run on: what its agent reports of its own platform.

        The Node's ``kubernetes.io/arch`` label stands in only until the agent has reported;
        a label that disagrees with the agent is wrong about where code runs (the agent
        reports it in its ``ArchitectureMatchesNode`` condition), so it never decides.
        """
        reported = self._status(name).architecture
        if reported:
            return reported
        labels = (self.nodes.get(name, {}).get("metadata") or {}).get("labels") or {}
        return str(labels.get(ARCH_LABEL, ""))

    def node_infos(self, now: float | None = None) -> list[NodeInfo]:
        now = self.clock() if now is None else now
        load = Counter(self.binding_nodes.values())
        liveness = self.liveness_all(now)
        infos = []
        for name, agent in sorted(self.agents.items()):
            node = self.nodes.get(name, {})
            labels = dict((node.get("metadata") or {}).get("labels") or {})
            arch = self.architecture(name)
            if arch:  # a nodeSelector on the label means the CPU too
                labels[ARCH_LABEL] = arch
            node_spec = node.get("spec") or {}
            taints = tuple(
                Taint(
                    key=str(t.get("key", "")),
                    value=str(t.get("value", "")),
                    effect=str(t.get("effect", "NoSchedule")),
                )
                for t in node_spec.get("taints") or []
            )
            live = liveness[name]
            infos.append(
                NodeInfo(
                    name=name,
                    arch=arch,
                    labels=labels,
                    taints=taints,
                    ready=live.ready,
                    lost=live.lost,
                    schedulable=not (agent.spec.unschedulable or node_spec.get("unschedulable")),
                    capacity=self._status(name).capacity.services,
                    allocated=load[name],
                )
            )
        return infos
