"""Wasmfleet on a kind cluster: every example reaches Ready and answers through its Service.

``e2e/kind/run.sh`` runs this after it has created the cluster, installed the chart, pushed the
example modules and applied ``examples/*/wasmservice.yaml``; ``KUBECONFIG`` names the cluster.
Without ``KUBECONFIG``, without kubectl, or when the cluster or the Wasmfleet CRDs cannot be
reached, every test skips. It lives outside ``tests/`` and ``e2e/tests/`` so the normal suite
never collects it.

Requests come from a curl Pod inside the cluster and go to each Service's cluster DNS name,
so they take the real path: CoreDNS, then kube-proxy, which routes the selector-less Service
through the EndpointSlices the operator writes to the agents' host-network ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from wasmfleet_harness.processes import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("WASMFLEET_KIND_NAMESPACE", "default")
SYSTEM_NAMESPACE = os.environ.get("WASMFLEET_KIND_SYSTEM_NAMESPACE", "wasmfleet-system")
TIMEOUT = float(os.environ.get("WASMFLEET_KIND_TIMEOUT", "300"))
CURL_IMAGE = os.environ.get("WASMFLEET_KIND_CURL_IMAGE", "curlimages/curl:8.11.1")

# What each module answers (examples/*/main.*). The greeter's is GREETING from its env and
# the name from the greeter-config ConfigMap, both in its wasmservice.yaml.
EXPECTED_ANSWERS = {
    "hello-c": "Hello from a C Wasm microservice!",
    "hello-go": "Hello from a Go Wasm microservice!",
    "hello-rust": "Hello from a Rust Wasm microservice!",
    "greeter": "Hello, Wasmfleet!",
    "hello-component": "Hello from a Rust Wasm microservice!",
    "hello-http-component": "Hello from a Rust Wasm microservice!",
    "hello-python": "Hello from a Python Wasm microservice!",
    # what it fetched from hello-rust's Service, the one origin it may reach
    "relay-python": "relayed: Hello from a Rust Wasm microservice!",
}


@dataclass(frozen=True)
class Example:
    """One ``examples/*/wasmservice.yaml``: its WasmService and the ConfigMaps beside it."""

    service: dict[str, Any]
    config_maps: dict[str, dict[str, str]]

    @property
    def name(self) -> str:
        return str(self.service["metadata"]["name"])

    @property
    def replicas(self) -> int:
        return int(self.service["spec"].get("replicas", 1))

    @property
    def http_port(self) -> int | None:
        http = self.service["spec"].get("http")
        return None if http is None else int(http["port"])


def load_examples(root: Path = REPO_ROOT / "examples") -> list[Example]:
    """Every example manifest below ``root``, in directory order."""
    examples = []
    for manifest in sorted(root.glob("*/wasmservice.yaml")):
        documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        services = [d for d in documents if d["kind"] == "WasmService"]
        assert len(services) == 1, f"{manifest} should hold one WasmService"
        config_maps = {
            d["metadata"]["name"]: dict(d.get("data") or {})
            for d in documents
            if d["kind"] == "ConfigMap"
        }
        examples.append(Example(service=services[0], config_maps=config_maps))
    return examples


def plan_wordcount_output(example: Example) -> list[str]:
    """The lines the wordcount job prints for the ConfigMap mounted at its first argument."""
    spec = example.service["spec"]
    mount = next(f for f in spec["files"] if f["mountPath"] == spec["args"][0])
    files = example.config_maps[mount["configMap"]["name"]]
    counts = {name: len(text.split()) for name, text in sorted(files.items())}
    return [*(f"{name} {count}" for name, count in counts.items()), f"total {sum(counts.values())}"]


EXAMPLES = load_examples()
HTTP_EXAMPLES = [e for e in EXAMPLES if e.http_port is not None]
WORDCOUNT = next(e for e in EXAMPLES if e.name == "wordcount")


