"""Looking at a local cluster from inside: Pods running the probe program, and commands in them.

The real-node suites check what a workload would see (routes, DNS, Services, the API server)
from inside Pods rather than from the host: the probe image (``e2e/images/probe``) serves a
line of text and its Pod's name, and ``kubectl exec`` runs its other subcommands in a Pod.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from wasmfleet_harness import nodeimages
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.processes import wait_until
from wasmfleet_harness.registry import Registry

__all__ = ["apply", "exec_in", "fresh_namespace", "probe_pod", "push_probe_image"]


def push_probe_image(registry: Registry) -> str:
    """Builds the probe image and pushes it to ``registry``; returns its reference."""
    image = nodeimages.render_image(
        [nodeimages.ImageFile("probe", nodeimages.build_probe_binary())], entrypoint=["/probe"]
    )
    return nodeimages.push_image(image, registry, "wasmfleet/probe", image.tag)


@contextlib.contextmanager
def fresh_namespace(plane: ControlPlane) -> Iterator[str]:
    """A new namespace, once its default ServiceAccount exists (Pods are refused until
    then); deleted without waiting afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", name)
    wait_until(
        lambda: plane.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        message=f"no default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def probe_pod(
    name: str,
    image: str,
    *args: str,
    labels: dict[str, str] | None = None,
    node: str | None = None,
    port: int = 8080,
    host_network: bool = False,
) -> dict[str, Any]:
    """A Pod running ``probe ARGS``, Ready once it answers HTTP on ``port``; bound to
    ``node`` directly when given (no scheduler involved)."""
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 2,
        "containers": [
            {
                "name": "probe",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": list(args),
                "ports": [{"containerPort": port}],
                "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1},
            }
        ],
    }
    if node is not None:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def apply(plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> None:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def exec_in(plane: ControlPlane, namespace: str, pod: str, *argv: str) -> str:
    """Runs ``argv`` in the Pod (through the API server and the Pod's kubelet); asserts it
    succeeded and returns its output."""
    result = plane.kubectl("exec", "-n", namespace, pod, "--", *argv, check=False)
    assert result.returncode == 0, f"{argv} failed in {pod}: {result.stderr}"
    return result.stdout
