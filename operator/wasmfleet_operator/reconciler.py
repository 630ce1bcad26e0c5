"""One reconcile pass for one WasmService: observe, plan, act, report.

`Reconciler.reconcile` is level-based. It reads the service (from the watch cache), its
bindings (a fresh, consistent list from the API server, so a binding created a moment ago
is never missed and never placed twice) and the fleet, asks the pure planner for the next
step, and carries it out in the order that keeps traffic flowing:

1. EndpointSlices are written first, without the replicas about to be removed, so that
   clients stop choosing them while their agents still serve (the agents drain);
2. then bindings are deleted and created (names are deterministic per service, revision and
   node, so creating one that exists is a no-op, never a duplicate);
3. last the status, with an Event for each condition that changed.

Writes that would change nothing are skipped, so a pass over a settled service costs one list.
What was last written of the Services and EndpointSlices is remembered, so a change deletes
the ones no longer wanted without listing them first. The operator also watches the objects
it owns (`on_owned`): one deleted or changed by someone else is written again by the next
pass, within about a second, with a Warning Event; every ``rewrite_every``-th resync rewrites
everything as well. A binding edited by hand (`drift.binding_drift`) is put back, or deleted
when it belongs to an old revision, with a Warning Event, and counts as not serving until its
agent has acted on the restored spec (``status.observedGeneration``).

Bindings are parsed as the API type where they arrive (a watch event, a pass's list), so
everything after reads their status through the model its agents write it with; one that
does not parse is deleted with a Warning Event, and the planner places a replica anew.

While the routing objects cannot be written the service is not Ready (``RoutingFailed``).
The status written last is remembered and is what the next pass compares with, so two passes
in quick succession never report one transition twice. Events are posted by a background task
(`event_writer`), so a pass never waits on them; an Event that repeats within ten minutes
updates the first one's ``series.count`` instead of adding another, as Kubernetes' own
recorder does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from wasmfleet_api.base import API_VERSION
from wasmfleet_api.binding import WasmBinding
from wasmfleet_api.units import format_micro_time, format_time
from wasmfleet_api.wasmservice import WasmService, WasmServiceStatus
from wasmfleet_common.kube import API_ERRORS, NETWORK_ERRORS, ApiError, KubeClient, resource_for
from wasmfleet_operator.binding_cache import BindingCache
from wasmfleet_operator.drift import drifted_fields
from wasmfleet_operator.fleet import Fleet
from wasmfleet_operator.metrics import OperatorMetrics
from wasmfleet_operator.render import render_selector
from wasmfleet_operator.resolver import ResolveError, Resolver
from wasmfleet_operator.service_plan import NodeFacts, ServiceView, plan_service
from wasmfleet_operator.status import Event
from wasmfleet_operator.workqueue import WorkQueue

__all__ = ["RESOLVE_ANNOTATION", "Reconciler", "ReconcilerSettings", "invalid_spec_message"]

log = logging.getLogger(__name__)

BINDINGS = resource_for(API_VERSION, "WasmBinding")
SERVICES = resource_for("v1", "Service")
SLICES = resource_for("discovery.k8s.io/v1", "EndpointSlice")
EVENTS = resource_for("events.k8s.io/v1", "Event")
RESOLVE_ANNOTATION = "wasmfleet.dev/resolve"
"""Set or change this annotation's value to resolve the module's tag again (a rollout if it
moved), e.g. ``kubectl annotate wsvc NAME wasmfleet.dev/resolve="$(date +%s)" --overwrite``."""


def _fingerprint(objects: Any) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()


class ForeignObjectError(Exception):
    """A Service or EndpointSlice the service needs exists and belongs to something else."""


@dataclass(frozen=True)
class ReconcilerSettings:
    identity: str = "wasmfleet-operator"
    cluster_domain: str = "cluster.local"
    resolve_retry_seconds: float = 10.0
    foreign_retry_seconds: float = 10.0
    """How soon a service blocked by someone else's Service of its name looks again."""
    rewrite_every: int = 10
    """Every this many resyncs, forget what was written and write it all again."""
    max_pending_events: int = 10_000
    event_series_seconds: float = 600.0
    """An Event repeated within this long counts up the first one's series."""


