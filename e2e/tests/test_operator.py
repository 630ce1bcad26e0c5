"""The whole system: operator and three agents on the real control plane and a real registry.

Three agents run as local processes, each at an address of its own in a network namespace,
registered as nodes ``amd64-a``, ``amd64-b`` (kubernetes.io/arch=amd64) and ``arm64-a``,
whose Node is labelled arm64 though its agent, like the others, runs on this amd64 machine:
a label that lies, which the agent reports and the operator does not follow (the suite that
runs a real aarch64 agent is `test_images_on_cluster.py`). Modules are built from source
and pushed to the registry; requests go to the addresses and ports in each Service's
EndpointSlices.
"""

from __future__ import annotations

import base64
import json
import platform
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from wasmfleet_harness.agent import push_module
from wasmfleet_harness.argocd import argocd_health
from wasmfleet_harness.binaries import REPO_ROOT
from wasmfleet_harness.chart import run_as_chart_identities
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.fleet import EndpointClient, LocalFleet, Target, endpoints_of
from wasmfleet_harness.netns import netns_available
from wasmfleet_harness.nodenet import machine_architecture
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.registry import BasicAuth, Registry
from wasmfleet_harness.services import apply_object as _apply
from wasmfleet_harness.services import apply_yaml as _apply_yaml
from wasmfleet_harness.services import bindings_of as _bindings
from wasmfleet_harness.services import condition_of as _condition
from wasmfleet_harness.services import service_of as _service
from wasmfleet_harness.services import wait_ready as _wait_ready
from wasmfleet_harness.services import wasm_service as _wasm_service
from wasmfleet_harness.upstream import Upstream

pytestmark = pytest.mark.skipif(
    not netns_available(), reason="agents need network namespaces (root and iproute2)"
)

NODES = {"amd64-a": "amd64", "amd64-b": "amd64", "arm64-a": "arm64"}
EXAMPLE_HOST = "localhost:5001"


@pytest.fixture(scope="module", params=["admin", "chart-rbac"])
def fleet(
    request: pytest.FixtureRequest,
    wasmfleet_crds: ControlPlane,
    workspace: Workspace,
    registry: Registry,
) -> Iterator[LocalFleet]:
    """Three agents and two operators; run once as the cluster admin, once as exactly the
    ServiceAccounts and RBAC rules the Helm chart creates (tokens from the API server)."""
    workdir = workspace.subdir(f"fleet-{request.param}")
    if request.param == "admin":
        local = LocalFleet(wasmfleet_crds, workdir)
    else:
        identities = run_as_chart_identities(
            wasmfleet_crds, workdir / "identities", namespace="wasmfleet-rbac"
        )
        local = LocalFleet(
            wasmfleet_crds,
            workdir,
            namespace=identities.namespace,
            agent_kubeconfig=identities.agent,
            operator_kubeconfig=identities.operator,
        )
    try:
        for node, arch in NODES.items():
            # amd64-b answers requests in two worker processes: every scenario covers both
            processes = 2 if node == "amd64-b" else 1
            local.add_agent(node, labels={"kubernetes.io/arch": arch}, processes=processes)
        local.start_operator("operator-1")
        local.start_operator("operator-2")  # a standby: waits for the leader Lease
        wait_until(
            lambda: local.leader() is not None,
            timeout=30,
            message=lambda: "no operator became leader\n" + local.logs(),
        )
        yield local
    finally:
        local.close()


# ---- helpers ------------------------------------------------------------------------------


def _get(target: Target, path: str = "/") -> str:
    url = f"http://{target.address}:{target.port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode()).strip()


def _push_example(modules: dict[str, Path], registry: Registry, name: str) -> str:
    image = f"{registry.host}/wasmfleet/examples/{name}:1.0"
    push_module(modules[name], image)
    return image


# ---- the examples --------------------------------------------------------------------------

EXPECTED = {
    "hello-rust": "Hello from a Rust Wasm microservice!",
    "hello-go": "Hello from a Go Wasm microservice!",
    "hello-c": "Hello from a C Wasm microservice!",
    "greeter": "Hello, Wasmfleet!",
    "hello-python": "Hello from a Python Wasm microservice! (GET /)",
}


