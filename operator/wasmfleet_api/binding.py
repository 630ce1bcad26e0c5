"""`WasmBinding`: one replica of one service revision, assigned to one node.

The operator writes a binding for every (service, node, revision) it places, owned by the
WasmService so that deleting the service removes its bindings. A binding carries everything an
agent needs to run the module, with the module pinned by digest, so an agent never needs to
read the WasmService itself. The agent reports the replica's lifecycle in the status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field

from wasmfleet_api.base import Condition, CrdInfo, KubeModel, KubeObject, PrinterColumn, rule
from wasmfleet_api.workload import WorkloadSpec

__all__ = [
    "BINDING_PHASES",
    "STALE_CONFIGURATION_REASON",
    "BindingCondition",
    "BindingPhase",
    "ModuleInfo",
    "ModuleKind",
    "WasmBinding",
    "WasmBindingSpec",
    "WasmBindingStatus",
]


class BindingPhase(StrEnum):
    """Where a replica is in its lifecycle: the one vocabulary of the agent's state machine
    (`wasmfleet_agent.lifecycle`), the binding's ``status.phase`` and the operator's view."""

    PENDING = "Pending"
    PULLING = "Pulling"
    PULL_BACKOFF = "PullBackOff"
    COMPILING = "Compiling"
    READY = "Ready"
    CRASH_LOOP_BACKOFF = "CrashLoopBackOff"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TERMINATING = "Terminating"

    @property
    def ready(self) -> bool:
        """Whether a replica in this phase serves (http) or runs (job)."""
        return self in (BindingPhase.READY, BindingPhase.RUNNING, BindingPhase.SUCCEEDED)

    @property
    def failing(self) -> bool:
        """Whether this phase is a failure the replica backs off from (or ends in)."""
        return self in (
            BindingPhase.PULL_BACKOFF,
            BindingPhase.CRASH_LOOP_BACKOFF,
            BindingPhase.FAILED,
        )


BINDING_PHASES: tuple[str, ...] = tuple(phase.value for phase in BindingPhase)


class BindingCondition(StrEnum):
    """The conditions an agent reports on a binding when its phase does not say enough: the
    agent writes them and the operator reads them, so both use these names."""

    FAILING = "Failing"
    """True while the replica fails or is retried after a failure; the reason is the failing
    phase (PullBackOff, CrashLoopBackOff, Failed), kept until the replica is ready again."""
    CONFIGURATION_CURRENT = "ConfigurationCurrent"
    """False while a ready replica serves its last good configuration because a ConfigMap or
    Secret it reads cannot be read; the message says why."""


STALE_CONFIGURATION_REASON = "SourceUnreadable"
"""The reason of ConfigurationCurrent=False."""

_DIGEST_RULE = rule(
    "self.matches(r'^sha256:[a-f0-9]{64}$')", "must be a sha256 digest: sha256:<64 hex digits>"
)


class WasmBindingSpec(KubeModel):
    """What one node runs for one revision of one service."""

    service_name: str = Field(min_length=1, max_length=253)
    """Name of the WasmService (same namespace) this replica belongs to."""
    node_name: str = Field(min_length=1, max_length=253)
    """Node whose agent runs this replica."""
    revision: str = Field(min_length=1, max_length=63)
    """Revision of the service this replica runs."""
    digest: str = Field(max_length=71, json_schema_extra=_DIGEST_RULE)
    """Digest of the module manifest, resolved by the operator; agents pull exactly this."""
    workload: WorkloadSpec
    """The module and everything it may see, copied from the service's spec."""


class ModuleKind(StrEnum):
    """Whether a module is a core WebAssembly module or a component."""

    MODULE = "Module"
    COMPONENT = "Component"


class ModuleInfo(KubeModel):
    """What the module is, as the agent that loaded it found it."""

    kind: ModuleKind
    """Module (a WASI preview 1 core module) or Component (a WASI 0.2 component)."""
    world: str = Field(max_length=256)
    """The world it runs as: `wasi_snapshot_preview1 command` for a module, the WIT world
    with its version for a component (for example `wasi:cli/command@0.2.6`)."""


class WasmBindingStatus(KubeModel):
    """The replica as its agent sees it."""

    observed_generation: int | None = None
    """The .metadata.generation the agent last acted on."""
    phase: BindingPhase = BindingPhase.PENDING
    """Lifecycle phase of the replica."""
    ready: bool = False
    """Whether the replica serves requests (http) or is running (job)."""
    address: str | None = None
    """IP address the agent serves the replica on."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Port the agent serves the replica on."""
    module_digest: str | None = None
    """Digest of the Wasm module bytes (the layer), once pulled."""
    module: ModuleInfo | None = None
    """What the module is, once loaded."""
    restarts: int = 0
    """Times the replica failed and was started again."""
    last_error: str | None = Field(default=None, max_length=4096)
    """The latest failure, for people."""
    exit_code: int | None = None
    """Exit code of the latest run (job mode)."""
    conditions: list[Condition] = Field(default_factory=list)
    """Detailed conditions, when the phase is not enough."""
    agent_instance: str | None = Field(default=None, max_length=64)
    """The run of the agent that wrote this status (its WasmAgent's status.instance)."""

    def _condition(self, type_: BindingCondition, status: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_ and c.status == status), None)

    @property
    def failure(self) -> str | None:
        """The failing phase the replica is in or is retried after (`BindingCondition.FAILING`)."""
        condition = self._condition(BindingCondition.FAILING, "True")
        return (condition.reason or None) if condition is not None else None

    @property
    def stale_configuration(self) -> str | None:
        """Why the replica serves its last good configuration, when it does."""
        condition = self._condition(BindingCondition.CONFIGURATION_CURRENT, "False")
        return (condition.message or None) if condition is not None else None


class WasmBinding(KubeObject):
    """One replica of a WasmService revision, assigned to a node."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="WasmBinding",
        plural="wasmbindings",
        singular="wasmbinding",
        scope="Namespaced",
        short_names=("wbind",),
        categories=("wasmfleet",),
        printer_columns=(
            PrinterColumn("Service", ".spec.serviceName"),
            PrinterColumn("Node", ".spec.nodeName"),
            PrinterColumn("Revision", ".spec.revision"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Ready", ".status.ready", type="boolean"),
            PrinterColumn("Restarts", ".status.restarts", type="integer"),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
            PrinterColumn("Error", ".status.lastError", priority=1),
        ),
        selectable_fields=(".spec.nodeName", ".spec.serviceName"),
    )

    api_version: Literal["wasmfleet.dev/v1alpha1"] = "wasmfleet.dev/v1alpha1"
    kind: Literal["WasmBinding"] = "WasmBinding"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: WasmBindingSpec
    status: WasmBindingStatus | None = None
