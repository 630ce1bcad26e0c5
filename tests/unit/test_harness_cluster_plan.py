"""The local cluster's address plan: slots, routes, labels and the mounts a node drops.

These are the pure decisions behind `wasmfleet_harness.nodelan` and `wasmfleet_harness.node`;
the e2e suite applies them to real namespaces. What must hold everywhere: nothing in the
cluster's ranges can be sent off the machine, every node reaches every other node's Pods
directly, and the host sends Service traffic through a node that is on the LAN.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from wasmfleet_harness.node import plan_foreign_unmounts
from wasmfleet_harness.nodenet import (
    LAN_INTERFACE,
    ClusterNetwork,
    Route,
    bridge_mac,
    machine_architecture,
    parse_routes,
    plan_host_routes,
    plan_node_labels,
    plan_node_routes,
)

NETWORK = ClusterNetwork()


def test_node_slots_give_each_node_an_address_a_pod_range_and_names_of_its_own() -> None:
    first, second = NETWORK.slot(1), NETWORK.slot(2)
    assert (first.ip, first.pod_cidr, first.gateway) == (
        "10.251.0.2",
        "10.250.1.0/24",
        "10.250.1.1",
    )
    assert (second.ip, second.pod_cidr, second.netns) == ("10.251.0.3", "10.250.2.0/24", "lcnode2")
    assert NETWORK.host_ip == "10.251.0.1"
    slots = [NETWORK.slot(i) for i in range(1, NETWORK.max_nodes + 1)]
    assert len({s.ip for s in slots}) == len({s.pod_cidr for s in slots}) == len(slots)
    lan = ipaddress.ip_network(NETWORK.lan)
    assert all(ipaddress.ip_address(s.ip) in lan for s in slots)
    assert all(len(s.host_link) <= 15 for s in slots)
    # Other suites name their namespaces wf<pid>h<n> (test hosts) and wasmfleet*.
    assert not any(s.netns.startswith(("wf", "wasmfleet")) for s in slots)


@pytest.mark.parametrize("index", [0, -1, 254])
def test_a_slot_outside_the_lan_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        NETWORK.slot(index)


def test_ranges_that_overlap_or_hide_the_dns_address_are_reported() -> None:
    assert NETWORK.problems() == []
    overlapping = ClusterNetwork(lan="10.250.200.0/24")
    assert any("overlaps" in p for p in overlapping.problems())
    outside = ClusterNetwork(cluster_dns="10.97.0.10")
    assert any("DNS address" in p for p in outside.problems())


def _route_for(routes: set[Route], address: str) -> Route | None:
    """The most specific route covering ``address`` (what the kernel would pick)."""
    covering = [r for r in routes if ipaddress.ip_address(address) in ipaddress.ip_network(r.dst)]
    return max(covering, key=lambda r: ipaddress.ip_network(r.dst).prefixlen, default=None)


def test_the_host_reaches_every_joined_nodes_pods_through_that_node() -> None:
    routes = plan_host_routes(NETWORK, {1, 2, 3})
    for index in (1, 2, 3):
        slot = NETWORK.slot(index)
        route = _route_for(routes, slot.gateway)
        assert route == Route(slot.pod_cidr, via=slot.ip, dev=NETWORK.bridge)


def test_the_host_cannot_send_cluster_addresses_off_the_machine() -> None:
    for joined in (set(), {2}, {1, 2}):
        routes = plan_host_routes(NETWORK, joined)
        # An address in the Pod range of no joined node, and any Service address, are caught
        # by a route of ours before the machine's default route.
        assert _route_for(routes, "10.250.77.5") == Route(NETWORK.cluster_cidr, kind="unreachable")
        service = _route_for(routes, "10.96.3.4")
        assert service is not None
        if joined:
            assert service.via == NETWORK.slot(min(joined)).ip
        else:
            assert service.kind == "unreachable"


def test_each_node_reaches_the_others_pods_directly_and_services_only_on_the_lan() -> None:
    joined = {1, 2, 3}
    for index in joined:
        routes = plan_node_routes(NETWORK, index, joined)
        own = NETWORK.slot(index)
        # Its own Pods are on its bridge (a connected route), not routed through the LAN.
        assert _route_for(routes, own.gateway) is None
        for other in joined - {index}:
            slot = NETWORK.slot(other)
            assert _route_for(routes, slot.gateway) == Route(
                slot.pod_cidr, via=slot.ip, dev=LAN_INTERFACE
            )
        assert _route_for(routes, "10.96.0.10") == Route(NETWORK.service_cidr, dev=LAN_INTERFACE)
        # No default route: anything else is unreachable from the node.
        assert _route_for(routes, "192.0.2.1") is None


def test_pods_get_routes_to_pods_services_and_the_lan_but_no_default_route() -> None:
    slot = NETWORK.slot(2)
    assert NETWORK.pod_routes(slot) == [
        {"dst": "10.250.0.0/16", "gw": "10.250.2.1"},
        {"dst": "10.96.0.0/16", "gw": "10.250.2.1"},
        {"dst": "10.251.0.0/24", "gw": "10.250.2.1"},
    ]


def test_routes_read_back_from_ip_json_compare_equal_to_the_plan() -> None:
    # `ip -j route show proto 251` on a node while node 1 and 2 are joined (trimmed).
    shown = [
        {"dst": "10.96.0.0/16", "dev": "eth0", "scope": "link", "flags": []},
        {"dst": "10.250.1.0/24", "gateway": "10.251.0.2", "dev": "eth0", "flags": []},
    ]
    assert parse_routes(shown) == plan_node_routes(NETWORK, 2, {1, 2})
    host = [
        {"type": "unreachable", "dst": "10.250.0.0/16", "flags": []},
        {"dst": "10.251.0.9", "gateway": "10.251.0.2", "dev": "wfnode0", "flags": []},
    ]
    assert parse_routes(host) == {
        Route("10.250.0.0/16", kind="unreachable"),
        Route("10.251.0.9/32", via="10.251.0.2", dev="wfnode0"),
    }


def test_a_route_renders_as_ip_route_arguments_tagged_with_the_harness_protocol() -> None:
    assert Route("10.250.2.0/24", via="10.251.0.3", dev="wfnode0").argv() == [
        "10.250.2.0/24", "via", "10.251.0.3", "dev", "wfnode0", "proto", "251",
    ]  # fmt: skip
    assert Route("10.96.0.0/16", kind="unreachable").argv() == [
        "unreachable", "10.96.0.0/16", "proto", "251",
    ]  # fmt: skip


def test_every_bridge_of_the_cluster_gets_a_fixed_mac_of_its_own() -> None:
    # The LAN bridge holds the host's address, each node's Pod bridge its gateway.
    addresses = [NETWORK.host_ip] + [
        NETWORK.slot(i).gateway for i in range(1, NETWORK.max_nodes + 1)
    ]
    macs = [bridge_mac(address) for address in addresses]
    assert macs[:2] == ["02:00:0a:fb:00:01", "02:00:0a:fa:01:01"]
    assert len(set(macs)) == len(macs)
    # Locally administered, unicast: never a vendor's address, never a group address.
    assert all(int(mac[:2], 16) & 0b11 == 0b10 for mac in macs)


@pytest.mark.parametrize(
    ("machine", "architecture"),
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"), ("AMD64", "amd64")],
)
def test_the_machine_name_maps_to_the_kubernetes_architecture(
    machine: str, architecture: str
) -> None:
    assert machine_architecture(machine) == architecture


def test_an_unknown_machine_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="riscv128"):
        machine_architecture("riscv128")


def test_the_kubelet_registers_the_labels_it_may_set_and_the_admin_adds_the_rest() -> None:
    kubelet, admin = plan_node_labels(
        "amd64",
        {
            "wasmfleet.dev/pool": "blue",
            "topology.kubernetes.io/zone": "a",
            "example.node.kubernetes.io/disk": "ssd",
            "node-role.kubernetes.io/worker": "",
            "kubernetes.io/role": "worker",
        },
    )
    assert kubelet == {
        "kubernetes.io/arch": "amd64",
        "wasmfleet.dev/pool": "blue",
        "topology.kubernetes.io/zone": "a",
        "example.node.kubernetes.io/disk": "ssd",
    }
    assert admin == {"node-role.kubernetes.io/worker": "", "kubernetes.io/role": "worker"}


def test_extra_labels_may_override_the_architecture() -> None:
    kubelet, _ = plan_node_labels("amd64", {"kubernetes.io/arch": "arm64"})
    assert kubelet["kubernetes.io/arch"] == "arm64"


def test_a_node_drops_other_programs_mounts_and_keeps_what_it_runs_from() -> None:
    mounts = [
        Path(p)
        for p in (
            "/",
            "/proc",
            "/sys",
            "/sys/fs/cgroup/memory",
            "/dev",
            "/dev/pts",
            "/run/netns",
            "/run/netns/wf123h0",
            "/root/.cache/wasmfleet/images/storage/overlay",
            "/root/.cache/wasmfleet/images/storage/overlay/abc/merged",
            "/scratch",
            "/scratch/tests/ws/node/kubelet",
        )
    ]
    drop = plan_foreign_unmounts(
        mounts, [Path("/scratch/tests/ws/node"), Path("/root/.cache/wasmfleet/bin/kubelet")]
    )
    # Deepest first, so that no mount is dropped before the ones stacked below it.
    assert drop == [
        Path("/root/.cache/wasmfleet/images/storage/overlay/abc/merged"),
        Path("/root/.cache/wasmfleet/images/storage/overlay"),
        Path("/scratch/tests/ws/node/kubelet"),
        Path("/run/netns/wf123h0"),
        Path("/run/netns"),
    ]
