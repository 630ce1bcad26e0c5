"""A local Kubernetes cluster of several real nodes: the cluster-wide parts, and the nodes.

Wasmfleet places at most one replica of a service revision per node and runs its agent as a
DaemonSet, so what the chart promises can only be seen on more than one node. `LocalCluster`
starts, beside a control plane of the harness (`wasmfleet_harness.controlplane`):

- **kube-scheduler**, on the host: it belongs to the cluster, not to a node;
- **N nodes** (`wasmfleet_harness.node`), each in namespaces of its own on the node LAN
  (`wasmfleet_harness.nodelan`), started side by side;
- **CoreDNS**, as a Deployment behind the ``kube-dns`` Service at the cluster DNS address. It
  answers only for the cluster domain (no upstream), so no query leaves the machine; its
  image is built here and imported into every node.

The host reaches Pods and Services the way a machine outside a cluster's nodes would: routes
to every node's Pods, and Service traffic through one node, whose kube-proxy rewrites it.
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmfleet_harness import nodeimages
from wasmfleet_harness.binaries import (
    Binaries,
    NodeBinaries,
    ensure_binaries,
    ensure_node_binaries,
)
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.node import (
    Node,
    NodeConfig,
    NodeStartError,
    start_nodes,
    stop_nodes,
    wait_for_pod_ready,
)
from wasmfleet_harness.nodelan import NodeLan, iptables_chains, run
from wasmfleet_harness.processes import ManagedProcess, ProcessFailedError, free_port, wait_until
from wasmfleet_harness.registry import Registry

__all__ = ["LocalCluster", "local_cluster"]


@dataclass
class LocalCluster:
    """kube-scheduler, ``nodes`` real nodes and CoreDNS, joined to ``plane``.

    ``plane`` must run with ``ControlPlaneConfig(address=lan.host_ip, real_nodes=True)``.
    ``nodes`` is a count (nodes 1..N with default settings) or one `NodeConfig` per node, for
    names and labels of your own. ``registry`` (optional) is reachable from every node.
    """

    plane: ControlPlane
    lan: NodeLan
    workdir: Path
    binaries: NodeBinaries
    nodes: int | Sequence[NodeConfig] = 2
    registry: Registry | None = None
    cluster_domain: str = "cluster.local"
    ready_timeout: float = 180.0
    tie_to_parent: bool = True
    members: list[Node] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        configs = (
            [
                NodeConfig(
                    index=index,
                    cluster_domain=self.cluster_domain,
                    ready_timeout=self.ready_timeout,
                    tie_to_parent=self.tie_to_parent,
                )
                for index in range(1, self.nodes + 1)
            ]
            if isinstance(self.nodes, int)
            else list(self.nodes)
        )
        if len({c.index for c in configs}) != len(configs):
            raise ValueError("every node needs an index of its own")
        self.members = [
            Node(
                self.plane,
                self.lan,
                self.workdir / config.node_name,
                self.binaries,
                registry=self.registry,
                config=config,
            )
            for config in configs
        ]
        self.logs_dir = self.workdir / "logs"
        self.coredns_image = ""
        self._scheduler: ManagedProcess | None = None
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Starts the scheduler, every node and CoreDNS; returns once every Node is Ready,
        every kube-proxy has written its rules and CoreDNS answers. Stops what started and
        raises `NodeStartError` naming the component if any fails."""
        self._started = True
        try:
            self._start_scheduler()
            # Built once here rather than by each node at the same time.
            nodeimages.build_pause_binary()
            start_nodes(self.members)
            self._deploy_coredns()
        except BaseException:
            self.stop()
            raise

    def stop(self, *, timeout: float = 90.0) -> None:
        """Drains and removes every node, then stops the scheduler. The LAN and the control
        plane stay; `leftovers` is then empty."""
        if not self._started:
            return
        self._started = False
        stop_nodes(self.members, timeout=timeout)
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None

    def leftovers(self) -> list[str]:
        """What of the cluster's nodes and scheduler is still on the machine."""
        found = [f"{n.name}: {item}" for n in self.members for item in n.leftovers()]
        if self._scheduler is not None and self._scheduler.alive():
            found.append(f"process {self._scheduler.pid} (kube-scheduler)")
        return found

    def node(self, index: int) -> Node:
        """The node with LAN slot ``index`` (1-based)."""
        for member in self.members:
            if member.config.index == index:
                return member
        raise KeyError(f"no node with index {index}")

    def __iter__(self) -> Iterator[Node]:
        return iter(self.members)

    def check_components(self) -> None:
        """Raises `ProcessFailedError` if any component of the cluster has exited."""
        if self._scheduler is not None:
            self._scheduler.check_alive()
        for member in self.members:
            member.check_components()

    def wait_for_pod_ready(self, namespace: str, name: str, *, timeout: float = 120.0) -> Any:
        """Polls until the Pod is Ready and returns it; on timeout the message has its
        status and the log tail of the kubelet it was bound to (or the scheduler's)."""

        def diagnostics() -> str:
            pod = self.plane.kubectl(
                "get", "pod", name, "-n", namespace, "-o", "jsonpath={.spec.nodeName}", check=False
            ).stdout.strip()
            for member in self.members:
                if member.name == pod:
                    return member.process("kubelet").log_tail(20)
            return self._scheduler.log_tail(20) if self._scheduler is not None else ""

        return wait_for_pod_ready(
            self.plane,
            namespace,
            name,
            timeout=timeout,
            check=self.check_components,
            diagnostics=diagnostics,
        )

    def service_gateway(self) -> Node:
        """The node the host sends Service traffic through (its route to the Service range)."""
        out = run(["ip", "-4", "route", "get", self.plane.config.kubernetes_service_ip]).stdout
        fields = out.split()
        via = fields[fields.index("via") + 1] if "via" in fields else ""
        for member in self.members:
            if member.ip == via:
                return member
        raise RuntimeError(f"the host sends Service traffic to no node of this cluster: {out}")

    def service_routed_from_host(self, cluster_ip: str, port: int, protocol: str = "tcp") -> bool:
        """Whether a packet from the host to ``cluster_ip:port`` reaches an endpoint: the host
        has none of kube-proxy's rules, its route takes the packet to a node, and that node's
        rules must rewrite it. Check this before sending to a ClusterIP from the host."""
        if iptables_chains():
            return False  # rules on the host itself would be some other program's
        return self.service_gateway().service_rules_present(cluster_ip, port, protocol)

    # ---- cluster-wide components -----------------------------------------------------

    def _start_scheduler(self) -> None:
        kubeconfig = self.plane.kubeconfig_for_certificate(
            "kube-scheduler", common_name="system:kube-scheduler"
        )
        serving = self.plane.ca.issue(
            "kube-scheduler-serving", common_name="kube-scheduler", server_hosts=("127.0.0.1",)
        )
        port = free_port()
        scheduler = ManagedProcess(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
            ],
            log_path=self.logs_dir / "kube-scheduler.log",
            tie_to_parent=self.tie_to_parent,
        )
        scheduler.start()
        self._scheduler = scheduler
        context = ssl.create_default_context(cafile=str(self.plane.ca.cert_path))

        def healthy() -> bool:
            scheduler.check_alive()
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/healthz", timeout=2, context=context
                ) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        try:
            wait_until(healthy, timeout=60, interval=0.25)
        except (ProcessFailedError, TimeoutError):
            raise NodeStartError(
                f"kube-scheduler: /healthz does not answer ok\n{scheduler.log_tail(30)}"
            ) from None

    def _deploy_coredns(self) -> None:
        image = nodeimages.render_image(
            [nodeimages.ImageFile("coredns", self.binaries.coredns)], entrypoint=["/coredns"]
        )
        self.coredns_image = f"wasmfleet.local/coredns:{image.tag}"
        for member in self.members:
            member.import_image(image, self.coredns_image)
        self.plane.kubectl_apply(
            *coredns_objects(
                self.coredns_image,
                cluster_domain=self.cluster_domain,
                cluster_dns=self.lan.network.cluster_dns,
            )
        )

        def available() -> bool:
            self.check_components()
            result = self.plane.kubectl(
                "get",
                "deployment",
                "coredns",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.status.readyReplicas}",
                check=False,
            )
            return result.stdout.strip() == "1"

        try:
            wait_until(available, timeout=self.ready_timeout, interval=0.25)
        except ProcessFailedError as error:
            raise NodeStartError(f"coredns: a component exited while starting: {error}") from None
        except TimeoutError:
            pods = self.plane.kubectl(
                "get", "pods", "-n", "kube-system", "-o", "wide", check=False
            ).stdout
            raise NodeStartError(f"coredns: not Ready\n{pods}") from None


