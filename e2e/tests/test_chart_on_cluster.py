"""The Helm chart on a local cluster of two real nodes, installed the way users install it.

The operator and agent images are built from the project's Dockerfiles, pushed to a registry
on the node LAN, and ``helm install`` runs with only the image registry, the tags and that
registry listed as plain HTTP (`localsystem.render_install_values`). Then the Pods run under
the kubelets: the operator Deployment with its leader election, the agent DaemonSet on every
node with its hostPath cache, both on the ServiceAccount tokens the kubelets project. Requests
go through Services: by ClusterIP from this machine (once kube-proxy's rules for it exist on
the node the host routes Service traffic through) and by DNS name from a Pod.

The tests share one installation and run in order; the last one uninstalls it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from wasmfleet_api.base import API_VERSION
from wasmfleet_common.kube import ApiError, KubeClient, KubeConfig, resource_for
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.argocd import argocd_health
from wasmfleet_harness.chart import CHART
from wasmfleet_harness.images.build import BuiltImage
from wasmfleet_harness.localsystem import (
    RELEASE,
    RELEASE_NAMESPACE,
    LocalSystem,
    Release,
    pod_ready,
    render_install_values,
    retag,
)
from wasmfleet_harness.netns import netns_available
from wasmfleet_harness.probe import exec_in, probe_pod, push_probe_image
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.services import (
    apply_object,
    bindings_of,
    condition_of,
    service_of,
    wasm_service,
)

pytestmark = pytest.mark.skipif(
    not netns_available(), reason="real nodes need namespaces of their own (root and iproute2)"
)

HELLO_C = "Hello from a C Wasm microservice!"
HELLO_RUST = "Hello from a Rust Wasm microservice!"
NAMESPACE = "default"


@dataclass
class Installed:
    system: LocalSystem
    images: list[BuiltImage]
    release: Release
    modules: dict[str, Path]
    pushed: set[str] = field(default_factory=set)

    @property
    def plane(self) -> Any:
        return self.system.plane

    def push(self, module: str, repository: str, tag: str = "1.0") -> str:
        reference = f"{self.system.registry.host}/{repository}:{tag}"
        push_module(self.modules[module], reference, "--insecure")
        return reference


@pytest.fixture(scope="module")
def installed(workspace: Workspace, wasm_modules: dict[str, Path]) -> Iterator[Installed]:
    system = LocalSystem(workspace.subdir("local-system"), registry_port=None)
    system.start()
    try:
        images = system.build_images()
        release = system.install(images)
        yield Installed(system, images, release, wasm_modules)
    finally:
        system.stop()


# ---- helpers ----------------------------------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode()).strip()


def _cluster_ip(installed: Installed, name: str) -> tuple[str, int]:
    service = installed.plane.kubectl_json("get", "service", "-n", NAMESPACE, name)
    return service["spec"]["clusterIP"], int(service["spec"]["ports"][0]["port"])


def _routed_url(installed: Installed, name: str) -> str:
    """The Service's ClusterIP URL, once kube-proxy routes it (never sent to before)."""
    ip, port = _cluster_ip(installed, name)
    wait_until(
        partial(installed.system.cluster.service_routed_from_host, ip, port),
        timeout=30,
        message=f"kube-proxy never routed {ip}:{port}",
    )
    return f"http://{ip}:{port}/"


def _wait_ready(installed: Installed, name: str, replicas: int, timeout: float = 90) -> None:
    def ready() -> bool:
        service = service_of(installed.plane, NAMESPACE, name)
        status = service.get("status") or {}
        return (
            condition_of(service, "Ready").get("status") == "True"
            and status.get("readyReplicas") == replicas
            and status.get("updatedReplicas") == replicas
            and status.get("replicas") == replicas
        )

    wait_until(
        ready,
        timeout=timeout,
        interval=0.2,
        message=lambda: (
            f"{name}: {service_of(installed.plane, NAMESPACE, name).get('status')}\n"
            + installed.release.diagnose()
        ),
    )


def _node_names(installed: Installed) -> list[str]:
    return [n["metadata"]["name"] for n in installed.plane.kubectl_json("get", "nodes")["items"]]


def _pods(installed: Installed, component: str) -> list[dict[str, Any]]:
    return [
        p
        for p in installed.release.pods()
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]


def _leaders(installed: Installed) -> int:
    """How many operator Pods say they lead (their wasmfleet_operator_leader gauge)."""
    count = 0
    for pod in _pods(installed, "operator"):
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        try:
            text = _get(f"http://{ip}:8080/metrics")
        except (urllib.error.URLError, OSError):
            continue
        count += any(line == "wasmfleet_operator_leader 1.0" for line in text.splitlines())
    return count


