"""Faults on the real control plane while clients loop requests and a rollout runs.

Three agents (``fault-a``, ``fault-b``, ``fault-c``) reach the API server each through a
`Relay` that can cut them off, and two operators (a leader and a standby) run beside them.
In every scenario one client loops GETs over the ready endpoints of ``steady`` (2 replicas)
and another over ``rolling`` (2 replicas, surge 1, none unavailable), whose rollout starts
right before the fault. (At most one replica of a revision runs per node, so two replicas
keep a place to go when one of the three agents is lost.) Each test measures the requests
that failed, the time until both services are Ready again at their newest generation with
exactly their replica count of bindings, and the objects lost; the figures go to
``build/reports/reliability.json`` for `docs/reliability.md`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wasmfleet_harness.agent import push_module
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.findings import Findings
from wasmfleet_harness.fleet import (
    AGENT_LEASE,
    NODE_GRACE,
    EndpointClient,
    LocalFleet,
    Target,
    endpoints_of,
    fetch,
)
from wasmfleet_harness.netns import netns_available
from wasmfleet_harness.partition import Relay
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.registry import Registry
from wasmfleet_harness.services import (
    apply_object,
    bindings_of,
    condition_of,
    is_ready,
    service_of,
    wait_ready,
    wasm_service,
)

pytestmark = pytest.mark.skipif(
    not netns_available(), reason="agents need network namespaces (root and iproute2)"
)

NODES = ("fault-a", "fault-b", "fault-c")
SECTION = "Faults"
# An outage longer than an agent's Lease plus the grace period: long enough for a naive
# operator to declare every agent lost.
LONG_OUTAGE = float(AGENT_LEASE.rstrip("s")) + float(NODE_GRACE.rstrip("s")) + 2


@pytest.fixture(scope="module")
def relays(wasmfleet_crds: ControlPlane) -> Iterator[dict[str, Relay]]:
    made = {node: Relay("127.0.0.1", wasmfleet_crds.apiserver_port) for node in NODES}
    try:
        for relay in made.values():
            relay.start()
        yield made
    finally:
        for relay in made.values():
            relay.close()


@pytest.fixture(scope="module")
def fleet(
    wasmfleet_crds: ControlPlane, workspace: Workspace, relays: dict[str, Relay]
) -> Iterator[LocalFleet]:
    workdir = workspace.subdir("fleet-faults")
    local = LocalFleet(wasmfleet_crds, workdir)
    try:
        for node in NODES:
            kubeconfig = wasmfleet_crds.kubeconfig_via(
                wasmfleet_crds.kubeconfig, relays[node].port, workdir / f"{node}.kubeconfig"
            )
            local.add_agent(node, labels={"kubernetes.io/arch": "amd64"}, kubeconfig=kubeconfig)
        local.start_operator("operator-1")
        local.start_operator("operator-2")
        wait_until(lambda: local.leader() is not None, timeout=30, message=local.logs)
        yield local
    finally:
        local.close()


@dataclass
class Scene:
    """Two services under load in one namespace; see the module's docstring."""

    fleet: LocalFleet
    namespace: str
    images: dict[str, str]
    clients: dict[str, EndpointClient] = field(default_factory=dict)
    inventory: dict[tuple[str, str], str] = field(default_factory=dict)
    roll: int = 0

    @property
    def plane(self) -> ControlPlane:
        return self.fleet.plane

    def apply_steady(self) -> None:
        apply_object(
            self.plane,
            self.namespace,
            wasm_service("steady", self.images["steady"], replicas=2, http={}),
        )

    def apply_rolling(self, image: str | None = None) -> None:
        spec: dict[str, Any] = {
            "replicas": 2,
            "http": {},
            "strategy": {"maxSurge": 1, "maxUnavailable": 0},
            "env": [{"name": "ROLL", "value": str(self.roll)}],
        }
        apply_object(
            self.plane,
            self.namespace,
            wasm_service("rolling", image or self.images["rolling"], **spec),
        )

    def start_rollout(self, image: str | None = None) -> None:
        """A new revision of ``rolling``; returns once its first new binding exists."""
        old = {b["spec"]["revision"] for b in bindings_of(self.plane, self.namespace, "rolling")}
        self.roll += 1
        self.apply_rolling(image)
        if image is not None:
            return  # a new image is resolved first, which the fault may prevent
        wait_until(
            lambda: any(
                b["spec"]["revision"] not in old
                for b in bindings_of(self.plane, self.namespace, "rolling")
            ),
            timeout=30,
            interval=0.05,
            message="the rollout never started",
        )

    def objects(self) -> dict[tuple[str, str], str]:
        """Every WasmService and Service in the namespace: (kind, name) -> uid."""
        found = {}
        for kind in ("wasmservices", "services"):
            for item in self.plane.kubectl_json("get", kind, "-n", self.namespace)["items"]:
                found[(kind, item["metadata"]["name"])] = item["metadata"]["uid"]
        return found

    def converged(self, avoiding: str | None = None) -> bool:
        """Both services Ready at their newest revision, each with exactly its replica count
        of bindings, none of them on the node ``avoiding``."""
        for name, replicas in (("steady", 2), ("rolling", 2)):
            service = service_of(self.plane, self.namespace, name)
            if not is_ready(service, replicas):
                return False
            bindings = bindings_of(self.plane, self.namespace, name)
            if len(bindings) != replicas:
                return False
            if any(b["spec"]["nodeName"] == avoiding for b in bindings):
                return False
            if {b["spec"]["revision"] for b in bindings} != {service["status"]["revision"]}:
                return False
        return True

    def wait_converged(self, since: float, avoiding: str | None = None) -> float:
        wait_until(
            lambda: self.converged(avoiding),
            timeout=90,
            interval=0.2,
            message=lambda: "not converged\n" + self.fleet.logs(),
        )
        return time.monotonic() - since

    def served_more(self, count: int) -> None:
        """Waits until every client got ``count`` more answers than it has now."""
        marks = {name: client.result.ok for name, client in self.clients.items()}
        wait_until(
            lambda: all(c.result.ok >= marks[n] + count for n, c in self.clients.items()),
            timeout=60,
            message=lambda: f"clients stalled: {self.summary()}",
        )

    def summary(self) -> str:
        return ", ".join(
            f"{name}: {c.result.ok} ok, {c.result.failed} failed, last {c.result.errors[-3:]}"
            for name, c in self.clients.items()
        )

    def finish(self, findings: Findings, fault: str, converge: float, **extra: Any) -> None:
        """Stops the clients, records the scenario, and asserts nothing failed or was lost."""
        self.served_more(20)
        results = {name: client.stop() for name, client in self.clients.items()}
        after = self.objects()
        lost = sorted(
            f"{k}/{n}" for (k, n), uid in self.inventory.items() if after.get((k, n)) != uid
        )
        findings.record(
            SECTION,
            fault=fault,
            requests=sum(r.ok + r.failed for r in results.values()),
            failed=sum(r.failed for r in results.values()),
            retried_elsewhere=sum(r.retried for r in results.values()),
            converge_s=round(converge, 1),
            objects_lost=len(lost),
            **extra,
        )
        for name, result in results.items():
            assert result.failed == 0, (name, result.errors[-10:])
        assert lost == []


