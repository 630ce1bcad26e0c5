"""The control loop at scale: many WasmServices over many agents, until every one is Ready.

For each scale (services/agents) it starts, from scratch, the real local control plane (etcd,
kube-apiserver with an audit log, kube-controller-manager) with the CRDs and the chart's
ServiceAccounts and RBAC, and the real operator (``wasmfleet-operator run``, as the chart's
operator identity). One registry serves the whole run, with hello-c pushed under a tag, so
the operator resolves every service's tag to a digest for real.

The agents are simulated: a few child processes of this script each run many agent identities
on one asyncio loop (``--agents-per-process``, 50). An interpreter with this code costs ~57 MB
and ~1.3 CPU-seconds just to start, so a process per agent would take 5.7 GB and two minutes
of CPU on a 2-core machine, competing with the operator being measured; the work of one
agent is a Lease write every few seconds and one status write per new binding, which one event
loop does for fifty agents with millisecond latency (the acknowledgement latency is reported).
Each identity has its own client and connections and does, through the agent's own code, what
``wasmfleet-agent node`` does at the API: its Node is registered (as the harness does: a Node
object, the not-ready taint lifted), it applies its WasmAgent (`apply_agent`), renews its Lease
(`heartbeat`), lists and watches its node's WasmBindings (`watch_bindings`), writes binding
status through the `StatusWriter`, and rewrites ``status.allocated`` at most every 10 s when
it changed. The one difference: a new binding is acknowledged at once with the status a real
agent reports when the replica is Ready (``--report-pending`` adds the Pending write before).

Then it creates the services as fast as ``--create-concurrency`` allows (replicas alternate
between 1 and 2) and measures, until every service is Ready or the scale's deadline passes:

- the time until all are Ready, the latency per service, and placements (WasmBindings
  created) per second: from a watch on each kind (a timestamp per object, where polling would
  cost a full list of every service each time), confirmed at the end by a plain list;
- the operator's CPU seconds and peak RSS (``/proc/<pid>/stat`` and ``status``), and the CPU of
  kube-apiserver, etcd and the simulated agents;
- API requests per second (``apiserver_request_total`` from the API server's /metrics, before
  and after) with the server's mean time per verb and resource, split by client (user and user
  agent, from the audit log), and the operator's own reconcile and placement counters;
- the objects that exist at the end.

``--profile DIR`` samples the operator with py-spy (not a project dependency:
``.venv/bin/pip install py-spy``) during each window and writes collapsed stacks into DIR.

Everything is bounded (a deadline per scale and ``--budget`` for the whole run) and cleaned up
(child processes stopped, the scratch directory removed) on failure too. Results: a Markdown
table on stdout and JSON in ``build/bench/control.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from wasmfleet_agent.cluster.bindings import StatusWriter, watch_bindings
from wasmfleet_agent.cluster.node import report_allocation
from wasmfleet_agent.cluster.registration import (
    AgentIdentity,
    ApiContact,
    apply_agent,
    heartbeat,
    render_lease,
)
from wasmfleet_agent.lifecycle import BindingState, render_binding_status
from wasmfleet_api.base import API_VERSION
from wasmfleet_api.binding import BindingPhase, WasmBinding
from wasmfleet_common.kube import (
    ApiError,
    KubeClient,
    KubeConfig,
    Resource,
    resource_for,
    retry_until_stopped,
)
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.binaries import REPO_ROOT, Binaries, ensure_binaries
from wasmfleet_harness.chart import run_as_chart_identities
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.host import describe_machine
from wasmfleet_harness.processes import (
    ManagedProcess,
    Workspace,
    free_port,
    install_termination_handler,
    wait_until,
)
from wasmfleet_harness.registry import Registry
from wasmfleet_oci.client import sha256_digest

OUT = REPO_ROOT / "build" / "bench"
MODULE = REPO_ROOT / "build" / "modules" / "hello-c.wasm"
NAMESPACE = "bench"
SYSTEM_NAMESPACE = "wasmfleet-system"
AGENT_FIELD_MANAGER = "wasmfleet-agent"  # the real agent's, so apply conflicts are the same
DEFAULT_SCALES = "100/10,300/30,1000/100"

SERVICES = resource_for(API_VERSION, "WasmService")
BINDINGS = resource_for(API_VERSION, "WasmBinding")
AGENTS = resource_for(API_VERSION, "WasmAgent")
NODES = resource_for("v1", "Node")
COUNTED: tuple[tuple[str, Resource, str | None], ...] = (
    ("WasmServices", SERVICES, NAMESPACE),
    ("WasmBindings", BINDINGS, NAMESPACE),
    ("Services", resource_for("v1", "Service"), NAMESPACE),
    ("EndpointSlices", resource_for("discovery.k8s.io/v1", "EndpointSlice"), NAMESPACE),
    ("Events", resource_for("events.k8s.io/v1", "Event"), NAMESPACE),
    ("WasmAgents", AGENTS, None),
    ("Leases", resource_for("coordination.k8s.io/v1", "Lease"), SYSTEM_NAMESPACE),
    ("Nodes", NODES, None),
)
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


# ---- simulated agents (the `agents` command, run in child processes) --------------------------


def node_name(index: int) -> str:
    return f"sim-{index:04d}"


def node_address(index: int) -> str:
    """A distinct, non-loopback address per agent (EndpointSlices refuse loopback)."""
    return f"10.200.{index // 250}.{index % 250 + 1}"


class AckRunner:
    """A `BindingRunner` that runs nothing: every new binding is reported Ready on a port."""

    def __init__(
        self,
        identity: AgentIdentity,
        status: StatusWriter,
        *,
        module_digest: str,
        ack_delay: float,
        report_pending: bool,
    ) -> None:
        self.identity = identity
        self.status = status
        self.module_digest = module_digest
        self.ack_delay = ack_delay
        self.report_pending = report_pending
        self.replicas: dict[str, int] = {}
        # Ports as the kernel hands out ephemeral ones: distinct per agent, rarely equal across
        # agents (the operator writes one EndpointSlice per distinct port).
        self._random = random.Random(identity.node_name)

    async def sync(self, desired: Mapping[str, WasmBinding]) -> None:
        for key in [k for k in self.replicas if k not in desired]:
            del self.replicas[key]
        loop = asyncio.get_running_loop()
        for key, binding in desired.items():
            if key in self.replicas:
                continue
            self.replicas[key] = self._free_port()
            namespace, name = key.split("/", 1)
            if self.report_pending:
                self.status.report(
                    namespace,
                    name,
                    render_binding_status(binding, BindingState(), address=self.identity.address),
                )
            if self.ack_delay > 0:
                loop.call_later(self.ack_delay, self._ack, key, binding)
            else:
                self._ack(key, binding)

    def _free_port(self) -> int:
        taken = set(self.replicas.values())
        while True:
            port = self._random.randint(32768, 60999)
            if port not in taken:
                return port

    def _ack(self, key: str, binding: WasmBinding) -> None:
        port = self.replicas.get(key)
        if port is None:
            return  # deleted before it would have been Ready
        namespace, name = key.split("/", 1)
        self.status.report(
            namespace,
            name,
            render_binding_status(
                binding,
                BindingState(BindingPhase.READY),
                address=self.identity.address,
                port=port,
                module_digest=self.module_digest,
            ),
        )


async def _register(kube: KubeClient, identity: AgentIdentity, stop: asyncio.Event) -> None:
    """Applies the WasmAgent and a first Lease, retrying as the real agent does."""

    async def attempt() -> None:
        await apply_agent(kube, identity, allocated=0, ready=True)
        await kube.apply(render_lease(identity))

    await retry_until_stopped(
        attempt,
        stop,
        on_error=lambda error, _delay: print(
            f"{identity.node_name}: registration failed ({error})", flush=True
        ),
    )


async def _later(delay: float, stop: asyncio.Event, work: Callable[[], Awaitable[None]]) -> None:
    """Runs ``work`` after ``delay`` seconds, unless stopped first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
    if not stop.is_set():
        await work()


