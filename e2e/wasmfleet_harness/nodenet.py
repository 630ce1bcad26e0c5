"""The local cluster's address plan and routes, as pure functions of which nodes have joined.

Every node of the local cluster (`wasmfleet_harness.node`) runs in a network namespace of its
own, joined by a veth pair to one bridge on the host, the *node LAN*. The host is the LAN's
first address and the API server listens there; node ``i`` is the LAN's address ``i + 1``
and hands its Pods ``10.250.i.0/24``. Routes make the pieces one cluster without the host
forwarding anything: nodes reach each other's Pods through each other's LAN address (the
bridge switches, it does not route), the host reaches every node's Pods the same way, and it
sends Service traffic to one node, whose kube-proxy rewrites it.

Nothing in these ranges can leave the machine: the nodes have no default route; the host has
an ``unreachable`` route for the whole Pod range (more specific routes to joined nodes win)
and, with no node joined, for the Service range too; a node's route to the Service range
points at the LAN itself, where nobody answers for an address kube-proxy did not rewrite.

This module decides; `wasmfleet_harness.nodelan` and `wasmfleet_harness.node` apply.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LAN_INTERFACE",
    "POD_BRIDGE",
    "ROUTE_PROTOCOL",
    "ClusterNetwork",
    "NodeSlot",
    "Route",
    "bridge_mac",
    "machine_architecture",
    "parse_routes",
    "plan_host_routes",
    "plan_node_labels",
    "plan_node_routes",
    "service_routed",
]

# Routes the harness adds carry this protocol number, so it reads back and removes only its own.
ROUTE_PROTOCOL = 251
# Interface names inside a node's network namespace: its end of the LAN and its Pods' bridge.
LAN_INTERFACE = "eth0"
POD_BRIDGE = "cni0"
_NETNS_PREFIX = "lcnode"


@dataclass(frozen=True)
class NodeSlot:
    """What node ``index`` of the cluster gets: its LAN address, Pod range and names."""

    index: int
    ip: str
    pod_cidr: str
    lan_prefix_len: int

    @property
    def netns(self) -> str:
        """Its network namespace (``/run/netns/<netns>``); not ``wf*``/``wasmfleet*``, which
        the agents' test hosts use."""
        return f"{_NETNS_PREFIX}{self.index}"

    @property
    def host_link(self) -> str:
        """The host's end of its veth pair, on the LAN bridge."""
        return f"{_NETNS_PREFIX}{self.index}"

    @property
    def gateway(self) -> str:
        """Its Pod bridge's address: the Pods' next hop for everything they may reach."""
        return str(ipaddress.ip_network(self.pod_cidr)[1])


