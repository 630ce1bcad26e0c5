"""Wasmfleet installed the way users install it, on a local cluster of real nodes.

`LocalSystem` is what the README's first command runs and what the chart's end-to-end tests
stand on: a node LAN, an OCI registry on the LAN's host address (so that containerd on every
node, the agents on the nodes' own networks and the operator in its Pod all reach it under
one name), a control plane and `LocalCluster` of real nodes, the project's images built from
its Dockerfiles and pushed there, and the Helm chart installed with only what a user sets:
the image registry and tags, and the registry as one reached over plain HTTP.

The registry's address is the LAN's, so a WasmService names its module
``10.251.0.1:5001/...``; the examples, which name ``localhost:5001`` as a user's local registry,
are applied with that host rewritten.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmfleet_harness.binaries import (
    REPO_ROOT,
    Binaries,
    NodeBinaries,
    ensure_binaries,
    ensure_node_binaries,
)
from wasmfleet_harness.chart import CHART
from wasmfleet_harness.cluster import LocalCluster
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.images.build import BuiltImage, build_images
from wasmfleet_harness.nodelan import NodeLan
from wasmfleet_harness.processes import wait_until
from wasmfleet_harness.registry import Registry

__all__ = [
    "EXAMPLE_REGISTRY",
    "RELEASE",
    "RELEASE_NAMESPACE",
    "LocalSystem",
    "Release",
    "render_install_values",
]

RELEASE = "wasmfleet"
RELEASE_NAMESPACE = "wasmfleet-system"
EXAMPLE_REGISTRY = "localhost:5001"
"""The registry the examples name: a user's own local registry."""
REGISTRY_PORT = 5001


def render_install_values(images: Sequence[BuiltImage], registry: str) -> list[str]:
    """The ``helm install`` arguments a user passes for images in ``registry`` (plain HTTP):
    the registry, each image's tag, and the registry listed as insecure for the operator (to
    resolve tags) and the agents (to pull modules)."""
    by_name = {image.name: image for image in images}
    arguments = ["--set", f"image.registry={registry}"]
    for name in ("operator", "agent"):
        image = by_name[name]
        repository = image.repository.removeprefix(f"{registry}/")
        arguments += [
            "--set",
            f"{name}.image.repository={repository}",
            "--set",
            f"{name}.image.tag={image.tag}",
        ]
    for name in ("operator", "agent"):
        arguments += ["--set-json", f"{name}.insecureRegistries={json.dumps([registry])}"]
    return arguments


