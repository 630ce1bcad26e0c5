"""Everything one reconcile pass of one WasmService writes, decided by one pure function.

`Reconciler.reconcile` reads (the service, the status it last wrote, its bindings, the fleet),
resolves the module's tag, then asks `plan_service` for the whole pass and carries it out:
bindings edited by hand put back or removed, the Service and EndpointSlices, the bindings the
rollout deletes and creates, the status and its Events. Nothing here does I/O, so the tests
(and the property test against the real API server) call this very function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wasmfleet_api.binding import BindingPhase, WasmBinding, WasmBindingStatus
from wasmfleet_api.wasmservice import WasmService, WasmServiceStatus
from wasmfleet_api.workload import WorkloadSpec, parse_outbound_host, render_outbound_host
from wasmfleet_operator.drift import binding_drift
from wasmfleet_operator.planner import NodeInfo, PlacedReplica, Plan, plan_placements
from wasmfleet_operator.render import (
    Endpoint,
    render_binding,
    render_endpoint_slices,
    render_revision,
    render_selector,
    render_service,
)
from wasmfleet_operator.status import (
    Event,
    Observed,
    ObservedReplica,
    compute_status,
    condition_events,
)

__all__ = ["NodeFacts", "ServicePlan", "ServiceView", "plan_service", "render_url"]


@dataclass(frozen=True)
class NodeFacts:
    """What the operator knows of one node's agent."""

    ready: bool = False
    """The agent's Lease is fresh."""
    architecture: str = ""
    address: str = ""
    """Where the agent registered that it serves: the only address its replicas are routed
    to (a binding status that names another is not routed)."""
    instance: str = ""
    """The agent's current run (`WasmAgentStatus.instance`; "" if it does not say)."""


@dataclass(frozen=True)
class ServiceView:
    """Everything one pass reads about one service."""

    service: WasmService
    previous: WasmServiceStatus | None
    """The status last written (the operator's own write, or the stored one)."""
    digest: str | None
    """The resolved module digest; None when the tag could not be resolved."""
    resolved_from: str | None = None
    resolve_error: tuple[str, str] | None = None
    """(reason, message) of a failed resolution."""
    bindings: Sequence[WasmBinding] = ()
    """The service's own bindings, as listed."""
    unreadable: Sequence[tuple[str, str]] = ()
    """(name, why) of the service's bindings that do not parse as a WasmBinding."""
    nodes: Sequence[NodeInfo] = ()
    """The planner's view of the fleet."""
    facts: Mapping[str, NodeFacts] = field(default_factory=dict)
    cluster_domain: str = "cluster.local"
    routing_error: str | None = None
    """Why this pass could not write the Service or its EndpointSlices (known only after
    trying: the pass plans again with it for the status)."""
    now: str = ""


@dataclass(frozen=True)
class ServicePlan:
    """The writes of one pass, in the order they happen."""

    put_back: tuple[WasmBinding, ...]
    """Bindings of the current revision someone edited: applied again as rendered."""
    remove_drifted: tuple[str, ...]
    """Bindings of an old revision someone edited, or that cannot be read: deleted."""
    service_objects: tuple[dict[str, Any], ...]
    """The Service (none for a job)."""
    endpoint_slices: tuple[dict[str, Any], ...]
    """Ready replicas not about to go, one slice per port."""
    delete: tuple[str, ...]
    """Bindings the rollout removes."""
    create: tuple[WasmBinding, ...]
    """Bindings the rollout adds."""
    status: WasmServiceStatus
    events: tuple[Event, ...]
    """BindingDrifted for each edited binding, then one per condition transition."""
    revision: str
    placements: Plan


def _forged_address(status: WasmBindingStatus, facts: NodeFacts) -> bool:
    """Whether a binding's status names another address than its agent registered: anyone
    who may write binding statuses could otherwise point a Service at any address."""
    return bool(status.address and facts.address and status.address != facts.address)


def render_url(service: WasmService, cluster_domain: str = "cluster.local") -> str | None:
    """The URL an http service answers at in the cluster (no port when it is 80)."""
    if service.spec.http is None:
        return None
    metadata = service.metadata
    port = service.spec.http.port
    host = f"{metadata['name']}.{metadata['namespace']}.svc.{cluster_domain}"
    return f"http://{host}" + ("" if port == 80 else f":{port}")