@pytest.fixture
def scene(
    fleet: LocalFleet, namespace: str, registry: Registry, wasm_modules: dict[str, Path]
) -> Iterator[Scene]:
    images = {}
    for name, module in (("steady", "hello-c"), ("rolling", "hello-rust")):
        images[name] = f"{registry.host}/{namespace}/{name}:1.0"
        push_module(wasm_modules[module], images[name])
    built = Scene(fleet, namespace, images)
    built.apply_steady()
    built.apply_rolling()
    wait_ready(fleet, namespace, "steady", 2)
    wait_ready(fleet, namespace, "rolling", 2)
    built.inventory = built.objects()
    for name in ("steady", "rolling"):
        client = EndpointClient(fleet.plane, namespace, name)
        client.start(max_requests=50_000)
        built.clients[name] = client
    try:
        built.served_more(10)
        yield built
    finally:
        for client in built.clients.values():
            client.stop()


def _nodes_of(plane: ControlPlane, namespace: str, name: str) -> set[str]:
    return {b["spec"]["nodeName"] for b in bindings_of(plane, namespace, name)}


def _answers(target: Target) -> bool:
    try:
        return fetch(target)[0] == 200
    except OSError:
        return False


# ---- the faults ------------------------------------------------------------------------------


def test_an_agent_killed_mid_rollout(scene: Scene, findings: Findings) -> None:
    plane = scene.plane
    victim = sorted(_nodes_of(plane, scene.namespace, "steady"))[0]
    scene.start_rollout()
    killed = time.monotonic()
    scene.fleet.kill_agent(victim)
    converge = scene.wait_converged(killed, avoiding=victim)
    scene.finish(findings, "agent SIGKILL", converge)
    scene.fleet.start_agent(victim)


