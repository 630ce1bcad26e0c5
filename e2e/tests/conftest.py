"""Every test below this folder runs against the real local control plane."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e/tests" in str(item.path):
            item.add_marker(pytest.mark.e2e)
