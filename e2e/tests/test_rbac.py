"""Every RBAC rule the chart grants is needed: removing any one makes a specific call fail.

The operator and the agent run, in `test_operator.py`, as exactly the ServiceAccounts and
rules the chart renders. Here each rule is taken away in turn, on the real API server, and
the call of the component's own code that needs it is made with that ServiceAccount's
token: with the rule it passes, without it the API server answers 403 naming the resource.
A rule added to the chart without a case here fails `test_every_rule_has_a_case`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wasmfleet_agent.cluster.registration import (
    AgentIdentity,
    render_agent,
    render_agent_event,
    render_agent_writes,
    render_lease,
)
from wasmfleet_api.base import API_VERSION
from wasmfleet_common.kube import ApiError, KubeClient, KubeConfig, resource_for
from wasmfleet_harness.chart import ChartIdentities, run_as_chart_identities
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.processes import Workspace
from wasmfleet_operator.leader import LeaderElector

RELEASE = "rules"
NAMESPACE = "wasmfleet-rules"
DATA = "wasmfleet-rules-data"
SERVICES = resource_for(API_VERSION, "WasmService")
BINDINGS = resource_for(API_VERSION, "WasmBinding")
AGENTS = resource_for(API_VERSION, "WasmAgent")
LEASES = resource_for("coordination.k8s.io/v1", "Lease")
NODES = resource_for("v1", "Node")
SLICES = resource_for("discovery.k8s.io/v1", "EndpointSlice")
CONFIG_MAPS = resource_for("v1", "ConfigMap")
SECRETS = resource_for("v1", "Secret")

Probe = Callable[[KubeClient], Awaitable[Any]]


@dataclass(frozen=True)
class Case:
    component: str  # operator or agent
    kind: str  # ClusterRole or Role
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    probe: Probe
    denied: str  # what the 403 message names


IDENTITY = AgentIdentity(
    node_name="rules-node", address="10.0.0.1", architecture="amd64", lease_namespace=NAMESPACE
)


def _binding_status() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "WasmBinding",
        "metadata": {"name": "probe", "namespace": DATA},
        "status": {"phase": "Pending", "ready": False},
    }


def _service_status() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "WasmService",
        "metadata": {"name": "probe", "namespace": DATA},
        "status": {"replicas": 0},
    }


def _event() -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": "probe-", "namespace": DATA, "name": ""},
        "eventTime": now,
        "reportingController": "wasmfleet.dev/operator",
        "reportingInstance": "rules",
        "action": "Reconcile",
        "reason": "Probe",
        "type": "Normal",
        "regarding": {
            "apiVersion": API_VERSION,
            "kind": "WasmService",
            "name": "probe",
            "namespace": DATA,
        },
    }


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "probe", "namespace": DATA},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


async def _get_own_node(kube: KubeClient) -> Any:
    """The agent reading its Node (none by that name here: a 404 is an allowed read)."""
    try:
        return await kube.get(NODES, IDENTITY.node_name)
    except ApiError as error:
        if error.not_found:
            return None
        raise


async def _create_lease(kube: KubeClient) -> Any:
    lease = render_lease(IDENTITY)
    lease["metadata"] = {"generateName": "probe-", "namespace": NAMESPACE, "name": ""}
    return await kube.request("POST", LEASES.path(NAMESPACE), body=lease)


async def _take_leader_lease(kube: KubeClient) -> Any:
    # The operator's own election code: it reads the Lease and updates it to take or renew it.
    elector = LeaderElector(kube, NAMESPACE, "wasmfleet-operator", "rules-probe", duration=15)
    assert await elector.try_acquire()


CASES = [
    # ---- the agent --------------------------------------------------------------------
    Case(
        "agent",
        "ClusterRole",
        ("wasmagents",),
        ("get", "create", "patch"),
        lambda k: k.apply(render_agent_writes(render_agent(IDENTITY, allocated=0, ready=True))[0]),
        'resource "wasmagents"',
    ),
    Case(
        "agent",
        "ClusterRole",
        ("wasmagents/status",),
        ("patch",),
        lambda k: k.apply_status(
            render_agent_writes(render_agent(IDENTITY, allocated=0, ready=True))[1]
        ),
        'resource "wasmagents/status"',
    ),
    Case(
        "agent",
        "ClusterRole",
        ("wasmbindings",),
        ("list", "watch"),
        lambda k: k.list(BINDINGS, field_selector="spec.nodeName=rules-node"),
        'list resource "wasmbindings"',
    ),
    Case(
        "agent",
        "ClusterRole",
        ("wasmbindings/status",),
        ("patch",),
        lambda k: k.apply_status(_binding_status()),
        'resource "wasmbindings/status"',
    ),
    Case(
        "agent",
        "ClusterRole",
        ("configmaps", "secrets"),
        ("get",),
        lambda k: k.get(SECRETS, "probe", DATA),
        'get resource "secrets"',
    ),
    Case("agent", "ClusterRole", ("nodes",), ("get",), _get_own_node, 'get resource "nodes"'),
    Case(
        "agent",
        "ClusterRole",
        ("events",),
        ("create",),
        lambda k: k.create(
            render_agent_event(IDENTITY, type_="Normal", reason="Probe", note="a probe")
        ),
        'create resource "events"',
    ),
    Case(
        "agent",
        "Role",
        ("leases",),
        ("get", "create", "patch"),
        lambda k: k.apply(render_lease(IDENTITY)),
        'resource "leases"',
    ),
    # ---- the operator -----------------------------------------------------------------
    Case(
        "operator",
        "ClusterRole",
        ("wasmservices",),
        ("get", "list", "watch"),
        lambda k: k.list(SERVICES),
        'list resource "wasmservices"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("wasmservices/status",),
        ("get", "patch"),
        lambda k: k.apply_status(_service_status()),
        'resource "wasmservices/status"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("wasmbindings",),
        ("get", "list", "watch", "create", "patch", "delete"),
        lambda k: k.list(BINDINGS, namespace=DATA),
        'list resource "wasmbindings"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("wasmagents",),
        ("get", "list", "watch"),
        lambda k: k.list(AGENTS),
        'list resource "wasmagents"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("leases",),
        ("get", "list", "watch"),
        lambda k: k.list(LEASES),
        'list resource "leases"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("nodes",),
        ("get", "list", "watch"),
        lambda k: k.list(NODES),
        'list resource "nodes"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("services",),
        ("get", "list", "watch", "create", "patch", "delete"),
        lambda k: k.apply(_service()),
        'resource "services"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("endpointslices",),
        ("get", "list", "watch", "create", "patch", "delete"),
        lambda k: k.list(SLICES, namespace=DATA),
        'list resource "endpointslices"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("events",),
        ("create", "patch"),
        lambda k: k.create(_event()),
        'create resource "events"',
    ),
    Case(
        "operator",
        "ClusterRole",
        ("secrets",),
        ("get",),
        lambda k: k.get(SECRETS, "probe", DATA),
        'get resource "secrets"',
    ),
    Case("operator", "Role", ("leases",), ("create",), _create_lease, 'create resource "leases"'),
    Case(
        "operator",
        "Role",
        ("leases",),
        ("update",),
        _take_leader_lease,
        'update resource "leases"',
    ),
]


@pytest.fixture(scope="module")
def identities(wasmfleet_crds: ControlPlane, workspace: Workspace) -> ChartIdentities:
    plane = wasmfleet_crds
    found = run_as_chart_identities(
        plane, workspace.subdir("rbac-rules"), release=RELEASE, namespace=NAMESPACE
    )
    plane.kubectl_apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DATA}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "probe", "namespace": DATA},
            "stringData": {"k": "v"},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "WasmService",
            "metadata": {"name": "probe", "namespace": DATA},
            "spec": {"module": {"image": "registry.invalid/probe:1"}, "http": {}, "replicas": 0},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "WasmBinding",
            "metadata": {"name": "probe", "namespace": DATA},
            "spec": {
                "serviceName": "probe",
                "nodeName": "rules-node",
                "revision": "r1",
                "digest": "sha256:" + "0" * 64,
                "workload": {"module": {"image": "registry.invalid/probe:1"}, "http": {}},
            },
        },
    )
    return found


def _role(identities: ChartIdentities, case: Case) -> dict[str, Any]:
    name = f"{RELEASE}-wasmfleet-{case.component}"
    (role,) = [
        o for o in identities.objects if o["kind"] == case.kind and o["metadata"]["name"] == name
    ]
    return role


def _rule_index(role: dict[str, Any], case: Case) -> int:
    for index, rule in enumerate(role["rules"]):
        if tuple(rule["resources"]) == case.resources and tuple(rule["verbs"]) == case.verbs:
            return index
    raise AssertionError(f"no rule {case.resources} {case.verbs} in {role['metadata']['name']}")


def test_every_rule_has_a_case(identities: ChartIdentities) -> None:
    covered = {(c.component, c.kind, c.resources, c.verbs) for c in CASES}
    for obj in identities.objects:
        if obj["kind"] not in ("ClusterRole", "Role"):
            continue
        component = obj["metadata"]["name"].rsplit("-", 1)[-1]
        for rule in obj["rules"]:
            key = (component, obj["kind"], tuple(rule["resources"]), tuple(rule["verbs"]))
            assert key in covered, f"rule without a case: {key}"


@pytest.fixture
async def clients(identities: ChartIdentities) -> AsyncIterator[dict[str, KubeClient]]:
    made = {
        "operator": KubeClient(
            KubeConfig.from_kubeconfig(identities.operator), field_manager="wasmfleet-operator"
        ),
        "agent": KubeClient(
            KubeConfig.from_kubeconfig(identities.agent), field_manager="wasmfleet-agent"
        ),
    }
    yield made
    for client in made.values():
        await client.close()


def _replace_rules(plane: ControlPlane, role: dict[str, Any], rules: list[Any], tmp: Path) -> None:
    body = json.loads(json.dumps(role))
    body["rules"] = rules
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(body))


async def _denied(client: KubeClient, case: Case) -> str | None:
    try:
        await case.probe(client)
    except ApiError as error:
        if error.status == 403:
            return error.message
        raise
    return None


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: f"{c.component}-{c.kind}-{'+'.join(c.resources)}-{'+'.join(c.verbs)}",
)
async def test_removing_one_rule_breaks_exactly_the_call_that_needs_it(
    case: Case,
    identities: ChartIdentities,
    clients: dict[str, KubeClient],
    wasmfleet_crds: ControlPlane,
    tmp_path: Path,
) -> None:
    import asyncio

    plane = wasmfleet_crds
    client = clients[case.component]
    role = _role(identities, case)
    assert await _denied(client, case) is None, "allowed with the chart's rules"
    index = _rule_index(role, case)
    _replace_rules(plane, role, [r for i, r in enumerate(role["rules"]) if i != index], tmp_path)
    try:
        message = None
        for _ in range(100):  # the authorizer sees the change within moments
            message = await _denied(client, case)
            if message is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None, "still allowed without the rule"
        assert case.denied in message
        assert f"system:serviceaccount:{NAMESPACE}:{RELEASE}-wasmfleet-{case.component}" in (
            message
        )
    finally:
        _replace_rules(plane, role, role["rules"], tmp_path)
    for _ in range(100):
        if await _denied(client, case) is None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the rule, restored, did not allow the call again")