@dataclass(frozen=True)
class Kubectl:
    """kubectl against the cluster ``KUBECONFIG`` names."""

    binary: str

    def run(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> dict[str, Any]:
        loaded = json.loads(self.run(*args, "-o", "json").stdout)
        assert isinstance(loaded, dict)
        return loaded


def _ready_condition(service: dict[str, Any] | None) -> dict[str, Any]:
    conditions = ((service or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _not_ready_report(services: dict[str, dict[str, Any]]) -> str:
    lines = []
    for example in EXAMPLES:
        condition = _ready_condition(services.get(example.name))
        if condition.get("status") != "True":
            reason = condition.get("reason", "no status yet")
            lines.append(f"{example.name}: {reason}: {condition.get('message', '')}")
    return "WasmServices not Ready:\n  " + "\n  ".join(lines)


@pytest.fixture(scope="module")
def kubectl() -> Kubectl:
    """kubectl, once the cluster answers and has the WasmService CRD; else every test skips."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is not set: run e2e/kind/run.sh, which creates the cluster")
    binary = shutil.which(os.environ.get("KUBECTL", "kubectl"))
    if binary is None:
        pytest.skip("kubectl is not installed")
    tool = Kubectl(binary)
    try:
        probe = tool.run(
            "get", "crd", "wasmservices.wasmfleet.dev", "--request-timeout=10s", check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip("the cluster in KUBECONFIG does not answer")
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["kubectl failed"])[-1]
        pytest.skip(f"no cluster with Wasmfleet's CRDs in KUBECONFIG: {why}")
    return tool


@pytest.fixture(scope="module")
def services(kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    """Every example's WasmService, read once all of them are Ready."""
    latest: dict[str, dict[str, Any]] = {}

    def all_ready() -> bool:
        listing = kubectl.json("get", "wasmservices", "--namespace", NAMESPACE)
        latest.clear()
        latest.update({item["metadata"]["name"]: item for item in listing["items"]})
        return all(_ready_condition(latest.get(e.name)).get("status") == "True" for e in EXAMPLES)

    wait_until(all_ready, timeout=TIMEOUT, interval=2, message=lambda: _not_ready_report(latest))
    return dict(latest)


@pytest.fixture(scope="module")
def probe_pod(kubectl: Kubectl) -> Iterator[str]:
    """A running curl Pod in the examples' namespace to send requests from."""
    name = f"wasmfleet-kind-probe-{uuid.uuid4().hex[:8]}"
    kubectl.run(
        "run",
        name,
        "--namespace",
        NAMESPACE,
        f"--image={CURL_IMAGE}",
        "--restart=Never",
        "--labels=app.kubernetes.io/name=wasmfleet-kind-probe",
        "--command",
        "--",
        "sleep",
        "3600",
    )
    try:
        kubectl.run(
            "wait",
            "--for=condition=Ready",
            f"pod/{name}",
            "--namespace",
            NAMESPACE,
            "--timeout=180s",
            timeout=200,
        )
        yield name
    finally:
        kubectl.run(
            "delete",
            "pod",
            name,
            "--namespace",
            NAMESPACE,
            "--grace-period=1",
            "--wait=false",
            "--ignore-not-found",
            check=False,
        )


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_becomes_ready_with_all_its_replicas(
    services: dict[str, dict[str, Any]], example: Example
) -> None:
    status = services[example.name]["status"]
    assert _ready_condition(services[example.name])["status"] == "True"
    assert status["ready"] == f"{example.replicas}/{example.replicas}"
    assert status["digest"].startswith("sha256:")


def test_kubectl_get_wasmservices_shows_every_example_ready(
    kubectl: Kubectl, services: dict[str, dict[str, Any]]
) -> None:
    table = kubectl.run("get", "wasmservices", "--namespace", NAMESPACE).stdout.splitlines()
    header = table[0].split()
    assert header[:2] == ["NAME", "READY"], table[0]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    for example in EXAMPLES:
        assert rows[example.name][1] == f"{example.replicas}/{example.replicas}", table


@pytest.mark.parametrize("example", HTTP_EXAMPLES, ids=[e.name for e in HTTP_EXAMPLES])
def test_each_http_example_answers_at_its_cluster_dns_name(
    kubectl: Kubectl, services: dict[str, dict[str, Any]], probe_pod: str, example: Example
) -> None:
    expected = EXPECTED_ANSWERS.get(example.name)
    assert expected is not None, f"EXPECTED_ANSWERS has no answer for {example.name}"
    port = "" if example.http_port == 80 else f":{example.http_port}"
    url = f"http://{example.name}.{NAMESPACE}.svc.cluster.local{port}"
    assert services[example.name]["status"].get("url") == url
    answers: list[str] = []

    def answered() -> bool:
        result = kubectl.run(
            "exec",
            probe_pod,
            "--namespace",
            NAMESPACE,
            "--",
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "5",
            url,
            check=False,
        )
        answers.append((result.stdout + result.stderr).strip())
        return result.returncode == 0 and result.stdout.strip() == expected

    # A Service that just became Ready may need a moment before kube-proxy routes it.
    wait_until(
        answered,
        timeout=60,
        interval=1,
        message=lambda: f"{url} answered {answers[-1:]!r}, expected {expected!r}",
    )


def test_the_wordcount_job_prints_its_counts_to_its_agent_log(
    kubectl: Kubectl, services: dict[str, dict[str, Any]]
) -> None:
    expected = plan_wordcount_output(WORDCOUNT)
    printed: list[str] = []

    def logged() -> bool:
        logs = kubectl.run(
            "logs",
            "--namespace",
            SYSTEM_NAMESPACE,
            "--selector=app.kubernetes.io/name=wasmfleet,app.kubernetes.io/component=agent",
            "--container=agent",
            "--tail=-1",
            "--max-log-requests=20",
        ).stdout
        printed[:] = [
            str(record.get("message", ""))
            for record in _json_lines(logs)
            if record.get("service") == f"{NAMESPACE}/{WORDCOUNT.name}"
            and record.get("stream") == "stdout"
        ]
        return printed[-len(expected) :] == expected

    wait_until(
        logged,
        timeout=60,
        interval=2,
        message=lambda: f"the job printed {printed!r}, expected {expected!r} at the end",
    )


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record
