"""Each agent writes only its own node's objects: the chart's ValidatingAdmissionPolicy.

Every agent runs as one ServiceAccount, so RBAC cannot tell them apart. The token a kubelet
projects into an agent's Pod names the Pod's node (``authentication.kubernetes.io/node-name``)
and the chart's policy checks every write of the agent identity against it. Here the policy
and the chart's RBAC are applied to the real API server, and the agent's tokens are minted
with the TokenRequest API bound to Node objects, which puts the same node-name claim in them
(`test_chart_on_cluster.py` uses the kubelet's own projected token of a running agent Pod).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from wasmfleet_common.kube import ApiError, KubeClient, KubeConfig
from wasmfleet_harness.chart import render_chart, run_as_chart_identities
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.processes import Workspace

RELEASE = "confined"
NAMESPACE = "wasmfleet-confined"
DATA = "wasmfleet-confined-data"
OWN, OTHER = "confined-a", "confined-b"
POLICY_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


@dataclass(frozen=True)
class Confined:
    plane: ControlPlane
    kubeconfigs: dict[str, Path]
    """Per node name, the agent identity's token bound to that Node; ``""``: not bound."""


def _identity(node: str) -> AgentIdentity:
    return AgentIdentity(
        node_name=node, address="10.0.0.1", architecture="amd64", lease_namespace=NAMESPACE
    )


def _binding(node: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "WasmBinding",
        "metadata": {"name": f"on-{node}", "namespace": DATA},
        "spec": {
            "serviceName": "probe",
            "nodeName": node,
            "revision": "r1",
            "digest": "sha256:" + "0" * 64,
            "workload": {"module": {"image": "registry.invalid/probe:1"}, "http": {}},
        },
    }


@pytest.fixture(scope="module")
def confined(wasmfleet_crds: ControlPlane, workspace: Workspace) -> Iterator[Confined]:
    plane = wasmfleet_crds
    workdir = workspace.subdir("agent-admission")
    identities = run_as_chart_identities(plane, workdir, release=RELEASE, namespace=NAMESPACE)
    policy = [o for o in render_chart(plane, RELEASE, NAMESPACE) if o["kind"] in POLICY_KINDS]
    assert {o["kind"] for o in policy} == POLICY_KINDS, "the chart installs the policy"
    plane.kubectl_apply(*policy)
    plane.kubectl_apply(
        *({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in (OWN, OTHER)),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DATA}},
        {
            "apiVersion": API_VERSION,
            "kind": "WasmService",
            "metadata": {"name": "probe", "namespace": DATA},
            "spec": {"module": {"image": "registry.invalid/probe:1"}, "http": {}, "replicas": 0},
        },
        _binding(OWN),
        _binding(OTHER),
        # both nodes' WasmAgents exist (a status write to a missing one is a 404 first)
        *(
            render_agent_writes(render_agent(_identity(n), allocated=0, ready=True))[0]
            for n in (OWN, OTHER)
        ),
    )
    (account,) = [
        o["metadata"]["name"]
        for o in identities.objects
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"].endswith("-agent")
    ]
    kubeconfigs = {"": identities.agent}
    for node in (OWN, OTHER):
        token = plane.kubectl(
            "create",
            "token",
            account,
            "-n",
            NAMESPACE,
            "--bound-object-kind",
            "Node",
            "--bound-object-name",
            node,
            "--duration",
            "1h",
        ).stdout.strip()
        kubeconfigs[node] = plane.kubeconfig_for_token(token, workdir / f"{node}.kubeconfig")
    try:
        yield Confined(plane, kubeconfigs)
    finally:
        for obj in policy:
            plane.kubectl("delete", obj["kind"], obj["metadata"]["name"], check=False)
        for node in (OWN, OTHER):
            plane.kubectl("delete", "wasmagent", node, "--ignore-not-found", check=False)
            plane.kubectl("delete", "node", node, "--ignore-not-found", check=False)


@pytest.fixture
async def as_agent(confined: Confined) -> AsyncIterator[Callable[[str], KubeClient]]:
    """``as_agent(node)``: a client with the agent identity's token bound to ``node``."""
    clients: list[KubeClient] = []

    def make(node: str) -> KubeClient:
        client = KubeClient(
            KubeConfig.from_kubeconfig(confined.kubeconfigs[node]), field_manager="wasmfleet-agent"
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def _refusal(call: Callable[[], Awaitable[Any]]) -> str | None:
    """The policy's message when the API server refuses ``call`` (403), else None."""
    try:
        await call()
    except ApiError as error:
        if error.status == 403:
            return error.message
        raise
    return None


async def _refused_once_in_force(call: Callable[[], Awaitable[Any]]) -> str:
    """The refusal of ``call``, waiting for a new policy to take effect (within seconds)."""
    for _ in range(200):
        message = await _refusal(call)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError("the write was never refused")


def _writes(kube: KubeClient, node: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Every kind of write an agent makes, aimed at ``node``'s objects."""
    obj, status = render_agent_writes(render_agent(_identity(node), allocated=0, ready=True))
    return {
        "WasmAgent": lambda: kube.apply(obj),
        "WasmAgent status": lambda: kube.apply_status(status),
        "Lease": lambda: kube.apply(render_lease(_identity(node))),
        "binding status": lambda: kube.apply_status(
            {
                "apiVersion": API_VERSION,
                "kind": "WasmBinding",
                "metadata": {"name": f"on-{node}", "namespace": DATA},
                "status": {"phase": "Pending", "ready": False},
            }
        ),
        "Event": lambda: kube.create(
            render_agent_event(_identity(node), type_="Normal", reason="Probe", note="a probe")
        ),
    }


async def test_an_agent_is_refused_every_write_to_another_nodes_objects(
    confined: Confined, as_agent: Callable[[str], KubeClient]
) -> None:
    kube = as_agent(OWN)
    writes = _writes(kube, OTHER)
    first = await _refused_once_in_force(writes["WasmAgent"])
    assert f"the agent of node {OWN} may write only the WasmAgent and the Lease" in first
    messages = {what: await _refusal(call) for what, call in writes.items()}
    assert all(messages.values()), messages
    assert "may write only the WasmAgent and the Lease named after its node" in (
        messages["Lease"] or ""
    )
    assert f"the agent of node {OWN} may write only the status of bindings on its own node" in (
        messages["binding status"] or ""
    )
    assert "may post Events only about its own WasmAgent" in (messages["Event"] or "")
    # nor the operator's leader Lease, in the same namespace as the agents' Leases
    leader = render_lease(_identity("wasmfleet-operator"))
    assert await _refusal(lambda: kube.apply(leader)) is not None


async def test_an_agent_still_writes_its_own_nodes_objects(
    confined: Confined, as_agent: Callable[[str], KubeClient]
) -> None:
    kube = as_agent(OWN)
    await _refused_once_in_force(_writes(kube, OTHER)["WasmAgent"])  # the policy is in force
    for what, call in _writes(kube, OWN).items():
        assert await _refusal(call) is None, what
    written = confined.plane.kubectl_json("get", "wasmagent", OWN)
    assert written["status"]["architecture"] == "amd64"


async def test_an_agent_token_that_names_no_node_may_write_nothing(
    confined: Confined, as_agent: Callable[[str], KubeClient]
) -> None:
    kube = as_agent("")
    for what, call in _writes(kube, OWN).items():
        message = await _refused_once_in_force(call)
        assert "the agent's token names no node" in message, what
