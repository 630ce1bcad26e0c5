"""A real node on this machine: Pods run, Services route, DNS resolves, Pods reach the API.

One `Node` (containerd, runc, CNI bridge, kubelet, kube-proxy, kube-scheduler, CoreDNS, all
built from pinned sources) joins a control plane of its own, whose API server listens on the
node's address so Pods reach it through the ``kubernetes`` Service. The test image runs
``e2e/images/probe`` and is pulled from the local registry; tests look at the cluster from
inside a Pod with ``kubectl exec``. The last tests stop the node and check that nothing of it
is left on the machine, and that a component that cannot start is reported by name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wasmfleet_harness import nodeimages
from wasmfleet_harness.binaries import Binaries, NodeBinaries, ensure_node_binaries
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.node import (
    Node,
    NodeAddress,
    NodeStartError,
    iptables_chains,
    service_rules_present,
)
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.registry import Registry

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="a node needs root (containers, interfaces, iptables, mounts)"
)

WEB_TEXT = "hello from a pod on the real node"


@pytest.fixture(scope="module")
def node_address() -> Iterator[NodeAddress]:
    with NodeAddress() as address:
        yield address


@pytest.fixture(scope="module")
def node_plane(
    binaries: Binaries, workspace: Workspace, node_address: NodeAddress
) -> Iterator[ControlPlane]:
    """A control plane of the node's own: its API server listens on the node's address."""
    plane = ControlPlane(
        binaries,
        workspace.subdir("node-control-plane"),
        ControlPlaneConfig(address=node_address.ip, real_nodes=True),
    )
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def node_binaries() -> NodeBinaries:
    return ensure_node_binaries()


@pytest.fixture(scope="module")
def node(
    node_plane: ControlPlane,
    node_address: NodeAddress,
    node_binaries: NodeBinaries,
    registry: Registry,
    workspace: Workspace,
) -> Iterator[Node]:
    started = Node(
        node_plane, node_address, workspace.subdir("node"), node_binaries, registry=registry
    )
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def probe_image(registry: Registry) -> str:
    """The probe program as an image in the local registry (pulled by containerd over HTTP)."""
    image = nodeimages.render_image(
        [nodeimages.ImageFile("probe", nodeimages.build_probe_binary())], entrypoint=["/probe"]
    )
    return nodeimages.push_image(image, registry, "wasmfleet/probe", image.tag)


@pytest.fixture
def node_namespace(node: Node) -> Iterator[str]:
    """A fresh namespace on the node's control plane, once its default ServiceAccount exists
    (Pods are refused until then)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    node.plane.kubectl("create", "namespace", name)
    wait_until(
        lambda: node.plane.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        message=f"no default ServiceAccount in {name}",
    )
    yield name
    node.plane.kubectl("delete", "namespace", name, "--wait=false")


def _pod(name: str, image: str, *args: str, labels: dict[str, str] | None = None) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": list(args),
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }
            ],
        },
    }


def _run_pod(node: Node, namespace: str, manifest: Any) -> Any:
    node.plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    return node.wait_for_pod_ready(namespace, manifest["metadata"]["name"])


def _web_service(node: Node, namespace: str, probe_image: str) -> str:
    """Runs a web Pod behind Service ``web`` (port 80) and returns the Service's ClusterIP."""
    _run_pod(
        node,
        namespace,
        _pod(
            "web", probe_image, "serve", "--port=8080", f"--text={WEB_TEXT}", labels={"app": "web"}
        ),
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    node.plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(service))
    cluster_ip: str = node.plane.kubectl_json("get", "service", "web", "-n", namespace)["spec"][
        "clusterIP"
    ]
    return cluster_ip


def _exec(node: Node, namespace: str, pod: str, *argv: str) -> str:
    result = node.plane.kubectl("exec", "-n", namespace, pod, "--", *argv, check=False)
    assert result.returncode == 0, f"{argv} failed in {pod}: {result.stderr}"
    return result.stdout


