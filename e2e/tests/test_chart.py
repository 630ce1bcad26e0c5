"""The Helm chart: lint, a server-side dry run of what it renders, install and uninstall.

No kubelet runs locally, so the operator's and agents' Pods stay Pending; what is proven
here is the objects (accepted by the real API server, created by ``helm install``, removed
by ``helm uninstall`` with the CRDs kept, as Helm does).
"""

from __future__ import annotations

import json
import subprocess
from functools import partial

import pytest
import yaml

from wasmfleet_harness.chart import CHART, KUBE_VERSION, helm, render_chart
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.processes import wait_until


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


def test_install_creates_every_object_and_uninstall_removes_them_but_the_crds(
    wasmfleet_crds: ControlPlane,
) -> None:
    plane = wasmfleet_crds
    release, namespace = "installed", "wasmfleet-install"
    helm(plane, "install", release, str(CHART), "--namespace", namespace, "--create-namespace")
    try:
        manifest = helm(plane, "get", "manifest", release, "--namespace", namespace).stdout
        rendered = [o for o in yaml.safe_load_all(manifest) if o]
        assert len(rendered) >= 12
        for obj in rendered:
            scope = ["-n", namespace] if obj["metadata"].get("namespace") else []
            found = plane.kubectl(
                "get", obj["kind"], obj["metadata"]["name"], *scope, "-o", "name", check=False
            )
            assert found.returncode == 0, f"{obj['kind']} {obj['metadata']['name']} missing"
        status = helm(plane, "status", release, "--namespace", namespace).stdout
        assert "STATUS: deployed" in status
        assert "kubectl get wasmservices" in status  # NOTES.txt
    finally:
        helm(plane, "uninstall", release, "--namespace", namespace, "--wait")

    def gone(obj: dict[str, object]) -> bool:
        metadata = obj["metadata"]
        assert isinstance(metadata, dict)
        scope = ["-n", namespace] if metadata.get("namespace") else []
        result = plane.kubectl(
            "get", str(obj["kind"]), str(metadata["name"]), *scope, "-o", "name", check=False
        )
        return result.returncode != 0 and "NotFound" in result.stderr

    for obj in rendered:
        wait_until(partial(gone, obj), timeout=30, message=f"{obj['kind']} left behind")
    crds = plane.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=wasmfleet", "-o", "name")
    assert len(crds.stdout.split()) == 3, "Helm keeps the CRDs"


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
