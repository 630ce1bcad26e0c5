"""Reading and writing WasmServices with kubectl, and waiting for them, in e2e tests."""

from __future__ import annotations

from typing import Any

import yaml

from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.fleet import LocalFleet
from wasmfleet_harness.processes import wait_until

__all__ = [
    "apply_object",
    "apply_yaml",
    "bindings_of",
    "condition_of",
    "service_of",
    "wait_ready",
    "wasm_service",
]


def service_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = plane.kubectl_json("get", "wasmservice", "-n", namespace, name)
    return found


def condition_of(service: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (service.get("status") or {}).get("conditions") or []:
        if condition["type"] == kind:
            return dict(condition)
    return {}


def bindings_of(plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    listing = plane.kubectl_json(
        "get", "wasmbindings", "-n", namespace, "-l", f"wasmfleet.dev/service={name}"
    )
    items: list[dict[str, Any]] = listing["items"]
    return items


def is_ready(service: dict[str, Any], replicas: int) -> bool:
    """Ready at its current generation with ``replicas`` ready and updated replicas."""
    status = service.get("status") or {}
    return (
        condition_of(service, "Ready").get("status") == "True"
        and status.get("readyReplicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("replicas") == replicas
        and status.get("observedGeneration") == service["metadata"]["generation"]
    )


def wait_ready(
    fleet: LocalFleet, namespace: str, name: str, replicas: int, timeout: float = 60
) -> dict[str, Any]:
    plane = fleet.plane
    seen: dict[str, Any] = {}

    def ready() -> bool:
        service = service_of(plane, namespace, name)
        seen.clear()
        seen.update(service)
        return is_ready(service, replicas)

    wait_until(
        ready,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"{namespace}/{name} not ready: {seen.get('status')}\n{fleet.logs()}",
    )
    return seen


def apply_yaml(plane: ControlPlane, namespace: str, text: str) -> None:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def wasm_service(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "wasmfleet.dev/v1alpha1",
        "kind": "WasmService",
        "metadata": {"name": name},
        "spec": {"module": {"image": image}, **spec},
    }


def apply_object(plane: ControlPlane, namespace: str, obj: dict[str, Any]) -> None:
    apply_yaml(plane, namespace, yaml.safe_dump(obj))
