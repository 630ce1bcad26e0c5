"""The images run Wasmfleet on the real control plane exactly as the chart starts them.

The operator (linux/amd64 image) and an agent (linux/arm64 image, under qemu-user) are
pulled from the session's registry and started with the arguments, users and mounts the
chart renders for them, the root read-only, and the chart's own ServiceAccounts and RBAC
(their tokens in a kubeconfig, as no kubelet runs here to mount them). The operator must
take its leader Lease and the agent register as an arm64 node, then a WasmService placed on
that agent must be pulled, compiled and served from inside the image.

The agent serves on loopback, where Kubernetes refuses EndpointSlice addresses, so the test
asks the binding's status for the port instead of following the Service.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from wasmfleet_agent.runtime.engine import Runtime
from wasmfleet_agent.runtime.sandbox import Preopen, SandboxSpec, run
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.chart import render_chart, run_as_chart_identities
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.elf import EM_AARCH64, EM_X86_64, elf_machine
from wasmfleet_harness.images.recipe import Platform
from wasmfleet_harness.images.rootfs import Bind, ImageRoot
from wasmfleet_harness.processes import ManagedProcess, Workspace, free_port, wait_until
from wasmfleet_harness.registry import Registry

# A cold run makes the Debian bases and builds the images first.
pytestmark = pytest.mark.timeout(3600)

RELEASE = "wasmfleet-images"
NAMESPACE = "wasmfleet-images"
NODE = "image-arm64"
AMD64_NODE = "image-amd64"
NODE_IP = "127.0.0.1"
ARM64 = Platform("linux", "arm64")
AMD64 = Platform("linux", "amd64")


def _container(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (workload,) = [o for o in objects if o["kind"] == kind]
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(NAME)`` in container arguments, as the kubelet expands them."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in args]


def _user(context: dict[str, Any]) -> str:
    return f"{context['runAsUser']}:{context.get('runAsGroup', context['runAsUser'])}"


def _portable_kubeconfig(source: Path, target: Path) -> Path:
    """``source`` with its CA embedded, readable by the images' user: a ServiceAccount's
    token and CA, as a kubelet would mount them."""
    document = yaml.safe_load(source.read_text())
    for cluster in document["clusters"]:
        authority = Path(cluster["cluster"].pop("certificate-authority"))
        cluster["cluster"]["certificate-authority-data"] = base64.b64encode(
            authority.read_bytes()
        ).decode()
    target.write_text(yaml.safe_dump(document))
    target.chmod(0o644)
    return target


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class ChartRun:
    plane: ControlPlane
    operator: ManagedProcess
    agent: ManagedProcess
    health_port: int
    admin_port: int
    state: Path
    """The agent's hostPath (pulled modules and compiled code)."""
    amd64_agent: ManagedProcess
    """An agent from the amd64 image, on node `AMD64_NODE`, beside the arm64 one."""

    def logs(self) -> str:
        processes = (self.operator, self.agent, self.amd64_agent)
        return "\n".join(f"--- {p.name}\n{p.log_tail(40)}" for p in processes)


