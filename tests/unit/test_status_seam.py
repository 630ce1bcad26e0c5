"""Binding and agent status cross from the agent to the operator through the API models.

The agent's own `render_binding_status` and `render_agent` write what these tests put on the
wire (as JSON, the way the API server hands it back); the operator's own `plan_service` and
`Fleet` read it. Nothing here re-implements either side.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from wasmfleet_agent.cluster.registration import (
    AgentIdentity,
    NodeArchitecture,
    render_agent,
    render_agent_writes,
)
from wasmfleet_agent.lifecycle import (
    BindingState,
    advance,
    render_binding_status,
    stale_config,
)
from wasmfleet_api.agent import WasmAgent
from wasmfleet_api.binding import BindingPhase, WasmBinding
from wasmfleet_api.wasmservice import Placement, RollingUpdate, WasmService
from wasmfleet_operator.fleet import Fleet
from wasmfleet_operator.planner import NodeInfo, plan_placements
from wasmfleet_operator.render import render_binding, render_revision
from wasmfleet_operator.service_plan import NodeFacts, ServicePlan, ServiceView, plan_service

DIGEST = "sha256:" + "b" * 64
FACTS = {
    "node-a": NodeFacts(ready=True, architecture="amd64", address="10.0.0.1"),
    "node-b": NodeFacts(ready=True, architecture="amd64", address="10.0.0.2"),
}
NODES = [NodeInfo(name=name, arch=facts.architecture) for name, facts in FACTS.items()]


def _service(replicas: int = 1) -> WasmService:
    return WasmService.model_validate(
        {
            "metadata": {"name": "hello", "namespace": "team", "uid": "u-1", "generation": 1},
            "spec": {
                "module": {"image": "r.example.com/hello:1"},
                "http": {"port": 8080},
                "replicas": replicas,
            },
        }
    )


def _walk(*phases: BindingPhase, error: str | None = None) -> BindingState:
    state = BindingState()
    for phase in phases:
        state = advance(state, phase, error=error if phase.failing else None)
    return state


def _reported(service: WasmService, node: str, state: BindingState, **where: Any) -> WasmBinding:
    """The binding the operator wrote for ``node``, with the status its agent wrote for
    ``state``, as the operator lists it back from the API server."""
    binding = render_binding(
        service, node=node, revision=render_revision(service.spec.workload(), DIGEST), digest=DIGEST
    )
    wire = binding.to_kube()
    wire["metadata"]["generation"] = 1
    address = FACTS[node].address
    wire["status"] = render_binding_status(binding, state, address=address, **where).to_kube()
    return WasmBinding.model_validate(json.loads(json.dumps(wire)))


def _plan(service: WasmService, *bindings: WasmBinding, **view: Any) -> ServicePlan:
    return plan_service(
        ServiceView(
            service=service,
            previous=None,
            digest=DIGEST,
            bindings=bindings,
            nodes=NODES,
            now="t1",
            **{"facts": FACTS, **view},
        )
    )


def _condition(plan: ServicePlan, type_: str) -> tuple[str, str]:
    found = next(c for c in plan.status.conditions if c.type == type_)
    return found.status, found.reason


READY = (BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.READY)


def test_a_replica_its_agent_reports_ready_is_routed_to_its_address_and_port() -> None:
    service = _service()
    plan = _plan(service, _reported(service, "node-a", _walk(*READY), port=31000))
    (slice_,) = plan.endpoint_slices
    assert slice_["ports"][0]["port"] == 31000
    assert slice_["endpoints"][0]["addresses"] == ["10.0.0.1"]
    assert _condition(plan, "Ready") == ("True", "AllReplicasReady")
    (placement,) = plan.status.placements
    assert (placement.phase, placement.ready) == ("Ready", True)


def test_after_an_agent_restart_a_ready_status_of_its_earlier_run_is_not_routed() -> None:
    """The port an earlier run of the agent listened on is closed once it restarted: its
    statuses count again only when the new run has written them."""
    service = _service()
    restarted = {**FACTS, "node-a": dataclasses.replace(FACTS["node-a"], instance="run-2")}
    earlier = _reported(service, "node-a", _walk(*READY), port=31000, agent_instance="run-1")
    plan = _plan(service, earlier, facts=restarted)
    assert not plan.endpoint_slices
    assert _condition(plan, "Ready")[0] == "False"
    (placement,) = plan.status.placements
    assert not placement.ready
    again = _reported(service, "node-a", _walk(*READY), port=31007, agent_instance="run-2")
    (slice_,) = _plan(service, again, facts=restarted).endpoint_slices
    assert slice_["ports"][0]["port"] == 31007


def test_a_binding_status_naming_another_address_than_its_agents_is_never_routed() -> None:
    service = _service(replicas=2)
    honest = _reported(service, "node-a", _walk(*READY), port=31000)
    reported = _reported(service, "node-b", _walk(*READY), port=31001)
    assert reported.status is not None
    # what anyone who may write binding statuses could write
    forged = reported.model_copy(
        update={"status": reported.status.model_copy(update={"address": "10.99.0.66"})}
    )
    plan = _plan(service, honest, forged)
    (slice_,) = plan.endpoint_slices
    assert [e["addresses"] for e in slice_["endpoints"]] == [["10.0.0.1"]]
    (event,) = [e for e in plan.events if e.reason == "AddressMismatch"]
    assert event.type == "Warning"
    assert "reports address 10.99.0.66" in event.message
    assert "registered 10.0.0.2" in event.message
    assert {p.node: p.ready for p in plan.status.placements} == {"node-a": True, "node-b": False}


def test_a_replica_retried_after_a_crash_keeps_the_service_crash_looping() -> None:
    service = _service()
    crashed = _walk(
        BindingPhase.PULLING,
        BindingPhase.COMPILING,
        BindingPhase.CRASH_LOOP_BACKOFF,
        BindingPhase.PULLING,
        error="env SECRET: Secret s1 not found",
    )
    plan = _plan(service, _reported(service, "node-a", crashed))
    assert _condition(plan, "Degraded") == ("True", "CrashLooping")
    assert not plan.endpoint_slices
    (placement,) = plan.status.placements
    assert (placement.phase, placement.message) == ("Pulling", "env SECRET: Secret s1 not found")


def test_a_replica_on_its_last_good_configuration_is_ready_and_reported_stale() -> None:
    service = _service()
    stale = stale_config(_walk(*READY), "Secret s1 not found")
    plan = _plan(service, _reported(service, "node-a", stale, port=31000))
    assert _condition(plan, "Ready") == ("True", "AllReplicasReady")
    assert _condition(plan, "Degraded") == ("True", "StaleConfiguration")
    degraded = next(c for c in plan.status.conditions if c.type == "Degraded")
    assert "Secret s1 not found" in degraded.message


def test_a_binding_no_agent_has_reported_on_is_pending_and_not_routed() -> None:
    service = _service()
    binding = render_binding(
        service,
        node="node-a",
        revision=render_revision(service.spec.workload(), DIGEST),
        digest=DIGEST,
    )
    plan = _plan(service, WasmBinding.model_validate(binding.to_kube()))
    assert not plan.endpoint_slices
    assert not plan.create
    (placement,) = plan.status.placements
    assert (placement.phase, placement.ready) == ("Pending", False)


def test_a_binding_that_does_not_parse_is_deleted_and_reported() -> None:
    service = _service()
    plan = _plan(service, unreadable=[("hello-x-1", "spec.digest: invalid")])
    assert plan.remove_drifted == ("hello-x-1",)
    (event,) = [e for e in plan.events if e.reason == "BindingDrifted"]
    assert event.type == "Warning"
    assert "hello-x-1 is not a valid WasmBinding (spec.digest: invalid)" in event.message


IDENTITY = AgentIdentity(node_name="node-c", address="10.0.0.3", architecture="arm64", capacity=12)


def _as_listed(obj: dict[str, Any], status: dict[str, Any], **spec: Any) -> WasmAgent:
    """The WasmAgent as the API server hands it back after the agent's two applies (the
    status subresource takes only the status), with ``spec`` set by someone else."""
    stored = {**obj, "spec": {**obj["spec"], **spec}, "status": status["status"]}
    return WasmAgent.model_validate(json.loads(json.dumps(stored)))


def test_the_agent_the_agent_writes_is_the_node_the_operator_schedules_on() -> None:
    fleet = Fleet(clock=lambda: 0.0)
    fleet.update_agent(
        _as_listed(*render_agent_writes(render_agent(IDENTITY, allocated=3, ready=True)))
    )
    (info,) = fleet.node_infos()
    assert (info.name, info.arch, info.capacity, info.schedulable) == ("node-c", "arm64", 12, True)
    assert fleet.address("node-c") == "10.0.0.3"


def test_the_agents_own_write_leaves_an_administrators_cordon_alone() -> None:
    obj, status = render_agent_writes(render_agent(IDENTITY, allocated=0, ready=True))
    # A server-side apply owns what it sends: the agent must not send `unschedulable`.
    assert obj["spec"] == {"nodeName": "node-c", "leaseNamespace": "wasmfleet-system"}
    assert "status" not in obj
    fleet = Fleet(clock=lambda: 0.0)
    fleet.update_agent(_as_listed(obj, status, unschedulable=True))
    assert not fleet.node_infos()[0].schedulable


def test_a_node_label_that_disagrees_with_the_agent_is_a_false_condition_and_no_arm_replica() -> (
    None
):
    node = NodeArchitecture("amd64")
    assert node.condition() is None, "no Node, nothing to compare"
    assert node.observe("arm64"), "newly disagreeing: an Event is due"
    assert not node.observe("arm64"), "still disagreeing: no second Event"
    obj, status = render_agent_writes(
        render_agent(
            AgentIdentity(node_name="liar", address="10.0.0.4", architecture="amd64"),
            allocated=0,
            ready=True,
            node=node,
        )
    )
    conditions = {c["type"]: c for c in status["status"]["conditions"]}
    mismatch = conditions["ArchitectureMatchesNode"]
    assert (mismatch["status"], mismatch["reason"]) == ("False", "NodeLabelMismatch")
    assert "kubernetes.io/arch=arm64" in mismatch["message"]
    assert conditions["Ready"]["status"] == "True"

    fleet = Fleet(clock=lambda: 0.0)
    fleet.update_agent(_as_listed(obj, status))
    fleet.update_node({"metadata": {"name": "liar", "labels": {"kubernetes.io/arch": "arm64"}}})
    (info,) = fleet.node_infos()
    assert info.arch == "amd64"
    for placement, placed in (
        (Placement(architectures=["arm64"]), False),
        (Placement(node_selector={"kubernetes.io/arch": "arm64"}), False),
        (Placement(architectures=["amd64"]), True),
    ):
        step = plan_placements(
            desired=1,
            revision="r1",
            placement=placement,
            strategy=RollingUpdate(),
            nodes=[dataclasses.replace(info, ready=True, lost=False)],  # as with a Lease
            replicas=[],
        )
        assert bool(step.create) is placed, placement

    assert not node.observe("amd64"), "agreeing again is not an Event"
    agreeing = node.condition()
    assert agreeing is not None
    assert agreeing.status == "True"
    assert node.observe("arm64"), "disagreeing again is"
