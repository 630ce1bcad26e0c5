"""Every test below this folder runs against the real local control plane."""

from __future__ import annotations

import pytest

from wasmfleet_harness.binaries import NodeBinaries, ensure_node_binaries
from wasmfleet_harness.probe import push_probe_image
from wasmfleet_harness.registry import Registry


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e/tests" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def node_binaries() -> NodeBinaries:
    """The pinned node binaries (kubelet, containerd, ...), built if missing."""
    return ensure_node_binaries()


@pytest.fixture(scope="session")
def probe_image(registry: Registry) -> str:
    """The probe program as an image in the local registry (pulled by containerd over HTTP)."""
    return push_probe_image(registry)
