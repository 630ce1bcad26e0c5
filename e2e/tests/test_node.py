"""One real node on its own: it registers, runs Pods bound to it, lives in its own namespaces.

A `Node` (containerd, runc, CNI bridge, kubelet, kube-proxy, all built from pinned sources)
joins a control plane whose API server listens on the node LAN. No scheduler and no CoreDNS
run here (those belong to a `LocalCluster`, see ``test_cluster.py``): Pods are bound to the
node by name. The test image runs ``e2e/images/probe`` and is pulled from the local registry;
tests look at the node from inside a Pod with ``kubectl exec`` and from inside its namespaces
with ``nsenter``. The last tests stop the node and check that nothing of it is left on the
machine, and that a component that cannot start is reported by name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest

from wasmfleet_harness.binaries import Binaries, NodeBinaries
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.node import Node, NodeConfig, NodeStartError
from wasmfleet_harness.nodelan import NodeLan, iptables_chains, read_routes
from wasmfleet_harness.nodenet import machine_architecture, plan_host_routes
from wasmfleet_harness.probe import apply, exec_in, fresh_namespace, probe_pod
from wasmfleet_harness.processes import Workspace
from wasmfleet_harness.registry import Registry

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="a node needs root (namespaces, interfaces, mounts, cgroups)"
)

LABELS = {"wasmfleet.dev/pool": "solo", "node-role.kubernetes.io/worker": ""}


@pytest.fixture(scope="module")
def lan() -> Iterator[NodeLan]:
    with NodeLan() as created:
        yield created


@pytest.fixture(scope="module")
def node_plane(binaries: Binaries, workspace: Workspace, lan: NodeLan) -> Iterator[ControlPlane]:
    """A control plane of the node's own: its API server listens on the node LAN."""
    plane = ControlPlane(
        binaries,
        workspace.subdir("node-control-plane"),
        ControlPlaneConfig(address=lan.host_ip, real_nodes=True),
    )
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def node(
    node_plane: ControlPlane,
    lan: NodeLan,
    node_binaries: NodeBinaries,
    registry: Registry,
    workspace: Workspace,
) -> Iterator[Node]:
    started = Node(
        node_plane,
        lan,
        workspace.subdir("node"),
        node_binaries,
        registry=registry,
        config=NodeConfig(index=1, labels=LABELS),
    )
    started.start()
    yield started
    started.stop()


@pytest.fixture
def node_namespace(node: Node) -> Iterator[str]:
    with fresh_namespace(node.plane) as name:
        yield name


def test_the_node_registers_ready_with_the_pinned_versions_and_the_machines_labels(
    node: Node,
) -> None:
    document = node.plane.kubectl_json("get", "node", node.name)
    status = document["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True"
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    assert addresses["InternalIP"] == node.ip == "10.251.0.2"
    info = status["nodeInfo"]
    assert info["kubeletVersion"] == node.binaries.kubernetes_version
    containerd = node.binaries.containerd_version.removeprefix("v")
    assert info["containerRuntimeVersion"] == f"containerd://{containerd}"
    labels = document["metadata"]["labels"]
    assert labels["kubernetes.io/arch"] == machine_architecture(platform.machine())
    # One label the kubelet registers itself with, one only the admin may set.
    assert {k: labels.get(k) for k in LABELS} == LABELS


def test_a_pod_bound_to_the_node_is_pulled_from_the_local_registry_and_has_no_route_off_the_machine(
    node: Node, node_namespace: str, probe_image: str
) -> None:
    apply(
        node.plane,
        node_namespace,
        probe_pod("hello", probe_image, "serve", "--text=hi", node=node.name),
    )
    pod = node.wait_for_pod_ready(node_namespace, "hello")
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.slot.pod_cidr)
    logs = node.plane.kubectl("logs", "-n", node_namespace, "hello").stdout
    assert 'serving "hi" on port 8080' in logs

    # Pods reach their own network, other Pods, Services and the node LAN, and nothing else
    # (read from the Pod's routing table: nothing is sent to find out).
    routes = set(exec_in(node.plane, node_namespace, "hello", "/probe", "routes").splitlines())
    gateway = node.slot.gateway
    assert routes == {
        f"{node.slot.pod_cidr} via 0.0.0.0",
        f"{node.network.cluster_cidr} via {gateway}",
        f"{node.network.service_cidr} via {gateway}",
        f"{node.network.lan} via {gateway}",
    }