@pytest.fixture(scope="module")
def chart_run(
    wasmfleet_crds: ControlPlane,
    image_root: Callable[[str, Platform], ImageRoot],
    workspace: Workspace,
) -> Iterator[ChartRun]:
    """The operator and one arm64 agent started from their images with the chart's settings."""
    plane = wasmfleet_crds
    workdir = workspace.subdir("images-on-cluster")
    identities = run_as_chart_identities(plane, workdir, release=RELEASE, namespace=NAMESPACE)
    health, admin = free_port(), free_port()
    objects = render_chart(
        plane,
        RELEASE,
        NAMESPACE,
        "--set",
        f"operator.port={health}",
        "--set",
        f"agent.adminPort={admin}",
        "--set",
        "agent.leaseDuration=5s",
    )
    operator_pod, agent_pod = _container(objects, "Deployment"), _container(objects, "DaemonSet")
    secrets = workdir / "secrets"
    secrets.mkdir()
    operator_kubeconfig = _portable_kubeconfig(identities.operator, secrets / "operator")
    agent_kubeconfig = _portable_kubeconfig(identities.agent, secrets / "agent")
    for name, arch in ((NODE, "arm64"), (AMD64_NODE, "amd64")):
        plane.kubectl_apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": arch},
                },
            }
        )
        plane.kubectl(
            "taint", "nodes", name, "node.kubernetes.io/not-ready:NoSchedule-", check=False
        )

    kubeconfig_mount = "/run/secrets/wasmfleet/kubeconfig"
    operator = dataclasses.replace(
        image_root("operator", AMD64), user=_user(operator_pod["securityContext"])
    )
    (operator_container,) = operator_pod["containers"]
    operator_process = operator.process(
        "image-operator",
        [
            *operator.entrypoint,
            *operator_container["args"],
            f"--kubeconfig={kubeconfig_mount}",
            "--health-host=127.0.0.1",  # the chart's 0.0.0.0 is the Pod's network, not ours
        ],
        binds=[Bind(operator_kubeconfig, kubeconfig_mount)],
        log_path=workdir / "operator.log",
    )

    def agent_process(platform: Platform, node: str, admin_port: int) -> ManagedProcess:
        """The agent of ``platform``'s image as the DaemonSet's Pod on ``node`` runs it."""
        agent = image_root("agent", platform)
        state = workdir / f"{node}-state"
        state.mkdir()
        cache = Bind(state, "/var/lib/wasmfleet", writable=True)
        (init,) = agent_pod["initContainers"]
        init_run = dataclasses.replace(agent, user=_user(init["securityContext"])).run(
            init["command"], binds=[cache], timeout=120
        )
        assert init_run.returncode == 0, init_run.stderr
        (agent_container,) = agent_pod["containers"]
        agent = dataclasses.replace(agent, user=_user(agent_container["securityContext"]))
        args = _expand(agent_container["args"], {"NODE_NAME": node, "NODE_IP": NODE_IP})
        # both agents share this machine's loopback: the second one's admin port moves
        args = [f"--admin-port={admin_port}" if a.startswith("--admin-port=") else a for a in args]
        return agent.process(
            node,
            [*agent.entrypoint, *args, f"--kubeconfig={kubeconfig_mount}"],
            binds=[cache, Bind(agent_kubeconfig, kubeconfig_mount)],
            log_path=workdir / f"{node}.log",
        )

    arm64_agent = agent_process(ARM64, NODE, admin)
    amd64_agent = agent_process(AMD64, AMD64_NODE, free_port())
    processes: list[ManagedProcess] = [operator_process, arm64_agent, amd64_agent]
    try:
        for process in processes:
            process.start()
        yield ChartRun(
            plane,
            operator_process,
            arm64_agent,
            health,
            admin,
            workdir / f"{NODE}-state",
            amd64_agent,
        )
    finally:
        for process in processes:
            process.stop()
        for name in (NODE, AMD64_NODE):
            plane.kubectl("delete", "wasmagent", name, "--ignore-not-found", check=False)
            plane.kubectl("delete", "node", name, "--ignore-not-found", check=False)


def test_the_operator_from_its_image_takes_the_leader_lease_and_reports_ready(
    chart_run: ChartRun,
) -> None:
    plane = chart_run.plane

    def leads() -> bool:
        chart_run.operator.check_alive()
        lease = plane.kubectl_json(
            "get", "lease", "-n", NAMESPACE, "wasmfleet-operator", "--ignore-not-found"
        )
        holder = (lease or {}).get("spec", {}).get("holderIdentity")
        return bool(holder) and _ready(f"http://127.0.0.1:{chart_run.health_port}/readyz")

    wait_until(leads, timeout=120, interval=0.5, message=chart_run.logs)