def _logs(installed: Installed, component: str) -> str:
    return str(
        installed.plane.kubectl(
            "logs",
            "-n",
            RELEASE_NAMESPACE,
            "-l",
            f"app.kubernetes.io/component={component}",
            "--tail=-1",
            check=False,
        ).stdout
    )


def _replace_rules(installed: Installed, kind: str, name: str, rules: list[Any]) -> None:
    body = installed.plane.kubectl_json(
        "get", kind, name, *(["-n", RELEASE_NAMESPACE] if kind == "role" else [])
    )
    body["rules"] = rules
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        body["metadata"].pop(key, None)
    installed.plane.kubectl("replace", "-f", "-", input=json.dumps(body))


# ---- the release ----------------------------------------------------------------------------


def test_every_pod_of_the_release_runs_and_is_ready_as_the_chart_describes(
    installed: Installed,
) -> None:
    release, plane = installed.release, installed.plane
    installed.system.wait_for_release(release)
    nodes = {n["metadata"]["name"]: n for n in plane.kubectl_json("get", "nodes")["items"]}
    assert len(nodes) == 2

    operators = _pods(installed, "operator")
    assert len(operators) == 2
    agents = _pods(installed, "agent")
    assert {p["spec"]["nodeName"] for p in agents} == set(nodes), "one agent on every node"
    for pod in operators + agents:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-{component}"
        (container,) = pod["spec"]["containers"]
        security = container["securityContext"]
        pod_security = pod["spec"].get("securityContext") or {}
        # the kubelet refuses to start it as root
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for pod in agents:
        assert pod["spec"]["hostNetwork"] is True
        cache = next(v for v in pod["spec"]["volumes"] if v["name"] == "cache")
        assert cache["hostPath"]["path"] == "/var/lib/wasmfleet"

    # Each agent named itself after its node (the Downward API) and says what it runs on.
    for agent in plane.kubectl_json("get", "wasmagents")["items"]:
        node = nodes[agent["metadata"]["name"]]
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert agent["status"]["architecture"] == node["metadata"]["labels"]["kubernetes.io/arch"]
        assert agent["status"]["address"] == addresses["InternalIP"]
        # it read its Node's label with the chart's RBAC, from inside its Pod
        matches = [
            c for c in agent["status"]["conditions"] if c["type"] == "ArchitectureMatchesNode"
        ]
        assert [(c["status"], c["reason"]) for c in matches] == [("True", "NodeLabelMatches")]
    wait_until(lambda: _leaders(installed) == 1, timeout=60, message="not exactly one leader")


async def test_an_agent_pods_own_token_writes_its_node_and_is_refused_the_other(
    installed: Installed, tmp_path: Path
) -> None:
    """The token the kubelet projected into a running agent Pod, read from the Pod's volume
    on its node: the chart's admission policy lets it write its own WasmAgent's status and
    refuses the other node's, with the policy's message."""
    plane = installed.plane
    pod = _pods(installed, "agent")[0]
    own = pod["spec"]["nodeName"]
    other = next(n for n in _node_names(installed) if n != own)
    node = next(n for n in installed.system.cluster if n.name == own)
    volumes = f"/var/lib/kubelet/pods/{pod['metadata']['uid']}/volumes/kubernetes.io~projected"
    read = node.nsenter("sh", "-c", f"cat {volumes}/*/token")
    assert read.returncode == 0, read.stderr
    kubeconfig = plane.kubeconfig_for_token(read.stdout.strip(), tmp_path / "agent.kubeconfig")
    agents = resource_for(API_VERSION, "WasmAgent")

    async def refusal(kube: KubeClient, name: str) -> str | None:
        """The API server's refusal of a status patch that changes nothing, else None."""
        allocated = plane.kubectl_json("get", "wasmagent", name)["status"].get("allocated", 0)
        try:
            await kube.merge_patch(
                agents, name, {"status": {"allocated": allocated}}, subresource="status"
            )
        except ApiError as error:
            if error.status != 403:
                raise
            return error.message
        return None

    async with KubeClient(
        KubeConfig.from_kubeconfig(kubeconfig), field_manager="wasmfleet-test"
    ) as kube:
        assert await refusal(kube, own) is None
        refused = await refusal(kube, other)
    assert refused is not None
    assert f"the agent of node {own} may write only the WasmAgent and the Lease" in refused


# ---- requests through Services -----------------------------------------------------------------


