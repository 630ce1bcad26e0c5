"""The scheduler and rolling update, step by step, as pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from wasmfleet_api.wasmservice import Placement, RollingUpdate, Spread, Toleration
from wasmfleet_operator.planner import (
    NodeInfo,
    PlacedReplica,
    Plan,
    Taint,
    plan_placements,
    resolve_int_or_percent,
    tolerates,
)

NODES = (
    NodeInfo("a", "amd64", {"zone": "z1"}),
    NodeInfo("b", "amd64", {"zone": "z2"}),
    NodeInfo("c", "arm64", {"zone": "z1"}),
)


def plan(
    desired: int,
    *,
    replicas: Sequence[PlacedReplica] = (),
    nodes: Sequence[NodeInfo] = NODES,
    placement: Placement | None = None,
    strategy: RollingUpdate | None = None,
    revision: str = "r2",
) -> Plan:
    return plan_placements(
        desired=desired,
        revision=revision,
        placement=placement or Placement(),
        strategy=strategy or RollingUpdate(),
        nodes=nodes,
        replicas=replicas,
    )


def apply(replicas: list[PlacedReplica], step: Plan, *, ready: bool) -> list[PlacedReplica]:
    """What the world looks like after a plan is carried out (and new replicas start)."""
    kept = [r for r in replicas if r.name not in step.delete]
    made = [PlacedReplica(f"{p.revision}-{p.node}", p.node, p.revision, ready) for p in step.create]
    return kept + made


def test_replicas_go_to_distinct_nodes_least_loaded_first() -> None:
    nodes = (replace(NODES[0], allocated=5), NODES[1], NODES[2])
    step = plan(2, nodes=nodes)
    assert sorted(p.node for p in step.create) == ["b", "c"]
    assert step.delete == ()


def test_a_plan_for_a_converged_service_is_empty() -> None:
    replicas = [PlacedReplica("x", "a", "r2", True), PlacedReplica("y", "b", "r2", True)]
    assert plan(2, replicas=replicas).empty


def test_an_architecture_restriction_is_honoured() -> None:
    step = plan(2, placement=Placement(architectures=["arm64"]))
    assert [p.node for p in step.create] == ["c"]
    assert step.unplaced == 1
    assert "architecture amd64 not allowed" in step.unschedulable_reason


def test_a_node_selector_no_node_matches_gives_a_reason_for_people() -> None:
    step = plan(1, placement=Placement(node_selector={"disk": "ssd"}))
    assert step.create == ()
    assert step.unplaced == 1
    assert (
        step.unschedulable_reason
        == "0/3 nodes can take another replica: 3 not matching nodeSelector"
    )


def test_a_tainted_node_needs_a_toleration() -> None:
    nodes = (replace(NODES[0], taints=(Taint("dedicated", "wasm"),)),)
    assert plan(1, nodes=nodes).unplaced == 1
    tolerant = Placement(tolerations=[Toleration(key="dedicated", value="wasm")])
    assert [p.node for p in plan(1, nodes=nodes, placement=tolerant).create] == ["a"]


@pytest.mark.parametrize(
    ("toleration", "matches"),
    [
        (Toleration(operator="Exists"), True),
        (Toleration(key="k", operator="Exists"), True),
        (Toleration(key="k", value="v"), True),
        (Toleration(key="k", value="other"), False),
        (Toleration(key="other", operator="Exists"), False),
        (Toleration(key="k", value="v", effect="NoExecute"), False),
    ],
)
def test_tolerations_match_as_in_kubernetes(toleration: Toleration, matches: bool) -> None:
    assert tolerates([toleration], Taint("k", "v", "NoSchedule")) is matches


def test_a_not_ready_or_full_or_cordoned_node_takes_no_new_replica() -> None:
    nodes = (
        replace(NODES[0], ready=False),
        replace(NODES[1], allocated=3, capacity=3),
        replace(NODES[2], schedulable=False),
    )
    step = plan(1, nodes=nodes)
    assert step.create == ()
    assert "1 at capacity" in step.unschedulable_reason
    assert "1 not ready" in step.unschedulable_reason
    assert "1 unschedulable" in step.unschedulable_reason


def test_existing_replicas_stay_where_they_are() -> None:
    replicas = [PlacedReplica("x", "c", "r2", True)]
    step = plan(2, replicas=replicas, nodes=(replace(NODES[0], allocated=9), *NODES[1:]))
    assert [p.node for p in step.create] == ["b"]
    assert step.delete == ()


def test_a_replica_on_a_node_that_no_longer_matches_is_not_moved() -> None:
    replicas = [PlacedReplica("x", "a", "r2", True)]
    assert plan(1, replicas=replicas, placement=Placement(architectures=["arm64"])).empty


def test_replicas_of_a_lost_node_are_replaced_and_deleted() -> None:
    nodes = (replace(NODES[0], ready=False, lost=True), *NODES[1:])
    replicas = [PlacedReplica("x", "a", "r2", True), PlacedReplica("y", "b", "r2", True)]
    step = plan(2, replicas=replicas, nodes=nodes)
    assert step.delete == ("x",)
    assert [p.node for p in step.create] == ["c"]


def test_replicas_of_a_node_not_ready_within_grace_are_kept() -> None:
    nodes = (replace(NODES[0], ready=False), *NODES[1:])
    replicas = [PlacedReplica("x", "a", "r2", False), PlacedReplica("y", "b", "r2", True)]
    assert plan(2, replicas=replicas, nodes=nodes).empty


def test_a_replica_on_a_vanished_node_is_deleted() -> None:
    step = plan(1, replicas=[PlacedReplica("x", "gone", "r2", True)])
    assert step.delete == ("x",)
    assert len(step.create) == 1


def test_scaling_down_removes_not_ready_replicas_first() -> None:
    replicas = [PlacedReplica("x", "a", "r2", True), PlacedReplica("y", "b", "r2", False)]
    assert plan(1, replicas=replicas).delete == ("y",)


def test_scaling_to_zero_removes_everything() -> None:
    replicas = [PlacedReplica("x", "a", "r2", True), PlacedReplica("o", "b", "r1", True)]
    step = plan(0, replicas=replicas)
    assert sorted(step.delete) == ["o", "x"]
    assert step.create == ()


def test_duplicate_replicas_of_one_revision_on_one_node_are_reduced_to_one() -> None:
    replicas = [PlacedReplica("x1", "a", "r2", True), PlacedReplica("x2", "a", "r2", False)]
    step = plan(1, replicas=replicas)
    assert step.delete == ("x2",)
    assert step.create == ()


def test_a_rollout_with_surge_keeps_every_old_replica_until_new_ones_are_ready() -> None:
    replicas = [PlacedReplica("o1", "a", "r1", True), PlacedReplica("o2", "b", "r1", True)]
    strategy = RollingUpdate(max_surge=1, max_unavailable=0)
    history = []
    for _ in range(10):
        step = plan(2, replicas=replicas, strategy=strategy)
        if step.empty:
            break
        replicas = apply(replicas, step, ready=False)
        assert sum(r.ready for r in replicas) >= 2, "availability dropped below desired"
        assert len(replicas) <= 3, "surge exceeded"
        # the new replicas become ready before the next pass
        replicas = [replace(r, ready=True) for r in replicas]
        history.append(step)
    assert sorted(r.revision for r in replicas) == ["r2", "r2"]
    assert len(history) >= 2


def test_a_rollout_without_surge_replaces_one_at_a_time() -> None:
    replicas = [PlacedReplica("o1", "a", "r1", True), PlacedReplica("o2", "b", "r1", True)]
    strategy = RollingUpdate(max_surge=0, max_unavailable=1)
    first = plan(2, replicas=replicas, strategy=strategy)
    assert first.create == ()
    assert len(first.delete) == 1
    replicas = apply(replicas, first, ready=True)
    second = plan(2, replicas=replicas, strategy=strategy)
    assert len(second.create) == 1
    assert second.delete == ()


def test_a_rollout_can_reuse_the_nodes_of_the_old_revision() -> None:
    nodes = NODES[:2]
    replicas = [PlacedReplica("o1", "a", "r1", True), PlacedReplica("o2", "b", "r1", True)]
    step = plan(2, replicas=replicas, nodes=nodes)
    assert len(step.create) == 1
    assert step.create[0].node in {"a", "b"}


def test_not_ready_old_replicas_are_removed_at_once() -> None:
    replicas = [PlacedReplica("o1", "a", "r1", False), PlacedReplica("n1", "b", "r2", True)]
    step = plan(1, replicas=replicas)
    assert step.delete == ("o1",)


def test_spread_places_replicas_evenly_over_zones() -> None:
    placement = Placement(spread=Spread(topology_key="zone", when_unsatisfiable="DoNotSchedule"))
    nodes = (*NODES, NodeInfo("d", "amd64", {"zone": "z1"}))
    step = plan(2, nodes=nodes, placement=placement)
    assert sorted(n.labels["zone"] for n in nodes if n.name in {p.node for p in step.create}) == [
        "z1",
        "z2",
    ]


def test_spread_with_do_not_schedule_leaves_a_replica_unplaced_rather_than_skew() -> None:
    placement = Placement(spread=Spread(topology_key="zone", when_unsatisfiable="DoNotSchedule"))
    nodes = (
        NodeInfo("a", "amd64", {"zone": "z1"}),
        NodeInfo("b", "amd64", {"zone": "z1"}),
        NodeInfo("c", "amd64", {"zone": "z2"}),
        NodeInfo("d", "amd64", {"zone": "z2"}),
        NodeInfo("e", "amd64", {"zone": "z3"}),
    )
    replicas = [PlacedReplica("x", "a", "r2", True), PlacedReplica("y", "b", "r2", True)]
    step = plan(5, replicas=replicas, nodes=nodes, placement=placement)
    zones = _zone_counts(nodes, replicas, step)
    assert max(zones.values()) - min(zones.values()) <= 1


def _zone_counts(
    nodes: Sequence[NodeInfo], replicas: Sequence[PlacedReplica], step: Plan
) -> dict[str, int]:
    zone = {n.name: n.labels["zone"] for n in nodes}
    counts: dict[str, int] = {}
    for node in [r.node for r in replicas] + [p.node for p in step.create]:
        counts[zone[node]] = counts.get(zone[node], 0) + 1
    return counts


@pytest.mark.parametrize(
    ("value", "total", "up", "expected"),
    [(1, 10, True, 1), ("25%", 10, True, 3), ("25%", 10, False, 2), ("0%", 4, True, 0)],
)
def test_int_or_percent_rounds_like_a_deployment(
    value: int | str, total: int, up: bool, expected: int
) -> None:
    assert resolve_int_or_percent(value, total, round_up=up) == expected