def test_an_agent_cut_off_from_the_api_server_keeps_serving_and_lets_go_when_back(
    scene: Scene, findings: Findings, relays: dict[str, Relay]
) -> None:
    plane, namespace = scene.plane, scene.namespace
    victim = sorted(_nodes_of(plane, namespace, "steady"))[0]
    (stale,) = [t for t in endpoints_of(plane, namespace, "steady") if t.node == victim]
    scene.start_rollout()
    cut = time.monotonic()
    relays[victim].cut()
    try:
        converge = scene.wait_converged(cut, avoiding=victim)
        # The operator moved its replica; the agent, seeing nothing, still serves it.
        assert _answers(stale), "the cut-off agent stopped serving what it had"
    finally:
        relays[victim].heal()
    healed = time.monotonic()
    # Back on the network, it learns its binding is gone and stops serving it.
    wait_until(
        lambda: not _answers(stale),
        timeout=30,
        interval=0.2,
        message=lambda: (
            "the agent still serves a moved replica after the cut healed\n" + scene.fleet.logs()
        ),
    )
    let_go = time.monotonic() - healed
    scene.finish(findings, "agent cut off from the API server", converge, let_go_s=round(let_go, 1))


def test_the_leader_operator_killed_mid_rollout(scene: Scene, findings: Findings) -> None:
    fleet = scene.fleet
    leader, leading = fleet.leading_operator()
    scene.start_rollout()
    killed = time.monotonic()
    leading.process.kill()
    # The standby takes the Lease once it lapses, and finishes the rollout.
    fleet.wait_for_new_leader(leader)
    converge = scene.wait_converged(killed)
    scene.finish(findings, "leader operator SIGKILL", converge)
    fleet.start_operator(f"operator-{len(fleet.operators) + 1}")