@dataclass(frozen=True)
class ClusterNetwork:
    """The cluster's ranges: the node LAN, the Pod range (a /24 per node) and Services."""

    lan: str = "10.251.0.0/24"
    cluster_cidr: str = "10.250.0.0/16"
    service_cidr: str = "10.96.0.0/16"
    # The ClusterIP of CoreDNS's Service; inside the Service range.
    cluster_dns: str = "10.96.0.10"
    # The host's side of the LAN; an interface name of at most 15 characters.
    bridge: str = "wfnode0"

    @property
    def host_ip(self) -> str:
        """The host's address on the LAN: the API server listens here."""
        return str(ipaddress.ip_network(self.lan)[1])

    @property
    def max_nodes(self) -> int:
        lan = ipaddress.IPv4Network(self.lan)
        cluster = ipaddress.IPv4Network(self.cluster_cidr)
        # The LAN loses its network, broadcast and host addresses; Pod /24 number 0 is unused.
        pod_ranges: int = 2 ** max(24 - cluster.prefixlen, 0) - 1
        return min(lan.num_addresses - 3, pod_ranges)

    def slot(self, index: int) -> NodeSlot:
        """Node ``index`` (1-based): LAN address ``index + 1`` and Pods ``10.250.index.0/24``."""
        if not 1 <= index <= self.max_nodes:
            raise ValueError(f"node index {index} outside 1..{self.max_nodes}")
        lan = ipaddress.IPv4Network(self.lan)
        cluster = ipaddress.IPv4Network(self.cluster_cidr)
        # The index-th /24 of the Pod range.
        pod_cidr = ipaddress.IPv4Network((int(cluster.network_address) + (index << 8), 24))
        return NodeSlot(
            index=index,
            ip=str(lan[1 + index]),
            pod_cidr=str(pod_cidr),
            lan_prefix_len=lan.prefixlen,
        )

    def networks(self) -> list[ipaddress.IPv4Network]:
        """The ranges that must overlap nothing on the machine."""
        return [
            ipaddress.IPv4Network(self.lan),
            ipaddress.IPv4Network(self.cluster_cidr),
            ipaddress.IPv4Network(self.service_cidr),
        ]

    def problems(self) -> list[str]:
        """Why these ranges cannot work together (empty when they can)."""
        nets = self.networks()
        found = [
            f"{a} overlaps {b}" for i, a in enumerate(nets) for b in nets[i + 1 :] if a.overlaps(b)
        ]
        if ipaddress.ip_address(self.cluster_dns) not in ipaddress.ip_network(self.service_cidr):
            found.append(f"the DNS address {self.cluster_dns} is outside {self.service_cidr}")
        if ipaddress.ip_network(self.cluster_cidr).prefixlen > 23:
            found.append(f"{self.cluster_cidr} holds no /24 for a node")
        if len(self.bridge) > 15:
            found.append(f"interface name {self.bridge!r} is longer than 15 characters")
        return found

    def pod_routes(self, slot: NodeSlot) -> list[dict[str, str]]:
        """The routes a Pod of ``slot`` gets (CNI IPAM format): other Pods, Services and the
        LAN, all through its bridge; no default route, so nothing it sends leaves the cluster."""
        return [
            {"dst": destination, "gw": slot.gateway}
            for destination in (self.cluster_cidr, self.service_cidr, self.lan)
        ]


@dataclass(frozen=True, order=True)
class Route:
    """One route of the main table: ``kind`` is ``unicast`` or ``unreachable``."""

    dst: str
    via: str | None = None
    dev: str | None = None
    kind: str = "unicast"

    def argv(self) -> list[str]:
        """Arguments after ``ip route add``/``del``, tagged with the harness's protocol."""
        words = [] if self.kind == "unicast" else [self.kind]
        words.append(self.dst)
        if self.via is not None:
            words += ["via", self.via]
        if self.dev is not None:
            words += ["dev", self.dev]
        return [*words, "proto", str(ROUTE_PROTOCOL)]


def parse_routes(entries: list[dict[str, Any]]) -> set[Route]:
    """Routes from ``ip -j route show proto 251`` (a /32 shows without its prefix)."""
    return {
        Route(
            dst=str(ipaddress.ip_network(entry["dst"])),
            via=entry.get("gateway"),
            # An unreachable route's device is the loopback the kernel hangs it on.
            dev=entry.get("dev") if entry.get("type", "unicast") == "unicast" else None,
            kind=entry.get("type", "unicast"),
        )
        for entry in entries
    }


def plan_host_routes(network: ClusterNetwork, joined: Collection[int]) -> set[Route]:
    """The host's routes while nodes ``joined`` are on the LAN."""
    routes = {Route(network.cluster_cidr, kind="unreachable")}
    for index in joined:
        slot = network.slot(index)
        routes.add(Route(slot.pod_cidr, via=slot.ip, dev=network.bridge))
    if joined:
        # Host-originated Service traffic goes to the lowest joined node; its kube-proxy
        # rewrites the ClusterIP in PREROUTING like any Pod's.
        gateway = network.slot(min(joined))
        routes.add(Route(network.service_cidr, via=gateway.ip, dev=network.bridge))
    else:
        routes.add(Route(network.service_cidr, kind="unreachable"))
    return routes