@contextlib.contextmanager
def local_cluster(
    workdir: Path,
    *,
    nodes: int | Sequence[NodeConfig] = 2,
    registry: Registry | None = None,
    binaries: Binaries | None = None,
    node_binaries: NodeBinaries | None = None,
) -> Iterator[LocalCluster]:
    """The whole local cluster for a ``with`` block: the node LAN, a control plane on it and
    a started `LocalCluster`; everything is stopped and removed, in reverse, at the end.
    Binaries are built first when missing."""
    with NodeLan() as lan:
        plane = ControlPlane(
            binaries if binaries is not None else ensure_binaries(),
            workdir / "control-plane",
            ControlPlaneConfig(address=lan.host_ip, real_nodes=True),
        )
        plane.start()
        try:
            cluster = LocalCluster(
                plane,
                lan,
                workdir / "cluster",
                node_binaries if node_binaries is not None else ensure_node_binaries(),
                nodes=nodes,
                registry=registry,
            )
            cluster.start()
            try:
                yield cluster
            finally:
                cluster.stop()
        finally:
            plane.stop()


def coredns_objects(
    image: str, *, cluster_domain: str, cluster_dns: str
) -> Iterator[dict[str, Any]]:
    """CoreDNS as a Deployment and the ``kube-dns`` Service at ``cluster_dns``.

    The Corefile answers only for the cluster domain and reverse zones: it has no ``forward``,
    so no query ever leaves the machine.
    """
    labels = {"k8s-app": "kube-dns"}
    namespace = "kube-system"
    corefile = (
        ".:53 {\n"
        "    errors\n"
        "    health :8080\n"
        "    ready :8181\n"
        f"    kubernetes {cluster_domain} in-addr.arpa ip6.arpa {{\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "        ttl 5\n"
        "    }\n"
        "    cache 5\n"
        "}\n"
    )
    yield {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "coredns", "namespace": namespace},
    }
    yield {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "wasmfleet:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    yield {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "wasmfleet:coredns"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "wasmfleet:coredns",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": namespace}],
    }
    yield {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "coredns", "namespace": namespace},
        "data": {"Corefile": corefile},
    }
    yield {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "coredns",
                    "dnsPolicy": "Default",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "coredns",
                            "image": image,
                            # Imported into every node's containerd; there is nothing to pull.
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8181},
                                "periodSeconds": 2,
                            },
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                },
            },
        },
    }
    yield {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": namespace, "labels": labels},
        "spec": {
            "selector": labels,
            "clusterIP": cluster_dns,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    }