async def simulate_agents(args: argparse.Namespace) -> int:
    """Runs agents ``first`` .. ``first + count - 1`` until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    config = KubeConfig.from_kubeconfig(args.kubeconfig)  # one TLS context, shared
    kubes: list[KubeClient] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        runners = []
        for index in range(args.first, args.first + args.count):
            identity = AgentIdentity(
                node_name=node_name(index),
                address=node_address(index),
                architecture="amd64",
                lease_namespace=args.lease_namespace,
                lease_duration_seconds=args.lease_duration,
            )
            kube = KubeClient(config, field_manager=AGENT_FIELD_MANAGER)
            kubes.append(kube)
            status = StatusWriter(kube)
            runner = AckRunner(
                identity,
                status,
                module_digest=args.module_digest,
                ack_delay=args.ack_delay,
                report_pending=args.report_pending,
            )
            runners.append((identity, kube, status, runner))
        await asyncio.gather(*(_register(kube, ident, stop) for ident, kube, _, _ in runners))
        print(f"registered {len(runners)} agents", flush=True)
        # Real agents start at different moments: their renewals and allocation writes are
        # spread over the interval, not in lock-step (each was just written once above).
        phase = random.Random(args.first)
        renew = args.lease_duration / 3
        for identity, kube, status, runner in runners:
            name = identity.node_name
            # as run_node wires them: one view of the API server for the heartbeat and watch
            contact = ApiContact(kube, timeout=args.lease_duration / 2)
            beat = functools.partial(heartbeat, kube, identity, stop=stop, contact=contact)
            allocation = functools.partial(
                report_allocation,
                kube,
                identity,
                runner.replicas,
                stop,
                interval=args.allocation_interval,
            )
            tasks += [
                asyncio.create_task(
                    _later(phase.uniform(0, renew), stop, beat), name=f"{name} lease"
                ),
                asyncio.create_task(status.run(stop), name=f"{name} status"),
                asyncio.create_task(
                    watch_bindings(kube, node_name=name, runner=runner, stop=stop, contact=contact),
                    name=f"{name} bindings",
                ),
                asyncio.create_task(
                    _later(phase.uniform(0, args.allocation_interval), stop, allocation),
                    name=f"{name} allocation",
                ),
            ]
        await stop.wait()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(kube.close() for kube in kubes), return_exceptions=True)
    return 0


def agents_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="control_bench.py agents", description="Simulated agents (started by the bench)."
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--lease-namespace", default=SYSTEM_NAMESPACE)
    parser.add_argument("--lease-duration", type=int, default=20)
    parser.add_argument("--allocation-interval", type=float, default=10.0)
    parser.add_argument("--module-digest", required=True)
    parser.add_argument("--ack-delay", type=float, default=0.0)
    parser.add_argument("--report-pending", action="store_true")
    return asyncio.run(simulate_agents(parser.parse_args(argv)))


# ---- measurements ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text page, with their labels."""
    found = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        found.append((labels, float(match.group(3))))
    return found


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of ``pid`` (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_kib(pid: int | None, field_name: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/<pid>/status``, in KiB (0 when gone)."""
    if pid is None:
        return 0
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


def _request_key(labels: Mapping[str, str]) -> str:
    resource = labels.get("resource", "")
    if labels.get("subresource"):
        resource += "/" + labels["subresource"]
    return f"{labels.get('verb', '')} {resource}"


def _is_ready(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    desired = int((obj.get("spec") or {}).get("replicas", 1))
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return ready and int(status.get("readyReplicas") or 0) >= desired


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class Snapshot:
    """Counters read at one moment."""

    monotonic: float
    wall: float
    cpu: dict[str, float]
    requests: dict[str, float]
    latency: dict[str, float]
    """Seconds the API server spent answering, summed per verb and resource."""
    operator: dict[str, float]


@dataclass
class Timeline:
    """When each service and binding was created, placed and Ready, as the watches saw it."""

    expected: int
    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    placed: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)

    def on_service(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind != "DELETED" and name not in self.ready and _is_ready(obj):
            self.ready[name] = time.monotonic()
            if len(self.ready) >= self.expected:
                self.all_ready.set()

    def on_binding(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            return
        name = obj["metadata"]["name"]
        now = time.monotonic()
        self.placed.setdefault(name, now)
        if (obj.get("status") or {}).get("ready"):
            self.acked.setdefault(name, now)


async def follow(
    kube: KubeClient,
    resource: Resource,
    on_event: Callable[[str, Mapping[str, Any]], None],
    started: asyncio.Event,
) -> None:
    """Lists, then watches ``resource`` in the bench namespace, feeding every event."""
    while True:
        listing = await kube.list(resource, namespace=NAMESPACE)
        for item in listing["items"]:
            on_event("ADDED", item)
        started.set()
        try:
            async for kind, obj in kube.watch(
                resource,
                resource_version=listing["metadata"]["resourceVersion"],
                namespace=NAMESPACE,
            ):
                if kind != "BOOKMARK":
                    on_event(kind, obj)
        except ApiError as error:
            if error.status != 410:
                raise


def classify(user: str) -> str:
    """Which component a request came from, by its authenticated user."""
    if user.endswith(":wasmfleet-operator"):
        return "operator"
    if user.endswith(":wasmfleet-agent"):
        return "agents"
    if user == "wasmfleet-admin":
        return "bench"
    if user.startswith(("system:serviceaccount:kube-system:", "system:kube-controller-manager")):
        return "controllers"
    return "other"


def audit_requests(log: Path, since: float, until: float) -> dict[str, dict[str, int]]:
    """Requests received in [since, until] per client and user agent, then per verb."""
    seen: dict[str, tuple[str, str]] = {}
    if not log.is_file():
        return {}
    with log.open() as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            if not since <= received <= until:
                continue
            user = str((event.get("user") or {}).get("username", ""))
            agent = str(event.get("userAgent", "")).split(" ", 1)[0].split("/", 1)[0]
            client = f"{classify(user)} ({agent or '?'})"
            seen[event["auditID"]] = (client, str(event.get("verb", "")))
    table: dict[str, dict[str, int]] = {}
    for client, verb in seen.values():
        per_verb = table.setdefault(client, {})
        per_verb[verb] = per_verb.get(verb, 0) + 1
    return table


# ---- one scale ------------------------------------------------------------------------------


@dataclass
class ScaleResult:
    services: int
    agents: int
    replicas: int
    outcome: str = "not run"
    deadline_s: float = 0.0
    load_before: float = 0.0
    """The machine's 1-minute load average as the scale started (other work competes)."""
    setup_s: float = 0.0
    create_s: float | None = None
    all_ready_s: float | None = None
    ready_services: int = 0
    placed: int = 0
    acked: int = 0
    last_placement_s: float | None = None
    placements_per_s: float | None = None
    ready_replicas_per_s: float | None = None
    service_latency_p50_s: float | None = None
    service_latency_p90_s: float | None = None
    ack_latency_p50_s: float | None = None
    window_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    operator_peak_rss_mib: float = 0.0
    operator_rss_mib: float = 0.0
    agents_peak_rss_mib: float = 0.0
    """Summed over the simulated agents' processes."""
    api_requests: int = 0
    api_requests_per_s: float = 0.0
    requests_by_resource: dict[str, int] = field(default_factory=dict)
    api_latency_ms: dict[str, float] = field(default_factory=dict)
    """Mean time the API server took per request, per verb and resource."""
    requests_by_client: dict[str, dict[str, int]] = field(default_factory=dict)
    operator: dict[str, float] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def time_per_service_ms(self) -> float | None:
        return None if self.all_ready_s is None else self.all_ready_s / self.services * 1000

    @property
    def operator_cpu_per_service_ms(self) -> float | None:
        cpu = self.cpu_s.get("operator")
        return None if cpu is None or not self.services else cpu / self.services * 1000

    def client_requests(self, client: str) -> int:
        return sum(
            sum(verbs.values())
            for name, verbs in self.requests_by_client.items()
            if name.startswith(f"{client} ")
        )


class Scale:
    """The processes of one scale: control plane, operator, simulated agents."""

    def __init__(
        self,
        args: argparse.Namespace,
        binaries: Binaries,
        workdir: Path,
        result: ScaleResult,
        image: str,
        module_digest: str,
    ) -> None:
        self.args = args
        self.workdir = workdir
        self.result = result
        self.image = image
        self.module_digest = module_digest
        self.audit_log = workdir / "audit.log"
        extra: tuple[str, ...] = ()
        if args.audit:
            policy = workdir / "audit-policy.yaml"
            workdir.mkdir(parents=True, exist_ok=True)
            policy.write_text(AUDIT_POLICY)
            extra = (f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}")
        self.plane = ControlPlane(
            binaries, workdir / "plane", ControlPlaneConfig(extra_apiserver_args=extra)
        )
        self.operator: ManagedProcess | None = None
        self.health_port = free_port()
        self.agents: list[ManagedProcess] = []
        self.admin: KubeClient | None = None
        self.profiler: ManagedProcess | None = None
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    # ---- setup ------------------------------------------------------------------------

    async def start(self) -> None:
        started = time.monotonic()
        self.result.load_before = os.getloadavg()[0]
        plane = self.plane
        # Blocking on purpose: nothing else runs yet, and children must be started from the
        # main thread (their parent-death signal follows the thread that forked them).
        plane.start()
        plane.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        plane.kubectl(
            "wait",
            "--for=condition=Established",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=wasmfleet",
        )
        identities = run_as_chart_identities(
            plane, self.workdir / "identities", namespace=SYSTEM_NAMESPACE
        )
        plane.kubectl("create", "namespace", NAMESPACE)
        self.admin = KubeClient(
            KubeConfig.from_kubeconfig(plane.kubeconfig), field_manager="wasmfleet-bench"
        )
        await self._wait_storage(self.admin, deadline=time.monotonic() + 30)
        await self._register_nodes(self.admin)
        self._start_agents(identities.agent)
        self._start_operator(identities.operator)
        await self._wait_agents_ready(deadline=time.monotonic() + 90)
        self.result.setup_s = time.monotonic() - started

    async def _wait_storage(self, admin: KubeClient, *, deadline: float) -> None:
        """Until the new CRDs can be listed: right after they are established the API
        server answers 429 "storage is (re)initializing" for a moment, and the operator
        exits if its first list fails."""
        for resource in (SERVICES, BINDINGS, AGENTS):
            while True:
                try:
                    await admin.list(resource)
                    break
                except ApiError as error:
                    if error.status != 429 or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.1)

    async def _register_nodes(self, admin: KubeClient) -> None:
        """Nodes as the harness registers them, with the not-ready taint lifted."""
        gate = asyncio.Semaphore(16)

        async def register(index: int) -> None:
            name = node_name(index)
            async with gate:
                node = await admin.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {
                            "name": name,
                            "labels": {
                                "kubernetes.io/hostname": name,
                                "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64",
                            },
                        },
                    }
                )
                taints = (node.get("spec") or {}).get("taints") or []
                kept = [t for t in taints if t.get("key") != "node.kubernetes.io/not-ready"]
                if len(kept) != len(taints):
                    await admin.merge_patch(NODES, name, {"spec": {"taints": kept or None}})

        await asyncio.gather(*(register(i) for i in range(self.result.agents)))

    def _start_agents(self, kubeconfig: Path) -> None:
        per = max(1, self.args.agents_per_process)
        for first in range(0, self.result.agents, per):
            count = min(per, self.result.agents - first)
            argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                "agents",
                "--kubeconfig",
                str(kubeconfig),
                "--first",
                str(first),
                "--count",
                str(count),
                "--lease-duration",
                str(self.args.lease_duration),
                "--module-digest",
                self.module_digest,
                "--ack-delay",
                str(self.args.ack_delay),
                *(["--report-pending"] if self.args.report_pending else []),
            ]
            process = ManagedProcess(
                f"agents-{first}", argv, log_path=self.workdir / "logs" / f"agents-{first}.log"
            )
            process.start()
            self.agents.append(process)

    def _start_operator(self, kubeconfig: Path) -> None:
        argv = [
            sys.executable,
            "-m",
            "wasmfleet_operator.cli",
            "run",
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            SYSTEM_NAMESPACE,
            "--health-port",
            str(self.health_port),
            "--health-host",
            "127.0.0.1",
            *self.args.operator_arg,
        ]
        self.operator = ManagedProcess(
            "operator", argv, log_path=self.workdir / "logs" / "operator.log"
        )
        self.operator.start()

    def check_alive(self) -> None:
        for process in (self.operator, *self.agents):
            if process is not None:
                process.check_alive()

    async def operator_metrics(self) -> str:
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        async with self.http.get(url) as response:
            return await response.text()

    async def _wait_agents_ready(self, *, deadline: float) -> None:
        """Until the operator leads and counts every simulated agent Ready."""
        ready = 0.0
        while True:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                text = await self.operator_metrics()
                states = parse_samples(text, "wasmfleet_operator_agents")
                ready = sum(v for labels, v in states if labels.get("state") == "ready")
                if ready >= self.result.agents:
                    return
            if time.monotonic() > deadline:
                tail = self.operator.log_tail() if self.operator else ""
                raise TimeoutError(
                    f"the operator saw {ready:.0f} of {self.result.agents} agents Ready\n{tail}"
                )
            await asyncio.sleep(0.2)

    # ---- measuring --------------------------------------------------------------------

    def _pids(self) -> dict[str, list[int | None]]:
        plane = self.plane
        return {
            "operator": [self.operator.pid if self.operator else None],
            "agents": [p.pid for p in self.agents],
            "kube-apiserver": [plane.process("kube-apiserver").pid],
            "etcd": [plane.process("etcd").pid],
            "kube-controller-manager": [plane.process("kube-controller-manager").pid],
            "bench": [os.getpid()],
        }

    async def snapshot(self) -> Snapshot:
        now, wall = time.monotonic(), time.time()
        cpu = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self._pids().items()}
        page = await asyncio.to_thread(self.plane.get_raw, "/metrics", timeout=30)
        requests: Counter[str] = Counter()
        for labels, value in parse_samples(page, "apiserver_request_total"):
            requests[_request_key(labels)] += int(value)
        latency: dict[str, float] = {}
        for labels, value in parse_samples(page, "apiserver_request_duration_seconds_sum"):
            key = _request_key(labels)
            latency[key] = latency.get(key, 0.0) + value
        operator: dict[str, float] = {}
        text = await self.operator_metrics()
        for labels, value in parse_samples(text, "wasmfleet_operator_reconciles_total"):
            operator[f"reconciles_{labels.get('result', '')}"] = value
        for labels, value in parse_samples(text, "wasmfleet_operator_placement_changes_total"):
            operator[f"placements_{labels.get('action', '')}"] = value
        for suffix in ("sum", "count"):
            for _, value in parse_samples(
                text, f"wasmfleet_operator_reconcile_duration_seconds_{suffix}"
            ):
                operator[f"reconcile_seconds_{suffix}"] = value
        return Snapshot(now, wall, cpu, dict(requests), dict(latency), operator)

    async def measure(self, deadline_s: float) -> None:
        assert self.admin is not None
        admin = self.admin
        result = self.result
        result.deadline_s = deadline_s
        timeline = Timeline(expected=result.services)
        started = [asyncio.Event(), asyncio.Event()]
        watchers = [
            asyncio.create_task(follow(admin, SERVICES, timeline.on_service, started[0])),
            asyncio.create_task(follow(admin, BINDINGS, timeline.on_binding, started[1])),
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=30)
            before = await self.snapshot()
            begin = before.monotonic
            self._start_profile()
            deadline = begin + deadline_s
            await self._create_services(admin, timeline)
            result.create_s = time.monotonic() - begin
            progress = begin
            while not timeline.all_ready.is_set() and time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(timeline.all_ready.wait(), timeout=1.0)
                if time.monotonic() - progress >= 10:
                    progress = time.monotonic()
                    print(
                        f"    {progress - begin:5.0f}s: {len(timeline.placed)} placed, "
                        f"{len(timeline.acked)} acknowledged, "
                        f"{len(timeline.ready)}/{result.services} services Ready",
                        flush=True,
                    )
            after = await self.snapshot()
        finally:
            self._stop_profile()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        self._summarize(timeline, before, after)
        # Confirm with a plain list what the watch said, and count what exists.
        listing = await admin.list(SERVICES, namespace=NAMESPACE)
        result.ready_services = sum(_is_ready(s) for s in listing["items"])
        result.outcome = (
            "complete" if result.ready_services == result.services else "deadline passed"
        )
        result.objects = {name: await count(admin, res, ns) for name, res, ns in COUNTED}
        if self.args.audit:
            result.requests_by_client = await asyncio.to_thread(
                audit_requests, self.audit_log, before.wall, after.wall
            )

    def _start_profile(self) -> None:
        """py-spy on the operator for the measured window, when ``--profile DIR`` asks."""
        if self.args.profile is None or self.operator is None:
            return
        name = f"operator-{self.result.services}x{self.result.agents}"
        self.args.profile.mkdir(parents=True, exist_ok=True)
        self.profiler = ManagedProcess(
            "py-spy",
            [
                py_spy(),
                "record",
                "--pid",
                str(self.operator.pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str((self.args.profile / f"{name}.txt").resolve()),
            ],
            log_path=self.workdir / "logs" / "py-spy.log",
        )
        self.profiler.start()

    def _stop_profile(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            # SIGINT: py-spy writes what it sampled, then exits.
            profiler.signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not profiler.alive(), timeout=20, interval=0.1)
            profiler.stop(grace=5)

    async def _create_services(self, admin: KubeClient, timeline: Timeline) -> None:
        gate = asyncio.Semaphore(self.args.create_concurrency)

        async def create(index: int) -> None:
            name = f"svc-{index:04d}"
            body = {
                "apiVersion": API_VERSION,
                "kind": "WasmService",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"module": {"image": self.image}, "replicas": 1 + index % 2, "http": {}},
            }
            async with gate:
                await admin.create(body)
            timeline.created[name] = time.monotonic()

        await asyncio.gather(*(create(i) for i in range(self.result.services)))

    def _summarize(self, timeline: Timeline, before: Snapshot, after: Snapshot) -> None:
        result = self.result
        begin = before.monotonic
        result.window_s = after.monotonic - begin
        result.placed = len(timeline.placed)
        result.acked = len(timeline.acked)
        if timeline.all_ready.is_set():
            result.all_ready_s = max(timeline.ready.values()) - begin
            result.ready_replicas_per_s = result.replicas / result.all_ready_s
        if timeline.placed:
            result.last_placement_s = max(timeline.placed.values()) - begin
            result.placements_per_s = result.placed / result.last_placement_s
        latencies = [
            t - timeline.created[n] for n, t in timeline.ready.items() if n in timeline.created
        ]
        result.service_latency_p50_s = _percentile(latencies, 0.5)
        result.service_latency_p90_s = _percentile(latencies, 0.9)
        acks = [t - timeline.placed[n] for n, t in timeline.acked.items() if n in timeline.placed]
        result.ack_latency_p50_s = _percentile(acks, 0.5)
        result.cpu_s = {k: round(after.cpu[k] - before.cpu.get(k, 0.0), 3) for k in after.cpu}
        pid = self.operator.pid if self.operator else None
        result.operator_peak_rss_mib = memory_kib(pid, "VmHWM") / 1024
        result.operator_rss_mib = memory_kib(pid, "VmRSS") / 1024
        result.agents_peak_rss_mib = sum(memory_kib(a.pid, "VmHWM") for a in self.agents) / 1024
        delta = {
            k: int(v - before.requests.get(k, 0))
            for k, v in after.requests.items()
            if v - before.requests.get(k, 0) > 0
        }
        result.requests_by_resource = dict(sorted(delta.items(), key=lambda kv: -kv[1]))
        result.api_latency_ms = {
            key: round((after.latency.get(key, 0.0) - before.latency.get(key, 0.0)) / n * 1000, 2)
            for key, n in result.requests_by_resource.items()
            if not key.startswith("WATCH")
        }
        result.api_requests = sum(delta.values())
        result.api_requests_per_s = result.api_requests / result.window_s
        result.operator = {
            k: round(v - before.operator.get(k, 0.0), 4) for k, v in after.operator.items()
        }

    async def stop(self) -> None:
        for process in (self.operator, *self.agents):
            if process is not None:
                process.stop(grace=5)
        if self.admin is not None:
            await self.admin.close()
        await self.http.close()
        self.plane.stop()


