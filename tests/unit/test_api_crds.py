"""The CRDs are rendered from the API types, structurally sound, and committed as rendered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from wasmfleet_api import crdgen
from wasmfleet_api.base import KubeObject

REPO = Path(__file__).resolve().parents[2]


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("folder", ["crds", "charts/wasmfleet/crds"])
@pytest.mark.parametrize("name", sorted(crdgen.render_all()))
def test_the_committed_crd_is_exactly_what_the_generator_writes(name: str, folder: str) -> None:
    committed = (REPO / folder / name).read_text()
    assert committed == crdgen.render_all()[name], f"{folder}/{name} is stale: run `make crds`"


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.crd.kind)
def test_a_schema_is_structural(kind: type[KubeObject]) -> None:
    root = crdgen.render_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "title", "$defs"):
            assert forbidden not in node, f"{path} has {forbidden}"
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.crd.kind)
def test_every_spec_and_status_field_is_described_for_kubectl_explain(
    kind: type[KubeObject],
) -> None:
    root = crdgen.render_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        for path, node in _walk(root["properties"][part], part):
            if not path.endswith("[]") and not path.endswith("{}"):
                assert node.get("description"), f"{kind.crd.kind} {path} has no description"


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[type[BaseModel]]:
    if model in seen:
        return
    seen.add(model)
    yield model
    for field in model.model_fields.values():
        for candidate in _annotation_models(field.annotation):
            yield from _models(candidate, seen)


def _annotation_models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _annotation_models(arg)


def test_every_field_of_every_api_type_has_a_docstring() -> None:
    seen: set[type[BaseModel]] = set()
    undocumented = []
    for kind in crdgen.KINDS:
        for name in ("spec", "status"):
            for model in _annotation_models(kind.model_fields[name].annotation):
                for found in _models(model, seen):
                    undocumented += [
                        f"{found.__name__}.{field_name}"
                        for field_name, field in found.model_fields.items()
                        if not field.description
                    ]
    assert undocumented == []


def test_the_wasmservice_crd_has_the_columns_scale_and_names_people_use() -> None:
    crd = crdgen.render_crd(crdgen.KINDS[0])
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Ready",
        "Status",
        "Digest",
        "URL",
        "Age",
    ]
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    assert "wasm" in crd["spec"]["names"]["categories"]
    assert crd["spec"]["names"]["shortNames"]


def test_crds_parse_as_yaml_documents_with_one_object_each() -> None:
    for name, text in crdgen.render_all().items():
        documents = list(yaml.safe_load_all(text))
        assert len(documents) == 1, name
        assert documents[0]["kind"] == "CustomResourceDefinition"


def test_the_committed_api_reference_is_exactly_what_the_generator_writes() -> None:
    from wasmfleet_api.docgen import render_reference

    committed = (REPO / "docs" / "api.md").read_text()
    assert committed == render_reference(), "docs/api.md is stale: run `make crds`"
