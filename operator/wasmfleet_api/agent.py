"""`WasmAgent`: what a node agent tells the operator about its node.

Each agent publishes one cluster-scoped WasmAgent named after its node, with what the
scheduler needs (architecture, capacity, address, versions). Liveness is a separate,
cheap heartbeat: a coordination.k8s.io Lease the agent renews, so a heartbeat never rewrites
this object or wakes the operator's watch on it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from wasmfleet_api.base import Condition, CrdInfo, KubeModel, KubeObject, PrinterColumn

__all__ = ["AgentCapacity", "WasmAgent", "WasmAgentSpec", "WasmAgentStatus"]


class WasmAgentSpec(KubeModel):
    """Operator-facing settings of one agent."""

    node_name: str = Field(min_length=1, max_length=253)
    """Node this agent runs on; WasmBindings name it in spec.nodeName."""
    unschedulable: bool = False
    """If true, no new replicas are placed here (existing ones stay), like a cordoned node."""
    lease_namespace: str = Field(default="wasmfleet-system", min_length=1, max_length=63)
    """Namespace of the Lease the agent renews as its heartbeat (named after this object)."""


class AgentCapacity(KubeModel):
    """How much an agent can host."""

    services: int = Field(default=256, ge=0)
    """Most replicas the agent hosts at once."""
    memory: int = Field(default=0, ge=0)
    """Bytes of memory available for module instances (0: not reported)."""


class WasmAgentStatus(KubeModel):
    """What the agent observed about itself."""

    architecture: str = ""
    """CPU architecture, as Kubernetes names it (amd64, arm64)."""
    os: str = ""
    """Operating system (linux)."""
    agent_version: str = ""
    """Version of the Wasmfleet agent."""
    wasmtime_version: str = ""
    """Version of wasmtime that compiles and runs modules here."""
    address: str = ""
    """IP address replicas on this node are served on."""
    capacity: AgentCapacity = Field(default_factory=AgentCapacity)
    """What the agent can host."""
    allocated: int = 0
    """Replicas the agent hosts now."""
    lease_duration_seconds: int = Field(default=20, ge=1)
    """How long a heartbeat is valid; the agent renews its Lease well within it."""
    instance: str = Field(default="", max_length=64)
    """This run of the agent, new at every start. A binding's status counts towards routing
    only when this instance wrote it: what an earlier run reported (a port it listened on)
    is not trusted after a restart."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready and its reason."""


class WasmAgent(KubeObject):
    """A Wasmfleet node agent and the node it serves."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="WasmAgent",
        plural="wasmagents",
        singular="wasmagent",
        scope="Cluster",
        short_names=("wagent",),
        categories=("wasmfleet",),
        printer_columns=(
            PrinterColumn("Node", ".spec.nodeName"),
            PrinterColumn("Arch", ".status.architecture"),
            PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            PrinterColumn("Replicas", ".status.allocated", type="integer"),
            PrinterColumn("Address", ".status.address"),
            PrinterColumn("Wasmtime", ".status.wasmtimeVersion", priority=1),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
        ),
    )

    api_version: Literal["wasmfleet.dev/v1alpha1"] = "wasmfleet.dev/v1alpha1"
    kind: Literal["WasmAgent"] = "WasmAgent"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: WasmAgentSpec
    status: WasmAgentStatus | None = None
