"""Leader election on a coordination.k8s.io Lease, as client-go does it.

Every operator replica tries to hold one Lease. The holder renews it every ``retry``
seconds; the others wait until it has not been renewed for ``duration`` seconds, judged by
when *they* last saw it change (no clock comparison), then take it with an update that
carries the resourceVersion they read, so two candidates can never both win. A leader that
fails to renew for ``duration`` stops leading (`LostLeadershipError`), and the process exits
so that nothing it started keeps writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from wasmfleet_api.units import format_micro_time
from wasmfleet_common.kube import API_ERRORS, ApiError, KubeClient, resource_for

__all__ = ["LeaderElector", "LostLeadershipError"]

log = logging.getLogger(__name__)
LEASES = resource_for("coordination.k8s.io/v1", "Lease")


class LostLeadershipError(Exception):
    pass


@dataclass
class LeaderElector:
    kube: KubeClient
    namespace: str
    name: str
    identity: str
    duration: float = 15.0
    retry: float = 2.0
    _seen: tuple[Any, ...] | None = field(default=None, init=False)
    _seen_at: float = field(default=0.0, init=False)
    _renewed_at: float = field(default=0.0, init=False)

    def _lease(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        spec = (previous or {}).get("spec") or {}
        transitions = int(spec.get("leaseTransitions") or 0)
        ours = spec.get("holderIdentity") == self.identity
        now = format_micro_time()
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.duration)),
                "acquireTime": spec.get("acquireTime") if ours else now,
                "renewTime": now,
                "leaseTransitions": transitions if ours or previous is None else transitions + 1,
            },
        }
        if previous is not None:
            body["metadata"]["resourceVersion"] = previous["metadata"]["resourceVersion"]
        return body

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True while this process holds it."""
        try:
            current = await self.kube.get(LEASES, self.name, self.namespace)
        except ApiError as error:
            if not error.not_found:
                raise
            try:
                await self.kube.create(self._lease(None))
            except ApiError as create_error:
                if create_error.conflict:
                    return False
                raise
            self._renewed_at = time.monotonic()
            return True
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        expired = time.monotonic() - self._seen_at > duration
        if holder and holder != self.identity and not expired:
            return False
        try:
            await self.kube.request(
                "PUT",
                LEASES.path(self.namespace, self.name),
                body=self._lease(current),
            )
        except ApiError as error:
            if error.conflict:
                return False  # somebody else wrote it first
            raise
        if holder != self.identity:
            log.info("became the leader", extra={"lease": self.name, "previous": holder or None})
        self._renewed_at = time.monotonic()
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Waits until this process leads; False if ``stop`` was set first."""
        logged = False
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    return True
            except API_ERRORS as error:
                log.warning("leader election attempt failed: %s", error)
            if not logged:
                log.info("waiting to become the leader", extra={"lease": self.name})
                logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.retry)
        return False

    async def hold(self) -> None:
        """Renews until cancelled; raises `LostLeadershipError` when the Lease is lost."""
        while True:
            await asyncio.sleep(self.retry)
            try:
                if await self.try_acquire():
                    continue
                raise LostLeadershipError("another replica holds the lease")
            except API_ERRORS as error:
                log.warning("lease renewal failed: %s", error)
            if time.monotonic() - self._renewed_at > self.duration:
                raise LostLeadershipError(f"lease not renewed for {self.duration:.0f}s")

    async def release(self) -> None:
        """Gives the Lease up so that a standby takes over at once."""
        with contextlib.suppress(*API_ERRORS):
            current = await self.kube.get(LEASES, self.name, self.namespace)
            if (current.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = self._lease(current)
            body["spec"]["holderIdentity"] = ""
            body["spec"]["leaseDurationSeconds"] = 1
            await self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body)
