"""The building blocks every Wasmfleet API type is made of.

`KubeModel` gives the Kubernetes conventions (camelCase JSON, field docs from attribute
docstrings, unknown fields refused); `rule` and `schema` attach the OpenAPI and CEL facts the
CRD generator copies into the schema; `CrdInfo` says how a kind is served (names, scope,
printer columns, subresources). A type declared here is therefore its own documentation,
validation and Kubernetes schema at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from wasmfleet_api.units import DURATION_PATTERN, QUANTITY_PATTERN

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "CrdInfo",
    "Duration",
    "KubeModel",
    "LocalObjectReference",
    "PrinterColumn",
    "Quantity",
    "Rule",
    "bounded_duration",
    "bounded_quantity",
    "rule",
    "schema",
]

GROUP = "wasmfleet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Rule:
    """One CEL validation rule (``x-kubernetes-validations``) with a message for people."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def render(self) -> dict[str, str]:
        rendered = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            rendered["fieldPath"] = self.field_path
        if self.reason is not None:
            rendered["reason"] = self.reason
        return rendered


def rule(cel: str, message: str, *, field_path: str | None = None) -> dict[str, Any]:
    """Schema extra that adds one CEL rule; combine several with `schema`."""
    return {"x-kubernetes-validations": [Rule(cel, message, field_path).render()]}


def schema(*extras: dict[str, Any], **keywords: Any) -> dict[str, Any]:
    """Merges schema extras: CEL rule lists are concatenated, other keys set as given.

    Keyword names are written in Python style and become the OpenAPI/Kubernetes keys:
    ``list_type="map"`` -> ``x-kubernetes-list-type``, ``list_map_keys`` ->
    ``x-kubernetes-list-map-keys``, ``preserve_unknown_fields`` ->
    ``x-kubernetes-preserve-unknown-fields``.
    """
    kube_keys = {
        "list_type": "x-kubernetes-list-type",
        "list_map_keys": "x-kubernetes-list-map-keys",
        "map_type": "x-kubernetes-map-type",
        "preserve_unknown_fields": "x-kubernetes-preserve-unknown-fields",
    }
    merged: dict[str, Any] = {}
    for extra in extras:
        for key, value in extra.items():
            if key == "x-kubernetes-validations":
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    for key, value in keywords.items():
        merged[kube_keys.get(key, key)] = value
    return merged


class KubeModel(BaseModel):
    """Base of every API type: camelCase on the wire, docstrings as field descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )

    def to_kube(self, *, only_set: bool = False) -> dict[str, Any]:
        """The object as Kubernetes JSON: aliases, and no field left at None.

        With ``only_set``, only the fields it was built with: a server-side apply owns every
        field it sends, so a writer that shares an object sends what it sets, not defaults.
        """
        return self.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude_unset=only_set
        )


def _duration_rule(minimum: str, maximum: str) -> dict[str, Any]:
    return rule(
        f"self.matches(r'{DURATION_PATTERN}') && duration(self) >= duration('{minimum}') "
        f"&& duration(self) <= duration('{maximum}')",
        f"must be a duration between {minimum} and {maximum}, such as 30s, 1m30s or 250ms",
    )


def bounded_duration(minimum: str, maximum: str) -> dict[str, Any]:
    """`Field` keywords for a duration (``30s``) kept within [minimum, maximum] at admission."""
    return {"json_schema_extra": _duration_rule(minimum, maximum), "max_length": 32}


Duration = Annotated[str, Field(max_length=32)]


def bounded_quantity(minimum: str, maximum: str) -> dict[str, Any]:
    """`Field` keywords for a quantity (``64Mi`` or an integer) kept within [minimum, maximum].

    A string must also be spelled as `parse_quantity` reads it: Kubernetes alone would let
    ``1e6``, ``+1Mi`` or ``1.Mi`` through, which the agents could not honour.
    """
    low, high = f"quantity('{minimum}')", f"quantity('{maximum}')"
    return {
        "json_schema_extra": rule(
            f"type(self) == int ? (self >= {low}.asInteger() && self <= {high}.asInteger()) : "
            f"(self.matches(r'{QUANTITY_PATTERN}') && isQuantity(self) "
            f"&& quantity(self).isInteger() "
            f"&& quantity(self).compareTo({low}) >= 0 && quantity(self).compareTo({high}) <= 0)",
            f"must be a quantity between {minimum} and {maximum}: digits with an optional "
            "Ki, Mi, Gi, Ti, k, M, G or T, such as 64Mi or 1Gi",
        )
        | {"maxLength": 32},
    }


Quantity = int | str


class LocalObjectReference(KubeModel):
    """A reference to an object by name in the same namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the referenced object."""


class Condition(KubeModel):
    """The standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316)
    """Type of condition, in CamelCase: Ready, Progressing, Degraded."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(default="", max_length=1024)
    """A CamelCase word for why the condition last changed, e.g. AllReplicasReady."""
    message: str = Field(default="", max_length=32768)
    """A sentence for people with the details of the last transition."""
    last_transition_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}
    )
    """When the condition last changed status."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation this condition was computed from."""


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get``."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def render(self) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
        }
        if self.description:
            rendered["description"] = self.description
        if self.priority:
            rendered["priority"] = self.priority
        return rendered


@dataclass(frozen=True)
class CrdInfo:
    """How a kind is served: its names, scope, columns and subresources."""

    kind: str
    plural: str
    singular: str
    scope: Literal["Namespaced", "Cluster"]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[PrinterColumn, ...] = ()
    status_subresource: bool = True
    scale: dict[str, str] | None = None
    selectable_fields: tuple[str, ...] = ()
    name_max_length: int | None = None
    """Longest ``metadata.name`` (the API server's own limit is 253)."""
    rules: tuple[Rule, ...] = ()
    """CEL rules on the whole object: the only place a rule can read ``metadata.name``."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


class KubeObject(KubeModel):
    """Marker base of the top-level kinds; each declares its `CrdInfo` as ``crd``."""

    crd: ClassVar[CrdInfo]