def plan_node_routes(network: ClusterNetwork, index: int, joined: Collection[int]) -> set[Route]:
    """Node ``index``'s routes while nodes ``joined`` are on the LAN (its connected routes,
    to the LAN and its own Pods, come with its addresses)."""
    routes = {
        # A ClusterIP leaves through the LAN only if kube-proxy did not rewrite it, and then
        # nobody answers for it there. Locally sent packets need a route before kube-proxy's
        # OUTPUT rules see them at all, so this cannot be an unreachable route.
        Route(network.service_cidr, dev=LAN_INTERFACE)
    }
    for other in joined:
        if other != index:
            slot = network.slot(other)
            routes.add(Route(slot.pod_cidr, via=slot.ip, dev=LAN_INTERFACE))
    return routes


def bridge_mac(address: str) -> str:
    """A fixed MAC address for the bridge that holds ``address``: ``02:00`` (locally
    administered) and the address's four bytes, so it is unique among the cluster's bridges.

    A Linux bridge without one takes the lowest MAC of its ports and changes it when that port
    goes: when a node left, the others kept sending to the host's old MAC on the LAN (and a
    Pod to its bridge's old MAC) until their neighbour entries expired, and connections to the
    API server hung.
    """
    octets = ipaddress.IPv4Address(address).packed
    return ":".join(f"{b:02x}" for b in (0x02, 0x00, *octets))


_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def machine_architecture(machine: str) -> str:
    """The Kubernetes architecture name (``kubernetes.io/arch``) of ``platform.machine()``."""
    try:
        return _ARCHITECTURES[machine.lower()]
    except KeyError:
        raise ValueError(f"no Kubernetes architecture known for machine {machine!r}") from None


# Labels in the kubernetes.io and k8s.io namespaces a kubelet may set on its own Node; the
# NodeRestriction admission plugin refuses the others, and so does the kubelet's flag check.
_KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
    }
)
_KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
_RESTRICTED_NAMESPACES = ("kubernetes.io", "k8s.io")


def _within(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def _kubelet_may_set(key: str) -> bool:
    namespace = key.partition("/")[0] if "/" in key else ""
    if not any(_within(namespace, domain) for domain in _RESTRICTED_NAMESPACES):
        return True
    return key in _KUBELET_LABELS or any(
        _within(namespace, domain) for domain in _KUBELET_LABEL_NAMESPACES
    )


def plan_node_labels(
    architecture: str, extra: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """A node's labels as (those its kubelet registers it with, those the admin must add).

    ``kubernetes.io/arch`` is the machine's own architecture unless ``extra`` says otherwise;
    labels a kubelet may not set on itself (``node-role.kubernetes.io/...``) are the admin's.
    """
    labels = {"kubernetes.io/arch": architecture, **extra}
    kubelet = {k: v for k, v in labels.items() if _kubelet_may_set(k)}
    admin = {k: v for k, v in labels.items() if not _kubelet_may_set(k)}
    return kubelet, admin


def service_routed(
    nat_rules: str, cluster_ip: str, port: int, protocol: str = "tcp", *, entry: str = "OUTPUT"
) -> bool:
    """Whether ``nat_rules`` (``iptables-save -t nat``) send ``cluster_ip:port`` to an endpoint.

    ``entry`` is where the packet meets the rules: ``OUTPUT`` for what the namespace sends
    itself, ``PREROUTING`` for what it forwards (a Pod's, or the host's through a node). That
    chain must jump to ``KUBE-SERVICES``, which must match the address, protocol and port and
    lead to a Service chain with at least one endpoint chain.
    """
    rules = [shlex.split(line) for line in nat_rules.splitlines() if line.startswith("-A ")]

    def option(rule: list[str], name: str) -> str | None:
        return rule[rule.index(name) + 1] if name in rule[:-1] else None

    if not any(r[1] == entry and option(r, "-j") == "KUBE-SERVICES" for r in rules):
        return False
    service_chains = {
        option(r, "-j")
        for r in rules
        if r[1] == "KUBE-SERVICES"
        and option(r, "-d") == f"{cluster_ip}/32"
        and option(r, "-p") == protocol
        and option(r, "--dport") == str(port)
    }
    return any(
        r[1] in service_chains and (option(r, "-j") or "").startswith("KUBE-SEP-") for r in rules
    )
