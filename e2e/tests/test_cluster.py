"""A local cluster of two real nodes: DaemonSets, Pod and Service traffic across nodes, DNS.

Wasmfleet places at most one replica of a service revision per node and runs its agent as a
DaemonSet, so the chart needs a cluster of more than one node. `LocalCluster` starts
kube-scheduler, two nodes (each in namespaces of its own on the node LAN) and CoreDNS beside a
control plane of the module's own. A DaemonSet of the probe program serves on every node
behind a Service; tests look at the cluster from the host and from inside Pods on either node,
then stop it and check that nothing of it is left on the host or in any node.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from wasmfleet_harness.binaries import Binaries, NodeBinaries
from wasmfleet_harness.cluster import LocalCluster
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.node import Node, NodeConfig
from wasmfleet_harness.nodelan import (
    NodeLan,
    cgroup_hierarchies,
    iptables_chains,
    matching_processes,
    netns_path,
    read_kernel_settings,
    read_routes,
)
from wasmfleet_harness.nodenet import machine_architecture, plan_host_routes
from wasmfleet_harness.probe import apply, exec_in, fresh_namespace, probe_pod
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.registry import Registry

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="a node needs root (namespaces, interfaces, mounts, cgroups)"
)

WEB_TEXT = "hello from a pod of the web daemonset"
HOST_TEXT = "hello from the host network of node 2"
HOST_PORT = 18080
NODE_2_LABELS = {"wasmfleet.dev/pool": "blue", "node-role.kubernetes.io/edge": ""}


@pytest.fixture(scope="module")
def lan() -> Iterator[NodeLan]:
    with NodeLan() as created:
        yield created


@pytest.fixture(scope="module")
def cluster_plane(binaries: Binaries, workspace: Workspace, lan: NodeLan) -> Iterator[ControlPlane]:
    plane = ControlPlane(
        binaries,
        workspace.subdir("cluster-control-plane"),
        ControlPlaneConfig(address=lan.host_ip, real_nodes=True),
    )
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def cluster(
    cluster_plane: ControlPlane,
    lan: NodeLan,
    node_binaries: NodeBinaries,
    registry: Registry,
    workspace: Workspace,
) -> Iterator[LocalCluster]:
    started = LocalCluster(
        cluster_plane,
        lan,
        workspace.subdir("cluster"),
        node_binaries,
        nodes=[NodeConfig(index=1), NodeConfig(index=2, labels=NODE_2_LABELS)],
        registry=registry,
    )
    started.start()
    yield started
    started.stop()


@dataclass(frozen=True)
class Web:
    """The ``web`` DaemonSet's Pods by node name, and the ClusterIP of its Service."""

    namespace: str
    pods: dict[str, Any]
    cluster_ip: str

    def pod_on(self, node: Node) -> str:
        name: str = self.pods[node.name]["metadata"]["name"]
        return name


@pytest.fixture(scope="module")
def web(cluster: LocalCluster, probe_image: str) -> Iterator[Web]:
    """A DaemonSet of probe servers behind Service ``web`` (port 80), Ready on every node."""
    plane = cluster.plane
    with fresh_namespace(plane) as namespace:
        template = probe_pod("web", probe_image, "serve", "--port=8080", f"--text={WEB_TEXT}")
        labels = {"app": "web"}
        daemonset = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": template["spec"]},
            },
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        apply(plane, namespace, daemonset)
        apply(plane, namespace, service)

        def ready() -> bool:
            cluster.check_components()
            status = plane.kubectl_json("get", "daemonset", "web", "-n", namespace)["status"]
            wanted = status.get("desiredNumberScheduled", 0)
            return bool(wanted == len(cluster.members) == status.get("numberReady"))

        wait_until(
            ready,
            timeout=120,
            interval=0.5,
            message=lambda: plane.kubectl("get", "pods", "-A", "-o", "wide").stdout,
        )
        pods = plane.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
        cluster_ip = plane.kubectl_json("get", "service", "web", "-n", namespace)["spec"][
            "clusterIP"
        ]
        yield Web(namespace, {p["spec"]["nodeName"]: p for p in pods}, cluster_ip)


def _host_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


def _answered_by_every_backend(fetch: Callable[[], str], web: Web) -> set[str]:
    """Asks ``fetch`` until each ``web`` Pod has answered once (kube-proxy picks endpoints
    at random); returns the Pod names that answered."""
    expected = {pod["metadata"]["name"] for pod in web.pods.values()}
    seen: set[str] = set()

    def every_backend_answered() -> bool:
        text, name = fetch().splitlines()
        assert text == WEB_TEXT
        seen.add(name)
        return seen == expected

    wait_until(
        every_backend_answered,
        timeout=60,
        interval=0.1,
        message=lambda: f"only {sorted(seen)} of {sorted(expected)} answered",
    )
    return seen


