"""Renders the CustomResourceDefinitions from the API types: the only way ``crds/`` is written.

pydantic's JSON Schema is close to what Kubernetes wants but not the same: Kubernetes needs a
*structural* schema (no ``$ref``, no ``anyOf`` with null, no titles, every node typed), and
spells int-or-string, list types and CEL rules with ``x-kubernetes-*`` keys. `render_schema`
does that translation; `render_crd` adds names, columns and subresources from the kind's
`CrdInfo`. ``python -m wasmfleet_api.crdgen`` writes ``crds/``; a unit test fails when the
committed files differ from what this module renders.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from wasmfleet_api.agent import WasmAgent
from wasmfleet_api.base import GROUP, VERSION, CrdInfo, KubeObject
from wasmfleet_api.binding import WasmBinding
from wasmfleet_api.wasmservice import WasmService

__all__ = ["KINDS", "render_all", "render_crd", "render_schema", "render_yaml", "write_all"]

KINDS: tuple[type[KubeObject], ...] = (WasmService, WasmBinding, WasmAgent)
_REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = _REPO / "crds"
CHART_OUTPUT = _REPO / "charts" / "wasmfleet" / "crds"
"""The Helm chart carries the same CRDs (Helm installs its crds/ before anything else)."""

# Keys copied from pydantic's schema as they are, in this order (a tuple: set order would
# vary between runs); everything else is translated or dropped.
_KEPT = (
    "type",
    "format",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "default",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
)


def _description(text: str) -> str:
    """Docstrings wrap at the code's line width; descriptions read better as one paragraph."""
    return " ".join(inspect.cleandoc(text).replace("``", "`").split())


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inlines ``$ref``/single ``allOf`` and collapses optional (``anyOf`` with null)."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_resolve(node.pop("allOf")[0], defs), **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        types = sorted(o.get("type", "") for o in options)
        if len(options) == 1:
            node = {**_resolve(options[0], defs), **node}
        elif types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
        else:
            raise ValueError(f"cannot express anyOf {options} in a structural schema")
    if node.get("default", ...) is None:
        del node["default"]
    return node


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if "description" in node:
        out["description"] = _description(node["description"])
    for key in _KEPT:
        if key in node:
            out[key] = node[key]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: _structural(child, defs) for name, child in node["properties"].items()
        }
        if node.get("required"):
            out["required"] = list(node["required"])
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["type"] = "object"
        out["additionalProperties"] = _structural(additional, defs)
    if "items" in node:
        out["type"] = "array"
        out["items"] = _structural(node["items"], defs)
    # An empty list or map default would make the server write `x: []` into every object.
    if out.get("default") in ([], {}) and out.get("type") == "array":
        del out["default"]
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    return dict(sorted(out.items(), key=lambda kv: _KEY_ORDER.get(kv[0], 50)))  # stable sort


# Stable, readable key order in the YAML: description first, nested properties last.
_KEY_ORDER = {
    "description": 0,
    "type": 1,
    "enum": 2,
    "default": 3,
    "x-kubernetes-validations": 80,
    "properties": 90,
    "items": 91,
    "required": 92,
}


def render_schema(model: type[Any]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, with CEL rules kept."""
    document = model.model_json_schema(by_alias=True, mode="validation")
    defs = document.pop("$defs", {})
    return _structural(document, defs)


def render_crd(kind: type[KubeObject]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    info = kind.crd
    fields = kind.model_fields
    spec_model: type[Any] = fields["spec"].annotation  # type: ignore[assignment]
    status_model = _optional_inner(fields["status"].annotation)
    root: dict[str, Any] = {
        "description": _description(kind.__doc__ or info.kind),
        "type": "object",
        "required": ["spec"],
        **(
            {"x-kubernetes-validations": [dict(sorted(r.render().items())) for r in info.rules]}
            if info.rules
            else {}
        ),
        "properties": {
            "apiVersion": {
                "description": "Versioned schema of this object: wasmfleet.dev/v1alpha1.",
                "type": "string",
            },
            "kind": {"description": f"Kind of this object: {info.kind}.", "type": "string"},
            "metadata": _metadata(info),
            "spec": render_schema(spec_model),
            "status": render_schema(status_model),
        },
    }
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
    }
    subresources: dict[str, Any] = {}
    if info.status_subresource:
        subresources["status"] = {}
    if info.scale is not None:
        subresources["scale"] = dict(info.scale)
    if subresources:
        version["subresources"] = subresources
    if info.printer_columns:
        version["additionalPrinterColumns"] = [c.render() for c in info.printer_columns]
    if info.selectable_fields:
        version["selectableFields"] = [{"jsonPath": p} for p in info.selectable_fields]
    names: dict[str, Any] = {
        "kind": info.kind,
        "listKind": f"{info.kind}List",
        "plural": info.plural,
        "singular": info.singular,
    }
    if info.short_names:
        names["shortNames"] = list(info.short_names)
    if info.categories:
        names["categories"] = list(info.categories)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/part-of": "wasmfleet"},
        },
        "spec": {"group": GROUP, "names": names, "scope": info.scope, "versions": [version]},
    }


def _metadata(info: CrdInfo) -> dict[str, Any]:
    """A CRD's schema may say no more of metadata than its name's (and generateName's) rules."""
    if info.name_max_length is None:
        return {"type": "object"}
    name = {"type": "string", "maxLength": info.name_max_length}
    return {"type": "object", "properties": {"name": name}}


def _optional_inner(annotation: Any) -> Any:
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return args[0] if args else annotation


class _Dumper(yaml.SafeDumper):
    """Block style, long lines kept whole, multi-line strings as literal blocks."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def render_yaml(kind: type[KubeObject]) -> str:
    """The CRD of ``kind`` as the YAML committed in ``crds/``."""
    header = (
        "# Generated by `python -m wasmfleet_api.crdgen` from operator/wasmfleet_api; "
        "do not edit.\n"
    )
    body = yaml.dump(render_crd(kind), Dumper=_Dumper, sort_keys=False, width=100)
    return header + body


def render_all() -> dict[str, str]:
    """File name -> YAML for every kind."""
    return {f"{GROUP}_{kind.crd.plural}.yaml": render_yaml(kind) for kind in KINDS}


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the CRDs rendered from the API types.")
    parser.add_argument(
        "--output", type=Path, action="append", help="directory to write (repeatable)"
    )
    args = parser.parse_args(argv)
    for directory in args.output or [DEFAULT_OUTPUT, CHART_OUTPUT]:
        for path in write_all(directory):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
