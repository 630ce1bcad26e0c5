"""The layering contracts that ``make lint`` checks (``lint-imports``) hold, and bite.

A copy of the product's packages is checked as it is (every contract kept), then with one
forbidden import added to it (the operator importing the agent, the runtime importing the
server), which must break the contract that names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "operator": ("wasmfleet_api", "wasmfleet_common", "wasmfleet_oci", "wasmfleet_operator"),
    "node-agent": ("wasmfleet_agent",),
    "e2e": ("wasmfleet_harness",),
}


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    for folder, names in PACKAGES.items():
        for name in names:
            shutil.copytree(
                REPO / folder / name, root / name, ignore=shutil.ignore_patterns("__pycache__")
            )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_code_as_it_is_keeps_every_contract(copy: Path) -> None:
    done = _lint_imports(copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("wasmfleet_operator/planner.py", "wasmfleet_agent.cli", "the operator never imports"),
        ("wasmfleet_agent/runtime/engine.py", "wasmfleet_agent.server.http", "Inside the agent"),
        ("wasmfleet_api/units.py", "wasmfleet_common.kube", "Programs over shared packages"),
        ("wasmfleet_operator/render.py", "wasmfleet_operator.reconciler", "Inside the operator"),
        ("wasmfleet_oci/transport.py", "wasmfleet_oci.authorizer", "Inside the OCI package"),
        ("wasmfleet_oci/auth.py", "wasmfleet_oci.transport", "Inside the OCI package"),
        ("wasmfleet_agent/store/cache.py", "wasmfleet_agent.store.puller", "Inside the module"),
        ("wasmfleet_agent/cluster/plans.py", "wasmfleet_agent.cluster.runner", "cluster side"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    copy: Path, tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(copy, broken)
    target = broken / module
    target.write_text(target.read_text() + f"\nimport {forbidden}  # noqa\n")
    done = _lint_imports(broken)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
    assert contract in done.stdout.replace("\n", " ")