def test_both_nodes_are_ready_on_addresses_of_their_own_with_the_machines_architecture(
    cluster: LocalCluster,
) -> None:
    first, second = cluster.node(1), cluster.node(2)
    documents = {n.name: cluster.plane.kubectl_json("get", "node", n.name) for n in cluster}
    assert sorted(documents) == ["wasmfleet-node-1", "wasmfleet-node-2"]
    for node in cluster:
        status = documents[node.name]["status"]
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        assert {a["type"]: a["address"] for a in status["addresses"]}["InternalIP"] == node.ip
        labels = documents[node.name]["metadata"]["labels"]
        assert labels["kubernetes.io/arch"] == machine_architecture(platform.machine())
    assert (first.ip, first.slot.pod_cidr) == ("10.251.0.2", "10.250.1.0/24")
    assert (second.ip, second.slot.pod_cidr) == ("10.251.0.3", "10.250.2.0/24")
    second_labels = documents[second.name]["metadata"]["labels"]
    assert {k: second_labels.get(k) for k in NODE_2_LABELS} == NODE_2_LABELS
    assert "wasmfleet.dev/pool" not in documents[first.name]["metadata"]["labels"]


def test_a_daemonset_runs_a_pod_on_every_node_in_that_nodes_pod_range(
    cluster: LocalCluster, web: Web
) -> None:
    assert sorted(web.pods) == sorted(node.name for node in cluster)
    for node in cluster:
        pod_ip = web.pods[node.name]["status"]["podIP"]
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(node.slot.pod_cidr)


def test_pods_on_different_nodes_reach_each_other_directly(cluster: LocalCluster, web: Web) -> None:
    for source, target in ((cluster.node(1), cluster.node(2)), (cluster.node(2), cluster.node(1))):
        target_ip = web.pods[target.name]["status"]["podIP"]
        answer = exec_in(
            cluster.plane,
            web.namespace,
            web.pod_on(source),
            "/probe",
            "get",
            f"http://{target_ip}:8080/",
        )
        assert answer.splitlines() == [WEB_TEXT, web.pod_on(target)]


def test_a_service_with_endpoints_on_both_nodes_answers_by_cluster_ip_from_the_host(
    cluster: LocalCluster, web: Web
) -> None:
    slices = cluster.plane.kubectl_json(
        "get", "endpointslices", "-n", web.namespace, "-l", "kubernetes.io/service-name=web"
    )["items"]
    endpoint_nodes = {e["nodeName"] for s in slices for e in s["endpoints"]}
    assert endpoint_nodes == {node.name for node in cluster}
    # The host has no rules of its own: its route takes a ClusterIP to a node, whose
    # kube-proxy must rewrite it. Nothing is sent before that is so.
    wait_until(
        lambda: cluster.service_routed_from_host(web.cluster_ip, 80),
        timeout=60,
        message=f"no node's rules lead {web.cluster_ip}:80 from the host to an endpoint",
    )
    answered = _answered_by_every_backend(lambda: _host_get(f"http://{web.cluster_ip}/"), web)
    assert answered == {web.pod_on(node) for node in cluster}


def test_the_service_answers_by_cluster_ip_and_dns_name_from_a_pod_on_node_2(
    cluster: LocalCluster, web: Web, probe_image: str
) -> None:
    second = cluster.node(2)
    apply(cluster.plane, web.namespace, probe_pod("client", probe_image, "serve", node=second.name))
    cluster.wait_for_pod_ready(web.namespace, "client")

    def get(url: str) -> Callable[[], str]:
        return lambda: exec_in(cluster.plane, web.namespace, "client", "/probe", "get", url)

    # Both backends, so also the one on node 1, through node 2's kube-proxy.
    assert _answered_by_every_backend(get(f"http://{web.cluster_ip}/"), web) == {
        web.pod_on(node) for node in cluster
    }
    fqdn = f"web.{web.namespace}.svc.cluster.local"
    resolved = exec_in(cluster.plane, web.namespace, "client", "/probe", "resolve", fqdn)
    assert resolved.split() == [web.cluster_ip]
    short = exec_in(cluster.plane, web.namespace, "client", "/probe", "resolve", "web")
    assert short.split() == [web.cluster_ip]
    _answered_by_every_backend(get(f"http://{fqdn}/"), web)


