"""`WasmService`: the user-facing kind, what people write in Git and see in ``kubectl get``."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from wasmfleet_api.base import (
    Condition,
    CrdInfo,
    KubeModel,
    KubeObject,
    PrinterColumn,
    Rule,
    rule,
    schema,
)
from wasmfleet_api.binding import ModuleInfo
from wasmfleet_api.workload import WorkloadSpec

__all__ = [
    "ARCHITECTURES",
    "HTTP_NAME_PATTERN",
    "NAME_MAX_LENGTH",
    "Architecture",
    "Placement",
    "PlacementStatus",
    "RollingUpdate",
    "Spread",
    "Toleration",
    "WasmService",
    "WasmServiceSpec",
    "WasmServiceStatus",
]

Architecture = Literal["amd64", "arm64"]
ARCHITECTURES: tuple[Architecture, ...] = ("amd64", "arm64")

# A service's name is the value of the label on everything it owns (at most 63 characters),
# and an http service's name is also its Kubernetes Service's (an RFC 1035 DNS label).
NAME_MAX_LENGTH = 63
HTTP_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_NAME_TOO_LONG = (
    f"must be at most {NAME_MAX_LENGTH} characters: it labels every object the service owns"
)
_HTTP_NAME = (
    "an http service's name must be a DNS label (lower-case letters, digits and '-', starting "
    "with a letter): it is also the name of its Kubernetes Service"
)

_INT_OR_PERCENT = rule(
    "type(self) == int ? self >= 0 : self.matches(r'^[0-9]{1,3}%$')",
    "must be a non-negative integer or a percentage such as 25%",
)


class Toleration(KubeModel):
    """Lets replicas go to nodes with a matching taint (Kubernetes Toleration shape)."""

    model_config = ConfigDict(
        json_schema_extra=schema(
            rule(
                "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
            ),
            rule(
                "has(self.key) && self.key != '' || self.operator == 'Exists'",
                "an empty key matches every taint and needs operator Exists",
            ),
        )
    )

    key: str | None = Field(default=None, max_length=316)
    """Taint key to match; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Equal matches key and value; Exists matches any value of the key."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches every effect."""


class Spread(KubeModel):
    """How evenly replicas are spread over a topology (by default, over nodes)."""

    max_skew: int = Field(default=1, ge=1, le=1000)
    """Largest allowed difference in replica count between two topology domains."""
    topology_key: str = Field(default="kubernetes.io/hostname", min_length=1, max_length=316)
    """Node label whose values are the topology domains."""
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = "ScheduleAnyway"
    """DoNotSchedule leaves a replica unplaced rather than exceed maxSkew."""


class Placement(KubeModel):
    """Which nodes may run the replicas."""

    architectures: list[Architecture] = Field(
        default_factory=list, max_length=2, json_schema_extra=schema(list_type="set")
    )
    """CPU architectures allowed (amd64, arm64); empty allows every architecture."""
    node_selector: dict[str, str] = Field(
        default_factory=dict, json_schema_extra={"maxProperties": 64}
    )
    """Node labels a node must have, as in a Pod's nodeSelector."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the replicas tolerate."""
    spread: Spread | None = None
    """Spread constraint; unset places replicas where capacity is."""


class RollingUpdate(KubeModel):
    """How a new revision replaces the old one."""

    model_config = ConfigDict(
        json_schema_extra=rule(
            "!((!has(self.maxSurge) || self.maxSurge == 0 || self.maxSurge == '0%') "
            "&& (has(self.maxUnavailable) && (self.maxUnavailable == 0 "
            "|| self.maxUnavailable == '0%') || !has(self.maxUnavailable)))",
            "maxSurge and maxUnavailable cannot both be zero: the rollout could never progress",
        )
    )

    max_surge: int | str = Field(default=1, json_schema_extra=_INT_OR_PERCENT)
    """Replicas above the desired count allowed during a rollout (integer or percentage)."""
    max_unavailable: int | str = Field(default=0, json_schema_extra=_INT_OR_PERCENT)
    """Replicas below the desired count allowed during a rollout (integer or percentage)."""

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _int_or_percent(cls, value: int | str) -> int | str:
        # The CRD's rule, again here: the operator must refuse what it could not honour even
        # when an object reached it without that rule (an older CRD, a hand-made binding).
        if isinstance(value, int) and value >= 0:
            return value
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,3}%", value):
            return value
        raise ValueError("must be a non-negative integer or a percentage such as 25%")

    @model_validator(mode="after")
    def _can_progress(self) -> RollingUpdate:
        if self.max_surge in (0, "0%") and self.max_unavailable in (0, "0%"):
            raise ValueError(
                "maxSurge and maxUnavailable cannot both be zero: the rollout could never progress"
            )
        return self


