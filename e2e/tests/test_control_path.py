"""The control path under the outside review's attacks, on the real control plane.

Two agents (``cp-a`` in one process, ``cp-b`` with two request-worker processes) and two
operators run with ``--fault-injection``, which lets a test end any of their long-running
tasks as a crash would. Each test here reproduces one finding of the review: a WasmService
large enough to break the agent's watch, routing objects deleted or changed by hand, a
binding edited by hand, a crash loop's Events and conditions, a Secret deleted under a
running service, and tasks that die.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wasmfleet_api.wasmservice import WasmService
from wasmfleet_common.kube import KubeClient, KubeConfig
from wasmfleet_harness import rawhttp
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.fleet import AgentProcess, LocalFleet, OperatorProcess, endpoints_of, fetch
from wasmfleet_harness.netns import netns_available
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.registry import Registry
from wasmfleet_harness.services import (
    apply_object,
    bindings_of,
    condition_of,
    service_of,
    wait_ready,
    wasm_service,
)
from wasmfleet_oci.client import ClientSettings
from wasmfleet_operator.fleet import Fleet
from wasmfleet_operator.reconciler import Reconciler
from wasmfleet_operator.resolver import Resolver

pytestmark = pytest.mark.skipif(
    not netns_available(), reason="agents need network namespaces (root and iproute2)"
)

HELLO = "Hello from a C Wasm microservice!"


@pytest.fixture(scope="module")
def fleet(
    wasmfleet_crds: ControlPlane, workspace: Workspace, registry: Registry
) -> Iterator[LocalFleet]:
    local = LocalFleet(
        wasmfleet_crds,
        workspace.subdir("fleet-control-path"),
        operator_args=["--fault-injection"],
    )
    try:
        local.add_agent(
            "cp-a", labels={"kubernetes.io/arch": "amd64"}, extra_args=["--fault-injection"]
        )
        local.add_agent(
            "cp-b",
            labels={"kubernetes.io/arch": "amd64"},
            processes=2,
            extra_args=["--fault-injection"],
        )
        local.start_operator("cp-operator-1")
        local.start_operator("cp-operator-2")
        wait_until(
            lambda: local.leader() is not None,
            timeout=30,
            message=lambda: "no operator became leader\n" + local.logs(),
        )
        yield local
    finally:
        local.close()


@pytest.fixture(scope="module")
def images(registry: Registry, wasm_modules: dict[str, Path]) -> dict[str, str]:
    pushed = {}
    for name in ("hello-c", "greeter"):
        pushed[name] = f"{registry.host}/wasmfleet/control-path/{name}:1.0"
        push_module(wasm_modules[name], pushed[name])
    return pushed


def _events(plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    listing = plane.kubectl_json(
        "get", "events.events.k8s.io", "-n", namespace, "--field-selector", f"regarding.name={name}"
    )
    items: list[dict[str, Any]] = listing["items"]
    return items


def _post(url: str) -> int:
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def _ready(agent: AgentProcess) -> tuple[int, str]:
    return _get(f"http://127.0.0.1:{agent.admin_port}/readyz")


def _log(process_log: Path) -> str:
    return process_log.read_text(errors="replace")


def _answers(plane: ControlPlane, namespace: str, name: str, text: str) -> bool:
    targets = endpoints_of(plane, namespace, name)
    try:
        return bool(targets) and all(text in fetch(t)[1] for t in targets)
    except OSError:
        return False


# ---- 1: a WasmService as large as the API server accepts -----------------------------------


def test_a_service_as_large_as_the_api_accepts_is_served_and_blinds_no_agent(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    """128 variables of 11,000 characters (about 1.4 MB, within the CRD): its bindings are
    served on both agents, and services placed after it are served too."""
    plane = fleet.plane
    env = [{"name": f"BIG_{index}", "value": "x" * 11_000} for index in range(128)]
    big = wasm_service("big", images["hello-c"], replicas=2, http={}, env=env)
    # kubectl create: a client-side apply would keep a copy in an annotation, which is capped
    plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(big), timeout=120)
    wait_ready(fleet, namespace, "big", 2)
    assert _answers(plane, namespace, "big", HELLO)
    targets = endpoints_of(plane, namespace, "big")

    apply_object(
        plane, namespace, wasm_service("after-big", images["hello-c"], replicas=2, http={})
    )
    wait_ready(fleet, namespace, "after-big", 2)
    assert _answers(plane, namespace, "after-big", HELLO)

    plane.kubectl("delete", "wasmservice", "-n", namespace, "big")

    def gone() -> bool:
        for target in targets:
            try:
                fetch(target)
                return False
            except OSError:
                continue
        return True

    wait_until(gone, timeout=30, message="the deleted big service still answers")
    for agent in fleet.agents.values():
        assert "binding watch failed" not in _log(agent.process.log_path)
        assert "ended with an error" not in _log(agent.process.log_path)


# ---- 2: routing objects deleted or changed by hand ---------------------------------------------


def test_a_deleted_or_edited_service_and_endpointslice_are_written_again_at_once(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    plane = fleet.plane
    apply_object(plane, namespace, wasm_service("routed", images["hello-c"], replicas=2, http={}))
    wait_ready(fleet, namespace, "routed", 2)
    old_uid = plane.kubectl_json("get", "service", "-n", namespace, "routed")["metadata"]["uid"]

    plane.kubectl("delete", "service", "-n", namespace, "routed")
    plane.kubectl(
        "delete", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=routed"
    )

    def repaired() -> bool:
        service = plane.kubectl_json(
            "get", "service", "-n", namespace, "routed", "--ignore-not-found"
        )
        return (
            service is not None
            and service["metadata"]["uid"] != old_uid
            and len(endpoints_of(plane, namespace, "routed")) == 2
        )

    wait_until(repaired, timeout=15, interval=0.2, message=lambda: fleet.logs())

    plane.kubectl(
        "patch",
        "service",
        "-n",
        namespace,
        "routed",
        "--type",
        "json",
        "-p",
        '[{"op": "replace", "path": "/spec/ports/0/port", "value": 81}]',
    )
    wait_until(
        lambda: (
            plane.kubectl_json("get", "service", "-n", namespace, "routed")["spec"]["ports"][0][
                "port"
            ]
            == 80
        ),
        timeout=15,
        interval=0.2,
        message="the edited Service port was not put back",
    )
    notes = [e.get("note", "") for e in _events(plane, namespace, "routed")]
    assert any("Service routed was deleted" in n for n in notes), notes
    assert any("Service routed was changed (spec.ports" in n for n in notes), notes
    assert condition_of(service_of(plane, namespace, "routed"), "Ready")["status"] == "True"


def test_a_service_whose_routing_cannot_be_written_is_not_ready(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    """An admission policy refuses the Service: the WasmService says so (Ready=False,
    RoutingFailed) instead of AllReplicasReady, and recovers once the policy is gone."""
    plane = fleet.plane
    policy = f"refuse-blocked-{namespace}"
    plane.kubectl_apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["services"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "object.metadata.name != 'blocked'",
                        "message": "no Service named blocked here",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    )
    try:
        # the policy is enforced once the API server has loaded it
        probe = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "blocked"},
            "spec": {"ports": [{"port": 80}]},
        }
        wait_until(
            lambda: (
                plane.kubectl(
                    "create",
                    "-n",
                    namespace,
                    "--dry-run=server",
                    "-f",
                    "-",
                    input=json.dumps(probe),
                    check=False,
                ).returncode
                != 0
            ),
            timeout=30,
            interval=0.2,
            message="the admission policy never took effect",
        )
        apply_object(
            plane, namespace, wasm_service("blocked", images["hello-c"], replicas=1, http={})
        )

        def routing_failed() -> bool:
            ready = condition_of(service_of(plane, namespace, "blocked"), "Ready")
            return ready.get("reason") == "RoutingFailed" and ready.get("status") == "False"

        wait_until(routing_failed, timeout=30, interval=0.2, message=lambda: fleet.logs())
        message = condition_of(service_of(plane, namespace, "blocked"), "Ready")["message"]
        assert "no Service named blocked here" in message
    finally:
        plane.kubectl("delete", "validatingadmissionpolicybinding", policy, check=False)
        plane.kubectl("delete", "validatingadmissionpolicy", policy, check=False)
    wait_ready(fleet, namespace, "blocked", 1)
    assert plane.kubectl_json("get", "service", "-n", namespace, "blocked") is not None


# ---- 3: a binding edited by hand ----------------------------------------------------------


def test_a_hand_edited_binding_is_put_back_and_reported(
    fleet: LocalFleet, namespace: str, images: dict[str, str], registry: Registry
) -> None:
    plane = fleet.plane
    apply_object(plane, namespace, wasm_service("edited", images["hello-c"], replicas=1, http={}))
    wait_ready(fleet, namespace, "edited", 1)
    assert not [e for e in _events(plane, namespace, "edited") if e["reason"] == "BindingDrifted"]
    (binding,) = bindings_of(plane, namespace, "edited")
    original = binding["spec"]["digest"]
    other = service_digest(fleet, namespace, images["greeter"])
    patch = {"spec": {"digest": other, "workload": {"module": {"image": images["greeter"]}}}}
    plane.kubectl(
        "patch",
        "wasmbinding",
        "-n",
        namespace,
        binding["metadata"]["name"],
        "--type",
        "merge",
        "-p",
        json.dumps(patch),
    )

    def put_back() -> bool:
        (now,) = bindings_of(plane, namespace, "edited")
        return bool(
            now["spec"]["digest"] == original
            and now["spec"]["workload"]["module"]["image"] == images["hello-c"]
        )

    wait_until(put_back, timeout=15, interval=0.2, message=lambda: fleet.logs())
    wait_ready(fleet, namespace, "edited", 1)
    wait_until(
        lambda: _answers(plane, namespace, "edited", HELLO),
        timeout=30,
        interval=0.2,
        message="the restored binding does not serve its own module",
    )
    drifted = [e for e in _events(plane, namespace, "edited") if e["reason"] == "BindingDrifted"]
    assert drifted, "no BindingDrifted Event"
    assert drifted[0]["type"] == "Warning"
    assert "spec.digest" in drifted[0]["note"]
    assert "put back" in drifted[0]["note"]


def service_digest(fleet: LocalFleet, namespace: str, image: str) -> str:
    """The manifest digest the operator resolves ``image`` to (through a scaled-to-zero
    WasmService of its own)."""
    plane = fleet.plane
    apply_object(plane, namespace, wasm_service("resolver", image, replicas=0, http={}))
    found: dict[str, str] = {}

    def resolved() -> bool:
        digest = (service_of(plane, namespace, "resolver").get("status") or {}).get("digest")
        if digest:
            found["digest"] = digest
        return bool(digest)

    wait_until(resolved, timeout=30, interval=0.2, message="the image was never resolved")
    return found["digest"]


# ---- 4: a crash loop's Events and conditions ------------------------------------------------


def test_a_crash_loop_keeps_degraded_and_posts_each_event_once(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    """A variable from a Secret that does not exist makes the replica crash-loop; through four
    retries Degraded never turns False and no Event repeats."""
    plane = fleet.plane
    service = wasm_service(
        "looping",
        images["hello-c"],
        replicas=1,
        http={},
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}],
    )
    apply_object(plane, namespace, service)

    seen: list[tuple[str, str]] = []

    def looped_four_times() -> bool:
        degraded = condition_of(service_of(plane, namespace, "looping"), "Degraded")
        if degraded:
            seen.append((degraded["status"], degraded.get("reason", "")))
        bindings = bindings_of(plane, namespace, "looping")
        return bool(bindings) and (bindings[0].get("status") or {}).get("restarts", 0) >= 4

    wait_until(looped_four_times, timeout=90, interval=0.1, message=lambda: fleet.logs())
    assert ("True", "CrashLooping") in seen, seen
    first_true = seen.index(("True", "CrashLooping"))
    assert all(status == "True" for status, _ in seen[first_true:]), seen
    assert {reason for status, reason in seen[first_true:]} == {"CrashLooping"}
    events = _events(plane, namespace, "looping")
    keys = [(e["type"], e["reason"], e["note"]) for e in events]
    assert len(keys) == len(set(keys)), keys
    assert len(events) <= 4, keys


async def test_a_repeated_event_is_counted_in_one_series(fleet: LocalFleet, namespace: str) -> None:
    """The operator's own event writer, against the API server: the same Event three times
    within the series window is one Event object whose series.count is 3."""
    plane = fleet.plane
    apply_object(
        plane, namespace, wasm_service("counted", "localhost:5001/x:1", replicas=0, http={})
    )
    service = WasmService.model_validate(service_of(plane, namespace, "counted"))

    def repeated() -> list[dict[str, Any]]:
        return [e for e in _events(plane, namespace, "counted") if e["reason"] == "Repeated"]

    async with KubeClient(
        KubeConfig.from_kubeconfig(plane.kubeconfig), field_manager="wasmfleet-operator"
    ) as kube:
        reconciler = Reconciler(kube, Resolver(kube, ClientSettings()), Fleet())
        writer = asyncio.create_task(reconciler.event_writer())
        try:
            for _ in range(3):
                reconciler.post_event(service, "Warning", "Repeated", "the same thing again")
            await rawhttp.poll(
                lambda: bool(repeated()) and (repeated()[0].get("series") or {}).get("count") == 3,
                "the repeated Event was never counted to 3",
                seconds=15,
            )
        finally:
            writer.cancel()
    assert len(repeated()) == 1


# ---- 5: a Secret deleted under a running service ----------------------------------------------


def test_a_deleted_secret_is_reported_while_the_service_keeps_its_last_good_configuration(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    plane = fleet.plane
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s1", "namespace": namespace},
        "stringData": {"greeting": "Hi"},
    }
    plane.kubectl_apply(secret)
    service = wasm_service(
        "configured",
        images["greeter"],
        replicas=1,
        http={"port": 8080},
        env=[
            {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "greeting"}}}
        ],
    )
    apply_object(plane, namespace, service)
    wait_ready(fleet, namespace, "configured", 1)
    plane.kubectl("delete", "secret", "-n", namespace, "s1")

    def stale() -> bool:
        degraded = condition_of(service_of(plane, namespace, "configured"), "Degraded")
        return degraded.get("reason") == "StaleConfiguration"

    wait_until(stale, timeout=30, interval=0.2, message=lambda: fleet.logs())
    current = service_of(plane, namespace, "configured")
    assert condition_of(current, "Degraded")["status"] == "True"
    assert "Secret s1" in condition_of(current, "Degraded")["message"]
    assert condition_of(current, "Ready")["status"] == "True"
    assert _answers(plane, namespace, "configured", "Hi")
    warnings = [e for e in _events(plane, namespace, "configured") if e["type"] == "Warning"]
    assert any(e["reason"] == "StaleConfiguration" for e in warnings), warnings

    plane.kubectl_apply(secret)
    wait_until(
        lambda: (
            condition_of(service_of(plane, namespace, "configured"), "Degraded").get("status")
            == "False"
        ),
        timeout=30,
        interval=0.2,
        message=lambda: fleet.logs(),
    )


# ---- 6: long-running tasks that die ------------------------------------------------------


def _restarts(agent: AgentProcess, task: str) -> float:
    _, text = _get(f"http://127.0.0.1:{agent.admin_port}/metrics")
    for line in text.splitlines():
        if line.startswith(f'wasmfleet_agent_task_restarts_total{{task="{task}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _renew_time(plane: ControlPlane, fleet: LocalFleet, node: str) -> str:
    lease = plane.kubectl_json("get", "lease", "-n", fleet.namespace, node)
    return str(lease["spec"]["renewTime"])


def _restarted(agent: AgentProcess, task: str, before: float) -> bool:
    return _restarts(agent, task) > before


def test_each_task_of_the_agent_that_dies_is_restarted(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    plane = fleet.plane
    agent = fleet.agents["cp-a"]
    for task in ("heartbeat", "status", "bindings", "allocation"):
        before = _restarts(agent, task)
        assert _post(f"http://127.0.0.1:{agent.admin_port}/debug/crash/{task}") == 200
        wait_until(
            functools.partial(_restarted, agent, task, before),
            timeout=15,
            interval=0.1,
            message=lambda: agent.process.log_tail(),
        )
        wait_until(lambda: _ready(agent)[0] == 200, timeout=15, interval=0.1)
    assert "task heartbeat was cancelled while the process runs" in _log(agent.process.log_path)
    # Everything the tasks do still happens: the Lease is renewed, bindings are seen and
    # their status written, on both agents.
    renewed = _renew_time(plane, fleet, "cp-a")
    wait_until(lambda: _renew_time(plane, fleet, "cp-a") != renewed, timeout=15, interval=0.2)
    apply_object(
        plane, namespace, wasm_service("after-crashes", images["hello-c"], replicas=2, http={})
    )
    wait_ready(fleet, namespace, "after-crashes", 2)
    assert _answers(plane, namespace, "after-crashes", HELLO)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, as its threads list them (a thread that ends while
    they are read lists none)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found += [int(p) for p in text]
    return found


def test_a_request_worker_that_dies_is_started_again(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    plane = fleet.plane
    agent = fleet.agents["cp-b"]
    apply_object(plane, namespace, wasm_service("worked", images["hello-c"], replicas=2, http={}))
    wait_ready(fleet, namespace, "worked", 2)
    assert agent.process.pid is not None
    workers = _children(agent.process.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    wait_until(
        lambda: (
            len(_children(agent.process.pid or 0)) == 2
            and workers[0] not in _children(agent.process.pid or 0)
        ),
        timeout=30,
        interval=0.1,
        message=lambda: agent.process.log_tail(),
    )
    assert "request worker exited; starting it again" in _log(agent.process.log_path)
    wait_until(lambda: _answers(plane, namespace, "worked", HELLO), timeout=30, interval=0.2)


def test_an_agent_whose_task_keeps_dying_stops_being_ready(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    """Three deaths of the binding watch within a minute: the agent says it is not ready and
    stops renewing its Lease, so the operator takes its endpoints away; a minute later,
    healthy again, it renews and serves again."""
    plane = fleet.plane
    agent = fleet.agents["cp-a"]
    apply_object(plane, namespace, wasm_service("steady", images["hello-c"], replicas=2, http={}))
    wait_ready(fleet, namespace, "steady", 2)
    for _ in range(3):
        wait_until(lambda: _post_ok(agent, "bindings"), timeout=15, interval=0.1)
    wait_until(
        lambda: "times in 60s" in _ready(agent)[1],
        timeout=15,
        interval=0.1,
        message=lambda: str(_ready(agent)),
    )
    assert _ready(agent)[0] == 503
    wait_until(
        lambda: {t.node for t in endpoints_of(plane, namespace, "steady")} == {"cp-b"},
        timeout=20,
        interval=0.2,
        message=lambda: fleet.logs(),
    )
    assert "not renewing the lease" in _log(agent.process.log_path)
    wait_until(lambda: _ready(agent)[0] == 200, timeout=90, interval=0.5)
    wait_until(
        lambda: len(endpoints_of(plane, namespace, "steady")) == 2,
        timeout=30,
        interval=0.2,
        message=lambda: fleet.logs(),
    )


def _post_ok(agent: AgentProcess, task: str) -> bool:
    try:
        return _post(f"http://127.0.0.1:{agent.admin_port}/debug/crash/{task}") == 200
    except urllib.error.HTTPError:
        return False  # not running yet: restarting after the last end


def test_each_task_of_the_operator_that_dies_hands_over_to_the_standby(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    plane = fleet.plane
    apply_object(plane, namespace, wasm_service("led", images["hello-c"], replicas=1, http={}))
    wait_ready(fleet, namespace, "led", 1)
    for task in ("worker-0", "events", "monitor", "kopf", "leader"):
        holder, leading = fleet.leading_operator()
        assert _post(f"http://127.0.0.1:{leading.health_port}/debug/crash/{task}") == 200
        wait_until(
            functools.partial(_exited, leading),
            timeout=20,
            interval=0.1,
            message=lambda: fleet.logs(),
        )
        assert leading.process.returncode() == 1
        assert f"the {task} task ended while leading" in _log(leading.process.log_path)
        fleet.wait_for_new_leader(holder)
        _restart(leading)  # as its Deployment would
    plane.kubectl("scale", "wasmservice", "-n", namespace, "led", "--replicas=2")
    wait_ready(fleet, namespace, "led", 2)


def _exited(operator: OperatorProcess) -> bool:
    return operator.process.returncode() is not None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _restart(operator: OperatorProcess) -> None:
    operator.process.start()
    wait_until(
        functools.partial(_listening, operator.health_port),
        timeout=30,
        interval=0.1,
        message=lambda: f"{operator.name} did not start again\n{operator.process.log_tail()}",
    )


# ---- 7: an agent's own status ----------------------------------------------------------------


def test_an_agents_ready_condition_keeps_its_transition_time_while_its_allocation_changes(
    fleet: LocalFleet, namespace: str, images: dict[str, str]
) -> None:
    """A condition's lastTransitionTime says when its status last changed. The agent rewrites
    its WasmAgent's status when the replicas it hosts change; a Ready agent that stays Ready
    keeps the time it became Ready (the operator reads a changed condition as news)."""
    plane = fleet.plane

    def agent() -> dict[str, Any]:
        found: dict[str, Any] = plane.kubectl_json("get", "wasmagent", "cp-b")
        return found

    def ready(obj: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")

    wait_until(lambda: ready(agent())["status"] == "True", timeout=90, interval=0.5)
    before = agent()
    apply_object(plane, namespace, wasm_service("counted", images["hello-c"], replicas=2, http={}))
    wait_ready(fleet, namespace, "counted", 2)

    def on_cp_b() -> int:
        listing = plane.kubectl_json("get", "wasmbindings", "-A")
        return sum(1 for b in listing["items"] if b["spec"]["nodeName"] == "cp-b")

    def rewritten() -> bool:
        # the agent has written its status since the new replica came (bindings of earlier
        # tests may be leaving at the same time, so the count alone may not change)
        now = agent()
        return (
            now["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
            and now["status"]["allocated"] == on_cp_b()
            and any(
                b["spec"]["nodeName"] == "cp-b" for b in bindings_of(plane, namespace, "counted")
            )
        )

    wait_until(rewritten, timeout=30, interval=0.2, message=lambda: str(agent()["status"]))
    after = ready(agent())
    assert after["status"] == "True", after
    assert after["lastTransitionTime"] == ready(before)["lastTransitionTime"], (before, after)
