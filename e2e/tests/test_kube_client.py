"""The shared async client against the real API server: apply, patch, list, watch, delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from wasmfleet_common.kube import ApiError, KubeClient, KubeConfig, resource_for
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.partition import Relay

CONFIGMAP = resource_for("v1", "ConfigMap")
AGENT = resource_for("wasmfleet.dev/v1alpha1", "WasmAgent")


@pytest.fixture
async def kube(wasmfleet_crds: ControlPlane) -> AsyncIterator[KubeClient]:
    config = KubeConfig.from_kubeconfig(wasmfleet_crds.kubeconfig)
    async with KubeClient(config, field_manager="wasmfleet-test") as client:
        yield client


def _configmap(namespace: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": namespace, "labels": {"t": "yes"}},
        "data": {"k": value},
    }


async def test_applying_the_same_object_twice_changes_nothing(
    kube: KubeClient, namespace: str
) -> None:
    first = await kube.apply(_configmap(namespace, "1"))
    second = await kube.apply(_configmap(namespace, "1"))
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    managers = {m["manager"] for m in second["metadata"]["managedFields"]}
    assert managers == {"wasmfleet-test"}


async def test_a_missing_object_is_a_404_api_error(kube: KubeClient, namespace: str) -> None:
    with pytest.raises(ApiError) as missing:
        await kube.get(CONFIGMAP, "absent", namespace)
    assert missing.value.not_found
    assert await kube.delete(CONFIGMAP, "absent", namespace) is False


async def test_a_watch_sees_changes_made_after_a_list(kube: KubeClient, namespace: str) -> None:
    listing = await kube.list(CONFIGMAP, namespace=namespace, label_selector="t=yes")
    assert listing["items"] == []
    start = listing["metadata"]["resourceVersion"]

    async def collect() -> list[tuple[str, str]]:
        seen = []
        async for kind, obj in kube.watch(
            CONFIGMAP,
            namespace=namespace,
            resource_version=start,
            label_selector="t=yes",
            timeout_seconds=20,
        ):
            if kind != "BOOKMARK":
                seen.append((kind, obj["data"]["k"]))
            if len(seen) == 3:
                break
        return seen

    watcher = asyncio.create_task(collect())
    await kube.apply(_configmap(namespace, "1"))
    await kube.merge_patch(CONFIGMAP, "c", {"data": {"k": "2"}}, namespace=namespace)
    assert await kube.delete(CONFIGMAP, "c", namespace) is True
    events = await asyncio.wait_for(watcher, timeout=30)
    assert events == [("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "2")]


async def test_status_goes_through_the_status_subresource(kube: KubeClient) -> None:
    body = {
        "apiVersion": "wasmfleet.dev/v1alpha1",
        "kind": "WasmAgent",
        "metadata": {"name": "client-test-node"},
        "spec": {"nodeName": "client-test-node"},
    }
    await kube.apply(body)
    try:
        await kube.apply_status({**body, "status": {"architecture": "arm64", "allocated": 2}})
        # A status in the main resource is ignored by the server: status is a subresource.
        await kube.apply({**body, "status": {"architecture": "amd64"}})
        got = await kube.get(AGENT, "client-test-node")
        assert got["status"]["architecture"] == "arm64"
        assert got["status"]["allocated"] == 2
    finally:
        await kube.delete(AGENT, "client-test-node")


async def test_dropping_connections_ends_silent_requests_and_watches_at_once(
    wasmfleet_crds: ControlPlane, namespace: str
) -> None:
    """Through a relay that goes silent (a partition), a watch that was streaming and a list
    that cannot connect both end with TimeoutError as soon as the connections are dropped,
    not after their own timeouts; once the network is back the same client works again."""
    relay = Relay("127.0.0.1", wasmfleet_crds.apiserver_port)
    relay.start()
    try:
        kubeconfig = wasmfleet_crds.kubeconfig_via(
            wasmfleet_crds.kubeconfig, relay.port, wasmfleet_crds.workdir / "relayed.kubeconfig"
        )
        config = KubeConfig.from_kubeconfig(kubeconfig)
        async with KubeClient(config, field_manager="wasmfleet-test", timeout=60) as kube:
            listing = await kube.list(CONFIGMAP, namespace=namespace)
            version = listing["metadata"]["resourceVersion"]

            streaming = asyncio.Event()

            async def watch() -> None:
                async for _ in kube.watch(CONFIGMAP, namespace=namespace, resource_version=version):
                    streaming.set()

            watching = asyncio.create_task(watch())
            await kube.apply(_configmap(namespace, "before"))
            await asyncio.wait_for(streaming.wait(), timeout=10)
            relay.cut()
            listing_task = asyncio.create_task(kube.list(CONFIGMAP, namespace=namespace))
            # Silent, whether on a pooled connection or a new one: still pending a while later.
            done, _ = await asyncio.wait({listing_task}, timeout=0.5)
            assert not done
            started = asyncio.get_running_loop().time()
            await kube.drop_connections()
            for task in (watching, listing_task):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(task, timeout=10)
            assert asyncio.get_running_loop().time() - started < 5
            relay.heal()
            await kube.apply(_configmap(namespace, "after"))
    finally:
        relay.close()