class WasmServiceSpec(WorkloadSpec):
    """The desired state of a WasmService."""

    replicas: int = Field(default=1, ge=0, le=10000)
    """Number of replicas (one per node at most); 0 keeps the service but runs nothing."""
    placement: Placement = Field(default_factory=Placement, json_schema_extra={"default": {}})
    """Which nodes may run the replicas."""
    strategy: RollingUpdate = Field(
        default_factory=RollingUpdate,
        json_schema_extra={"default": {"maxSurge": 1, "maxUnavailable": 0}},
    )
    """How updates roll out."""

    def workload(self) -> WorkloadSpec:
        """What every replica runs: this spec without its replica count, placement and
        rollout strategy (a binding carries exactly this)."""
        return WorkloadSpec.model_validate(self.model_dump(include=set(WorkloadSpec.model_fields)))


class PlacementStatus(KubeModel):
    """One replica: where it runs and how it is doing."""

    node: str
    """Node (agent) the replica is bound to."""
    arch: str = ""
    """CPU architecture of that node."""
    revision: str = ""
    """Revision of the service the replica runs."""
    phase: str = ""
    """Lifecycle phase reported by the agent: Pending, Pulling, PullBackOff, Compiling,
    Ready, CrashLoopBackOff, Terminating, Succeeded or Failed."""
    ready: bool = False
    """Whether the replica is serving."""
    message: str = ""
    """Why the replica is not ready, if it is not."""


class WasmServiceStatus(KubeModel):
    """The observed state of a WasmService, written by the operator."""

    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    digest: str | None = None
    """Digest of the module the current revision runs (sha256:...)."""
    resolved_from: str | None = None
    """The module reference (and re-resolve request) the digest was resolved from; the tag is
    resolved again when either changes."""
    short_digest: str | None = None
    """The first 12 hex digits of the digest, for display."""
    revision: str | None = None
    """Current revision: a hash of everything that, changed, needs a rollout."""
    replicas: int = 0
    """Replicas that exist, of every revision."""
    ready_replicas: int = 0
    """Replicas that are serving."""
    updated_replicas: int = 0
    """Replicas that run the current revision."""
    ready: str | None = None
    """Ready replicas over desired replicas, e.g. 2/3."""
    url: str | None = None
    """In-cluster address of the service (http only)."""
    allowed_outbound_hosts: list[str] = Field(default_factory=list)
    """The origins the service's wasi:http guests may send requests to, as its agents enforce
    them (``scheme://host:port``); empty: none."""
    selector: str | None = None
    """Label selector of this service's bindings (for the scale subresource)."""
    module: ModuleInfo | None = None
    """What the current revision's module is (a module or a component, and its world), as
    its agents found it when they loaded it."""
    placements: list[PlacementStatus] = Field(default_factory=list)
    """Every replica and where it runs."""
    conditions: list[Condition] = Field(
        default_factory=list, json_schema_extra=schema(list_type="map", list_map_keys=["type"])
    )
    """Ready, Progressing and Degraded, with reasons."""


class WasmService(KubeObject):
    """A WebAssembly microservice: a module from an OCI registry, run on Wasmfleet agents."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="WasmService",
        plural="wasmservices",
        singular="wasmservice",
        scope="Namespaced",
        short_names=("wsvc", "wasmsvc"),
        categories=("wasm", "wasmfleet"),
        printer_columns=(
            PrinterColumn("Ready", ".status.ready", description="Ready over desired replicas"),
            PrinterColumn(
                "Status",
                '.status.conditions[?(@.type=="Ready")].reason',
                description="Why the service is or is not ready",
            ),
            PrinterColumn("Digest", ".status.shortDigest", description="Module digest, shortened"),
            PrinterColumn("URL", ".status.url", description="In-cluster URL"),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
            PrinterColumn("Image", ".spec.module.image", priority=1),
        ),
        scale={
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
        name_max_length=NAME_MAX_LENGTH,
        rules=(
            Rule(
                f"!has(self.spec.http) || self.metadata.name.matches(r'{HTTP_NAME_PATTERN}')",
                _HTTP_NAME,
                field_path=".metadata.name",
            ),
        ),
    )

    api_version: Literal["wasmfleet.dev/v1alpha1"] = "wasmfleet.dev/v1alpha1"
    kind: Literal["WasmService"] = "WasmService"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: WasmServiceSpec
    status: WasmServiceStatus | None = None

    @model_validator(mode="after")
    def _name_fits(self) -> WasmService:
        # The CRD's rules, again here (as for RollingUpdate): an object stored before them gets
        # an InvalidSpec condition instead of a reconcile pass that fails on every retry.
        name = self.metadata.get("name")
        if not isinstance(name, str):
            return self
        if len(name) > NAME_MAX_LENGTH:
            raise ValueError(f"metadata.name {_NAME_TOO_LONG}")
        if self.spec.http is not None and not re.fullmatch(HTTP_NAME_PATTERN, name):
            raise ValueError(f"metadata.name: {_HTTP_NAME}")
        return self
