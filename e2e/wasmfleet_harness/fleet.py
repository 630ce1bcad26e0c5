"""Wasmfleet itself on the local control plane: the operator and agents as local processes.

`LocalFleet` registers each agent's node (a Node object with the labels a test asks for,
such as ``kubernetes.io/arch=arm64``), gives it an address of its own in a network namespace
(`netns.NetworkHosts`), and starts ``wasmfleet-agent node`` for it; it starts one or more
``wasmfleet-operator run`` processes competing for the leader Lease. Timings are short so
that tests of node loss and failover take seconds: agents' Leases last 3 s, a node is lost
after 4 s more, the operator's Lease lasts 4 s.

`EndpointClient` is what a Service's client does without kube-proxy: it reads the Service's
EndpointSlices, spreads requests over the ready endpoints, and retries on another endpoint
only when a connection could not be made or was closed before any answer (the request never
reached a module), like a service mesh's connect-failure retry.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmfleet_harness.agent import agent_command
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.netns import NetworkHosts, TestHost
from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until

__all__ = ["AgentProcess", "EndpointClient", "LocalFleet", "OperatorProcess"]

SYSTEM_NAMESPACE = "wasmfleet-system"
AGENT_LEASE = "3s"
NODE_GRACE = "4s"
OPERATOR_LEASE = "4s"


@dataclass
class AgentProcess:
    node: str
    host: TestHost
    process: ManagedProcess
    admin_port: int


@dataclass
class OperatorProcess:
    name: str
    process: ManagedProcess
    health_port: int

    def get(self, path: str) -> str:
        """GETs ``path`` (/healthz, /readyz, /metrics) from this operator."""
        url = f"http://127.0.0.1:{self.health_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


@dataclass
class LocalFleet:
    """Agents and operators of one test session on ``plane``."""

    plane: ControlPlane
    workdir: Path
    hosts: NetworkHosts = field(default_factory=NetworkHosts)
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    operators: list[OperatorProcess] = field(default_factory=list)
    operator_args: Sequence[str] = ()
    tie_to_parent: bool = True
    namespace: str = SYSTEM_NAMESPACE
    """Where the operator's and the agents' Leases live (the chart's release namespace)."""
    agent_kubeconfig: Path | None = None
    operator_kubeconfig: Path | None = None
    """Identities the processes use; the admin's when unset (see `chart_identities`)."""

    def __post_init__(self) -> None:
        self.plane.kubectl_apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        )

    # ---- agents --------------------------------------------------------------------

    def add_agent(
        self,
        node: str,
        *,
        labels: Mapping[str, str],
        processes: int = 1,
        extra_args: Sequence[str] = (),
        kubeconfig: Path | None = None,
        source: Path | None = None,
    ) -> AgentProcess:
        """Registers ``node`` with ``labels`` and starts its agent at an address of its own.

        ``processes`` above 1 has the agent answer requests in that many worker processes;
        ``kubeconfig`` replaces the fleet's agent identity (e.g. to reach the API server
        through a `wasmfleet_harness.partition.Relay`); ``source`` runs the agent of another
        checkout (its ``node-agent`` and ``operator`` packages ahead of the installed ones).
        """
        host = self.hosts.add()
        self.plane.kubectl_apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node,
                    "labels": {
                        "kubernetes.io/hostname": node,
                        "kubernetes.io/os": "linux",
                        **labels,
                    },
                },
            }
        )
        # The API server taints every new Node not-ready until a kubelet reports; these nodes
        # have no kubelet (their agent reports through its Lease), so the harness lifts it.
        self.plane.kubectl(
            "taint", "nodes", node, "node.kubernetes.io/not-ready:NoSchedule-", check=False
        )
        admin_port = free_port()
        process = ManagedProcess(
            f"agent-{node}",
            [
                *agent_command(),
                "node",
                "--node-name",
                node,
                "--address",
                host.address,
                "--netns",
                str(host.netns),
                "--kubeconfig",
                str(kubeconfig or self.agent_kubeconfig or self.plane.kubeconfig),
                "--state-dir",
                str(self.workdir / "agents" / node),
                "--lease-namespace",
                self.namespace,
                "--lease-duration",
                AGENT_LEASE,
                "--drain",
                "1s",
                "--config-refresh",
                "1s",
                "--admin-port",
                str(admin_port),
                "--processes",
                str(processes),
                *extra_args,
            ],
            log_path=self.workdir / "logs" / f"agent-{node}.log",
            tie_to_parent=self.tie_to_parent,
            env=None
            if source is None
            else {**os.environ, "PYTHONPATH": f"{source / 'node-agent'}:{source / 'operator'}"},
        )
        agent = AgentProcess(node, host, process, admin_port)
        self.agents[node] = agent
        self.start_agent(node)
        return agent

    def start_agent(self, node: str) -> None:
        agent = self.agents[node]
        agent.process.start()

        def ready() -> bool:
            agent.process.check_alive()
            try:
                url = f"http://127.0.0.1:{agent.admin_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, timeout=60, interval=0.1, message=lambda: agent.process.log_tail())

    def kill_agent(self, node: str) -> None:
        """SIGKILL: no drain, no goodbye, the Lease simply stops being renewed."""
        self.agents[node].process.kill()

    # ---- operators -----------------------------------------------------------------

    def start_operator(self, name: str = "operator") -> OperatorProcess:
        health_port = free_port()
        process = ManagedProcess(
            name,
            [
                sys.executable,
                "-m",
                "wasmfleet_operator.cli",
                "run",
                "--kubeconfig",
                str(self.operator_kubeconfig or self.plane.kubeconfig),
                "--namespace",
                self.namespace,
                "--health-port",
                str(health_port),
                "--health-host",
                "127.0.0.1",
                "--leader-lease-duration",
                OPERATOR_LEASE,
                "--leader-retry",
                "1s",
                "--node-grace-period",
                NODE_GRACE,
                *self.operator_args,
            ],
            log_path=self.workdir / "logs" / f"{name}.log",
            tie_to_parent=self.tie_to_parent,
        )
        process.start()
        operator = OperatorProcess(name, process, health_port)
        self.operators.append(operator)
        return operator

    def leader(self) -> str | None:
        lease = self.plane.kubectl_json(
            "get", "lease", "-n", self.namespace, "wasmfleet-operator", "--ignore-not-found"
        )
        return (lease or {}).get("spec", {}).get("holderIdentity") or None

    def leading_operator(self) -> tuple[str, OperatorProcess]:
        """The leader Lease's holder and the running operator that holds it (the holder
        identity carries the process id second to last: ``host-PID-suffix``)."""
        holder = self.leader()
        assert holder is not None, "no operator holds the leader Lease\n" + self.logs()
        pid = holder.split("-")[-2]
        (leading,) = [o for o in self.operators if o.process.alive() and str(o.process.pid) == pid]
        return holder, leading

    def wait_for_new_leader(self, old: str) -> None:
        """Waits until an operator other than the holder ``old`` holds the leader Lease."""
        wait_until(
            lambda: self.leader() not in (None, old),
            timeout=30,
            interval=0.2,
            message=lambda: "the standby never took over\n" + self.logs(),
        )

    def logs(self) -> str:
        parts = []
        for agent in self.agents.values():
            parts.append(f"--- {agent.process.name}\n{agent.process.log_tail(30)}")
        for operator in self.operators:
            parts.append(f"--- {operator.name}\n{operator.process.log_tail(60)}")
        return "\n".join(parts)

    def close(self) -> None:
        for operator in self.operators:
            operator.process.stop(grace=10)
        for agent in self.agents.values():
            agent.process.stop(grace=10)
        self.hosts.close()
        # The next fleet of the session registers nodes of the same names afresh.
        if self.agents and self.tie_to_parent:
            names = sorted(self.agents)
            self.plane.kubectl("delete", "wasmagents", *names, "--ignore-not-found", check=False)
            self.plane.kubectl("delete", "nodes", *names, "--ignore-not-found", check=False)


