"""The examples are valid WasmServices, and the models refuse what the CRD refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from wasmfleet_api.wasmservice import WasmService

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*/wasmservice.yaml"))


def _wasmservices(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "WasmService"]


def test_there_are_examples_for_rust_go_c_a_job_and_every_capability() -> None:
    names = {p.parent.name for p in EXAMPLES}
    assert {"hello-rust", "hello-go", "hello-c", "greeter", "wordcount-job"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_an_example_parses_and_dumps_back_to_the_same_manifest(path: Path) -> None:
    for document in _wasmservices(path):
        service = WasmService.model_validate(document)
        assert WasmService.model_validate(service.to_kube()) == service
        dumped = service.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert dumped == document


def test_a_service_gets_the_documented_defaults() -> None:
    service = WasmService.model_validate(
        {"metadata": {"name": "x"}, "spec": {"module": {"image": "r/x:1"}, "http": {}}}
    )
    assert service.spec.replicas == 1
    assert service.spec.module.pull_policy == "IfNotPresent"
    assert service.spec.http is not None
    assert (service.spec.http.port, service.spec.http.timeout) == (80, "30s")
    assert service.spec.resources.memory == "64Mi"
    assert (service.spec.strategy.max_surge, service.spec.strategy.max_unavailable) == (1, 0)


def test_an_unknown_field_is_refused_by_the_models_too() -> None:
    with pytest.raises(ValidationError, match="replica"):
        WasmService.model_validate(
            {"spec": {"module": {"image": "r/x:1"}, "http": {}, "replica": 2}}
        )


@pytest.mark.parametrize(
    ("name", "mode"),
    [("a.b", "http"), ("1st", "http"), ("Upper", "http"), ("x" * 64, "job")],
)
def test_the_models_refuse_a_name_the_operator_could_not_write_objects_under(
    name: str, mode: str
) -> None:
    # The CRD refuses these at admission; an object stored before that rule gets InvalidSpec.
    with pytest.raises(ValidationError, match=r"metadata\.name"):
        WasmService.model_validate(
            {"metadata": {"name": name}, "spec": {"module": {"image": "r/x:1"}, mode: {}}}
        )


def test_a_job_may_have_a_dotted_name() -> None:
    service = WasmService.model_validate(
        {"metadata": {"name": "nightly.report"}, "spec": {"module": {"image": "r/x:1"}, "job": {}}}
    )
    assert service.spec.job is not None