def test_a_two_replica_service_answers_by_its_cluster_ip_and_by_its_dns_name_from_a_pod(
    installed: Installed,
) -> None:
    plane = installed.plane
    image = installed.push("hello-c", "wasmfleet/chart/hello-c")
    apply_object(plane, NAMESPACE, wasm_service("hello", image, replicas=2, http={}))
    _wait_ready(installed, "hello", 2)
    nodes = {b["spec"]["nodeName"] for b in bindings_of(plane, NAMESPACE, "hello")}
    assert len(nodes) == 2, "one replica on each node"

    url = _routed_url(installed, "hello")
    assert {_get(url) for _ in range(10)} == {HELLO_C}

    probe = push_probe_image(installed.system.registry)
    apply_object(plane, NAMESPACE, probe_pod("client", probe, "serve", "client"))
    installed.system.cluster.wait_for_pod_ready(NAMESPACE, "client")
    for name in ("hello", f"hello.{NAMESPACE}", f"hello.{NAMESPACE}.svc.cluster.local"):
        body = exec_in(plane, NAMESPACE, "client", "/probe", "get", f"http://{name}/")
        assert body.strip() == HELLO_C, name


def test_a_rollout_to_a_new_digest_under_requests_through_the_cluster_ip_fails_none(
    installed: Installed,
) -> None:
    plane = installed.plane
    image = installed.push("hello-c", "wasmfleet/chart/rolling")
    apply_object(plane, NAMESPACE, wasm_service("rolling", image, replicas=2, http={}))
    _wait_ready(installed, "rolling", 2)
    url = _routed_url(installed, "rolling")
    first = service_of(plane, NAMESPACE, "rolling")["status"]["digest"]

    bodies: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        for _ in range(20_000):  # bounded; the rollout takes seconds
            if stop.is_set():
                return
            try:
                body = _get(url)
                bodies[body] = bodies.get(body, 0) + 1
            except (urllib.error.URLError, OSError) as error:
                failures.append(str(error))

    requester = threading.Thread(target=loop)
    requester.start()
    try:
        wait_until(lambda: bodies.get(HELLO_C, 0) >= 20, timeout=30)
        installed.push("hello-rust", "wasmfleet/chart/rolling")
        plane.kubectl(
            "annotate",
            "wasmservice",
            "-n",
            NAMESPACE,
            "rolling",
            f"wasmfleet.dev/resolve={time.time()}",
            "--overwrite",
        )

        def rolled_out() -> bool:
            status = service_of(plane, NAMESPACE, "rolling").get("status") or {}
            return status.get("digest") != first and (
                status.get("readyReplicas"),
                status.get("updatedReplicas"),
                status.get("replicas"),
            ) == (2, 2, 2)

        wait_until(rolled_out, timeout=120, interval=0.2, message=installed.release.diagnose)
        wait_until(lambda: bodies.get(HELLO_RUST, 0) >= 20, timeout=30)
    finally:
        stop.set()
        requester.join(timeout=30)
    assert not failures, failures[:5]
    assert bodies[HELLO_C] >= 20, bodies
    assert bodies[HELLO_RUST] >= 20, bodies


# ---- the agent Pod and its cache --------------------------------------------------------------


