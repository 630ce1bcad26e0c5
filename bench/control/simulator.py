"""The simulated side of the control bench: the cluster, and the agents in it.

For each scale the bench needs, from scratch, the real local control plane (etcd,
kube-apiserver, optionally with an audit log, kube-controller-manager) with the CRDs and the
chart's ServiceAccounts and RBAC, the real operator (``wasmfleet-operator run``, as the chart's
operator identity), and agents. `Cluster` starts and stops all of it.

The agents are simulated: a few child processes (``python -m control.simulator``) each run many
agent identities on one asyncio loop (``agents_per_process``, 50). An interpreter with this
code costs ~57 MB and ~1.3 CPU-seconds just to start, so a process per agent would take 5.7 GB
and two minutes of CPU on a 2-core machine, competing with the operator being measured; the
work of one agent is a Lease write every few seconds and one status write per new binding,
which one event loop does for fifty agents with millisecond latency (the measurement reports
the acknowledgement latency). Each identity has its own client and connections and does,
through the agent's own code, what ``wasmfleet-agent node`` does at the API: its Node is
registered (as the harness does: a Node object, the not-ready taint lifted), it applies its
WasmAgent (`apply_agent`), renews its Lease (`heartbeat`), lists and watches its node's
WasmBindings (`watch_bindings`), writes binding status through the `StatusWriter`, and
rewrites ``status.allocated`` at most every 10 s when it changed. The one difference: a new
binding is acknowledged at once with the status a real agent reports when the replica is Ready
(``report_pending`` adds the Pending write before).

Nothing here times or counts anything: that is the `measurement`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from control.probes import parse_samples
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
    resource_for,
    retry_until_stopped,
)
from wasmfleet_harness.binaries import REPO_ROOT, Binaries
from wasmfleet_harness.chart import run_as_chart_identities
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.processes import ManagedProcess, free_port

__all__ = [
    "AGENTS",
    "BINDINGS",
    "NAMESPACE",
    "NODES",
    "SERVICES",
    "SYSTEM_NAMESPACE",
    "AckRunner",
    "Cluster",
    "ClusterSettings",
    "main",
    "node_address",
    "node_name",
    "simulate_agents",
]

NAMESPACE = "bench"
SYSTEM_NAMESPACE = "wasmfleet-system"
AGENT_FIELD_MANAGER = "wasmfleet-agent"  # the real agent's, so apply conflicts are the same

SERVICES = resource_for(API_VERSION, "WasmService")
BINDINGS = resource_for(API_VERSION, "WasmBinding")
AGENTS = resource_for(API_VERSION, "WasmAgent")
NODES = resource_for("v1", "Node")
_BENCH = Path(__file__).resolve().parents[1]
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


# ---- simulated agents (``python -m control.simulator``, in child processes) ----------------


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
                    render_binding_status(
                        binding,
                        BindingState(),
                        address=self.identity.address,
                        agent_instance=self.identity.instance,
                    ),
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
                agent_instance=self.identity.instance,
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


def main(argv: Sequence[str] | None = None) -> int:
    """The simulated agents' own process (`Cluster` starts one per ``agents_per_process``)."""
    parser = argparse.ArgumentParser(
        prog="python -m control.simulator",
        description="Simulated agents (started by the bench).",
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


# ---- the cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSettings:
    """What one scale's cluster is made of."""

    agents: int
    module_digest: str
    """The digest the simulated agents report running."""
    audit: bool = True
    """An audit log on the API server (to split requests by client)."""
    agents_per_process: int = 50
    lease_duration: int = 20
    ack_delay: float = 0.0
    report_pending: bool = False
    operator_args: tuple[str, ...] = ()
    operator_source: Path | None = None
    """A checkout whose ``operator/`` packages run as the operator (a baseline), instead of
    this tree's."""


class Cluster:
    """The processes of one scale: control plane, operator, simulated agents."""

    def __init__(self, binaries: Binaries, workdir: Path, settings: ClusterSettings) -> None:
        self.settings = settings
        self.workdir = workdir
        self.audit_log = workdir / "audit.log"
        extra: tuple[str, ...] = ()
        if settings.audit:
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
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def start(self) -> None:
        """Starts everything, and returns once the operator leads and counts every agent
        Ready."""
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

        await asyncio.gather(*(register(i) for i in range(self.settings.agents)))

    def _start_agents(self, kubeconfig: Path) -> None:
        settings = self.settings
        per = max(1, settings.agents_per_process)
        for first in range(0, settings.agents, per):
            count = min(per, settings.agents - first)
            argv = [
                sys.executable,
                "-m",
                "control.simulator",
                "--kubeconfig",
                str(kubeconfig),
                "--first",
                str(first),
                "--count",
                str(count),
                "--lease-duration",
                str(settings.lease_duration),
                "--module-digest",
                settings.module_digest,
                "--ack-delay",
                str(settings.ack_delay),
                *(["--report-pending"] if settings.report_pending else []),
            ]
            process = ManagedProcess(
                f"agents-{first}",
                argv,
                log_path=self.workdir / "logs" / f"agents-{first}.log",
                cwd=_BENCH,  # where `control` is importable from
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
            *self.settings.operator_args,
        ]
        env = None
        if self.settings.operator_source is not None:
            # ahead of the installed packages: the baseline's operator, API models and client
            source = str(self.settings.operator_source / "operator")
            env = {**os.environ, "PYTHONPATH": source}
        self.operator = ManagedProcess(
            "operator", argv, log_path=self.workdir / "logs" / "operator.log", env=env
        )
        self.operator.start()

    def check_alive(self) -> None:
        """Raises if the operator or a process of simulated agents has died."""
        for process in (self.operator, *self.agents):
            if process is not None:
                process.check_alive()

    async def operator_metrics(self) -> str:
        """The operator's Prometheus page."""
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
                if ready >= self.settings.agents:
                    return
            if time.monotonic() > deadline:
                tail = self.operator.log_tail() if self.operator else ""
                raise TimeoutError(
                    f"the operator saw {ready:.0f} of {self.settings.agents} agents Ready\n{tail}"
                )
            await asyncio.sleep(0.2)

    def pids(self) -> dict[str, list[int | None]]:
        """The processes whose CPU the measurement counts, by component."""
        plane = self.plane
        return {
            "operator": [self.operator.pid if self.operator else None],
            "agents": [p.pid for p in self.agents],
            "kube-apiserver": [plane.process("kube-apiserver").pid],
            "etcd": [plane.process("etcd").pid],
            "kube-controller-manager": [plane.process("kube-controller-manager").pid],
            "bench": [os.getpid()],
        }

    async def stop(self) -> None:
        """Stops every process this cluster started."""
        for process in (self.operator, *self.agents):
            if process is not None:
                process.stop(grace=5)
        if self.admin is not None:
            await self.admin.close()
        await self.http.close()
        self.plane.stop()


if __name__ == "__main__":
    sys.exit(main())