def test_the_registry_killed_during_a_rollout_to_a_new_image(
    scene: Scene, findings: Findings, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    plane, namespace = scene.plane, scene.namespace
    image = f"{registry.host}/{namespace}/rolling:2.0"
    push_module(wasm_modules["hello-go"], image)
    registry.kill()
    try:
        scene.start_rollout(image)

        def reported() -> bool:
            service = service_of(plane, namespace, "rolling")
            return condition_of(service, "Degraded").get("reason") == "PullFailed"

        wait_until(
            reported,
            timeout=60,
            interval=0.2,
            message=lambda: str(service_of(plane, namespace, "rolling").get("status")),
        )
        message = condition_of(service_of(plane, namespace, "rolling"), "Degraded")["message"]
        assert "rolling:2.0" in message or registry.host in message, message
        scene.served_more(20)  # still serving the old revision everywhere
    finally:
        back = time.monotonic()
        registry.start()
    converge = scene.wait_converged(back)
    wait_until(
        lambda: all(_answers(t) for t in endpoints_of(plane, namespace, "rolling")),
        timeout=10,
        message="new endpoints not answering",
    )
    scene.finish(findings, "registry SIGKILL, back after the report", converge)
    assert any("Go Wasm" in body for body in scene.clients["rolling"].result.bodies)


def test_the_api_server_killed_and_restarted_on_the_same_data(
    scene: Scene, findings: Findings
) -> None:
    """The agents keep serving everything they run through an outage longer than a Lease
    plus the grace period, and nothing moves for it.

    ``rolling`` is mid-rollout when the API server dies, so its client may hold endpoints of
    replicas the agents were already told to remove (the EndpointSlice change cannot reach it
    until the server is back): those replicas keep answering until the API server answers
    their agent again, so not one request fails.
    """
    plane, namespace = scene.plane, scene.namespace
    placed = _nodes_of(plane, namespace, "steady")
    scene.start_rollout()
    killed = time.monotonic()
    plane.kill_apiserver()
    try:
        wait_until(
            lambda: time.monotonic() - killed >= LONG_OUTAGE,
            timeout=LONG_OUTAGE + 5,
            interval=0.2,
            message="",
        )
        scene.served_more(20)
    finally:
        outage = time.monotonic() - killed
        back = time.monotonic()
        plane.start_apiserver()
    converge = scene.wait_converged(back)
    # Nobody was declared lost for the API server's absence: nothing moved.
    assert _nodes_of(plane, namespace, "steady") == placed
    scene.finish(
        findings,
        "API server SIGKILL, restarted on the same etcd",
        converge,
        outage_s=round(outage, 1),
    )


def test_a_replica_reading_a_configmap_is_not_restarted_by_a_cut_from_the_api_server(
    fleet: LocalFleet,
    namespace: str,
    registry: Registry,
    wasm_modules: dict[str, Path],
    relays: dict[str, Relay],
) -> None:
    """Its agent reads the replica's ConfigMap again every second; while the API server is out
    of reach those reads fail, and the replica must go on serving as it was, neither
    restarted nor failing (the outage is the agent's, shown by its Lease). Once the agent is
    back, its next read finds the ConfigMap deleted: the status that reports that (the last
    good configuration kept) is written after everything the cut did to the replica."""
    plane = fleet.plane
    image = f"{registry.host}/{namespace}/configured:1.0"
    push_module(wasm_modules["hello-c"], image)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "greeting"},
        "data": {"text": "hello"},
    }
    apply_object(plane, namespace, config_map)
    source = {"configMapKeyRef": {"name": "greeting", "key": "text"}}
    apply_object(
        plane,
        namespace,
        wasm_service(
            "configured", image, replicas=1, http={}, env=[{"name": "T", "valueFrom": source}]
        ),
    )
    wait_ready(fleet, namespace, "configured", 1)
    (binding,) = bindings_of(plane, namespace, "configured")
    node = binding["spec"]["nodeName"]
    log = fleet.agents[node].process.log_path

    def renewals_failed() -> int:
        return log.read_text(errors="replace").count("lease renewal failed")

    before = renewals_failed()
    relays[node].cut()
    try:
        # A failed renewal closes every connection of the agent, the ConfigMap read that
        # hung on a silent one included: from here on reads have failed.
        wait_until(
            lambda: renewals_failed() > before,
            timeout=10,
            interval=0.1,
            message="the agent never noticed the cut",
        )
    finally:
        relays[node].heal()
    plane.kubectl("delete", "configmap", "greeting", "-n", namespace)

    def reported() -> dict[str, Any]:
        (now,) = bindings_of(plane, namespace, "configured")
        return dict(now.get("status") or {})

    def serves_last_good() -> bool:
        conditions = reported().get("conditions") or []
        return any(c["type"] == "ConfigurationCurrent" for c in conditions)

    wait_until(serves_last_good, timeout=30, interval=0.2, message=lambda: str(reported()))
    status = reported()
    assert (status["phase"], status["ready"], status["restarts"]) == ("Ready", True, 0), status
    assert not [c for c in status["conditions"] if c["type"] == "Failing"], status