class Reconciler:
    """Holds the caches the watch handlers fill and the work queue the workers drain."""

    def __init__(
        self,
        kube: KubeClient,
        resolver: Resolver,
        fleet: Fleet,
        settings: ReconcilerSettings | None = None,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.kube = kube
        self.resolver = resolver
        self.fleet = fleet
        self.settings = settings or ReconcilerSettings()
        self.services: dict[str, dict[str, Any]] = {}
        self.queue = WorkQueue()
        # What was last written per (kind, service key): a fingerprint and the object names.
        self._written: dict[tuple[str, str], tuple[str, frozenset[str]]] = {}
        self._resyncs = 0
        self._seeded: set[str] = set()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(
            maxsize=self.settings.max_pending_events
        )
        # Event series: (uid, type, reason, note) -> (name, namespace, count, first seen).
        self._series: dict[tuple[str, str, str, str], tuple[str, str, int, float]] = {}
        # What was applied of the Services and EndpointSlices, per (kind, service key), by name.
        self._applied: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        # Routing objects someone else deleted or changed, per service key, for its Events.
        self._tampered: dict[str, list[str]] = {}
        # Routing objects someone else changed: (kind, service key, name).
        self._overwrite: set[tuple[str, str, str]] = set()
        # The status last written per service key, with the service's uid.
        self._reported: dict[str, tuple[str, WasmServiceStatus]] = {}
        # Each service's bindings as the watch shows them, read instead of a list when the
        # watch shows this operator's own writes.
        self.binding_cache = BindingCache()
        self.passes = 0
        self.metrics = metrics

    # ---- cache updates from watch events -------------------------------------------

    def on_service(self, obj: Mapping[str, Any], *, deleted: bool) -> None:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if deleted:
            self.services.pop(key, None)
            self._reported.pop(key, None)
            self.binding_cache.forget(key)
            self._tampered.pop(key, None)
            for kind in ("Service", "EndpointSlice"):
                self._written.pop((kind, key), None)
                self._applied.pop((kind, key), None)
        else:
            before = self.services.get(key)
            self.services[key] = dict(obj)
            if before is not None and self._own_status_echo(key, before, obj):
                return  # the pass that wrote this status has nothing more to do
        self.queue.add(key)

    def _own_status_echo(
        self, key: str, before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> bool:
        """Whether ``after`` differs from ``before`` only by the status this operator wrote
        last (the same spec generation, labels and annotations)."""
        reported = self._reported.get(key)
        old, new = before.get("metadata") or {}, after.get("metadata") or {}
        return (
            reported is not None
            and reported[0] == str(new.get("uid"))
            and old.get("generation") == new.get("generation")
            and old.get("labels") == new.get("labels")
            and old.get("annotations") == new.get("annotations")
            and old.get("deletionTimestamp") == new.get("deletionTimestamp")
            and after.get("status") == reported[1].to_kube()
        )

    def on_binding(self, obj: Mapping[str, Any], *, deleted: bool) -> None:
        """A binding changed: parsed here, once, for the fleet's count and its service."""
        self.binding_cache.observe(obj, deleted=deleted)
        try:
            binding = WasmBinding.model_validate(obj)
        except ValidationError as error:
            # Its service's next pass lists it and deletes it (`plan_service`).
            log.warning(
                "unreadable binding",
                extra={
                    "binding": obj["metadata"].get("name"),
                    "error": invalid_spec_message(error),
                },
            )
            return
        self.fleet.update_binding(binding, deleted=deleted)
        # a replica moved (ready, failed, gone): its service's pass goes ahead of new work
        self.queue.add(f"{binding.metadata['namespace']}/{binding.spec.service_name}", soon=True)

    def on_owned(self, kind: str, obj: Mapping[str, Any], *, deleted: bool) -> None:
        """A Service or EndpointSlice carrying our label changed: if it is one this operator
        wrote and it no longer holds what was written (or is gone), its service is queued and
        the next pass writes it again."""
        metadata = obj["metadata"]
        owner = next(
            (
                o.get("name")
                for o in metadata.get("ownerReferences") or []
                if o.get("kind") == "WasmService" and o.get("controller")
            ),
            None,
        )
        if owner is None:
            return
        key = f"{metadata['namespace']}/{owner}"
        applied = self._applied.get((kind, key), {}).get(metadata["name"])
        if applied is None or key not in self.services:
            return
        changed = ["the whole object"] if deleted else drifted_fields(obj, applied)
        if not changed:
            return
        what = f"{kind} {metadata['name']} was {'deleted' if deleted else 'changed'}"
        if not deleted:
            what += f" ({', '.join(changed[:5])})"
        log.warning(
            "routing object changed by someone else; writing it again",
            extra={"service": key, "change": what},
        )
        self._tampered.setdefault(key, []).append(what)
        if not deleted:
            self._overwrite.add((kind, key, metadata["name"]))
        written = self._written.get((kind, key))
        if written is not None:
            self._written[(kind, key)] = ("", written[1])
        self.queue.add(key)

    def enqueue_all(self) -> None:
        for key in self.services:
            self.queue.add(key)

    def distrust_bindings(self) -> None:
        """Each service's next pass lists its bindings (see `BindingCache.distrust`)."""
        self.binding_cache.distrust(self.services)

    def resync(self) -> None:
        self._resyncs += 1
        self.distrust_bindings()
        if self._resyncs % self.settings.rewrite_every == 0:
            # write everything again (what someone deleted comes back); keep the names
            self._written = {k: ("", names) for k, (_, names) in self._written.items()}
        self.enqueue_all()

    def seed_owned(self, kind: str, objects: Sequence[Mapping[str, Any]]) -> None:
        """Records the objects of ``kind`` that WasmServices own (listed once at start), so
        that no pass has to list them to find the ones to delete."""
        for obj in objects:
            metadata = obj["metadata"]
            for owner in metadata.get("ownerReferences") or []:
                if owner.get("kind") != "WasmService" or not owner.get("controller"):
                    continue
                key = (kind, f"{metadata['namespace']}/{owner['name']}")
                _, names = self._written.get(key, ("", frozenset()))
                self._written[key] = ("", names | {metadata["name"]})
        self._seeded.add(kind)

    # ---- workers -------------------------------------------------------------------

    async def worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.perf_counter()
            result = "ok"
            try:
                await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except API_ERRORS as error:
                result = "retry"
                log.warning("reconcile failed; retrying", extra={"key": key, "error": str(error)})
                self.queue.add_after(key, 2.0)
            except Exception:
                result = "error"
                log.exception("reconcile crashed; retrying", extra={"key": key})
                self.queue.add_after(key, 5.0)
            finally:
                self.queue.done(key)
                if self.metrics is not None:
                    self.metrics.reconciles.labels(result).inc()
                    self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    # ---- one pass ------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        """One pass: read, resolve, plan (`plan_service`), write, report."""
        self.passes += 1
        body = self.services.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # ownerReferences let the garbage collector remove what it owned
        try:
            service = WasmService.model_validate(body)
        except ValidationError as error:
            await self._report_invalid(body, error)
            return
        namespace, name = key.split("/", 1)
        uid = service.metadata.get("uid")
        reported = self._reported.get(key)
        # Our own last write is newer than the watch cache may be: only the operator writes it.
        previous = reported[1] if reported is not None and reported[0] == uid else service.status

        digest, resolved_from, resolve_error = await self._digest(service, previous)
        items = self.binding_cache.bindings(key)
        if items is None:
            listing = await self.kube.list(
                BINDINGS, namespace=namespace, label_selector=render_selector(name)
            )
            self.binding_cache.listed(key, listing)
            items = listing["items"]
        bindings, unreadable = _parse_bindings(items, owner_uid=uid)
        view = ServiceView(
            service=service,
            previous=previous,
            digest=digest,
            resolved_from=resolved_from,
            resolve_error=(resolve_error.reason, resolve_error.message) if resolve_error else None,
            bindings=bindings,
            unreadable=unreadable,
            nodes=self.fleet.node_infos(),
            facts=self._facts(),
            cluster_domain=self.settings.cluster_domain,
            now=format_time(),
        )
        plan = plan_service(view)

        for binding in plan.put_back:
            self.binding_cache.wrote(key, await self.kube.apply(binding.to_kube()))
        for binding_name in plan.remove_drifted:
            await self.kube.delete(BINDINGS, binding_name, namespace)
            self.binding_cache.deleted(key, binding_name)
            self.fleet.binding_nodes.pop(f"{namespace}/{binding_name}", None)
        # A job has no Service; one that was an http service before loses it.
        selector = render_selector(name)
        try:
            await self._write_owned("Service", key, SERVICES, plan.service_objects, selector, uid)
            await self._write_owned(
                "EndpointSlice", key, SLICES, plan.endpoint_slices, selector, uid
            )
        except ForeignObjectError as error:
            # Someone else's Service (or slice) of that name: left alone, reported, retried
            # slowly (it is not watched: it carries none of our labels).
            log.warning("routing not written", extra={"service": key, "error": str(error)})
            plan = plan_service(dataclasses.replace(view, routing_error=str(error)))
            self.queue.add_after(key, self.settings.foreign_retry_seconds)
        except ApiError as error:
            # Reported in the status (not Ready), then retried.
            log.warning("routing not written", extra={"service": key, "error": str(error)})
            routing_error = f"the Service or its EndpointSlices cannot be written: {error}"
            plan = plan_service(dataclasses.replace(view, routing_error=routing_error))
            self.queue.add_after(key, 2.0)
        for change in self._tampered.pop(key, []):
            self.post_event(service, "Warning", "RoutingRepaired", f"{change}; written again")

        for binding_name in plan.delete:
            await self.kube.delete(BINDINGS, binding_name, namespace)
            self.binding_cache.deleted(key, binding_name)
            self.fleet.binding_nodes.pop(f"{namespace}/{binding_name}", None)
        for binding in plan.create:
            self.binding_cache.wrote(key, await self.kube.apply(binding.to_kube()))
            self.fleet.update_binding(binding)
        if self.metrics is not None:
            self.metrics.placements.labels("create").inc(len(plan.create))
            self.metrics.placements.labels("delete").inc(len(plan.delete))
        if plan.create or plan.delete:
            log.info(
                "placements changed",
                extra={
                    "service": key,
                    "revision": plan.revision,
                    "placed_on": [c.spec.node_name for c in plan.create],
                    "removed": list(plan.delete),
                },
            )
        for event in plan.events:
            if event.reason == "BindingDrifted":
                log.warning("binding drifted", extra={"service": key, "note": event.message})
        await self._write_status(service, previous, plan.status, plan.events)
        if resolve_error is not None:
            self.queue.add_after(key, self.settings.resolve_retry_seconds)

    def _facts(self) -> dict[str, NodeFacts]:
        """What the fleet knows of every node with an agent, for `plan_service`."""
        liveness = self.fleet.liveness_all()
        names = set(liveness) | set(self.fleet.agents) | set(self.fleet.nodes)
        return {
            node: NodeFacts(
                ready=bool(liveness.get(node) and liveness[node].ready),
                architecture=self.fleet.architecture(node),
                address=self.fleet.address(node),
                instance=self.fleet.instance(node),
            )
            for node in names
        }

    async def _digest(
        self, service: WasmService, previous: WasmServiceStatus | None
    ) -> tuple[str | None, str | None, ResolveError | None]:
        """(digest, what it was resolved from, the error if resolving failed)."""
        module = service.spec.module
        token = (service.metadata.get("annotations") or {}).get(RESOLVE_ANNOTATION, "")
        wanted = module.image + (f"#{token}" if token else "")
        if previous is not None and previous.digest and previous.resolved_from == wanted:
            return previous.digest, wanted, None
        try:
            digest = await self.resolver.resolve(
                service.metadata["namespace"], module.image, module.pull_secrets
            )
        except ResolveError as error:
            log.warning(
                "module not resolved",
                extra={"service": service.metadata["name"], "reason": error.reason},
            )
            keep = previous.resolved_from if previous is not None else None
            return None, keep, error
        return digest, wanted, None

    async def _write_owned(
        self,
        kind: str,
        key: str,
        resource: Any,
        objects: Sequence[Mapping[str, Any]],
        selector: str,
        owner_uid: str | None,
    ) -> None:
        """Makes the objects of ``kind`` this service owns exactly ``objects``.

        Only objects whose ownerReferences name this service are ever deleted, whatever
        labels anything else carries.
        """
        fingerprint = _fingerprint(objects)
        known = self._written.get((kind, key))
        if known is not None and known[0] == fingerprint:
            return
        applied = self._applied.setdefault((kind, key), {})
        namespace = key.split("/", 1)[0]
        wanted = frozenset(o["metadata"]["name"] for o in objects)
        # A name not known to be this service's own may be someone else's object: never
        # taken over (an apply with force would make it ours, and the garbage collector
        # would delete it with the WasmService).
        for name in sorted(wanted - (known[1] if known is not None else frozenset())):
            await self._refuse_foreign(kind, resource, name, namespace, key, owner_uid)
        if known is not None:
            stale = known[1] - wanted  # written or seen as owned by this service
        elif kind in self._seeded:
            stale = frozenset()  # it owned none when listed at start, and none was written
        else:
            existing = await self.kube.list(resource, namespace=namespace, label_selector=selector)
            stale = frozenset(
                obj["metadata"]["name"]
                for obj in existing["items"]
                if obj["metadata"]["name"] not in wanted
                and any(
                    o.get("uid") == owner_uid for o in obj["metadata"].get("ownerReferences") or []
                )
            )
        for obj in objects:
            name = obj["metadata"]["name"]
            applied[name] = dict(obj)
            if (kind, key, name) in self._overwrite:
                # What someone else set can survive an apply (a Service port they changed is
                # another item of a keyed list, and theirs): a merge patch replaces our fields
                # whole, lists included; the apply then owns them again.
                self._overwrite.discard((kind, key, name))
                with contextlib.suppress(ApiError):
                    await self.kube.merge_patch(
                        resource,
                        name,
                        {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")},
                        namespace=namespace,
                    )
            await self.kube.apply(obj)
        for stale_name in sorted(stale):
            applied.pop(stale_name, None)  # our own deletion is no drift
            await self.kube.delete(resource, stale_name, namespace)
        self._written[(kind, key)] = (fingerprint, wanted)

    async def _refuse_foreign(
        self,
        kind: str,
        resource: Any,
        name: str,
        namespace: str,
        key: str,
        owner_uid: str | None,
    ) -> None:
        """Raises `ForeignObjectError` when ``name`` exists and is controlled by something other
        than this WasmService (or an earlier one of the same name, whose objects the garbage
        collector has not removed yet)."""
        try:
            existing = await self.kube.get(resource, name, namespace)
        except ApiError as error:
            if error.not_found:
                return
            raise
        controller = next(
            (o for o in existing["metadata"].get("ownerReferences") or [] if o.get("controller")),
            None,
        )
        service_name = key.split("/", 1)[1]
        if controller is not None and (
            controller.get("uid") == owner_uid
            or (controller.get("kind") == "WasmService" and controller.get("name") == service_name)
        ):
            return
        owner = (
            f"{controller.get('kind')} {controller.get('name')}"
            if controller is not None
            else "no controller"
        )
        raise ForeignObjectError(
            f"{kind} {name} already exists and is not this WasmService's ({owner}); it is left "
            f"as it is and the service is not routed until it is deleted or renamed"
        )

    async def _write_status(
        self,
        service: WasmService,
        previous: WasmServiceStatus | None,
        status: WasmServiceStatus,
        events: Sequence[Event],
    ) -> None:
        rendered = status.to_kube()
        if previous is not None and previous.to_kube() == rendered:
            for event in events:  # a pass that changes only bindings still reports them
                self.post_event(service, event.type, event.reason, event.message)
            return
        metadata = service.metadata
        await self.kube.apply_status(
            {
                "apiVersion": API_VERSION,
                "kind": "WasmService",
                "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
                "status": rendered,
            }
        )
        self._reported[f"{metadata['namespace']}/{metadata['name']}"] = (
            str(metadata.get("uid")),
            status,
        )
        for event in events:
            self.post_event(service, event.type, event.reason, event.message)

    async def event_writer(self) -> None:
        """Posts the queued Events, one at a time (best effort: a failure is logged).

        An Event like one posted within ``event_series_seconds`` (same object, type, reason
        and note) is not posted again: the first one's ``series`` counts it.
        """
        loop = asyncio.get_running_loop()
        while True:
            body = await self._events.get()
            now = loop.time()
            window = self.settings.event_series_seconds
            for old in [k for k, v in self._series.items() if now - v[3] > window]:
                del self._series[old]
            key = (
                str(body["regarding"].get("uid")),
                str(body["type"]),
                str(body["reason"]),
                str(body["note"]),
            )
            try:
                seen = self._series.get(key)
                if seen is None:
                    await self.kube.create(body)
                    self._series[key] = (
                        body["metadata"]["name"],
                        body["metadata"]["namespace"],
                        1,
                        now,
                    )
                    continue
                name, namespace, count, first = seen
                series = {"count": count + 1, "lastObservedTime": body["eventTime"]}
                await self.kube.merge_patch(EVENTS, name, {"series": series}, namespace=namespace)
                self._series[key] = (name, namespace, count + 1, first)
            except ApiError as error:
                if error.not_found and key in self._series:
                    del self._series[key]  # expired or deleted: the next one starts afresh
                log.warning("event not recorded: %s", error)
            except NETWORK_ERRORS as error:
                log.warning("event not recorded: %s", error)

    def post_event(self, service: WasmService, type_: str, reason: str, note: str) -> None:
        """Queues an Event about ``service`` for the event writer (best effort)."""
        metadata = service.metadata
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "eventTime": format_micro_time(),
            "reportingController": "wasmfleet.dev/operator",
            "reportingInstance": self.settings.identity[:128],
            "action": "Reconcile",
            "type": type_,
            "reason": reason,
            "note": note[:1024],
            "regarding": {
                "apiVersion": API_VERSION,
                "kind": "WasmService",
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata.get("uid"),
            },
        }
        try:
            self._events.put_nowait(body)
        except asyncio.QueueFull:  # an event is best effort; never hold a pass over it
            log.warning("event dropped: too many pending", extra={"reason": reason})

    async def _report_invalid(self, body: Mapping[str, Any], error: ValidationError) -> None:
        metadata = body["metadata"]
        problems = invalid_spec_message(error)
        conditions = (body.get("status") or {}).get("conditions") or []
        if any(
            c.get("reason") == "InvalidSpec" and c.get("message") == problems for c in conditions
        ):
            return
        log.warning("invalid WasmService", extra={"service": metadata["name"], "error": problems})
        self._reported.pop(f"{metadata['namespace']}/{metadata['name']}", None)
        condition = {
            "type": "Ready",
            "status": "False",
            "reason": "InvalidSpec",
            "message": problems,
            "lastTransitionTime": format_time(),
            "observedGeneration": metadata.get("generation"),
        }
        await self.kube.apply_status(
            {
                "apiVersion": API_VERSION,
                "kind": "WasmService",
                "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
                "status": {"conditions": [condition]},
            }
        )


def _parse_bindings(
    objects: Sequence[Mapping[str, Any]], *, owner_uid: str | None
) -> tuple[list[WasmBinding], list[tuple[str, str]]]:
    """The bindings among ``objects`` that ``owner_uid`` owns, parsed once for the whole pass;
    and the (name, why) of those that do not parse."""
    parsed, unreadable = [], []
    for obj in objects:
        owners = obj["metadata"].get("ownerReferences") or []
        if not any(o.get("uid") == owner_uid for o in owners):
            continue
        try:
            parsed.append(WasmBinding.model_validate(obj))
        except ValidationError as error:
            unreadable.append((str(obj["metadata"]["name"]), invalid_spec_message(error)))
    return parsed, unreadable


def invalid_spec_message(error: ValidationError) -> str:
    """The InvalidSpec condition's message for a spec the model refuses: where and why (a
    rule on the whole object has no where; its message names the field)."""
    problems = "; ".join(
        ".".join(str(p) for p in e["loc"]) + ": " + e["msg"] if e["loc"] else e["msg"]
        for e in error.errors()[:5]
    )
    return problems[:1024]
