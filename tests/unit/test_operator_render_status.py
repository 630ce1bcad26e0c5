"""The operator's objects and status are pure renderings of what it observed."""

from __future__ import annotations

import dataclasses
from typing import Any

from wasmfleet_api.binding import ModuleInfo, ModuleKind, WasmBinding
from wasmfleet_api.wasmservice import WasmService
from wasmfleet_api.workload import WorkloadSpec
from wasmfleet_operator.render import (
    Endpoint,
    render_binding,
    render_binding_name,
    render_endpoint_slices,
    render_revision,
    render_service,
)
from wasmfleet_operator.service_plan import ServiceView, plan_service, render_url
from wasmfleet_operator.status import (
    Observed,
    ObservedReplica,
    compute_status,
    condition_events,
)

DIGEST = "sha256:" + "b" * 64


def service(**spec: Any) -> WasmService:
    return WasmService.model_validate(
        {
            "metadata": {"name": "hello", "namespace": "team", "uid": "u-1", "generation": 3},
            "spec": {"module": {"image": "r.example.com/hello:1"}, "http": {"port": 8080}, **spec},
        }
    )


def replica(
    node: str, revision: str = "rev", *, phase: str = "Ready", ready: bool = True, message: str = ""
) -> ObservedReplica:
    return ObservedReplica(f"b-{node}-{revision}", node, "amd64", revision, phase, ready, message)


def observed(*replicas: ObservedReplica, desired: int = 2, **extra: Any) -> Observed:
    return Observed(
        generation=3, desired=desired, revision="rev", digest=DIGEST, replicas=replicas, **extra
    )


def test_the_revision_changes_with_the_workload_or_digest_but_not_with_replicas() -> None:
    base = render_revision(_workload(service()), DIGEST)
    assert base == render_revision(_workload(service(replicas=5)), DIGEST)
    assert base != render_revision(_workload(service(args=["-v"])), DIGEST)
    assert base != render_revision(_workload(service()), "sha256:" + "c" * 64)


def _workload(svc: WasmService) -> WorkloadSpec:
    return svc.spec.workload()


def test_a_binding_names_its_node_revision_and_owner_and_parses_as_the_api_type() -> None:
    rendered = render_binding(service(), node="node-a", revision="rev", digest=DIGEST).to_kube()
    binding = WasmBinding.model_validate(rendered)
    assert binding.spec.node_name == "node-a"
    assert binding.spec.digest == DIGEST
    assert binding.spec.workload.http is not None
    owner = rendered["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("WasmService", "u-1", True)
    assert rendered["metadata"]["name"] == render_binding_name("hello", "rev", "node-a")


def test_binding_names_are_stable_distinct_per_node_and_dns_safe() -> None:
    assert render_binding_name("s", "r", "a") == render_binding_name("s", "r", "a")
    assert render_binding_name("s", "r", "a") != render_binding_name("s", "r", "b")
    long = render_binding_name("x" * 253, "r", "a")
    assert len(long) <= 253


def test_the_service_has_no_selector_and_the_port_of_the_spec() -> None:
    rendered = render_service(service())
    assert "selector" not in rendered["spec"]
    assert rendered["spec"]["ports"][0]["port"] == 8080


def test_endpoint_slices_group_by_port_and_are_marked_as_ours() -> None:
    slices = render_endpoint_slices(
        service(),
        [
            Endpoint("10.0.0.2", 30001, "b"),
            Endpoint("10.0.0.1", 30001, "a"),
            Endpoint("10.0.0.3", 30002, "c"),
        ],
    )
    assert [s["ports"][0]["port"] for s in slices] == [30001, 30002]
    assert [e["addresses"] for e in slices[0]["endpoints"]] == [["10.0.0.1"], ["10.0.0.2"]]
    labels = slices[0]["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "hello"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "operator.wasmfleet.dev"


def _condition(status: Any, type_: str) -> tuple[str, str]:
    found = next(c for c in status.conditions if c.type == type_)
    return found.status, found.reason


def test_all_replicas_ready_is_ready_and_complete() -> None:
    status = compute_status(observed(replica("a"), replica("b")), previous=None, now="t1")
    assert _condition(status, "Ready") == ("True", "AllReplicasReady")
    assert _condition(status, "Progressing") == ("False", "Complete")
    assert _condition(status, "Degraded") == ("False", "AsExpected")
    assert (status.ready, status.ready_replicas, status.updated_replicas) == ("2/2", 2, 2)
    assert status.short_digest == "b" * 12


def test_a_failing_pull_is_degraded_with_the_reason_and_the_node() -> None:
    status = compute_status(
        observed(replica("a"), replica("b", phase="PullBackOff", ready=False, message="401")),
        previous=None,
        now="t1",
    )
    assert _condition(status, "Ready") == ("False", "PullFailed")
    assert _condition(status, "Degraded") == ("True", "PullFailed")
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert "b: 401" in degraded.message


def test_unplaceable_replicas_are_unschedulable() -> None:
    status = compute_status(
        observed(replica("a"), unplaced=1, unschedulable_reason="0/3 nodes ..."),
        previous=None,
        now="t1",
    )
    assert _condition(status, "Ready") == ("False", "Unschedulable")


def test_a_rollout_in_progress_is_progressing() -> None:
    status = compute_status(observed(replica("a"), replica("b", "old")), previous=None, now="t1")
    assert _condition(status, "Progressing") == ("True", "RollingOut")
    assert status.updated_replicas == 1


def test_scaled_to_zero_is_ready() -> None:
    status = compute_status(observed(desired=0), previous=None, now="t1")
    assert _condition(status, "Ready") == ("True", "ScaledToZero")
    assert status.ready == "0/0"


def test_a_resolve_error_is_reported_as_such() -> None:
    status = compute_status(
        observed(resolve_error=("ModuleNotFound", "r.example.com/hello:1: manifest unknown")),
        previous=None,
        now="t1",
    )
    assert _condition(status, "Ready") == ("False", "ModuleNotFound")


def test_transition_times_move_only_on_transitions_and_events_follow_them() -> None:
    first = compute_status(
        observed(replica("a", ready=False, phase="Pulling")), previous=None, now="t1"
    )
    second = compute_status(
        observed(replica("a", ready=False, phase="Compiling")), previous=first, now="t2"
    )
    ready_second = next(c for c in second.conditions if c.type == "Ready")
    assert ready_second.last_transition_time == "t1"
    assert condition_events(first, second) == []

    third = compute_status(observed(replica("a"), replica("b")), previous=second, now="t3")
    ready_third = next(c for c in third.conditions if c.type == "Ready")
    assert ready_third.last_transition_time == "t3"
    events = condition_events(second, third)
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "AllReplicasReady"),
        ("Normal", "Complete"),
    ]
    failing = compute_status(
        observed(replica("a", phase="CrashLoopBackOff", ready=False)), previous=third, now="t4"
    )
    assert ("Warning", "CrashLooping") in [
        (e.type, e.reason) for e in condition_events(third, failing)
    ]