def test_the_node_registers_and_becomes_ready_with_the_pinned_versions(node: Node) -> None:
    status = node.plane.kubectl_json("get", "node", node.name)["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True"
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    assert addresses["InternalIP"] == node.address.ip
    info = status["nodeInfo"]
    assert info["kubeletVersion"] == node.binaries.kubernetes_version
    containerd = node.binaries.containerd_version.removeprefix("v")
    assert info["containerRuntimeVersion"] == f"containerd://{containerd}"


def test_a_pod_pulled_from_the_local_registry_runs_logs_and_has_no_route_off_the_machine(
    node: Node, node_namespace: str, probe_image: str
) -> None:
    pod = _run_pod(node, node_namespace, _pod("hello", probe_image, "serve", "--text=hi"))
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(
        node.network.pod_cidr
    )
    assert pod["spec"]["nodeName"] == node.name
    logs = node.plane.kubectl("logs", "-n", node_namespace, "hello").stdout
    assert 'serving "hi" on port 8080' in logs

    # Pods reach their own network, Services and the node, and nothing else (read from the
    # Pod's routing table: nothing is sent to find out).
    network = node.network
    routes = set(_exec(node, node_namespace, "hello", "/probe", "routes").splitlines())
    assert routes == {
        f"{network.pod_cidr} via 0.0.0.0",
        f"{network.service_cidr} via {network.gateway}",
        f"{network.node_ip}/32 via {network.gateway}",
    }


def test_a_service_cluster_ip_answers_from_the_host_once_kube_proxy_routes_it(
    node: Node, node_namespace: str, probe_image: str
) -> None:
    cluster_ip = _web_service(node, node_namespace, probe_image)
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(node.network.service_cidr)
    # Only kube-proxy's rules keep a packet to a ClusterIP on this machine: no request
    # before they are there.
    wait_until(
        lambda: service_rules_present(cluster_ip, 80),
        timeout=60,
        message=f"kube-proxy wrote no rules leading {cluster_ip}:80 to an endpoint",
    )
    with urllib.request.urlopen(f"http://{cluster_ip}:80/", timeout=10) as response:
        body = response.read().decode()
    assert body.splitlines() == [WEB_TEXT, "web"]


def test_a_service_name_resolves_through_coredns_and_answers_inside_another_pod(
    node: Node, node_namespace: str, probe_image: str
) -> None:
    cluster_ip = _web_service(node, node_namespace, probe_image)
    _run_pod(node, node_namespace, _pod("client", probe_image, "serve"))
    fqdn = f"web.{node_namespace}.svc.{node.config.cluster_domain}"

    assert _exec(node, node_namespace, "client", "/probe", "resolve", fqdn).split() == [cluster_ip]
    # The short name resolves through the Pod's search domains, as in any cluster.
    assert _exec(node, node_namespace, "client", "/probe", "resolve", "web").split() == [cluster_ip]
    answer = _exec(node, node_namespace, "client", "/probe", "get", f"http://{fqdn}/")
    assert answer.splitlines() == [WEB_TEXT, "web"]


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service_with_its_own_token(
    node: Node, node_namespace: str, probe_image: str
) -> None:
    endpoints = node.plane.kubectl_json("get", "endpointslice", "kubernetes", "-n", "default")
    assert [a for e in endpoints["endpoints"] for a in e["addresses"]] == [node.address.ip]
    assert endpoints["ports"][0]["port"] == node.plane.apiserver_port
    assert service_rules_present(node.plane.config.kubernetes_service_ip, 443)

    _run_pod(node, node_namespace, _pod("caller", probe_image, "serve"))
    # The probe dials KUBERNETES_SERVICE_HOST with the projected token and checks the
    # server's certificate against the projected CA bundle.
    who = _exec(node, node_namespace, "caller", "/probe", "whoami").strip()
    assert who == f"system:serviceaccount:{node_namespace}:default"


def test_stopping_the_node_leaves_no_process_mount_interface_rule_or_container(
    node: Node,
) -> None:
    # While it runs, the same inventory sees the node's parts: the check can fail.
    running = " ".join(node.leftovers())
    for kind in ("process", "mount", "interface", "iptables", "cgroup", "container state"):
        assert kind in running
    node.stop()
    assert node.leftovers() == []
    assert iptables_chains() == {}
    assert not service_rules_present(node.plane.config.kubernetes_service_ip, 443)


def test_a_component_that_fails_to_start_is_named_with_its_log_and_nothing_is_left(
    node: Node, node_binaries: NodeBinaries, workspace: Workspace, tmp_path: Path
) -> None:
    # A containerd that refuses to run: what a broken build or a bad flag looks like.
    broken = tmp_path / "containerd"
    broken.write_text("#!/bin/sh\necho 'containerd: failed to load the runtime' >&2\nexit 1\n")
    broken.chmod(0o755)
    failing = Node(
        node.plane,
        node.address,
        workspace.subdir("node-broken"),
        dataclasses.replace(node_binaries, containerd=broken),
    )
    with pytest.raises(NodeStartError) as raised:
        failing.start()
    assert raised.value.args[0].startswith("containerd:")
    assert "failed to load the runtime" in str(raised.value)
    assert failing.leftovers() == []