def plan_service(view: ServiceView) -> ServicePlan:
    """The pass over ``view``: what to write, and the status that reports it."""
    service, previous, digest = view.service, view.previous, view.digest
    name = service.metadata["name"]
    revision = render_revision(service.spec.workload(), digest) if digest is not None else None

    put_back: list[WasmBinding] = []
    remove_drifted: list[str] = []
    events: list[Event] = []
    for binding in view.bindings:
        spec = binding.spec
        desired = None
        if revision is not None and spec.revision == revision:
            assert digest is not None
            desired = render_binding(service, node=spec.node_name, revision=revision, digest=digest)
        changed = binding_drift(binding, desired)
        if not changed:
            continue
        binding_name = _name(binding)
        if desired is not None:
            put_back.append(desired)
            action = "put back"
        else:
            remove_drifted.append(binding_name)
            action = "deleted (an old revision)"
        note = (
            f"binding {binding_name} on {spec.node_name} was changed by someone else "
            f"({', '.join(changed[:5])}); {action}"
        )
        events.append(Event("Warning", "BindingDrifted", note))
    for binding_name, why in view.unreadable:
        # Nothing of it can be trusted, its revision and node included: the planner places
        # a replica anew where one is missing.
        remove_drifted.append(binding_name)
        note = f"binding {binding_name} is not a valid WasmBinding ({why}); deleted"
        events.append(Event("Warning", "BindingDrifted", note))
    drifted = {_name(b) for b in put_back} | set(remove_drifted)

    def serving(binding: WasmBinding) -> bool:
        status = _status(binding)
        facts = view.facts.get(binding.spec.node_name)
        return (
            status.ready
            and facts is not None
            and facts.ready
            and _name(binding) not in drifted
            # the agent has acted on this spec (not one edited since, or put back)
            and status.observed_generation in (None, binding.metadata.get("generation"))
            # and the agent's current run said so: after a restart the port an earlier run
            # reported is closed until this run serves the replica again
            and (not facts.instance or status.agent_instance == facts.instance)
            and not _forged_address(status, facts)
        )

    for binding in view.bindings:
        claimed, agent = _status(binding), view.facts.get(binding.spec.node_name)
        if claimed.ready and agent is not None and _forged_address(claimed, agent):
            note = (
                f"binding {_name(binding)} reports address {claimed.address}, but the agent of "
                f"node {binding.spec.node_name} registered {agent.address}; not routed"
            )
            events.append(Event("Warning", "AddressMismatch", note))

    if revision is not None:
        placements = plan_placements(
            desired=service.spec.replicas,
            revision=revision,
            placement=service.spec.placement,
            strategy=service.spec.strategy,
            nodes=view.nodes,
            replicas=[
                PlacedReplica(
                    name=_name(b), node=b.spec.node_name, revision=b.spec.revision, ready=serving(b)
                )
                for b in view.bindings
            ],
        )
    else:
        # Without a digest there is no new revision: keep what runs, report why.
        revision = previous.revision if previous and previous.revision else ""
        placements = Plan()
    removing = set(placements.delete)

    service_objects: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    if service.spec.http is not None:
        endpoints = []
        for binding in view.bindings:
            reported = _status(binding)
            if _name(binding) in removing or not serving(binding) or not reported.port:
                continue
            node = binding.spec.node_name
            address = view.facts.get(node, NodeFacts()).address or reported.address or ""
            endpoints.append(Endpoint(address, reported.port, node))
        service_objects = [render_service(service)]
        slices = render_endpoint_slices(service, endpoints)

    created = []
    for placed in placements.create:
        assert digest is not None
        created.append(
            render_binding(service, node=placed.node, revision=placed.revision, digest=digest)
        )

    def arch(node: str) -> str:
        return view.facts.get(node, NodeFacts()).architecture

    observed = [
        ObservedReplica(
            name=_name(b),
            node=b.spec.node_name,
            arch=arch(b.spec.node_name),
            revision=b.spec.revision,
            phase=_phase(b, view.facts),
            ready=serving(b),
            message=_status(b).last_error or "",
            failure=_status(b).failure,
            stale_config=_status(b).stale_configuration,
            module=_status(b).module,
        )
        for b in view.bindings
        if _name(b) not in removing
    ] + [
        ObservedReplica(
            name=_name(c),
            node=c.spec.node_name,
            arch=arch(c.spec.node_name),
            revision=c.spec.revision,
            phase=BindingPhase.PENDING,
            ready=False,
        )
        for c in created
    ]
    status = compute_status(
        Observed(
            generation=int(service.metadata.get("generation") or 0),
            desired=service.spec.replicas,
            revision=revision,
            digest=digest or (previous.digest if previous else None),
            replicas=observed,
            url=render_url(service, view.cluster_domain),
            allowed_outbound_hosts=_outbound_hosts(service.spec),
            selector=render_selector(name),
            unplaced=placements.unplaced,
            unschedulable_reason=placements.unschedulable_reason,
            resolve_error=view.resolve_error,
            routing_error=view.routing_error,
        ),
        previous=previous,
        now=view.now,
    ).model_copy(update={"resolved_from": view.resolved_from})
    if previous is None or previous.to_kube() != status.to_kube():
        events += condition_events(previous, status)
    return ServicePlan(
        put_back=tuple(put_back),
        remove_drifted=tuple(remove_drifted),
        service_objects=tuple(service_objects),
        endpoint_slices=tuple(slices),
        delete=placements.delete,
        create=tuple(created),
        status=status,
        events=tuple(events),
        revision=revision,
        placements=placements,
    )


_NO_STATUS = WasmBindingStatus()
"""A binding its agent has not reported on yet: the API's defaults (Pending, not ready)."""


def _status(binding: WasmBinding) -> WasmBindingStatus:
    return binding.status if binding.status is not None else _NO_STATUS


def _name(binding: WasmBinding) -> str:
    return str(binding.metadata["name"])


def _phase(binding: WasmBinding, facts: Mapping[str, NodeFacts]) -> str:
    node = facts.get(binding.spec.node_name)
    phase = _status(binding).phase
    if node is None or not node.ready:
        return "NodeNotReady" if phase is not BindingPhase.PENDING else phase
    return phase


def _outbound_hosts(spec: WorkloadSpec) -> tuple[str, ...]:
    """The origins the agents let the service's guests reach, in their canonical spelling
    (the CRD has checked each)."""
    if spec.network is None:
        return ()
    return tuple(
        sorted(
            {
                render_outbound_host(*parse_outbound_host(h))
                for h in spec.network.allowed_outbound_hosts
            }
        )
    )
