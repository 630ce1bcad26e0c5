"""Keeps what the agent runs equal to the WasmBindings assigned to its node.

A list, then a watch from the list's resourceVersion, with a field selector on
``spec.nodeName`` so the agent never sees other nodes' bindings; a watch that ends or
expires (410 Gone) is followed by a fresh list. After every change the whole desired set is
handed to the runner (level-based: `BindingRunner.sync` compares it with what runs), so a
missed event costs nothing but a little delay. When the API server is unreachable the agent
keeps running what it has and retries with backoff.

Status flows the other way: the runner reports a binding's status as the API type
(`WasmBindingStatus`, the one the operator reads it back with), and `StatusWriter` applies it
to the binding's status subresource, coalescing bursts so that only the latest state per
binding is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from wasmfleet_agent.cluster.registration import ApiContact
from wasmfleet_api.base import API_VERSION
from wasmfleet_api.binding import WasmBinding, WasmBindingStatus
from wasmfleet_common.backoff import Backoff
from wasmfleet_common.kube import NETWORK_ERRORS, ApiError, KubeClient, resource_for

__all__ = ["BindingRunner", "StatusWriter", "watch_bindings"]

log = logging.getLogger(__name__)
BINDINGS = resource_for(API_VERSION, "WasmBinding")
WATCH_BACKOFF = Backoff(base=1.0, cap=30.0)
"""Waits before listing again after a failure (cut short when the API server is back)."""


class BindingRunner(Protocol):
    """What runs bindings; `sync` receives the whole desired set, keyed namespace/name."""

    async def sync(self, desired: Mapping[str, WasmBinding]) -> None: ...


def _key(obj: Mapping[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _parse(obj: Mapping[str, Any]) -> WasmBinding | None:
    try:
        return WasmBinding.model_validate(obj)
    except ValueError as error:
        # A binding the agent cannot read is reported, not fatal: the others keep running.
        log.error("ignoring unreadable binding %s: %s", _key(obj), error)
        return None


async def watch_bindings(
    kube: KubeClient,
    *,
    node_name: str,
    runner: BindingRunner,
    stop: asyncio.Event,
    watch_timeout: int = 300,
    contact: ApiContact | None = None,
) -> None:
    """Runs until ``stop`` is set, feeding the runner this node's bindings.

    After a failure it backs off (up to 30 s), unless the API server comes back meanwhile (as
    ``contact`` tells): then it lists again at once.
    """
    selector = f"spec.nodeName={node_name}"
    failures = 0
    while not stop.is_set():
        try:
            listing = await kube.list(BINDINGS, field_selector=selector)
            objects = {_key(o): o for o in listing["items"]}
            await runner.sync(_parsed(objects))
            version = listing["metadata"]["resourceVersion"]
            failures = 0
            while not stop.is_set():
                async for kind, obj in kube.watch(
                    BINDINGS,
                    resource_version=version,
                    field_selector=selector,
                    timeout_seconds=watch_timeout,
                ):
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        objects.pop(_key(obj), None)
                    else:
                        objects[_key(obj)] = obj
                    await runner.sync(_parsed(objects))
                    if stop.is_set():
                        break
        except ApiError as error:
            if error.status != 410:  # 410: our resourceVersion is too old; relist at once
                failures += 1
                log.warning("binding watch failed (%s); keeping what runs", error)
        except NETWORK_ERRORS as error:
            failures += 1
            log.warning("API server unreachable (%s); keeping what runs", error)
        if failures:
            await _back_off(WATCH_BACKOFF.delay(failures), stop, contact)


async def _back_off(delay: float, stop: asyncio.Event, contact: ApiContact | None) -> None:
    """Waits ``delay`` seconds, or less if ``stop`` is set or the API server comes back."""
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if contact is not None:
        waits.append(asyncio.ensure_future(contact.back()))
    try:
        await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _parsed(objects: Mapping[str, Mapping[str, Any]]) -> dict[str, WasmBinding]:
    parsed = {}
    for key, obj in objects.items():
        binding = _parse(obj)
        if binding is not None:
            parsed[key] = binding
    return parsed


class StatusWriter:
    """Writes binding status, latest state wins, one writer task per agent."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self._pending: dict[str, WasmBindingStatus] = {}
        self._wake = asyncio.Event()

    def report(self, namespace: str, name: str, status: WasmBindingStatus) -> None:
        """Queues ``status`` for the binding; replaces anything not yet written."""
        self._pending[f"{namespace}/{name}"] = status
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Writes queued status until ``stop``; failed writes are retried every second."""
        while not stop.is_set():
            waiter = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {waiter, stopper},
                timeout=1.0 if self._pending else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            stopper.cancel()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        for key, status in batch.items():
            namespace, name = key.split("/", 1)
            body = {
                "apiVersion": API_VERSION,
                "kind": "WasmBinding",
                "metadata": {"name": name, "namespace": namespace},
                "status": status.to_kube(),
            }
            try:
                await self._kube.apply_status(body)
            except ApiError as error:
                if not error.not_found:  # a deleted binding needs no status
                    log.warning("status of %s not written: %s", key, error)
                    self._pending.setdefault(key, status)
            except NETWORK_ERRORS as error:
                log.warning("status of %s not written: %s", key, error)
                self._pending.setdefault(key, status)