def test_a_new_service_gets_events_only_for_news() -> None:
    first = compute_status(
        observed(replica("a", ready=False, phase="Pulling")), previous=None, now="t1"
    )
    reasons = [e.reason for e in condition_events(None, first)]
    assert "AsExpected" not in reasons  # Degraded=False: nothing happened
    assert "ReplicasNotReady" not in reasons  # a new service is not ready yet: no news
    assert "RollingOut" in reasons


def test_a_replica_retrying_after_a_failure_keeps_the_service_degraded() -> None:
    retrying = ObservedReplica(
        "b-b-rev", "b", "amd64", "rev", "Pulling", False, "bad secret", failure="CrashLoopBackOff"
    )
    status = compute_status(observed(replica("a"), retrying), previous=None, now="t1")
    assert _condition(status, "Degraded") == ("True", "CrashLooping")
    assert _condition(status, "Ready") == ("False", "CrashLooping")


def test_a_replica_on_its_last_good_configuration_is_degraded_but_ready() -> None:
    stale = ObservedReplica(
        "b-b-rev", "b", "amd64", "rev", "Ready", True, stale_config="Secret s1 not found"
    )
    status = compute_status(observed(replica("a"), stale), previous=None, now="t1")
    assert _condition(status, "Ready") == ("True", "AllReplicasReady")
    assert _condition(status, "Degraded") == ("True", "StaleConfiguration")
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert "b: Secret s1 not found" in degraded.message
    events = condition_events(None, status)
    assert any(e.type == "Warning" and e.reason == "StaleConfiguration" for e in events)


def test_routing_that_cannot_be_written_is_not_ready() -> None:
    status = compute_status(
        observed(replica("a"), replica("b"), routing_error="the Service cannot be written: 422"),
        previous=None,
        now="t1",
    )
    assert _condition(status, "Ready") == ("False", "RoutingFailed")
    assert _condition(status, "Degraded") == ("True", "RoutingFailed")


def test_the_url_names_the_port_unless_it_is_80() -> None:
    for port, url in [
        (80, "http://hello.team.svc.cluster.local"),
        (8080, "http://hello.team.svc.cluster.local:8080"),
    ]:
        svc = service(http={"port": port})
        assert render_url(svc) == url
        plan = plan_service(ServiceView(service=svc, previous=None, digest=DIGEST, now="t1"))
        assert plan.status.url == url
    assert render_url(service(http=None, job={})) is None


def test_each_condition_transition_gives_one_event_and_a_pass_over_it_again_none() -> None:
    """Two passes in a row over the same observation: the first reports the transitions, the
    second (comparing with the status the first wrote) reports nothing again."""
    svc = service(replicas=1)
    first = plan_service(ServiceView(service=svc, previous=None, digest=DIGEST, now="t1"))
    # no node to place it on: Ready=False and Degraded=True (Unschedulable), Progressing=True
    assert sorted(e.message.split("=")[0] for e in first.events) == [
        "Degraded",
        "Progressing",
        "Ready",
    ]
    again = plan_service(ServiceView(service=svc, previous=first.status, digest=DIGEST, now="t2"))
    assert again.events == ()
    assert again.status.to_kube() == first.status.to_kube()


def test_the_service_says_what_its_current_revision_runs_as_its_agents_found_it() -> None:
    component = ModuleInfo(kind=ModuleKind.COMPONENT, world="wasi:cli/command@0.2.6")
    module = ModuleInfo(kind=ModuleKind.MODULE, world="wasi_snapshot_preview1 command")
    old = dataclasses.replace(replica("a", "old"), module=module)
    loading = replica("b")  # not loaded yet: says nothing
    new = dataclasses.replace(replica("c"), module=component)
    status = compute_status(observed(old, loading, new, desired=2), previous=None, now="t1")
    assert status.module == component
    dumped = status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["module"] == {"kind": "Component", "world": "wasi:cli/command@0.2.6"}
    only_old = compute_status(observed(old, loading), previous=None, now="t1")
    assert only_old.module is None
