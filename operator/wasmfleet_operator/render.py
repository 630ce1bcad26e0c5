"""The objects the operator writes, built from typed inputs: its own kind (a WasmBinding) as
the API model, Kubernetes' kinds as plain dicts.

Every function here is pure: given the same service, revision and endpoints it renders the
same object, so applying it twice changes nothing, and a restarted operator renders exactly
what its predecessor wrote (names included). That is what makes restarts safe: creating a
binding that already exists is a no-op, never a duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wasmfleet_api.base import API_VERSION
from wasmfleet_api.binding import WasmBinding, WasmBindingSpec
from wasmfleet_api.wasmservice import WasmService
from wasmfleet_api.workload import WorkloadSpec

__all__ = [
    "LABEL_NODE",
    "LABEL_REVISION",
    "LABEL_SERVICE",
    "MANAGED_BY",
    "Endpoint",
    "render_binding",
    "render_binding_name",
    "render_endpoint_slices",
    "render_revision",
    "render_selector",
    "render_service",
]

LABEL_SERVICE = "wasmfleet.dev/service"
LABEL_REVISION = "wasmfleet.dev/revision"
LABEL_NODE = "wasmfleet.dev/node"
# Tells the built-in EndpointSlice controllers that these slices are ours to manage.
MANAGED_BY = "operator.wasmfleet.dev"
_SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
_SERVICE_NAME = "kubernetes.io/service-name"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def render_revision(workload: WorkloadSpec, digest: str) -> str:
    """A short hash of everything that, when it changes, needs new instances."""
    canonical = json.dumps([workload.to_kube(), digest], sort_keys=True, separators=(",", ":"))
    return _digest(canonical)[:10]


def render_binding_name(service: str, revision: str, node: str) -> str:
    """A deterministic, DNS-safe name per (service, revision, node)."""
    suffix = f"-{revision}-{_digest(node)[:6]}"
    return service[: 253 - len(suffix)].rstrip("-.") + suffix


def render_selector(service: str) -> str:
    """The label selector of a service's bindings (the scale subresource's selector)."""
    return f"{LABEL_SERVICE}={service}"


def _owner(service: WasmService) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "WasmService",
        "name": service.metadata["name"],
        "uid": service.metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def render_binding(service: WasmService, *, node: str, revision: str, digest: str) -> WasmBinding:
    """The WasmBinding that runs ``revision`` of ``service`` on ``node``."""
    name = service.metadata["name"]
    workload = service.spec.workload()
    return WasmBinding(
        metadata={
            "name": render_binding_name(name, revision, node),
            "namespace": service.metadata["namespace"],
            "labels": {LABEL_SERVICE: name, LABEL_REVISION: revision, LABEL_NODE: node},
            "ownerReferences": [_owner(service)],
        },
        spec=WasmBindingSpec(
            service_name=name, node_name=node, revision=revision, digest=digest, workload=workload
        ),
    )


def render_service(service: WasmService) -> dict[str, Any]:
    """The Kubernetes Service that routes to the replicas; its endpoints are ours to set."""
    assert service.spec.http is not None, "only http services get a Service"
    name = service.metadata["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": service.metadata["namespace"],
            "labels": {LABEL_SERVICE: name, "app.kubernetes.io/managed-by": "wasmfleet"},
            "ownerReferences": [_owner(service)],
        },
        # No selector: the operator, not the EndpointSlice controller, says where traffic goes.
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "http", "protocol": "TCP", "port": service.spec.http.port}],
        },
    }


@dataclass(frozen=True)
class Endpoint:
    """One ready replica: where an agent serves it."""

    address: str
    port: int
    node: str
    ready: bool = True


def render_endpoint_slices(
    service: WasmService, endpoints: Iterable[Endpoint]
) -> list[dict[str, Any]]:
    """EndpointSlices for the Service, one per distinct serving port, sorted for stability."""
    name = service.metadata["name"]
    by_port: defaultdict[int, list[Endpoint]] = defaultdict(list)
    for endpoint in endpoints:
        by_port[endpoint.port].append(endpoint)
    slices = []
    for port in sorted(by_port):
        members = sorted(by_port[port], key=lambda e: (e.address, e.node))
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name[:240]}-{port}",
                    "namespace": service.metadata["namespace"],
                    "labels": {
                        _SERVICE_NAME: name,
                        _SLICE_MANAGED_BY: MANAGED_BY,
                        LABEL_SERVICE: name,
                    },
                    "ownerReferences": [_owner(service)],
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": port}],
                "endpoints": [
                    {
                        "addresses": [e.address],
                        "conditions": {"ready": e.ready, "serving": e.ready},
                        "nodeName": e.node,
                    }
                    for e in members
                ],
            }
        )
    return slices