def test_the_agent_from_its_arm64_image_registers_as_a_ready_arm64_node(
    chart_run: ChartRun,
) -> None:
    plane = chart_run.plane

    def registered() -> bool:
        chart_run.agent.check_alive()
        agent = plane.kubectl_json("get", "wasmagent", NODE, "--ignore-not-found") or {}
        status = agent.get("status", {})
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        return (
            status.get("architecture") == "arm64" and bool(ready) and (ready[0]["status"] == "True")
        )

    # The agent's Python starts under qemu-user: seconds, not milliseconds.
    wait_until(registered, timeout=180, interval=0.5, message=chart_run.logs)
    assert _ready(f"http://{NODE_IP}:{chart_run.admin_port}/readyz")


def test_a_service_placed_on_the_arm64_image_agent_is_pulled_compiled_and_served(
    chart_run: ChartRun,
    registry: Registry,
    wasm_modules: dict[str, Path],
    namespace: str,
    tmp_path: Path,
) -> None:
    plane = chart_run.plane
    image = f"{registry.host}/wasmfleet/tests/hello-c:1.0"
    push_module(wasm_modules["hello-c"], image)
    plane.kubectl_apply(
        {
            "apiVersion": "wasmfleet.dev/v1alpha1",
            "kind": "WasmService",
            "metadata": {"name": "hello", "namespace": namespace},
            "spec": {
                "module": {"image": image},
                "replicas": 1,
                "http": {"port": 8080},
                "placement": {"architectures": ["arm64"]},
            },
        }
    )
    served: dict[str, int] = {}

    def bound_and_ready() -> bool:
        chart_run.agent.check_alive()
        bindings = plane.kubectl_json("get", "wasmbindings", "-n", namespace) or {}
        for binding in bindings.get("items", []):
            status = binding.get("status", {})
            if (
                binding["spec"].get("nodeName") == NODE
                and status.get("ready")
                and status.get("port")
            ):
                served["port"] = int(status["port"])
                return True
        return False

    wait_until(bound_and_ready, timeout=240, interval=0.5, message=chart_run.logs)
    with urllib.request.urlopen(f"http://{NODE_IP}:{served['port']}/", timeout=10) as response:
        assert response.read() == b"Hello from a C Wasm microservice!\n"
    compiled = list(chart_run.state.rglob("*.cwasm"))
    assert compiled, "compiled code is kept in the hostPath"
    # machine code for the agent's own CPU, read from the file rather than taken on its word
    assert {elf_machine(path) for path in compiled} == {EM_AARCH64}
    with Runtime(tmp_path / "amd64-cache") as local:
        local.load(wasm_modules["hello-c"])
    (here,) = (tmp_path / "amd64-cache").glob("*.cwasm")
    assert elf_machine(here) == EM_X86_64
    assert here.name not in {path.name for path in compiled}, "the cache key names the CPU"


def test_a_service_on_both_architectures_answers_alike_from_each_with_one_digest(
    chart_run: ChartRun, registry: Registry, wasm_modules: dict[str, Path], namespace: str
) -> None:
    """Two replicas, one per architecture: the same module digest on each, the same answer
    from the aarch64 agent and from the amd64 one, each agent reporting its own CPU."""
    plane = chart_run.plane
    image = f"{registry.host}/wasmfleet/tests/hello-rust:1.0"
    digest = push_module(wasm_modules["hello-rust"], image)
    plane.kubectl_apply(
        {
            "apiVersion": "wasmfleet.dev/v1alpha1",
            "kind": "WasmService",
            "metadata": {"name": "both", "namespace": namespace},
            "spec": {
                "module": {"image": image},
                "replicas": 2,
                "http": {"port": 8080},
                "placement": {"architectures": ["amd64", "arm64"]},
            },
        }
    )
    ports: dict[str, int] = {}

    def both_ready() -> bool:
        chart_run.agent.check_alive()
        chart_run.amd64_agent.check_alive()
        bindings = plane.kubectl_json("get", "wasmbindings", "-n", namespace) or {}
        for binding in bindings.get("items", []):
            status = binding.get("status", {})
            if binding["spec"].get("serviceName") == "both" and status.get("ready"):
                ports[binding["spec"]["nodeName"]] = int(status["port"])
        return set(ports) == {NODE, AMD64_NODE}

    wait_until(both_ready, timeout=240, interval=0.5, message=chart_run.logs)
    answers = {}
    for node, port in ports.items():
        with urllib.request.urlopen(f"http://{NODE_IP}:{port}/", timeout=10) as response:
            answers[node] = response.read()
    assert answers[NODE] == answers[AMD64_NODE] == b"Hello from a Rust Wasm microservice!\n"

    def reported() -> dict[str, Any]:
        service = plane.kubectl_json("get", "wasmservice", "both", "-n", namespace)
        status: dict[str, Any] = service.get("status") or {}
        return status

    wait_until(
        lambda: len(reported().get("placements") or []) == 2,
        timeout=60,
        interval=0.5,
        message=lambda: str(reported()),
    )
    status = reported()
    assert status["digest"] == digest
    assert {p["node"]: p["arch"] for p in status["placements"]} == {
        NODE: "arm64",
        AMD64_NODE: "amd64",
    }
    for node, arch in ((NODE, "arm64"), (AMD64_NODE, "amd64")):
        agent = plane.kubectl_json("get", "wasmagent", node)
        assert agent["status"]["architecture"] == arch
        conditions = {c["type"]: c["status"] for c in agent["status"]["conditions"]}
        assert conditions["ArchitectureMatchesNode"] == "True"
    bindings = plane.kubectl_json("get", "wasmbindings", "-n", namespace)["items"]
    assert {b["spec"]["digest"] for b in bindings if b["spec"]["serviceName"] == "both"} == {digest}


