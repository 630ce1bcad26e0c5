"""Reading kube-proxy's NAT rules: a ClusterIP counts as routed only with an endpoint behind it.

The harness sends nothing to a ClusterIP unless this says kube-proxy's rules would keep the
packet on the machine; the sample is ``iptables-save -t nat`` from a local node (trimmed).
"""

# The sample keeps kube-proxy's lines whole, as iptables-save prints them.
# ruff: noqa: E501

from __future__ import annotations

import pytest

from wasmfleet_harness.nodenet import service_routed

NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SVC-ERIFXISQEP7F7OF4 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-SERVICES -d 10.251.0.1/32 -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -j KUBE-NODEPORTS
-A KUBE-SVC-NPX46M4PTMTKRN6Y -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-MARK-MASQ
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 10.251.0.1:58781" -j KUBE-SEP-QIEHKSGFWSOWOOLL
-A KUBE-SVC-TCOU7JCQXEZGVUNU -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns -> 10.250.0.2:53" -j KUBE-SEP-5KU7Y57ROQPNO6WL
-A KUBE-SVC-ERIFXISQEP7F7OF4 -d 10.96.0.10/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-MARK-MASQ
COMMIT
"""


@pytest.mark.parametrize(
    ("address", "port", "protocol"), [("10.96.0.1", 443, "tcp"), ("10.96.0.10", 53, "udp")]
)
def test_a_service_with_an_endpoint_chain_is_routed(address: str, port: int, protocol: str) -> None:
    assert service_routed(NAT, address, port, protocol)


@pytest.mark.parametrize(
    ("address", "port", "protocol", "why"),
    [
        ("10.96.0.10", 53, "tcp", "its Service chain has no endpoint"),
        ("10.96.0.1", 80, "tcp", "another port"),
        ("10.96.0.1", 443, "udp", "another protocol"),
        ("10.96.0.2", 443, "tcp", "no rule for the address"),
        ("10.96.0.1", 58781, "tcp", "a number in a comment is not a port"),
    ],
)
def test_a_service_without_a_full_path_to_an_endpoint_is_not_routed(
    address: str, port: int, protocol: str, why: str
) -> None:
    assert not service_routed(NAT, address, port, protocol), why


def test_nothing_is_routed_from_this_host_when_output_does_not_reach_kube_services() -> None:
    without_output = "\n".join(
        line for line in NAT.splitlines() if not line.startswith("-A OUTPUT")
    )
    assert not service_routed(without_output, "10.96.0.1", 443)
    assert not service_routed("", "10.96.0.1", 443)


def test_forwarded_traffic_is_routed_only_when_prerouting_reaches_kube_services() -> None:
    # What a node forwards (its Pods', the host's) meets the rules in PREROUTING.
    assert service_routed(NAT, "10.96.0.1", 443, entry="PREROUTING")
    without_prerouting = "\n".join(
        line for line in NAT.splitlines() if not line.startswith("-A PREROUTING")
    )
    assert service_routed(without_prerouting, "10.96.0.1", 443, entry="OUTPUT")
    assert not service_routed(without_prerouting, "10.96.0.1", 443, entry="PREROUTING")