def test_a_deleted_agent_pod_comes_back_and_serves_from_its_host_cache_without_the_registry(
    installed: Installed,
) -> None:
    """With the registry stopped, the DaemonSet's new Pod (its image already on the node)
    finds the module and its machine code in the node's hostPath cache and serves again; the
    old Pod gives its Lease up and drains, so no request through the Service fails."""
    plane, system = installed.plane, installed.system
    _wait_ready(installed, "hello", 2)
    url = _routed_url(installed, "hello")
    node = "wasmfleet-node-1"
    (old,) = [p for p in _pods(installed, "agent") if p["spec"]["nodeName"] == node]
    ip = old["status"]["hostIP"]
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def loop() -> None:
        for _ in range(20_000):  # bounded; the restart takes seconds
            if stop.is_set():
                return
            try:
                body = _get(url)
                if body != HELLO_C:
                    failures.append(f"answered {body!r}")
                served[0] += 1
            except (urllib.error.URLError, OSError) as error:
                failures.append(str(error))

    def serving_again() -> bool:
        agents = [p for p in _pods(installed, "agent") if p["spec"]["nodeName"] == node]
        if [p["metadata"]["name"] for p in agents] in ([], [old["metadata"]["name"]]):
            return False
        (binding,) = [
            b for b in bindings_of(plane, NAMESPACE, "hello") if b["spec"]["nodeName"] == node
        ]
        port = (binding.get("status") or {}).get("port")
        slices = plane.kubectl_json(
            "get", "endpointslices", "-n", NAMESPACE, "-l", "kubernetes.io/service-name=hello"
        )
        return any(
            s["ports"][0]["port"] == port
            and any(ip in e["addresses"] and e["conditions"]["ready"] for e in s["endpoints"] or [])
            for s in slices["items"]
        )

    requester = threading.Thread(target=loop)
    system.registry.stop()
    requester.start()
    try:
        started = time.monotonic()
        plane.kubectl("delete", "pod", "-n", RELEASE_NAMESPACE, old["metadata"]["name"])
        wait_until(serving_again, timeout=90, interval=0.2, message=installed.release.diagnose)
        seconds = time.monotonic() - started
        wait_until(lambda: served[0] >= 50, timeout=30)
    finally:
        stop.set()
        requester.join(timeout=30)
        system.registry.start()
    assert not failures, failures[:5]
    # Its machine code came from the cache on the node, not from a compile.
    metrics = _get(f"http://{ip}:9464/metrics")
    loads = {
        line.split('source="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("wasmfleet_agent_compile_seconds_count{")
    }
    assert loads.get("cache", 0) >= 1, loads
    assert loads.get("compiled", 0) == 0, loads
    print(f"agent Pod deleted to serving again from its cache: {seconds:.1f}s")
    assert seconds < 60, f"the agent took {seconds:.1f}s to serve again"


# ---- the Pods' own identities -------------------------------------------------------------------


def test_the_pods_run_on_their_own_tokens_and_a_narrowed_role_shows_in_their_logs(
    installed: Installed,
) -> None:
    plane = installed.plane
    role = plane.kubectl_json("get", "role", "-n", RELEASE_NAMESPACE, f"{RELEASE}-agent")
    rules = role["rules"]
    _replace_rules(
        installed,
        "role",
        f"{RELEASE}-agent",
        [r for r in rules if "leases" not in r.get("resources", [])],
    )
    try:
        identity = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}-agent"
        wait_until(
            lambda: (
                "lease renewal failed" in _logs(installed, "agent")
                and identity in _logs(installed, "agent")
            ),
            timeout=60,
            interval=0.5,
            message=lambda: _logs(installed, "agent")[-3000:],
        )
    finally:
        _replace_rules(installed, "role", f"{RELEASE}-agent", rules)

    cluster_role = plane.kubectl_json("get", "clusterrole", f"{RELEASE}-operator")
    operator_rules = cluster_role["rules"]
    _replace_rules(
        installed,
        "clusterrole",
        f"{RELEASE}-operator",
        [r for r in operator_rules if "events" not in r.get("resources", [])],
    )
    try:
        identity = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}-operator"
        # three replicas on two nodes: Unschedulable, a transition the operator posts an Event for
        plane.kubectl("scale", "wasmservice", "-n", NAMESPACE, "hello", "--replicas=3")
        wait_until(
            lambda: (
                "event not recorded" in _logs(installed, "operator")
                and identity in _logs(installed, "operator")
            ),
            timeout=60,
            interval=0.5,
            message=lambda: _logs(installed, "operator")[-3000:],
        )
    finally:
        _replace_rules(installed, "clusterrole", f"{RELEASE}-operator", operator_rules)
    plane.kubectl("scale", "wasmservice", "-n", NAMESPACE, "hello", "--replicas=2")
    _wait_ready(installed, "hello", 2, timeout=120)


def test_the_argo_cd_health_check_judges_the_live_objects_of_this_cluster(
    installed: Installed,
) -> None:
    plane = installed.plane
    missing = f"{installed.system.registry.host}/wasmfleet/chart/absent:1.0"
    apply_object(plane, NAMESPACE, wasm_service("absent", missing, replicas=1, http={}))
    wait_until(
        lambda: (
            condition_of(service_of(plane, NAMESPACE, "absent"), "Ready").get("reason")
            == "ModuleNotFound"
        ),
        timeout=60,
    )
    assert argocd_health(service_of(plane, NAMESPACE, "hello"))[0] == "Healthy"
    status, message = argocd_health(service_of(plane, NAMESPACE, "absent"))
    assert status == "Degraded"
    assert "does not exist" in message
    plane.kubectl("delete", "wasmservice", "-n", NAMESPACE, "absent")


# ---- upgrade and uninstall --------------------------------------------------------------------


