"""The Helm chart against the local control plane: render it, install it, run as its identities.

`run_as_chart_identities` applies exactly the ServiceAccounts and RBAC objects the chart
renders, asks the real API server for a token of each ServiceAccount, and writes a kubeconfig
per identity, so the operator and the agents can run as local processes with precisely the
permissions the chart grants them in a cluster.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wasmfleet_harness.binaries import REPO_ROOT
from wasmfleet_harness.controlplane import ControlPlane

__all__ = [
    "CHART",
    "KUBE_VERSION",
    "ChartIdentities",
    "helm",
    "render_chart",
    "run_as_chart_identities",
]

CHART = REPO_ROOT / "charts" / "wasmfleet"
KUBE_VERSION = "1.36.3"
RBAC_KINDS = frozenset(
    {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
)


def helm(plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs the pinned helm as the admin of ``plane``."""
    return subprocess.run(
        [str(plane.binaries.helm), "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def render_chart(
    plane: ControlPlane, release: str, namespace: str, *extra: str
) -> list[dict[str, Any]]:
    """``helm template`` of the chart, as objects (CRDs included)."""
    out = helm(
        plane,
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
        *extra,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass(frozen=True)
class ChartIdentities:
    namespace: str
    operator: Path
    agent: Path
    objects: tuple[dict[str, Any], ...]


def _token_kubeconfig(plane: ControlPlane, namespace: str, account: str, path: Path) -> Path:
    token = plane.kubectl(
        "create", "token", account, "-n", namespace, "--duration", "6h"
    ).stdout.strip()
    return plane.kubeconfig_for_token(token, path)


def run_as_chart_identities(
    plane: ControlPlane, workdir: Path, *, release: str = "wasmfleet", namespace: str
) -> ChartIdentities:
    """Applies the chart's ServiceAccounts and RBAC; kubeconfigs with their tokens."""
    plane.kubectl_apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    objects = tuple(o for o in render_chart(plane, release, namespace) if o["kind"] in RBAC_KINDS)
    plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    accounts = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o["metadata"]["name"]
        for o in objects
        if o["kind"] == "ServiceAccount"
    }
    return ChartIdentities(
        namespace=namespace,
        operator=_token_kubeconfig(
            plane, namespace, accounts["operator"], workdir / "operator.kubeconfig"
        ),
        agent=_token_kubeconfig(plane, namespace, accounts["agent"], workdir / "agent.kubeconfig"),
        objects=objects,
    )