def test_a_component_job_on_the_arm64_image_agent_gives_what_it_gives_on_amd64(
    chart_run: ChartRun,
    registry: Registry,
    wasm_modules: dict[str, Path],
    namespace: str,
    tmp_path: Path,
) -> None:
    """The same component, as a job, on the aarch64 agent (under qemu-user) and on this
    machine: the same output lines and exit code."""
    plane = chart_run.plane
    image = f"{registry.host}/wasmfleet/tests/wordcount-component:1.0"
    push_module(wasm_modules["wordcount-component"], image)
    files = {"brief.txt": "Wasm on every CPU.\n", "motto.txt": "Deny by default.\n"}
    plane.kubectl_apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "words", "namespace": namespace},
            "data": files,
        }
    )
    plane.kubectl_apply(
        {
            "apiVersion": "wasmfleet.dev/v1alpha1",
            "kind": "WasmService",
            "metadata": {"name": "count", "namespace": namespace},
            "spec": {
                "module": {"image": image},
                "replicas": 1,
                "job": {"timeout": "2m"},
                "args": ["/input"],
                "files": [{"mountPath": "/input", "configMap": {"name": "words"}}],
                "placement": {"architectures": ["arm64"]},
            },
        }
    )
    finished: dict[str, Any] = {}

    def done() -> bool:
        chart_run.agent.check_alive()
        bindings = plane.kubectl_json("get", "wasmbindings", "-n", namespace) or {}
        for binding in bindings.get("items", []):
            status = binding.get("status", {})
            if binding["spec"].get("serviceName") == "count" and status.get("phase") in (
                "Succeeded",
                "Failed",
            ):
                finished.update(binding)
                return True
        return False

    wait_until(done, timeout=300, interval=0.5, message=chart_run.logs)
    assert finished["spec"]["nodeName"] == NODE
    status = finished["status"]
    assert (status["phase"], status["exitCode"]) == ("Succeeded", 0)
    assert status["module"]["kind"] == "Component"
    given = tmp_path / "input"
    given.mkdir()
    for name, text in files.items():
        (given / name).write_text(text)
    with Runtime(tmp_path / "cache") as local:
        here = run(
            local.load(wasm_modules["wordcount-component"]),
            SandboxSpec(
                args=("wordcount-component", "/input"), preopens=(Preopen(given, "/input"),)
            ),
        )
    assert here.exit_code == 0
    there = [
        record["message"]
        for record in _records(chart_run.agent.log_path)
        if record.get("service") == f"{namespace}/count" and record.get("stream") == "stdout"
    ]
    assert there == here.stdout.decode().splitlines()


def _records(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
