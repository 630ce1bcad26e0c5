"""What ``kubectl get`` and ``describe`` show: status, conditions and the events between them.

`compute_status` turns what the operator observed (the replicas and their phases, the plan's
unplaceable count, a failed tag resolution, routing objects that could not be written) into
the WasmService status, keeping each condition's lastTransitionTime when nothing about it
changed. `condition_events` says which transitions deserve a Kubernetes Event. Both are pure.

A replica that failed and is being retried stays failing through its retry (its agent reports
the failure until the replica is ready again), so Degraded does not flicker to False while a
crash loop pulls and compiles once more. A ready replica that runs on its last good
configuration, because a ConfigMap or Secret it reads is gone, makes the service Degraded
(``StaleConfiguration``) while it stays Ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wasmfleet_api.base import Condition
from wasmfleet_api.binding import BindingPhase, ModuleInfo
from wasmfleet_api.wasmservice import PlacementStatus, WasmServiceStatus

__all__ = [
    "Event",
    "Observed",
    "ObservedReplica",
    "compute_status",
    "condition_events",
]

# Agent phases that mean a replica is failing, and the reason the service reports for each.
_FAILURE_REASONS: dict[str, str] = {
    BindingPhase.PULL_BACKOFF: "PullFailed",
    BindingPhase.CRASH_LOOP_BACKOFF: "CrashLooping",
    BindingPhase.FAILED: "Failed",
}


@dataclass(frozen=True)
class ObservedReplica:
    name: str
    node: str
    arch: str
    revision: str
    phase: str
    ready: bool
    message: str = ""
    failure: str | None = None
    """The phase of the latest failure (PullBackOff, CrashLoopBackOff, Failed) while the
    replica is retried after it, None once it is ready."""
    stale_config: str | None = None
    """Why the replica serves its last good configuration, when it does."""
    module: ModuleInfo | None = None
    """What its agent found the module to be, once loaded."""


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    generation: int
    desired: int
    revision: str
    digest: str | None
    replicas: Sequence[ObservedReplica]
    url: str | None = None
    allowed_outbound_hosts: tuple[str, ...] = ()
    selector: str | None = None
    unplaced: int = 0
    unschedulable_reason: str = ""
    # Set when the module reference could not be resolved: (reason, message).
    resolve_error: tuple[str, str] | None = None
    # Set when the Service or EndpointSlices could not be written.
    routing_error: str | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def _condition(
    previous: Sequence[Condition],
    *,
    type: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> Condition:
    value = "True" if status else "False"
    old = next((c for c in previous if c.type == type), None)
    changed = old is None or old.status != value
    return Condition(
        type=type,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=now if changed or old is None else old.last_transition_time,
        observed_generation=generation,
    )


def compute_status(
    observed: Observed, *, previous: WasmServiceStatus | None, now: str
) -> WasmServiceStatus:
    """The status to write for what was ``observed``."""
    prior = previous.conditions if previous is not None else []
    current = [r for r in observed.replicas if r.revision == observed.revision]
    ready_current = sum(r.ready for r in current)
    ready_all = sum(r.ready for r in observed.replicas)
    old = [r for r in observed.replicas if r.revision != observed.revision]
    failing = [r for r in current if _failure_of(r) is not None]
    desired = observed.desired

    failure: tuple[str, str] | None = observed.resolve_error
    if failure is None and observed.routing_error is not None:
        failure = ("RoutingFailed", observed.routing_error)
    if failure is None and failing:
        first = sorted(failing, key=lambda r: r.name)[0]
        failure = (
            _FAILURE_REASONS[_failure_of(first) or first.phase],
            f"{len(failing)} replica(s) failing; {first.node}: {first.message or first.phase}",
        )
    if failure is None and observed.unplaced:
        failure = (
            "Unschedulable",
            f"{observed.unplaced} replica(s) cannot be placed: {observed.unschedulable_reason}",
        )

    if desired == 0 and not observed.replicas:
        ready = (True, "ScaledToZero", "0 replicas requested")
    elif ready_current >= desired and failure is None:
        ready = (True, "AllReplicasReady", f"{ready_current} of {desired} replicas ready")
    elif failure is not None:
        ready = (False, failure[0], failure[1])
    else:
        ready = (False, "ReplicasNotReady", f"{ready_current} of {desired} replicas ready")

    rolling = bool(old) or len(current) != desired or ready_current < desired
    progressing = (
        (True, "RollingOut", f"{ready_current} of {desired} replicas run the current revision")
        if rolling and observed.resolve_error is None
        else (False, "Complete", "the current revision is fully rolled out")
    )
    stale = sorted((r for r in observed.replicas if r.stale_config), key=lambda r: r.name)
    if failure is not None:
        degraded = (True, failure[0], failure[1])
    elif stale:
        degraded = (
            True,
            "StaleConfiguration",
            f"{len(stale)} replica(s) serve their last good configuration; "
            f"{stale[0].node}: {stale[0].stale_config}",
        )
    else:
        degraded = (False, "AsExpected", "no replica is failing")

    conditions = [
        _condition(
            prior,
            type=type_,
            status=value[0],
            reason=value[1],
            message=value[2],
            generation=observed.generation,
            now=now,
        )
        for type_, value in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded))
    ]
    digest = observed.digest
    return WasmServiceStatus(
        observed_generation=observed.generation,
        digest=digest,
        short_digest=digest.split(":", 1)[-1][:12] if digest else None,
        revision=observed.revision or None,
        replicas=len(observed.replicas),
        ready_replicas=ready_all,
        updated_replicas=len(current),
        ready=f"{ready_all}/{desired}",
        url=observed.url,
        allowed_outbound_hosts=list(observed.allowed_outbound_hosts),
        selector=observed.selector,
        module=next(
            (r.module for r in observed.replicas if r.revision == observed.revision and r.module),
            None,
        ),
        placements=[
            PlacementStatus(
                node=r.node,
                arch=r.arch,
                revision=r.revision,
                phase=r.phase,
                ready=r.ready,
                message=r.message,
            )
            for r in sorted(observed.replicas, key=lambda r: (r.node, r.revision))
        ],
        conditions=conditions,
    )


def _failure_of(replica: ObservedReplica) -> str | None:
    """The failing phase a replica is in, or is being retried after."""
    if replica.phase in _FAILURE_REASONS:
        return replica.phase
    if not replica.ready and replica.failure in _FAILURE_REASONS:
        return replica.failure
    return None


_NO_NEWS = {("Degraded", "False", "AsExpected"), ("Ready", "False", "ReplicasNotReady")}


def condition_events(previous: WasmServiceStatus | None, current: WasmServiceStatus) -> list[Event]:
    """One Event per condition whose status or reason changed.

    A condition that appears for the first time saying nothing happened (Degraded=False, or
    Ready=False only because replicas are starting) is no news and gets no Event.
    """
    before = {c.type: c for c in (previous.conditions if previous else [])}
    events = []
    for condition in current.conditions:
        old = before.get(condition.type)
        if old is not None and (old.status, old.reason) == (condition.status, condition.reason):
            continue
        if old is None and (condition.type, condition.status, condition.reason) in _NO_NEWS:
            continue
        bad = (condition.type == "Degraded") == (condition.status == "True")
        events.append(
            Event(
                type="Warning" if bad and condition.type != "Progressing" else "Normal",
                reason=condition.reason,
                message=f"{condition.type}={condition.status}: {condition.message}",
            )
        )
    return events