def test_the_node_lives_in_namespaces_of_its_own_and_leaves_the_hosts_paths_and_rules_alone(
    node: Node,
) -> None:
    assert node.nsenter("hostname").stdout.strip() == node.name
    # kube-proxy's rules are in the node's network namespace; the host has none.
    assert "iptables nat" in iptables_chains(node.netns)
    assert iptables_chains() == {}
    # The kubelet's fixed paths are the node's own directories in its mount namespace.
    socket = Path("var/lib/kubelet/device-plugins/kubelet.sock")
    assert (node.private_dir / socket).is_socket()
    assert not (Path("/") / socket).exists()
    mounts = node.nsenter("cat", "/proc/self/mountinfo").stdout
    points = {line.split()[4] for line in mounts.splitlines()}
    assert {"/var/lib/kubelet", "/var/log/containers", "/var/lib/cni"} <= points
    # Other programs' network namespace handles are not held on to.
    assert not any(point.startswith("/run/netns") for point in points)


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service_with_its_own_token(
    node: Node, node_namespace: str, probe_image: str
) -> None:
    endpoints = node.plane.kubectl_json("get", "endpointslice", "kubernetes", "-n", "default")
    assert [a for e in endpoints["endpoints"] for a in e["addresses"]] == [node.lan.host_ip]
    assert endpoints["ports"][0]["port"] == node.plane.apiserver_port
    assert node.service_rules_present(node.plane.config.kubernetes_service_ip, 443)

    apply(node.plane, node_namespace, probe_pod("caller", probe_image, "serve", node=node.name))
    node.wait_for_pod_ready(node_namespace, "caller")
    # The probe dials KUBERNETES_SERVICE_HOST with the projected token and checks the
    # server's certificate against the projected CA bundle.
    who = exec_in(node.plane, node_namespace, "caller", "/probe", "whoami").strip()
    assert who == f"system:serviceaccount:{node_namespace}:default"


def test_a_second_node_in_a_taken_slot_is_refused_and_the_first_keeps_running(
    node: Node, workspace: Workspace
) -> None:
    twin = Node(
        node.plane,
        node.lan,
        workspace.subdir("node-twin"),
        node.binaries,
        config=NodeConfig(index=node.config.index, name="wasmfleet-twin"),
    )
    with pytest.raises(ValueError, match="slot 1 is taken"):
        twin.start()
    node.check_components()
    assert node.nsenter("hostname").stdout.strip() == node.name
    assert node.lan.joined == {node.config.index}


def test_stopping_the_node_leaves_no_process_namespace_interface_route_or_container(
    node: Node, lan: NodeLan
) -> None:
    # While it runs, the same inventory sees the node's parts: the check can fail.
    running = " ".join(node.leftovers())
    for kind in ("process", "network namespace", "interface", "route", "cgroup", "container"):
        assert kind in running
    node.stop()
    assert node.leftovers() == []
    assert node.plane.kubectl("get", "node", node.name, check=False).returncode != 0
    # The LAN is back to what it was before the node joined.
    assert lan.joined == frozenset()
    assert read_routes() == plan_host_routes(lan.network, ())


def test_a_component_that_fails_to_start_is_named_with_its_log_and_nothing_is_left(
    node: Node, node_binaries: NodeBinaries, workspace: Workspace, tmp_path: Path
) -> None:
    # A containerd that refuses to run: what a broken build or a bad flag looks like.
    broken = tmp_path / "containerd"
    broken.write_text("#!/bin/sh\necho 'containerd: failed to load the runtime' >&2\nexit 1\n")
    broken.chmod(0o755)
    failing = Node(
        node.plane,
        node.lan,
        workspace.subdir("node-broken"),
        dataclasses.replace(node_binaries, containerd=broken),
        config=NodeConfig(index=9),
    )
    with pytest.raises(NodeStartError) as raised:
        failing.start()
    assert raised.value.args[0].startswith("containerd:")
    assert "failed to load the runtime" in str(raised.value)
    assert failing.leftovers() == []