def test_the_examples_reach_ready_and_every_endpoint_answers(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    names = ["hello-rust", "hello-go", "hello-c", "greeter", "wordcount-job"]
    for name in names:
        _push_example(wasm_modules, registry, name)
        manifest = (REPO_ROOT / "examples" / name / "wasmservice.yaml").read_text()
        _apply_yaml(plane, namespace, manifest.replace(EXAMPLE_HOST, registry.host))

    for name in ("hello-rust", "hello-go", "hello-c", "greeter"):
        service = _wait_ready(fleet, namespace, name, service_replicas(name))
        targets = endpoints_of(plane, namespace, name)
        assert len(targets) == service_replicas(name)
        assert len({t.node for t in targets}) == len(targets), "one replica per node"
        for target in targets:
            assert EXPECTED[name] in _get(target), (name, target)
        assert service["status"]["url"].startswith(f"http://{name}.{namespace}.svc")
        assert service["status"]["digest"].startswith("sha256:")
    _wait_ready(fleet, namespace, "wordcount", 1)
    (job,) = _bindings(plane, namespace, "wordcount")
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["exitCode"] == 0

    table = plane.kubectl("get", "wasmservices", "-n", namespace).stdout
    lines = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert lines["hello-rust"][1] == "2/2", table
    assert lines["hello-rust"][2] == "AllReplicasReady", table
    assert lines["wordcount"][1] == "1/1", table


def test_components_run_as_wasm_services_and_their_status_says_what_they_are(
    fleet: LocalFleet,
    namespace: str,
    registry: Registry,
    wasm_modules: dict[str, Path],
) -> None:
    """The component examples need nothing new in the WasmService; the bindings and the
    service's status say what each runs, and a wasi:http component asked to run as a job is
    refused with that reason in the service's conditions."""
    plane = fleet.plane
    components = ("hello-component", "wordcount-component", "hello-python", "hello-http-component")
    for name in (*components, "wordcount-job"):
        _push_example(wasm_modules, registry, name)
    _apply_yaml(plane, namespace, _example(registry, "wordcount-job"))  # its ConfigMap
    _apply_yaml(plane, namespace, _example(registry, "hello-component"))
    _apply_yaml(plane, namespace, _example(registry, "wordcount-component"))
    _apply_yaml(plane, namespace, _example(registry, "hello-python"))
    _apply_yaml(plane, namespace, _example(registry, "hello-http-component"))

    service = _wait_ready(fleet, namespace, "hello-component", 2)
    assert service["status"]["module"]["kind"] == "Component"
    assert service["status"]["module"]["world"].startswith("wasi:cli/command@0.2.")
    for binding in _bindings(plane, namespace, "hello-component"):
        assert binding["status"]["module"]["kind"] == "Component"
    targets = endpoints_of(plane, namespace, "hello-component")
    assert len(targets) == 2
    for target in targets:
        assert _get(target) == EXPECTED["hello-rust"]

    _wait_ready(fleet, namespace, "wordcount-component", 1)
    _wait_ready(fleet, namespace, "wordcount", 1)
    (job,) = _bindings(plane, namespace, "wordcount-component")
    assert (job["status"]["phase"], job["status"]["exitCode"]) == ("Succeeded", 0)
    assert job["status"]["module"]["kind"] == "Component"
    (module_job,) = _bindings(plane, namespace, "wordcount")
    assert module_job["status"]["module"] == {
        "kind": "Module",
        "world": "wasi_snapshot_preview1 command",
    }

    python = _wait_ready(fleet, namespace, "hello-python", 2)
    assert python["status"]["module"]["kind"] == "Component"
    assert python["status"]["module"]["world"].startswith("wasi:http/proxy@0.2.")
    for target in endpoints_of(plane, namespace, "hello-python"):
        assert _get(target) == EXPECTED["hello-python"]
    rust = _wait_ready(fleet, namespace, "hello-http-component", 2)
    assert rust["status"]["module"]["world"] == "wasi:http/proxy@0.2.12"
    for target in endpoints_of(plane, namespace, "hello-http-component"):
        assert _get(target) == EXPECTED["hello-rust"]

    proxy = f"{registry.host}/wasmfleet/examples/hello-python:1.0"
    _apply(plane, namespace, _wasm_service("proxy-job", proxy, replicas=1, job={}))

    def refused() -> bool:
        condition = _condition(_service(plane, namespace, "proxy-job"), "Degraded")
        return "which answers HTTP requests: a job runs" in condition.get("message", "")

    wait_until(
        refused,
        timeout=60,
        message=lambda: f"{_service(plane, namespace, 'proxy-job').get('status')}",
    )
    condition = _condition(_service(plane, namespace, "proxy-job"), "Degraded")
    assert condition["reason"] == "CrashLooping"


def test_a_python_service_answers_with_what_it_fetched_from_its_one_allowed_origin(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    """The relay example, pointed at an upstream on this machine: it answers with the
    upstream's data through the operator and the agents, the service's status lists the
    origin the agents enforce, and an origin it does not list is refused before anything
    reaches it."""
    plane = fleet.plane
    allowed, other = Upstream(), Upstream()
    try:
        _push_example(wasm_modules, registry, "relay-python")
        (manifest,) = yaml.safe_load_all(_example(registry, "relay-python"))
        manifest["spec"]["env"] = [{"name": "UPSTREAM", "value": f"{allowed.origin}/data"}]
        manifest["spec"]["network"] = {"allowedOutboundHosts": [allowed.origin]}
        _apply(plane, namespace, manifest)
        service = _wait_ready(fleet, namespace, "relay-python", 2)
        assert service["status"]["allowedOutboundHosts"] == [allowed.origin]
        targets = endpoints_of(plane, namespace, "relay-python")
        for target in targets:
            assert _get(target) == "relayed: upstream says hi"
        assert len(allowed.seen) == len(targets)
        assert {seen["path"] for seen in allowed.seen} == {"/data"}
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(targets[0], f"/?url={other.origin}/secret")
        assert refused.value.code == 502
        assert refused.value.read() == b"refused: ErrorCode_HttpRequestDenied\n"
        assert other.seen == []
        # the agent that served it says so: a counted refusal and a log line with the origin
        assert _outbound_count(fleet, "relay-python", "refused") == 1
        assert _outbound_count(fleet, "relay-python", "sent") == len(targets)
        wait_until(
            lambda: any(
                "outbound request refused" in line and other.origin in line
                for agent in fleet.agents.values()
                for line in agent.process.log_tail(400).splitlines()
            ),
            timeout=10,
            message=fleet.logs,
        )
    finally:
        allowed.close()
        other.close()


def _outbound_count(fleet: LocalFleet, service: str, outcome: str) -> float:
    """``wasmfleet_agent_outbound_requests_total`` for ``service`` and ``outcome``, summed
    over every agent."""
    total = 0.0
    for agent in fleet.agents.values():
        url = f"http://127.0.0.1:{agent.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        for line in metrics.splitlines():
            if (
                line.startswith("wasmfleet_agent_outbound_requests_total{")
                and f'outcome="{outcome}"' in line
                and service in line
            ):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _example(registry: Registry, name: str) -> str:
    text = (REPO_ROOT / "examples" / name / "wasmservice.yaml").read_text()
    return text.replace(EXAMPLE_HOST, registry.host)


def service_replicas(name: str) -> int:
    manifest = (REPO_ROOT / "examples" / name / "wasmservice.yaml").read_text()
    for document in yaml.safe_load_all(manifest):
        if document and document.get("kind") == "WasmService":
            return int(document["spec"].get("replicas", 1))
    raise AssertionError(name)


def test_a_config_map_change_reaches_the_module_without_a_new_revision(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    _push_example(wasm_modules, registry, "greeter")
    manifest = (REPO_ROOT / "examples" / "greeter" / "wasmservice.yaml").read_text()
    _apply_yaml(plane, namespace, manifest.replace(EXAMPLE_HOST, registry.host))
    before = _wait_ready(fleet, namespace, "greeter", 2)
    targets = endpoints_of(plane, namespace, "greeter")
    plane.kubectl(
        "patch", "configmap", "-n", namespace, "greeter-config", "-p", '{"data":{"name":"Ops"}}'
    )
    wait_until(
        lambda: all(_get(t) == "Hello, Ops!" for t in targets),
        timeout=20,
        interval=0.2,
        message="the new ConfigMap value never reached the module",
    )
    after = _service(plane, namespace, "greeter")
    assert after["status"]["revision"] == before["status"]["revision"]


# ---- scheduling ------------------------------------------------------------------------


def test_a_node_label_that_lies_about_the_cpu_is_reported_and_not_followed(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    host = machine_architecture(platform.machine())

    def condition(node: str) -> dict[str, Any]:
        agent = plane.kubectl_json("get", "wasmagent", node)
        conditions = (agent.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "ArchitectureMatchesNode"), {})

    wait_until(
        lambda: condition("arm64-a").get("reason") == "NodeLabelMismatch",
        timeout=30,
        interval=0.2,
        message=lambda: f"no mismatch condition: {condition('arm64-a')}\n{fleet.logs()}",
    )
    lying = condition("arm64-a")
    assert lying["status"] == "False"
    assert f"kubernetes.io/arch=arm64 but this agent runs on {host}" in lying["message"]
    assert condition("amd64-a")["status"] == "True"
    agent = plane.kubectl_json("get", "wasmagent", "arm64-a")
    assert agent["status"]["architecture"] == host, "the agent reports its own CPU"
    events = plane.kubectl_json(
        "get",
        "events.events.k8s.io",
        "-n",
        "default",
        "--field-selector",
        "regarding.name=arm64-a,reason=ArchitectureMismatch",
    )
    # one per agent start that found the label wrong (each fleet of this module starts one)
    assert events["items"]
    assert {e["type"] for e in events["items"]} == {"Warning"}

    image = _push_example(wasm_modules, registry, "hello-c")
    _apply(
        plane,
        namespace,
        _wasm_service(
            "arm-only", image, replicas=1, http={}, placement={"architectures": ["arm64"]}
        ),
    )
    _apply(
        plane,
        namespace,
        _wasm_service(
            "arm-label",
            image,
            replicas=1,
            http={},
            placement={"nodeSelector": {"kubernetes.io/arch": "arm64"}},
        ),
    )

    def unschedulable(name: str) -> bool:
        ready = _condition(_service(plane, namespace, name), "Ready")
        return bool(ready.get("reason") == "Unschedulable")

    for name in ("arm-only", "arm-label"):
        wait_until(
            lambda: unschedulable(name),  # noqa: B023 - called before the loop moves on
            timeout=30,
            interval=0.2,
            message=f"{name} is not Unschedulable",
        )
        assert _bindings(plane, namespace, name) == [], "no replica on the lying node"


def test_placement_honours_architecture_spread_and_reports_unschedulable(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    host = machine_architecture(platform.machine())
    image = _push_example(wasm_modules, registry, "hello-c")
    _apply(
        plane,
        namespace,
        _wasm_service("host-only", image, replicas=3, http={}, placement={"architectures": [host]}),
    )
    _apply(plane, namespace, _wasm_service("everywhere", image, replicas=3, http={}))
    _apply(
        plane,
        namespace,
        _wasm_service(
            "nowhere", image, replicas=1, http={}, placement={"nodeSelector": {"disk": "ssd"}}
        ),
    )
    only = _wait_ready(fleet, namespace, "host-only", 3)
    assert {p["arch"] for p in only["status"]["placements"]} == {host}
    everywhere = _wait_ready(fleet, namespace, "everywhere", 3)
    assert sorted(p["node"] for p in everywhere["status"]["placements"]) == sorted(NODES)

    def unschedulable() -> bool:
        ready = _condition(_service(plane, namespace, "nowhere"), "Ready")
        return ready.get("reason") == "Unschedulable"

    wait_until(unschedulable, timeout=30, interval=0.2, message="no Unschedulable condition")
    ready = _condition(_service(plane, namespace, "nowhere"), "Ready")
    assert ready["status"] == "False"
    assert "not matching nodeSelector" in ready["message"]
    assert _bindings(plane, namespace, "nowhere") == []

    def event_recorded() -> bool:
        events = plane.kubectl_json(
            "get",
            "events.events.k8s.io",
            "-n",
            namespace,
            "--field-selector",
            "regarding.name=nowhere",
        )
        return any(e.get("reason") == "Unschedulable" for e in events["items"])

    wait_until(event_recorded, timeout=30, interval=0.2, message="no Unschedulable event")


def test_a_binding_status_with_a_forged_address_never_reaches_an_endpoint_slice(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    """A ready binding's status rewritten to name another address (as any identity that may
    write binding statuses could): the operator routes only to the address its agent
    registered, takes that replica out and says why in an Event."""
    plane = fleet.plane
    image = _push_example(wasm_modules, registry, "hello-c")
    _apply(plane, namespace, _wasm_service("forged", image, replicas=2, http={}))
    _wait_ready(fleet, namespace, "forged", 2)
    victim = _bindings(plane, namespace, "forged")[0]
    node = victim["spec"]["nodeName"]
    registered = plane.kubectl_json("get", "wasmagent", node)["status"]["address"]
    forged = "10.99.0.66"
    plane.kubectl(
        "patch",
        "wasmbinding",
        victim["metadata"]["name"],
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"address": forged}}),
    )

    def refused() -> bool:
        events = plane.kubectl_json(
            "get",
            "events.events.k8s.io",
            "-n",
            namespace,
            "--field-selector",
            "regarding.name=forged,reason=AddressMismatch",
        )
        return bool(events["items"])

    wait_until(refused, timeout=30, interval=0.2, message="no AddressMismatch Event")
    targets = endpoints_of(plane, namespace, "forged")
    assert forged not in {t.address for t in targets}
    assert registered not in {t.address for t in targets}, "the forged replica is out"
    assert len(targets) == 1
    assert _get(targets[0]) == "Hello from a C Wasm microservice!"


def test_someone_elses_service_of_the_same_name_is_left_alone_and_the_service_says_why(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken", "namespace": namespace, "labels": {"team": "other"}},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 8443, "protocol": "TCP"}]},
    }
    _apply(plane, namespace, foreign)
    before = plane.kubectl_json("get", "service", "taken", "-n", namespace)
    image = _push_example(wasm_modules, registry, "hello-c")
    _apply(plane, namespace, _wasm_service("taken", image, replicas=1, http={}))

    def refused() -> bool:
        ready = _condition(_service(plane, namespace, "taken"), "Ready")
        return bool(ready.get("reason") == "RoutingFailed")

    wait_until(refused, timeout=30, interval=0.2, message="no RoutingFailed condition")
    ready = _condition(_service(plane, namespace, "taken"), "Ready")
    assert ready["status"] == "False"
    assert "Service taken already exists and is not this WasmService's" in ready["message"]
    after = plane.kubectl_json("get", "service", "taken", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "ownerReferences" not in after["metadata"]
    assert endpoints_of(plane, namespace, "taken") == [], "no slices for someone else's Service"
    events = plane.kubectl_json(
        "get",
        "events.events.k8s.io",
        "-n",
        namespace,
        "--field-selector",
        "regarding.name=taken,reason=RoutingFailed",
    )
    assert {e["type"] for e in events["items"]} == {"Warning"}

    plane.kubectl("delete", "service", "taken", "-n", namespace)
    _wait_ready(fleet, namespace, "taken", 1)
    owned = plane.kubectl_json("get", "service", "taken", "-n", namespace)
    assert [o["kind"] for o in owned["metadata"]["ownerReferences"]] == ["WasmService"]
    (target,) = endpoints_of(plane, namespace, "taken")
    assert _get(target) == "Hello from a C Wasm microservice!"


# ---- rollout -------------------------------------------------------------------------------


def test_a_re_resolved_tag_rolls_out_without_a_failed_request(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    image = f"{registry.host}/{namespace}/moving:stable"
    first = push_module(wasm_modules["hello-c"], image)
    _apply(plane, namespace, _wasm_service("moving", image, replicas=2, http={}))
    before = _wait_ready(fleet, namespace, "moving", 2)
    assert before["status"]["digest"] == first

    client = EndpointClient(plane, namespace, "moving")
    client.start(max_requests=20_000)
    try:
        wait_until(lambda: client.result.ok >= 20, timeout=30, message="client not answered")
        second = push_module(wasm_modules["hello-rust"], image)
        assert second != first
        plane.kubectl(
            "annotate",
            "wasmservice",
            "-n",
            namespace,
            "moving",
            f"wasmfleet.dev/resolve={time.time()}",
            "--overwrite",
        )

        def rolled_out() -> bool:
            service = _service(plane, namespace, "moving")
            status = service.get("status") or {}
            return (
                status.get("digest") == second
                and status.get("updatedReplicas") == 2
                and status.get("replicas") == 2
                and status.get("readyReplicas") == 2
            )

        wait_until(rolled_out, timeout=60, interval=0.2, message=lambda: fleet.logs())
        wait_until(
            lambda: all("Rust" in _get(t) for t in endpoints_of(plane, namespace, "moving")),
            timeout=30,
            message="old endpoints still listed",
        )
        # The client refreshes its endpoint list on its own clock; old instances drain
        # rather than vanish, so wait for its traffic to reach the new version.
        wait_until(
            lambda: any("Rust Wasm" in body for body in list(client.result.bodies)),
            timeout=30,
            message=lambda: f"client never reached the new version: {client.result.bodies}",
        )
        count = client.result.ok
        wait_until(lambda: client.result.ok >= count + 20, timeout=30, message="client stalled")
    finally:
        result = client.stop()
    assert result.failed == 0, result.errors[:10]
    bodies = " ".join(result.bodies)
    assert "C Wasm" in bodies
    assert "Rust Wasm" in bodies


def test_scale_to_zero_and_back(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    image = _push_example(wasm_modules, registry, "hello-go")
    _apply(plane, namespace, _wasm_service("scaled", image, replicas=2, http={}))
    _wait_ready(fleet, namespace, "scaled", 2)

    plane.kubectl("scale", "wasmservice", "-n", namespace, "scaled", "--replicas=0")
    wait_until(
        lambda: (
            _condition(_service(plane, namespace, "scaled"), "Ready").get("reason")
            == "ScaledToZero"
        ),
        timeout=30,
        interval=0.2,
        message="not scaled to zero",
    )
    assert _bindings(plane, namespace, "scaled") == []
    assert endpoints_of(plane, namespace, "scaled") == []
    assert _service(plane, namespace, "scaled")["status"]["ready"] == "0/0"

    plane.kubectl("scale", "wasmservice", "-n", namespace, "scaled", "--replicas=2")
    _wait_ready(fleet, namespace, "scaled", 2)
    targets = endpoints_of(plane, namespace, "scaled")
    assert len(targets) == 2
    assert all("Go Wasm" in _get(t) for t in targets)


def test_deleting_a_service_removes_its_objects_and_agents_stop_serving(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    image = _push_example(wasm_modules, registry, "hello-c")
    _apply(plane, namespace, _wasm_service("doomed", image, replicas=2, http={}))
    _wait_ready(fleet, namespace, "doomed", 2)
    targets = endpoints_of(plane, namespace, "doomed")
    assert all("C Wasm" in _get(t) for t in targets)

    plane.kubectl("delete", "wasmservice", "-n", namespace, "doomed")

    def gone() -> bool:
        left = [
            plane.kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "name").stdout.strip()
            for kind, selector in (
                ("wasmbindings", "wasmfleet.dev/service=doomed"),
                ("services", "wasmfleet.dev/service=doomed"),
                ("endpointslices", "kubernetes.io/service-name=doomed"),
            )
        ]
        return not any(left)

    wait_until(gone, timeout=30, interval=0.2, message="owned objects left behind")

    def refused(target: Target) -> bool:
        try:
            _get(target)
        except (urllib.error.URLError, ConnectionError, OSError):
            return True
        return False

    wait_until(
        lambda: all(refused(t) for t in targets),
        timeout=30,
        interval=0.2,
        message="an agent still serves the deleted service",
    )


# ---- failures ------------------------------------------------------------------------------


def test_the_leader_killed_mid_rollout_hands_over_and_converges_without_duplicates(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    image = _push_example(wasm_modules, registry, "hello-rust")
    spec = {"replicas": 3, "http": {}, "strategy": {"maxSurge": 1, "maxUnavailable": 0}}
    _apply(plane, namespace, _wasm_service("restarted", image, **spec))
    before = _wait_ready(fleet, namespace, "restarted", 3)
    old_revision = before["status"]["revision"]
    running = [o for o in fleet.operators if o.process.alive()]
    assert len(running) == 2, "a leader and a standby\n" + fleet.logs()
    leader, leading = fleet.leading_operator()

    _apply(
        plane,
        namespace,
        _wasm_service("restarted", image, **spec, env=[{"name": "ROLL", "value": "2"}]),
    )
    wait_until(
        lambda: any(
            b["spec"]["revision"] != old_revision for b in _bindings(plane, namespace, "restarted")
        ),
        timeout=30,
        interval=0.05,
        message="the rollout never started",
    )
    leading.process.kill()
    # The standby takes the Lease once it lapses, and finishes the rollout.
    fleet.wait_for_new_leader(leader)
    after = _wait_ready(fleet, namespace, "restarted", 3, timeout=90)
    assert after["status"]["revision"] != old_revision
    bindings = _bindings(plane, namespace, "restarted")
    assert len(bindings) == 3
    assert len({b["spec"]["nodeName"] for b in bindings}) == 3
    assert {b["spec"]["revision"] for b in bindings} == {after["status"]["revision"]}
    # The killed one comes back as the new standby.
    fleet.start_operator(f"operator-{len(fleet.operators) + 1}")


def test_failures_are_reported_as_conditions_and_events(
    fleet: LocalFleet, namespace: str, registry: Registry, workspace: Workspace
) -> None:
    plane = fleet.plane
    missing = f"{registry.host}/{namespace}/missing:1.0"
    _apply(plane, namespace, _wasm_service("missing", missing, replicas=1, http={}))
    broken = workspace.subdir(f"broken-{namespace}") / "broken.wasm"
    broken.write_bytes(b"\0asm\x01\0\0\0this is not a module")
    broken_image = f"{registry.host}/{namespace}/broken:1.0"
    push_module(broken, broken_image)
    _apply(plane, namespace, _wasm_service("broken", broken_image, replicas=1, http={}))

    def reason(name: str, expected: str) -> bool:
        service = _service(plane, namespace, name)
        return _condition(service, "Degraded").get("reason") == expected

    wait_until(
        lambda: reason("missing", "ModuleNotFound"),
        timeout=30,
        interval=0.2,
        message=lambda: str(_service(plane, namespace, "missing").get("status")),
    )
    wait_until(
        lambda: reason("broken", "CrashLooping"),
        timeout=30,
        interval=0.2,
        message=lambda: str(_service(plane, namespace, "broken").get("status")),
    )
    broken_status = _service(plane, namespace, "broken")["status"]
    assert broken_status["placements"][0]["phase"] == "CrashLoopBackOff"
    assert broken_status["placements"][0]["message"]
    events = plane.kubectl_json("get", "events.events.k8s.io", "-n", namespace)["items"]
    reasons = {(e["regarding"]["name"], e["reason"], e["type"]) for e in events}
    assert ("missing", "ModuleNotFound", "Warning") in reasons
    assert ("broken", "CrashLooping", "Warning") in reasons


def _docker_config(registry: Registry, login: BasicAuth) -> str:
    """A docker config file's text that logs in to ``registry``."""
    auth = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
    return json.dumps({"auths": {registry.host: {"auth": auth}}})


def _push_logged_in(
    module: Path, image: str, docker_config: str, workspace: Workspace, namespace: str
) -> str:
    """``wasmfleet push`` of ``module`` to ``image`` with ``docker_config``; the digest."""
    config_file = workspace.subdir(f"auth-{namespace}") / "config.json"
    config_file.write_text(docker_config)
    return push_module(module, image, "--docker-config", str(config_file))


def _pull_secret(namespace: str, docker_config: str) -> dict[str, Any]:
    """The pull secret ``pull`` in ``namespace``, holding ``docker_config``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "pull", "namespace": namespace},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(docker_config.encode()).decode()},
    }


def test_pull_secrets_and_secret_values_reach_the_agents_and_changes_apply_live(
    fleet: LocalFleet,
    namespace: str,
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    workspace: Workspace,
) -> None:
    plane = fleet.plane
    registry = registry_with_basic_auth
    docker_config = _docker_config(registry, registry_basic_auth)
    image = f"{registry.host}/{namespace}/probe:1.0"
    _push_logged_in(wasm_modules["probe"], image, docker_config, workspace, namespace)
    plane.kubectl_apply(
        _pull_secret(namespace, docker_config),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "app", "namespace": namespace},
            "stringData": {"token": "first-value"},
        },
    )
    service = _wasm_service("private", image, replicas=2, http={})
    service["spec"]["module"]["pullSecrets"] = [{"name": "pull"}]
    service["spec"]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "app", "key": "token"}}}
    ]
    _apply(plane, namespace, service)
    before = _wait_ready(fleet, namespace, "private", 2)
    targets = endpoints_of(plane, namespace, "private")
    assert all("TOKEN=first-value" in _get(t, "/env") for t in targets)

    plane.kubectl(
        "patch", "secret", "-n", namespace, "app", "-p", '{"stringData":{"token":"second-value"}}'
    )
    wait_until(
        lambda: all("TOKEN=second-value" in _get(t, "/env") for t in targets),
        timeout=20,
        interval=0.2,
        message="the new Secret value never reached the module",
    )
    assert (
        _service(plane, namespace, "private")["status"]["revision"]
        == (before["status"]["revision"])
    )
    # Nothing the operator or the agents wrote carries the secret value.
    written = json.dumps(
        [_service(plane, namespace, "private"), _bindings(plane, namespace, "private")]
    ) + json.dumps(plane.kubectl_json("get", "events.events.k8s.io", "-n", namespace))
    assert "second-value" not in written
    assert "first-value" not in written
    assert all(
        "second-value" not in path.read_text(errors="replace")
        for path in (fleet.workdir / "logs").glob("*.log")
    )


def test_a_tenant_naming_another_tenants_private_digest_is_refused_until_it_has_access(
    fleet: LocalFleet,
    namespace: str,
    registry_with_basic_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    workspace: Workspace,
) -> None:
    """Tenant A runs its private module; tenant B, in another namespace, names its digest and
    is placed on the node where it is cached. Without credentials B gets a clear refusal, not
    A's module; once B's own pull secret is accepted by the registry, B runs it."""
    plane = fleet.plane
    registry = registry_with_basic_auth
    docker_config = _docker_config(registry, registry_basic_auth)
    image = f"{registry.host}/{namespace}/secret-probe:1.0"
    digest = _push_logged_in(wasm_modules["probe"], image, docker_config, workspace, namespace)
    plane.kubectl_apply(_pull_secret(namespace, docker_config))
    owner = _wasm_service("owner", image, replicas=1, http={})
    owner["spec"]["module"]["pullSecrets"] = [{"name": "pull"}]
    _apply(plane, namespace, owner)
    _wait_ready(fleet, namespace, "owner", 1)
    (cached_on,) = {t.node for t in endpoints_of(plane, namespace, "owner")}

    other = f"{namespace}-b"
    plane.kubectl("create", "namespace", other)
    try:
        borrowed = f"{registry.host}/{namespace}/secret-probe@{digest}"
        on_that_node = {"nodeSelector": {"kubernetes.io/hostname": cached_on}}
        _apply(
            plane,
            other,
            _wasm_service("borrower", borrowed, replicas=1, http={}, placement=on_that_node),
        )
        refusal = "is cached on this node, but the registry does not grant it to anonymous pulls"

        def placement_message() -> str:
            placements = (_service(plane, other, "borrower").get("status") or {}).get(
                "placements"
            ) or [{}]
            return str(placements[0].get("message", ""))

        wait_until(
            lambda: refusal in placement_message(),
            timeout=60,
            interval=0.2,
            message=lambda: f"never refused: {_service(plane, other, 'borrower').get('status')}",
        )
        assert _condition(_service(plane, other, "borrower"), "Ready").get("status") == "False"
        assert endpoints_of(plane, other, "borrower") == []

        plane.kubectl_apply(_pull_secret(other, docker_config))
        plane.kubectl(
            "patch",
            "wasmservice",
            "borrower",
            "-n",
            other,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"module": {"pullSecrets": [{"name": "pull"}]}}}),
        )
        _wait_ready(fleet, other, "borrower", 1)
        (target,) = endpoints_of(plane, other, "borrower")
        assert target.node == cached_on
        assert _get(target, "/plain") == "just text, no headers"
    finally:
        plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_an_agent_killed_loses_its_replicas_to_the_others_without_failed_requests(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane = fleet.plane
    image = _push_example(wasm_modules, registry, "hello-c")
    _apply(plane, namespace, _wasm_service("survivor", image, replicas=2, http={}))
    before = _wait_ready(fleet, namespace, "survivor", 2)
    victim = sorted(p["node"] for p in before["status"]["placements"])[0]

    client = EndpointClient(plane, namespace, "survivor")
    client.start(max_requests=20_000)
    try:
        wait_until(lambda: client.result.ok >= 20, timeout=30, message="client not answered")
        killed_at = time.monotonic()
        fleet.kill_agent(victim)

        def moved() -> bool:
            status = _service(plane, namespace, "survivor").get("status") or {}
            nodes = [p["node"] for p in status.get("placements", [])]
            return victim not in nodes and status.get("readyReplicas") == 2

        wait_until(moved, timeout=60, interval=0.2, message=lambda: fleet.logs())
        moved_after = time.monotonic() - killed_at
        count = client.result.ok
        wait_until(lambda: client.result.ok >= count + 20, timeout=30, message="client stalled")
    finally:
        result = client.stop()
    # Lease 3 s + grace 4 s, then the move itself, within 10 s more.
    assert moved_after <= 3 + 4 + 10, moved_after
    assert result.failed == 0, result.errors[:10]
    targets = endpoints_of(plane, namespace, "survivor")
    assert victim not in {t.node for t in targets}
    assert len(targets) == 2

    # The agent comes back, finds its binding gone, and serves nothing of it.
    fleet.start_agent(victim)
    wait_until(
        lambda: all(
            b["spec"]["nodeName"] != victim for b in _bindings(plane, namespace, "survivor")
        ),
        timeout=10,
        message="the returning agent got its old binding back",
    )


def test_the_operators_report_their_role_and_metrics(fleet: LocalFleet) -> None:
    running = [o for o in fleet.operators if o.process.alive()]
    roles = sorted(o.get("/readyz").strip() for o in running)
    assert roles == ["leader", "standby"]
    (leader,) = [o for o in running if o.get("/readyz").strip() == "leader"]
    metrics = leader.get("/metrics")
    assert "wasmfleet_operator_leader 1.0" in metrics
    assert 'wasmfleet_operator_reconciles_total{result="ok"}' in metrics
    wait_until(
        lambda: 'wasmfleet_operator_agents{state="ready"} 3.0' in leader.get("/metrics"),
        timeout=20,
        interval=0.2,
        message=lambda: "\n".join(
            line for line in leader.get("/metrics").splitlines() if "agents{" in line
        ),
    )


def test_the_argocd_health_check_judges_live_services(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    """The Lua health check, run on objects read from the API server at each stage."""
    plane = fleet.plane
    image = _push_example(wasm_modules, registry, "hello-c")
    seen: dict[str, list[str]] = {}

    def record(name: str) -> str:
        status, message = argocd_health(_service(plane, namespace, name))
        seen.setdefault(name, []).append(status)
        assert message
        return status

    created = json.loads(
        plane.kubectl(
            "create",
            "-n",
            namespace,
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(_wasm_service("health", image, replicas=2, http={})),
        ).stdout
    )
    assert argocd_health(created)[0] == "Progressing"  # as created: no status yet
    wait_until(lambda: record("health") == "Healthy", timeout=60, interval=0.05)

    # A rollout: Progressing while the new revision comes up, Healthy when it has. A watch
    # sees every version of the object, however fast the rollout goes.
    with _ObjectWatch(plane, namespace, "wasmservice", "health") as watch:
        plane.kubectl(
            "patch",
            "wasmservice",
            "-n",
            namespace,
            "health",
            "--type=merge",
            "-p",
            '{"spec": {"env": [{"name": "ROLL", "value": "2"}]}}',
        )
        wait_until(
            lambda: any(
                argocd_health(o)[0] == "Healthy"
                and o["metadata"]["generation"] == 2
                and (o.get("status") or {}).get("updatedReplicas") == 2
                for o in watch.objects()
            ),
            timeout=60,
            message=lambda: f"rollout never Healthy: {[argocd_health(o) for o in watch.objects()]}",
        )
        during = [argocd_health(o)[0] for o in watch.objects() if o["metadata"]["generation"] == 2]
    assert "Progressing" in during
    assert "Degraded" not in during

    plane.kubectl("scale", "wasmservice", "-n", namespace, "health", "--replicas=0")
    wait_until(lambda: record("health") == "Suspended", timeout=30, interval=0.1)

    missing = f"{registry.host}/{namespace}/missing:1.0"
    _apply(plane, namespace, _wasm_service("unhealthy", missing, replicas=1, http={}))
    wait_until(lambda: record("unhealthy") == "Degraded", timeout=30, interval=0.1)
    _, message = argocd_health(_service(plane, namespace, "unhealthy"))
    assert message.startswith("ModuleNotFound")


class _ObjectWatch:
    """``kubectl get KIND NAME --watch -o json``: every version of one object, in order."""

    def __init__(self, plane: ControlPlane, namespace: str, kind: str, name: str) -> None:
        command = [str(plane.binaries.kubectl), "--kubeconfig", str(plane.kubeconfig)]
        command += ["get", kind, name, "-n", namespace, "--watch", "-o", "json"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self._seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    obj, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # an object not complete yet
                buffer = buffer.lstrip()[end:]
                with self._lock:
                    self._seen.append(obj)

    def objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._seen)

    def __enter__(self) -> _ObjectWatch:
        wait_until(
            lambda: bool(self.objects()), timeout=10, message="kubectl watch printed nothing"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_no_process_was_refused_by_the_api_server(fleet: LocalFleet) -> None:
    """Run last in the module: RBAC refused nothing the operator or the agents did.

    (A 403 for writing into a namespace being deleted is not a permission problem.)"""
    denial = re.compile(r'cannot [a-z]+ resource \\"')
    refused = [
        line
        for log in sorted((fleet.workdir / "logs").glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if denial.search(line)
    ]
    assert refused == []
