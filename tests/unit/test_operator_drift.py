"""What someone else changed in an object the operator wrote."""

from __future__ import annotations

from typing import Any

from wasmfleet_api.binding import WasmBinding
from wasmfleet_api.wasmservice import WasmService
from wasmfleet_operator.drift import binding_drift, drifted_fields
from wasmfleet_operator.render import render_binding, render_revision

DIGEST = "sha256:" + "b" * 64
OTHER = "sha256:" + "c" * 64


def _service() -> WasmService:
    return WasmService.model_validate(
        {
            "metadata": {"name": "hello", "namespace": "team", "uid": "u-1", "generation": 1},
            "spec": {"module": {"image": "r.example.com/hello:1"}, "http": {}},
        }
    )


def test_fields_the_server_adds_are_no_drift_but_changed_or_missing_ones_are() -> None:
    wanted: dict[str, Any] = {
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "type": "ClusterIP"}
    }
    observed: dict[str, Any] = {
        "spec": {
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
        }
    }
    assert drifted_fields(observed, wanted) == []
    observed["spec"]["ports"][0]["port"] = 81
    assert drifted_fields(observed, wanted) == ["spec.ports[0].port"]
    observed["spec"]["ports"].append({"port": 80, "protocol": "TCP"})
    assert drifted_fields(observed, wanted) == ["spec.ports"]
    assert drifted_fields({}, wanted) == ["spec"]


def test_a_binding_as_rendered_has_not_drifted() -> None:
    service = _service()
    revision = render_revision(service.spec.workload(), DIGEST)
    binding = render_binding(service, node="n1", revision=revision, digest=DIGEST)
    assert binding_drift(binding, binding) == []
    assert binding_drift(binding, None) == []


def test_an_edited_digest_is_drift_even_without_the_desired_spec() -> None:
    service = _service()
    revision = render_revision(service.spec.workload(), DIGEST)
    binding = render_binding(service, node="n1", revision=revision, digest=DIGEST)
    wire = binding.to_kube()
    wire["spec"]["digest"] = OTHER
    edited = WasmBinding.model_validate(wire)
    assert binding_drift(edited, None) == ["spec (no longer the spec of its revision)"]
    assert "spec.digest" in binding_drift(edited, binding)
    wire["spec"]["workload"]["module"]["image"] = "elsewhere.example.com/x:1"
    edited = WasmBinding.model_validate(wire)
    assert "spec.workload.module.image" in binding_drift(edited, binding)
