"""Which workloads the agent must keep re-reading: only those that name ConfigMaps or Secrets."""

from __future__ import annotations

from typing import Any

import pytest

from wasmfleet_agent.cluster.config import reads_objects
from wasmfleet_api.workload import WorkloadSpec

IMAGE = {"image": "registry.example/team/web:1"}


def _workload(**fields: Any) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"module": IMAGE, "http": {}, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"env": [{"name": "A", "value": "1"}]}, False),
        ({"files": [{"mountPath": "/tmp", "writable": True, "emptyDir": {}}]}, False),
        ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, True),
        (
            {"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
            True,
        ),
        ({"files": [{"mountPath": "/c", "configMap": {"name": "c"}}]}, True),
        ({"files": [{"mountPath": "/s", "secret": {"name": "s"}}]}, True),
        ({"module": {**IMAGE, "pullSecrets": [{"name": "p"}]}}, True),
    ],
)
def test_only_named_objects_are_polled(fields: dict[str, Any], expected: bool) -> None:
    assert reads_objects(_workload(**fields)) is expected