def test_a_host_network_pod_on_node_2_listens_on_its_address_for_node_1s_pods_and_the_host(
    cluster: LocalCluster, web: Web, probe_image: str
) -> None:
    first, second = cluster.node(1), cluster.node(2)
    manifest = probe_pod(
        "on-host-network",
        probe_image,
        "serve",
        f"--port={HOST_PORT}",
        f"--text={HOST_TEXT}",
        node=second.name,
        port=HOST_PORT,
        host_network=True,
    )
    apply(cluster.plane, web.namespace, manifest)
    pod = cluster.wait_for_pod_ready(web.namespace, "on-host-network")
    assert pod["status"]["podIP"] == second.ip
    url = f"http://{second.ip}:{HOST_PORT}/"
    # The Pod shares node 2's namespaces: it answers with node 2's hostname.
    expected = [HOST_TEXT, second.name]
    from_pod = exec_in(cluster.plane, web.namespace, web.pod_on(first), "/probe", "get", url)
    assert from_pod.splitlines() == expected
    assert _host_get(url).splitlines() == expected


def test_a_pod_on_each_node_reaches_the_api_server_through_the_kubernetes_service(
    cluster: LocalCluster, web: Web
) -> None:
    service_ip = cluster.plane.config.kubernetes_service_ip
    for node in cluster:
        assert node.service_rules_present(service_ip, 443)
        # The probe dials KUBERNETES_SERVICE_HOST with its Pod's projected token and checks
        # the server's certificate against the projected CA bundle.
        who = exec_in(cluster.plane, web.namespace, web.pod_on(node), "/probe", "whoami")
        assert who.strip() == f"system:serviceaccount:{web.namespace}:default"


def test_a_node_that_leaves_is_removed_and_the_other_keeps_serving(
    cluster: LocalCluster, web: Web, lan: NodeLan
) -> None:
    first, second = cluster.node(1), cluster.node(2)
    first.stop()

    assert first.leftovers() == []
    assert cluster.plane.kubectl("get", "node", first.name, check=False).returncode != 0
    # The host's and node 2's routes forget node 1; Service traffic from the host now goes
    # through node 2.
    assert read_routes() == plan_host_routes(lan.network, {2})
    assert cluster.service_gateway() is second
    # Node 2 still talks to the API server at once: the LAN bridge's address did not move
    # with node 1's port (neighbour entries would have pointed nowhere for a minute).
    second.wait_for_pod_ready(web.namespace, web.pod_on(second), timeout=10)
    who = exec_in(cluster.plane, web.namespace, web.pod_on(second), "/probe", "whoami")
    assert who.strip() == f"system:serviceaccount:{web.namespace}:default"
    wait_until(
        lambda: cluster.service_routed_from_host(web.cluster_ip, 80),
        timeout=30,
        message="node 2's rules do not route the Service from the host",
    )
    body = _host_get(f"http://{web.cluster_ip}/").splitlines()
    assert body == [WEB_TEXT, web.pod_on(second)]


def test_stopping_the_cluster_leaves_nothing_on_the_host_or_in_any_node(
    cluster: LocalCluster, lan: NodeLan
) -> None:
    nodes = list(cluster)
    running = [n for n in nodes if n.leftovers()]
    assert [n.name for n in running] == ["wasmfleet-node-2"]  # node 1 has left already
    mount_namespaces = {
        os.stat(f"/proc/{n.process('namespaces').pid}/ns/mnt").st_ino for n in running
    }
    # While it runs, the same inventory sees the node's parts: the checks can fail.
    for node in running:
        inventory = " ".join(node.leftovers())
        for kind in ("process", "network namespace", "interface", "route", "cgroup", "container"):
            assert kind in inventory, f"{node.name}: {inventory}"
        assert "iptables nat" in iptables_chains(node.netns)
    assert matching_processes(mount_namespaces=mount_namespaces)
    assert iptables_chains() == {}

    cluster.stop()

    assert cluster.leftovers() == []
    for node in nodes:
        assert not netns_path(node.netns).exists()
        assert cluster.plane.kubectl("get", "node", node.name, check=False).returncode != 0
    # No process is left in any node's mount namespace, so the namespaces and every mount in
    # them are gone; the host never had kube-proxy's chains.
    assert matching_processes(mount_namespaces=mount_namespaces) == []
    assert iptables_chains() == {}
    assert read_routes() == plan_host_routes(lan.network, ())
    assert read_kernel_settings() == lan.kernel_settings
    assert not any(
        any(p.is_dir() for p in (hierarchy / "wasmfleet-node").iterdir())
        for hierarchy in cgroup_hierarchies()
        if (hierarchy / "wasmfleet-node").is_dir()
    )
