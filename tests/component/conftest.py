"""Component tests: real registry, real modules built from source, no Kubernetes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from wasmfleet_harness.agent import ServedModule
from wasmfleet_harness.processes import Workspace


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/component" in str(item.path):
            item.add_marker(pytest.mark.component)


@pytest.fixture(scope="session")
def probe_deadline() -> float:
    """Seconds one request to ``probe_agent`` may run (its ``--timeout``)."""
    return 0.5


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def probe_agent(
    request: pytest.FixtureRequest,
    workspace: Workspace,
    wasm_modules: dict[str, Path],
    probe_deadline: float,
) -> Iterator[ServedModule]:
    """The probe served by the agent itself, and by two worker processes: the same contract.

    Each test module gets agents of its own, so what one module does to them (hostile
    requests, floods) never reaches another module's tests.
    """
    processes = int(request.param)
    module = request.module.__name__
    served = ServedModule(
        workspace.subdir(f"serve-probe-{processes}-{module}"),
        wasm_modules["probe"],
        extra=[
            "--timeout",
            f"{int(probe_deadline * 1000)}ms",
            "--max-response",
            "1Mi",
            "--max-request-body",
            "64Ki",
            "--max-concurrency",
            "16",
            "--memory",
            "16Mi",
            "--env",
            "GIVEN=yes",
            "--processes",
            str(processes),
        ],
        name=f"agent-probe-{processes}",
    )
    with served:
        yield served