def test_an_upgrade_to_new_image_tags_rolls_the_operator_with_one_leader_and_keeps_bindings(
    installed: Installed,
) -> None:
    plane, system = installed.plane, installed.system
    _wait_ready(installed, "hello", 2)
    before = {b["metadata"]["name"] for b in bindings_of(plane, NAMESPACE, "hello")}
    upgraded = []
    for image in installed.images:
        repository = image.repository.removeprefix(f"{system.registry.host}/")
        retag(system.registry, repository, image.tag, f"{image.tag}-next")
        upgraded.append(
            BuiltImage(
                image.name,
                image.repository,
                f"{image.tag}-next",
                image.digest,
                image.platforms,
                image.outcome,
            )
        )
    leaders: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        for _ in range(5000):  # bounded: the upgrade takes well under this many samples
            if stop.is_set():
                return
            leaders.append(_leaders(installed))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        installed.release.install(render_install_values(upgraded, system.registry.host))
        wait_until(lambda: _leaders(installed) == 1, timeout=60)
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert max(leaders) == 1, f"two leaders at once: {leaders}"

    def images() -> list[str]:
        return [p["spec"]["containers"][0]["image"] for p in installed.release.pods()]

    # `--wait` returns once the new Pods are Ready; old ones may still be terminating
    wait_until(
        lambda: all(image.endswith("-next") for image in images()),
        timeout=60,
        message=lambda: f"Pods of the old tags remain: {images()}",
    )
    _wait_ready(installed, "hello", 2, timeout=120)
    after = {b["metadata"]["name"] for b in bindings_of(plane, NAMESPACE, "hello")}
    assert after == before, "the upgrade replaced the service's bindings"
    assert _get(_routed_url(installed, "hello")) == HELLO_C


def test_an_upgrade_to_an_image_that_cannot_be_pulled_fails_clearly_and_rollback_recovers(
    installed: Installed,
) -> None:
    """A mistyped tag: ``helm upgrade --wait`` fails, the new operator Pod says which image it
    could not pull, the old Pods keep leading and serving meanwhile, ``helm rollback`` recovers."""
    system, release = installed.system, installed.release
    url = _routed_url(installed, "hello")
    before = {p["metadata"]["name"] for p in _pods(installed, "operator")}
    values = render_install_values(installed.images, system.registry.host)
    values += ["--set", "operator.image.tag=0.0.0-does-not-exist"]
    failed = release.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        *values,
        "--wait",
        "--timeout",
        "40s",
        timeout=120,
        check=False,
    )
    assert failed.returncode != 0, "helm said an upgrade to a missing image succeeded"

    def pull_failure() -> str:
        for pod in _pods(installed, "operator"):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
                    return f"{waiting['reason']}: {waiting.get('message', '')} ({status['image']})"
        return ""

    wait_until(lambda: bool(pull_failure()), timeout=30, message=release.diagnose)
    assert "0.0.0-does-not-exist" in pull_failure()
    serving = {p["metadata"]["name"] for p in _pods(installed, "operator") if pod_ready(p)}
    assert serving == before, "the old operator Pods must keep running while the new one fails"
    assert _leaders(installed) == 1
    assert _get(url) == HELLO_C

    release.helm("rollback", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", timeout=300)

    def recovered() -> bool:
        images = [p["spec"]["containers"][0]["image"] for p in _pods(installed, "operator")]
        return (
            not any("does-not-exist" in image for image in images)
            and release.all_ready()
            and _leaders(installed) == 1
        )

    wait_until(recovered, timeout=120, message=release.diagnose)
    assert _get(url) == HELLO_C


def test_uninstall_removes_every_object_of_the_release_but_the_crds(installed: Installed) -> None:
    plane, release = installed.plane, installed.release
    manifest = release.helm("get", "manifest", RELEASE, "--namespace", RELEASE_NAMESPACE).stdout
    rendered = [o for o in yaml.safe_load_all(manifest) if o]
    release.uninstall()

    def gone(obj: dict[str, Any]) -> bool:
        scope = ["-n", RELEASE_NAMESPACE] if obj["metadata"].get("namespace") else []
        found = plane.kubectl(
            "get", obj["kind"], obj["metadata"]["name"], *scope, "-o", "name", check=False
        )
        return found.returncode != 0 and "NotFound" in found.stderr

    for obj in rendered:
        wait_until(partial(gone, obj), timeout=60, message=f"{obj['kind']} left behind")
    wait_until(lambda: not release.pods(), timeout=60, message="Pods left behind")
    crds = plane.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=wasmfleet", "-o", "name")
    assert len(crds.stdout.split()) == 3, "Helm keeps the CRDs"
