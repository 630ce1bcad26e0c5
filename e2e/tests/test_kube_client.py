"""The shared async client against the real API server: apply, patch, list, watch, delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from wasmfleet_api.client import ApiError, KubeClient, KubeConfig, resource_for
from wasmfleet_harness.controlplane import ControlPlane

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