@dataclass(frozen=True)
class Target:
    address: str
    port: int
    node: str


def fetch(target: Target, path: str = "/") -> tuple[int, str]:
    """GETs ``path`` from ``target``: the status and body, error statuses included (a failed
    connection raises OSError)."""
    url = f"http://{target.address}:{target.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode(errors="replace")


def endpoints_of(plane: ControlPlane, namespace: str, service: str) -> list[Target]:
    """The ready endpoints in ``service``'s EndpointSlices, sorted."""
    slices = plane.kubectl_json(
        "get",
        "endpointslices",
        "-n",
        namespace,
        "-l",
        f"kubernetes.io/service-name={service}",
    )
    targets = []
    for item in slices["items"]:
        port = item["ports"][0]["port"]
        for endpoint in item.get("endpoints") or []:
            if endpoint.get("conditions", {}).get("ready"):
                for address in endpoint["addresses"]:
                    targets.append(Target(address, port, endpoint.get("nodeName", "")))
    return sorted(targets, key=lambda t: (t.node, t.port))


@dataclass
class LoopResult:
    ok: int = 0
    failed: int = 0
    retried: int = 0
    bodies: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class EndpointClient:
    """Loops GET requests over a Service's ready endpoints, as a client behind kube-proxy."""

    def __init__(self, plane: ControlPlane, namespace: str, service: str, path: str = "/"):
        self.plane = plane
        self.namespace = namespace
        self.service = service
        self.path = path
        self.targets: list[Target] = []
        self.result = LoopResult()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def refresh(self) -> None:
        self.targets = endpoints_of(self.plane, self.namespace, self.service)

    def request_once(self, rotation: Iterator[int]) -> None:
        targets = list(self.targets)
        if not targets:
            self.result.failed += 1
            self.result.errors.append("no ready endpoints")
            return
        start = next(rotation)
        last_error = ""
        for attempt in range(len(targets)):
            target = targets[(start + attempt) % len(targets)]
            url = f"http://{target.address}:{target.port}{self.path}"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    body = response.read().decode(errors="replace").strip()
                    self.result.ok += 1
                    self.result.bodies[body] = self.result.bodies.get(body, 0) + 1
                    return
            except urllib.error.HTTPError as error:
                self.result.failed += 1
                self.result.errors.append(f"{url}: HTTP {error.code}")
                return
            except (urllib.error.URLError, ConnectionError, OSError) as error:
                # No answer at all: the request never ran; try the next endpoint.
                last_error = f"{url}: {error}"
                self.result.retried += 1
        self.result.failed += 1
        self.result.errors.append(last_error)

    def start(self, *, max_requests: int = 100_000) -> None:
        """Starts looping (bounded by ``max_requests``) and refreshing endpoints."""
        self.refresh()
        rotation = itertools.count()

        def loop() -> None:
            for _ in range(max_requests):
                if self._stop.is_set():
                    return
                self.request_once(rotation)

        def refresher() -> None:
            while not self._stop.wait(0.2):
                try:
                    self.refresh()
                except Exception as error:  # the API server may be restarting; keep going
                    self.result.errors.append(f"refresh: {error}")

        self._threads = [threading.Thread(target=loop), threading.Thread(target=refresher)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> LoopResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.result


def kube_json(text: str) -> Any:
    return json.loads(text)