@dataclass
class Release:
    """The chart, installed on ``plane`` as ``name`` in ``namespace``."""

    plane: ControlPlane
    helm_binary: Path
    name: str = RELEASE
    namespace: str = RELEASE_NAMESPACE

    def helm(
        self, *args: str, timeout: float = 600.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.helm_binary), "--kubeconfig", str(self.plane.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"helm {' '.join(args[:2])} failed:\n{done.stdout}{done.stderr}\n{self.diagnose()}"
            )
        return done

    def install(self, values: Sequence[str], *, timeout: float = 300.0) -> None:
        """``helm upgrade --install`` with ``values`` and ``--wait`` (which takes a DaemonSet
        as ready with up to its ``maxUnavailable`` Pods not ready yet)."""
        self.helm(
            "upgrade",
            "--install",
            self.name,
            str(CHART),
            "--namespace",
            self.namespace,
            "--create-namespace",
            *values,
            "--wait",
            "--timeout",
            f"{int(timeout)}s",
            timeout=timeout + 60,
        )

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--namespace", self.namespace, "--wait")

    def pods(self) -> list[dict[str, Any]]:
        listing = self.plane.kubectl_json(
            "get", "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={self.name}"
        )
        items: list[dict[str, Any]] = listing["items"] if listing else []
        return items

    def all_ready(self) -> bool:
        pods = self.pods()
        return bool(pods) and all(pod_ready(pod) for pod in pods)

    def diagnose(self) -> str:
        """The release's Pods, their recent Events, and the logs of those not Ready."""
        lines = []
        for pod in self.pods():
            name = pod["metadata"]["name"]
            phase = (pod.get("status") or {}).get("phase")
            lines.append(f"--- pod {name}: {phase}, ready={pod_ready(pod)}")
            for state in (pod.get("status") or {}).get("containerStatuses") or []:
                lines.append(f"    {state['name']}: {json.dumps(state.get('state'))}")
            if not pod_ready(pod):
                logs = self.plane.kubectl(
                    "logs",
                    "-n",
                    self.namespace,
                    name,
                    "--all-containers",
                    "--tail=30",
                    check=False,
                )
                lines.append(logs.stdout + logs.stderr)
        events = self.plane.kubectl(
            "get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False
        )
        lines.append("--- events\n" + "\n".join(events.stdout.splitlines()[-20:]))
        return "\n".join(lines)


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass
class LocalSystem:
    """The node LAN, a registry on it, a control plane and ``nodes`` real nodes."""

    workdir: Path
    nodes: int = 2
    registry_port: int | None = REGISTRY_PORT
    tie_to_parent: bool = True
    progress: Callable[[str], None] = print
    binaries: Binaries = field(init=False)
    node_binaries: NodeBinaries = field(init=False)
    lan: NodeLan = field(init=False)
    registry: Registry = field(init=False)
    plane: ControlPlane = field(init=False)
    cluster: LocalCluster = field(init=False)

    def start(self) -> None:
        """Starts everything, in order; a part that fails stops what was started before it."""
        self.binaries = ensure_binaries()
        self.node_binaries = ensure_node_binaries()
        self.lan = NodeLan()
        self.lan.create()
        try:
            self.registry = Registry(
                self.workdir / "registry",
                address=self.lan.host_ip,
                port=self.registry_port,
                tie_to_parent=self.tie_to_parent,
            )
            self.registry.start()
            started = time.monotonic()
            self.plane = ControlPlane(
                self.binaries,
                self.workdir / "control-plane",
                ControlPlaneConfig(
                    address=self.lan.host_ip, real_nodes=True, tie_to_parent=self.tie_to_parent
                ),
            )
            self.plane.start()
            self.cluster = LocalCluster(
                self.plane,
                self.lan,
                self.workdir / "cluster",
                self.node_binaries,
                nodes=self.nodes,
                registry=self.registry,
                tie_to_parent=self.tie_to_parent,
            )
            self.cluster.start()
            self.progress(
                f"    {self.nodes} nodes Ready in {time.monotonic() - started:.1f}s; API server "
                f"{self.plane.server}, registry {self.registry.url}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops what runs, in reverse order; nothing is left on the machine."""
        if hasattr(self, "cluster"):
            self.cluster.stop()
        if hasattr(self, "plane"):
            self.plane.stop()
        if hasattr(self, "registry"):
            self.registry.stop()
        if hasattr(self, "lan"):
            self.lan.remove()

    def release(self) -> Release:
        return Release(self.plane, self.binaries.helm)

    def build_images(self) -> list[BuiltImage]:
        """The operator and agent images, built (or reused) and pushed to the registry."""
        return build_images(registry=self.registry.host, progress=self.progress)

    def install(self, images: Sequence[BuiltImage], *, timeout: float = 300.0) -> Release:
        """``helm install`` of the chart with ``images``; returns once every Pod is Ready."""
        release = self.release()
        release.install(render_install_values(images, self.registry.host), timeout=timeout)
        # helm's --wait takes a DaemonSet as ready while up to maxUnavailable of its Pods are not
        self.wait_for_release(release, timeout=timeout)
        return release

    def example_manifest(self, name: str) -> str:
        """``examples/NAME/wasmservice.yaml`` with its registry rewritten to this one."""
        text = (REPO_ROOT / "examples" / name / "wasmservice.yaml").read_text()
        return text.replace(EXAMPLE_REGISTRY, self.registry.host)

    def wait_for_release(self, release: Release, *, timeout: float = 180.0) -> None:
        wait_until(
            release.all_ready,
            timeout=timeout,
            interval=0.5,
            message=lambda: "the release's Pods are not all Ready\n" + release.diagnose(),
        )


_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def retag(registry: Registry, repository: str, tag: str, new_tag: str) -> None:
    """Publishes the image index ``repository:tag`` of ``registry`` also as ``new_tag`` (the
    same bytes under another name, as a release pipeline would promote it)."""
    import urllib.request

    base = f"{registry.url}/v2/{repository}/manifests"
    request = urllib.request.Request(f"{base}/{tag}", headers={"Accept": ", ".join(_INDEX_TYPES)})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        media_type = response.headers["Content-Type"]
    put = urllib.request.Request(
        f"{base}/{new_tag}", data=body, method="PUT", headers={"Content-Type": media_type}
    )
    with urllib.request.urlopen(put, timeout=30) as response:
        assert response.status == 201, response.status