def py_spy() -> str:
    """The py-spy next to this interpreter (``.venv/bin/pip install py-spy``), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


async def count(kube: KubeClient, resource: Resource, namespace: str | None) -> int:
    """How many objects of ``resource`` exist, without listing them all."""
    page = await kube.request("GET", resource.path(namespace), query={"limit": "1"})
    metadata = page.get("metadata") or {}
    if "remainingItemCount" in metadata or not metadata.get("continue"):
        return len(page["items"]) + int(metadata.get("remainingItemCount") or 0)
    return len((await kube.list(resource, namespace=namespace))["items"])


async def run_scale(
    args: argparse.Namespace,
    binaries: Binaries,
    workdir: Path,
    result: ScaleResult,
    image: str,
    module_digest: str,
    deadline_s: float,
) -> None:
    scale = Scale(args, binaries, workdir, result, image, module_digest)
    try:
        await scale.start()
        print(
            f"==> {result.services} services over {result.agents} agents "
            f"(setup {result.setup_s:.1f}s, deadline {deadline_s:.0f}s)",
            flush=True,
        )
        await scale.measure(deadline_s)
    except Exception as error:
        result.outcome = "failed"
        result.error = f"{type(error).__name__}: {error}"[:4000]
        print(f"    failed: {result.error}", file=sys.stderr, flush=True)
    finally:
        await scale.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ---- the whole run --------------------------------------------------------------------------


def parse_scales(text: str) -> list[tuple[int, int]]:
    scales = []
    for part in text.split(","):
        services, _, agents = part.strip().partition("/")
        if not services.isdigit() or not agents.isdigit() or int(agents) < 1:
            raise argparse.ArgumentTypeError(f"a scale is SERVICES/AGENTS, not {part!r}")
        scales.append((int(services), int(agents)))
    return scales


async def run(args: argparse.Namespace, workspace: Workspace) -> list[ScaleResult]:
    started = time.monotonic()
    binaries = ensure_binaries()
    registry = Registry(workspace.subdir("registry"))
    results = [
        ScaleResult(services=s, agents=a, replicas=sum(1 + i % 2 for i in range(s)))
        for s, a in args.scales
    ]
    try:
        registry.start()
        image = f"{registry.host}/bench/hello-c:1.0"
        await asyncio.to_thread(push_module, MODULE, image)
        module_digest = sha256_digest(MODULE.read_bytes())
        for index, result in enumerate(results):
            left = args.budget - (time.monotonic() - started)
            # Leave room for this scale's setup and teardown (~30 s) within the budget.
            deadline = min(args.deadline, left - 30)
            if deadline < 15:
                result.outcome = "skipped: out of time budget"
                print(f"==> {result.services}/{result.agents}: {result.outcome}", flush=True)
                continue
            await run_scale(
                args,
                binaries,
                workspace.path / f"scale-{index}",
                result,
                image,
                module_digest,
                deadline,
            )
    finally:
        registry.stop()
    return results


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def render(results: Sequence[ScaleResult]) -> str:
    measured = [r for r in results if r.window_s > 0]
    base = next((r for r in measured if r.time_per_service_ms), None)
    lines = [
        "| services / agents | replicas | all Ready | placements/s | replicas Ready/s "
        "| time per service | vs first | operator CPU | CPU per service | vs first "
        "| operator peak RSS | API req/s (all / operator / agents) | operator req per service "
        "| passes per service |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.window_s <= 0:
            lines.append(f"| {r.services} / {r.agents} | {r.replicas} | {r.outcome} |" + " |" * 11)
            continue
        ready = (
            f"{r.all_ready_s:.1f} s"
            if r.all_ready_s is not None
            else f"{r.ready_services}/{r.services} in {r.window_s:.0f} s"
        )
        tps = r.time_per_service_ms
        cps = r.operator_cpu_per_service_ms
        base_tps = base.time_per_service_ms if base else None
        base_cps = base.operator_cpu_per_service_ms if base else None
        operator_requests = r.client_requests("operator")
        agent_requests = r.client_requests("agents")
        passes = r.operator.get("reconciles_ok", 0.0) + r.operator.get("reconciles_retry", 0.0)
        split = (
            f"{operator_requests / r.window_s:.0f} / {agent_requests / r.window_s:.0f}"
            if r.requests_by_client
            else "- / -"
        )
        per_service = f"{operator_requests / r.services:.1f}" if r.requests_by_client else "-"
        lines.append(
            f"| {r.services} / {r.agents} | {r.replicas} | {ready} "
            f"| {_fmt(r.placements_per_s, '{:.0f}')} | {_fmt(r.ready_replicas_per_s, '{:.0f}')} "
            f"| {_fmt(tps, '{:.1f} ms')} "
            f"| {_fmt(tps / base_tps if tps and base_tps else None, '{:.2f}')} "
            f"| {r.cpu_s.get('operator', 0.0):.1f} s | {_fmt(cps, '{:.1f} ms')} "
            f"| {_fmt(cps / base_cps if cps and base_cps else None, '{:.2f}')} "
            f"| {r.operator_peak_rss_mib:.0f} MiB "
            f"| {r.api_requests_per_s:.0f} / {split} "
            f"| {per_service} | {passes / r.services:.1f} |"
        )
    lines += [
        "",
        "| services / agents | window | kube-apiserver CPU (per service) | etcd CPU "
        "| simulated agents: CPU, peak RSS, ack p50 | bench CPU | mean reconcile pass "
        "| service latency p50 / p90 | objects at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in measured:
        objects = ", ".join(f"{v} {k}" for k, v in r.objects.items())
        apiserver = r.cpu_s.get("kube-apiserver", 0.0)
        count_ = r.operator.get("reconcile_seconds_count", 0.0)
        mean_pass = r.operator.get("reconcile_seconds_sum", 0.0) / count_ if count_ else None
        lines.append(
            f"| {r.services} / {r.agents} | {r.window_s:.1f} s "
            f"| {apiserver:.1f} s ({apiserver / r.services * 1000:.0f} ms) "
            f"| {r.cpu_s.get('etcd', 0):.1f} s "
            f"| {r.cpu_s.get('agents', 0):.1f} s, {r.agents_peak_rss_mib:.0f} MiB, "
            f"{_fmt(r.ack_latency_p50_s and r.ack_latency_p50_s * 1000, '{:.0f} ms')} "
            f"| {r.cpu_s.get('bench', 0):.1f} s "
            f"| {_fmt(mean_pass and mean_pass * 1000, '{:.0f} ms')} "
            f"| {_fmt(r.service_latency_p50_s, '{:.2f} s')} "
            f"/ {_fmt(r.service_latency_p90_s, '{:.2f} s')} | {objects} |"
        )
    keys = list(dict.fromkeys(k for r in measured for k in r.requests_by_resource))[:14]
    if keys:
        lines += [
            "",
            "| API requests per service (mean server time) | "
            + " | ".join(f"{r.services} / {r.agents}" for r in measured)
            + " |",
            "|---|" + "---:|" * len(measured),
        ]
        for key in keys:
            cells = [
                f"{r.requests_by_resource.get(key, 0) / r.services:.2f} "
                f"({_fmt(r.api_latency_ms.get(key), '{:.0f} ms')})"
                for r in measured
            ]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    clients = sorted({c for r in measured for c in r.requests_by_client})
    if clients:
        lines += [
            "",
            "| requests per second, by client | "
            + " | ".join(f"{r.services} / {r.agents}" for r in measured)
            + " |",
            "|---|" + "---:|" * len(measured),
        ]
        for client in clients:
            cells = []
            for r in measured:
                verbs = r.requests_by_client.get(client, {})
                top = ", ".join(
                    f"{v} {n}" for v, n in sorted(verbs.items(), key=lambda kv: -kv[1])[:3]
                )
                cells.append(f"{sum(verbs.values()) / r.window_s:.0f} ({top})" if verbs else "-")
            lines.append(f"| {client} | " + " | ".join(cells) + " |")
    for r in results:
        if r.error:
            lines += ["", f"{r.services} / {r.agents} failed: {r.error.splitlines()[0]}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agents"]:
        return agents_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=parse_scales(DEFAULT_SCALES),
        help=f"comma-separated SERVICES/AGENTS (default {DEFAULT_SCALES})",
    )
    parser.add_argument(
        "--deadline", type=float, default=180.0, help="most seconds per scale until all Ready"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=340.0,
        help="seconds for the whole run; scales that no longer fit are skipped",
    )
    parser.add_argument("--create-concurrency", type=int, default=16)
    parser.add_argument("--agents-per-process", type=int, default=50)
    parser.add_argument(
        "--lease-duration", type=int, default=20, help="the agents' (the product default)"
    )
    parser.add_argument(
        "--ack-delay", type=float, default=0.0, help="seconds a simulated agent takes to be Ready"
    )
    parser.add_argument(
        "--report-pending",
        action="store_true",
        help="agents write Pending before Ready, as a real agent's first write",
    )
    parser.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for `wasmfleet-operator run` (repeatable): --operator-arg=--workers=8",
    )
    parser.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="audit log on the API server, to split requests by client",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the operator with py-spy during each window (collapsed stacks in DIR)",
    )
    parser.add_argument("--out", type=Path, default=OUT / "control.json")
    args = parser.parse_args(argv)
    if not MODULE.is_file():
        print(f"{MODULE} is missing: run `make modules`", file=sys.stderr)
        return 2
    install_termination_handler()
    started = time.monotonic()
    try:
        with Workspace(root=Path(tempfile.gettempdir()), prefix="wasmfleet-control-") as ws:
            results = asyncio.run(run(args, ws))
    except KeyboardInterrupt:
        print("interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": describe_machine(),
                "settings": {
                    "lease_duration_s": args.lease_duration,
                    "ack_delay_s": args.ack_delay,
                    "report_pending": args.report_pending,
                    "create_concurrency": args.create_concurrency,
                    "agents_per_process": args.agents_per_process,
                    "operator_args": args.operator_arg,
                    "audit_log": args.audit,
                },
                "scales": [
                    {
                        **asdict(r),
                        "time_per_service_ms": r.time_per_service_ms,
                        "operator_cpu_per_service_ms": r.operator_cpu_per_service_ms,
                    }
                    for r in results
                ],
            },
            indent=2,
        )
    )
    print()
    print(render(results))
    print(f"\n(measured in {time.monotonic() - started:.0f}s; JSON in {args.out})")
    return 1 if any(r.outcome == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
