"""Where replicas go: the scheduler and the rolling update, as one pure function.

`plan_placements` is handed everything it may consider (the service's placement rules and
strategy, the candidate nodes, the replicas that exist) and returns what to create and what
to delete to move one step closer to the desired state. It is level-based: called again
with the new state, it takes the next step, and called with a state that is already right,
it returns an empty plan. It never does I/O, so every rule is tested exhaustively and fast.

Rules, in order:

- a replica on a node that is gone, or NotReady for longer than the grace period, is lost:
  it is deleted and replaced elsewhere;
- valid replicas stay where they are (no churn), even if the node stops matching the rules
  later (as Kubernetes' IgnoredDuringExecution);
- at most one replica of a revision per node;
- a node is a candidate when it is Ready, schedulable, of an allowed architecture, matches
  the nodeSelector, tolerates the node's NoSchedule/NoExecute taints and has capacity;
- new replicas spread over the topology domains (maxSkew, DoNotSchedule or ScheduleAnyway),
  then go to the least loaded node, then by name, so plans are deterministic;
- a rollout keeps total replicas <= desired + maxSurge and ready replicas >= desired -
  maxUnavailable; old replicas go only once that bound allows it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from wasmfleet_api.wasmservice import Placement, RollingUpdate, Toleration

__all__ = [
    "NodeInfo",
    "PlacedReplica",
    "Plan",
    "PlannedReplica",
    "Taint",
    "plan_placements",
    "resolve_int_or_percent",
    "tolerates",
]

HOSTNAME_KEY = "kubernetes.io/hostname"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class NodeInfo:
    """A node with an agent, as the scheduler sees it."""

    name: str
    arch: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    # True once the node has been NotReady for longer than the grace period.
    lost: bool = False
    schedulable: bool = True
    capacity: int = 256
    allocated: int = 0

    def label(self, key: str) -> str | None:
        if key in self.labels:
            return self.labels[key]
        return self.name if key == HOSTNAME_KEY else None


@dataclass(frozen=True)
class PlacedReplica:
    """An existing binding of this service."""

    name: str
    node: str
    revision: str
    ready: bool = False


@dataclass(frozen=True)
class PlannedReplica:
    node: str
    revision: str


@dataclass(frozen=True)
class Plan:
    """One step towards the desired state."""

    create: tuple[PlannedReplica, ...] = ()
    delete: tuple[str, ...] = ()
    # Replicas of the current revision that could not be placed, and why.
    unplaced: int = 0
    unschedulable_reason: str = ""

    @property
    def empty(self) -> bool:
        return not self.create and not self.delete


def resolve_int_or_percent(value: int | str, total: int, *, round_up: bool) -> int:
    """An int-or-percentage of ``total``; surge rounds up, unavailability down (as Deployments)."""
    if isinstance(value, int):
        return value
    fraction = int(value.rstrip("%")) * total / 100
    return math.ceil(fraction) if round_up else math.floor(fraction)


def tolerates(tolerations: Sequence[Toleration], taint: Taint) -> bool:
    """Whether any toleration matches ``taint`` (Kubernetes' matching rules)."""
    for toleration in tolerations:
        if toleration.effect is not None and toleration.effect != taint.effect:
            continue
        if not toleration.key:
            if toleration.operator == "Exists":
                return True
            continue
        if toleration.key != taint.key:
            continue
        if toleration.operator == "Exists" or (toleration.value or "") == taint.value:
            return True
    return False


def _rejection(node: NodeInfo, placement: Placement) -> str | None:
    """Why ``node`` cannot take a new replica, in a few words; None when it can."""
    if not node.ready or node.lost:
        return "not ready"
    if not node.schedulable:
        return "unschedulable"
    if placement.architectures and node.arch not in placement.architectures:
        return f"architecture {node.arch or 'unknown'} not allowed"
    for key, value in placement.node_selector.items():
        if node.labels.get(key) != value:
            return "not matching nodeSelector"
    for taint in node.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not tolerates(
            placement.tolerations, taint
        ):
            return f"untolerated taint {taint.key}"
    if node.allocated >= node.capacity:
        return "at capacity"
    return None


def _summarise(rejections: Iterable[str], total: int) -> str:
    counts = Counter(rejections)
    parts = [f"{n} {reason}" for reason, n in sorted(counts.items())]
    return f"0/{total} nodes can take another replica: " + ", ".join(parts)


def _choose_nodes(
    count: int,
    candidates: list[NodeInfo],
    placement: Placement,
    counts: Counter[str],
) -> tuple[list[NodeInfo], bool]:
    """Picks up to ``count`` nodes; returns them and whether the spread rule stopped any."""
    spread = placement.spread
    key = spread.topology_key if spread is not None else HOSTNAME_KEY
    domains = {n.label(key) for n in candidates if n.label(key) is not None}
    chosen: list[NodeInfo] = []
    blocked_by_spread = False
    remaining = list(candidates)
    for _ in range(count):
        if not remaining:
            break
        domain_min = min((counts[d] for d in domains if d is not None), default=0)

        def score(node: NodeInfo, domain_min: int = domain_min) -> tuple[int, int, int, str]:
            domain = node.label(key)
            in_domain = counts[domain] if domain is not None else 0
            prefer_no = sum(1 for t in node.taints if t.effect == "PreferNoSchedule")
            return (in_domain, prefer_no, node.allocated, node.name)

        allowed = remaining
        if spread is not None and spread.when_unsatisfiable == "DoNotSchedule":
            allowed = [
                n
                for n in remaining
                if n.label(key) is not None
                and counts[n.label(key) or ""] + 1 - domain_min <= spread.max_skew
            ]
            if not allowed:
                blocked_by_spread = True
                break
        best = min(allowed, key=score)
        chosen.append(best)
        remaining.remove(best)
        domain = best.label(key)
        if domain is not None:
            counts[domain] += 1
    return chosen, blocked_by_spread


def plan_placements(
    *,
    desired: int,
    revision: str,
    placement: Placement,
    strategy: RollingUpdate,
    nodes: Sequence[NodeInfo],
    replicas: Sequence[PlacedReplica],
) -> Plan:
    """The next step from ``replicas`` towards ``desired`` replicas of ``revision``."""
    by_name = {n.name: n for n in nodes}
    lost = [r for r in replicas if r.node not in by_name or by_name[r.node].lost]
    live = [r for r in replicas if r not in lost]
    delete = [r.name for r in lost]

    current = [r for r in live if r.revision == revision]
    old = [r for r in live if r.revision != revision]

    # Two replicas of one revision on one node (a race, or a restart mid-write): keep one.
    seen_nodes: set[str] = set()
    unique_current = []
    for r in sorted(current, key=lambda r: (not r.ready, r.name)):
        if r.node in seen_nodes:
            delete.append(r.name)
        else:
            seen_nodes.add(r.node)
            unique_current.append(r)
    current = unique_current

    # Scale down: drop not-ready replicas first, then those on the most crowded domains.
    if len(current) > desired:
        excess = sorted(current, key=lambda r: (r.ready, r.name))[: len(current) - desired]
        delete += [r.name for r in excess]
        current = [r for r in current if r not in excess]

    surge = resolve_int_or_percent(strategy.max_surge, desired, round_up=True)
    unavailable = resolve_int_or_percent(strategy.max_unavailable, desired, round_up=False)
    if surge == 0 and unavailable == 0:  # the CRD forbids it; never deadlock regardless
        unavailable = 1

    # Create replicas of the current revision within the surge budget.
    want = desired - len(current)
    room = (desired + surge) - (len(current) + len(old)) if old else want
    to_create = max(0, min(want, room))
    create: list[PlannedReplica] = []
    unplaced = 0
    reason = ""
    if want > 0:
        occupied = {r.node for r in current}
        rejections = []
        candidates = []
        for node in nodes:
            why = "already runs this revision" if node.name in occupied else None
            why = why or _rejection(node, placement)
            if why is None:
                candidates.append(node)
            else:
                rejections.append(why)
        key = placement.spread.topology_key if placement.spread else HOSTNAME_KEY
        counts: Counter[str] = Counter()
        for r in current:
            host = by_name.get(r.node)
            domain = host.label(key) if host is not None else None
            if domain is not None:
                counts[domain] += 1
        chosen, blocked = _choose_nodes(to_create, candidates, placement, counts)
        create = [PlannedReplica(n.name, revision) for n in chosen]
        placeable = len(candidates)
        if placeable < want:
            unplaced = want - placeable
            reason = _summarise(rejections, len(nodes)) if rejections else "no nodes with agents"
        elif blocked and len(chosen) < to_create:
            unplaced = to_create - len(chosen)
            reason = (
                f"placing {unplaced} more replica(s) would exceed maxSkew "
                f"{placement.spread.max_skew if placement.spread else 1}"
            )

    # Retire old replicas as far as availability allows; not-ready ones never count.
    if old:
        min_available = desired - unavailable
        available = sum(r.ready for r in current) + sum(r.ready for r in old)
        for r in sorted(old, key=lambda r: (r.ready, r.name)):
            if not r.ready:
                delete.append(r.name)
            elif available - 1 >= min_available:
                delete.append(r.name)
                available -= 1
    return Plan(
        create=tuple(create),
        delete=tuple(delete),
        unplaced=unplaced,
        unschedulable_reason=reason,
    )
