"""The Argo CD health check: the ConfigMap embeds the script, and edge cases read right.

The states a running system produces are judged on live objects in
e2e/tests/test_operator.py; these are the shapes a live run rarely shows.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from wasmfleet_harness.argocd import HEALTH_SCRIPT, argocd_health
from wasmfleet_harness.binaries import REPO_ROOT


def test_the_argocd_configmap_embeds_exactly_the_script() -> None:
    document = yaml.safe_load((REPO_ROOT / "docs" / "gitops" / "argocd-cm.yaml").read_text())
    embedded = document["data"]["resource.customizations.health.wasmfleet.dev_WasmService"]
    assert embedded == HEALTH_SCRIPT.read_text()


def _service(
    status: dict[str, Any] | None, *, replicas: int | None = 2, generation: int = 3
) -> dict[str, Any]:
    spec: dict[str, Any] = {"module": {"image": "r/x:1"}, "http": {}}
    if replicas is not None:
        spec["replicas"] = replicas
    obj: dict[str, Any] = {"metadata": {"name": "x", "generation": generation}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def _condition(kind: str, value: str, reason: str = "R", message: str = "m") -> dict[str, str]:
    return {"type": kind, "status": value, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (_service(None), "Progressing"),
        (_service({"observedGeneration": 2}), "Progressing"),  # an older generation
        (_service({"observedGeneration": 3}), "Progressing"),  # no conditions yet
        (_service({"observedGeneration": 3, "conditions": []}, replicas=0), "Suspended"),
        (
            _service(
                {"observedGeneration": 3, "conditions": [_condition("Ready", "True")]},
                replicas=None,
            ),
            "Healthy",
        ),
        (
            _service(
                {
                    "observedGeneration": 3,
                    "conditions": [
                        _condition("Ready", "True"),
                        _condition("Degraded", "True", "CrashLooping", "1 replica failing"),
                    ],
                }
            ),
            "Degraded",
        ),
    ],
)
def test_edge_cases(obj: dict[str, Any], expected: str) -> None:
    status, message = argocd_health(obj)
    assert status == expected
    assert message
