"""The Helm chart as text and objects: lint, the values schema, a server-side dry run.

Installing it, its Pods running on real nodes, upgrading and uninstalling it are proven in
``test_chart_on_cluster.py``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from wasmfleet_harness.chart import CHART, KUBE_VERSION, helm, render_chart
from wasmfleet_harness.controlplane import ControlPlane


def test_helm_lint_is_clean(control_plane: ControlPlane) -> None:
    result = helm(control_plane, "lint", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_values_outside_the_schema_are_refused(control_plane: ControlPlane) -> None:
    result = helm(
        control_plane,
        "template",
        "x",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "agent.architectures={s390x}",
        check=False,
    )
    assert result.returncode != 0
    assert "architectures" in result.stderr


def test_what_the_chart_renders_passes_a_server_side_dry_run(
    wasmfleet_crds: ControlPlane,
) -> None:
    plane = wasmfleet_crds
    plane.kubectl("create", "namespace", "wasmfleet-dry-run")
    for extra in ((), ("--set", "operator.replicas=1", "--set", "metrics.service.enabled=false")):
        objects = render_chart(plane, "dry", "wasmfleet-dry-run", *extra)
        kinds = {o["kind"] for o in objects}
        assert {"Deployment", "DaemonSet", "ClusterRole", "CustomResourceDefinition"} <= kinds
        listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        result = plane.kubectl(
            "apply", "--server-side", "--dry-run=server", "-f", "-", input=listing, check=False
        )
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"operator": {"replicas": 1}},
        {
            "agent": {"tolerations": [{"operator": "Exists"}]},
            "metrics": {"serviceMonitor": {"enabled": True}},
        },
    ],
)
def test_values_change_what_is_rendered(
    control_plane: ControlPlane, values: dict[str, object]
) -> None:
    text = yaml.safe_dump(values)
    out = subprocess.run(
        [
            str(control_plane.binaries.helm),
            "template",
            "v",
            str(CHART),
            "--kube-version",
            KUBE_VERSION,
            "-f",
            "-",
        ],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    kinds = [o["kind"] for o in objects]
    if values.get("operator"):
        assert "PodDisruptionBudget" not in kinds, "no PDB for a single operator replica"
    else:
        assert kinds.count("ServiceMonitor") == 2
        (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
        assert daemonset["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]
