"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

What runs, and why:

- etcd holds the state in the workspace; ``restart_apiserver`` keeps it, so a test can kill
  the API server and bring it back on the same data.
- kube-apiserver serves TLS on a free loopback port with real authentication (client
  certificates from the harness's CA, service-account tokens signed with a key it generates)
  and ``--authorization-mode=RBAC``, so permission tests mean what they say.
- kube-controller-manager runs the controllers the product relies on: garbage collection
  (ownerReferences cascade), namespace deletion, service accounts and their CA bundle.
  The node-lifecycle controller is deliberately left out by default: without kubelets it
  would taint every harness-registered Node unreachable. Wasmfleet's agents report their own
  liveness through Leases, which the operator reads; Node objects are only labels there.

By default no scheduler and no kubelet run: Wasmfleet places its own bindings and its agents
run as local processes. ``ControlPlaneConfig(address=..., real_nodes=True)`` prepares the
control plane for real nodes (`wasmfleet_harness.cluster`): the API server listens on the
host's address on the node LAN and publishes it as the ``kubernetes`` Service's endpoint (Pods
reach it there through kube-proxy), authorizes kubelets with the Node authorizer, reaches
kubelets with a client certificate, and the controller manager adds the controllers real nodes
need.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wasmfleet_harness import pki
from wasmfleet_harness.binaries import Binaries
from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until

__all__ = ["ControlPlane", "ControlPlaneConfig"]

# Controllers the product needs; the rest (node lifecycle, IPAM, volumes, cloud) stay off.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "job-controller",
    "disruption-controller",
    "resourcequota-controller",
)

# Added with real kubelets: Node conditions drive taints (a new Node loses its not-ready taint
# only through node-lifecycle), Services with selectors get EndpointSlices for kube-proxy and
# CoreDNS, and Pods of a deleted Node are collected.
NODE_CONTROLLERS = (
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "pod-garbage-collector-controller",
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Knobs for one control plane; defaults suit tests on a small machine."""

    ready_timeout: float = 60.0
    # etcd without fsync: a test run's state is thrown away, so durability buys nothing.
    etcd_unsafe_no_fsync: bool = True
    service_cluster_ip_range: str = "10.96.0.0/16"
    tie_to_parent: bool = True
    extra_apiserver_args: tuple[str, ...] = ()
    # The API server's only listening address. Loopback unless a real node needs to reach it
    # from its Pods; any other address must already exist on this machine (`NodeLan`).
    address: str = "127.0.0.1"
    # Kubelets will join: Node authorizer, kubelet client certificate, node controllers.
    real_nodes: bool = False

    @property
    def publishes_endpoint(self) -> bool:
        """Whether the API server publishes itself as the ``kubernetes`` Service's endpoint;
        endpoint validation refuses loopback, so only a non-loopback address is published."""
        return not ipaddress.ip_address(self.address).is_loopback

    @property
    def kubernetes_service_ip(self) -> str:
        """The ``kubernetes`` Service's ClusterIP: the first address of the service range."""
        return str(ipaddress.ip_network(self.service_cluster_ip_range)[1])


@dataclass
class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager for one workspace directory."""

    binaries: Binaries
    workdir: Path
    config: ControlPlaneConfig = field(default_factory=ControlPlaneConfig)

    def __post_init__(self) -> None:
        self.pki_dir = self.workdir / "pki"
        self.logs_dir = self.workdir / "logs"
        self.etcd_data = self.workdir / "etcd"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port(self.config.address)
        self.server = f"https://{self.config.address}:{self.apiserver_port}"
        self._processes: dict[str, ManagedProcess] = {}
        self._ca: pki.CertificateAuthority | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Starts all three components and returns once ``/readyz`` answers ok."""
        self._write_credentials()
        try:
            self._start_etcd()
            self._start_apiserver()
            self.wait_ready()
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops every component, controller manager first and etcd last."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            process = self._processes.pop(name, None)
            if process is not None:
                process.stop()

    def process(self, name: str) -> ManagedProcess:
        """The running component called ``name`` (for fault injection in tests)."""
        return self._processes[name]

    def restart_apiserver(self) -> None:
        """Kills kube-apiserver and starts it again on the same etcd data."""
        self.kill_apiserver()
        self.start_apiserver()

    def kill_apiserver(self) -> None:
        """SIGKILLs kube-apiserver; etcd and its data stay."""
        self._processes.pop("kube-apiserver").kill()

    def start_apiserver(self) -> None:
        """Starts kube-apiserver again (same port, same etcd) and waits until it is ready."""
        self._start_apiserver()
        self.wait_ready()

    def wait_ready(self) -> None:
        apiserver = self._processes["kube-apiserver"]

        def ready() -> bool:
            apiserver.check_alive()
            self._processes["etcd"].check_alive()
            try:
                return self.get_raw("/readyz") == "ok"
            except (OSError, urllib.error.URLError):
                return False

        wait_until(
            ready,
            timeout=self.config.ready_timeout,
            interval=0.1,
            message=lambda: f"kube-apiserver not ready\n{apiserver.log_tail()}",
        )

    # ---- clients ---------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context that trusts the cluster CA and presents the admin certificate."""
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        context.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return context

    def get_raw(self, path: str, *, timeout: float = 5.0) -> str:
        """GETs ``path`` from the API server as the admin and returns the body as text."""
        with urllib.request.urlopen(
            self.server + path, context=self.ssl_context(), timeout=timeout
        ) as response:
            body: bytes = response.read()
            return body.decode()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this control plane as the admin."""
        return subprocess.run(
            [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def kubectl_json(self, *args: str) -> Any:
        out = self.kubectl(*args, "-o", "json").stdout
        return json.loads(out) if out.strip() else None

    def kubectl_apply(self, *objects: Any) -> None:
        """Server-side applies ``objects`` (dicts) as the admin."""
        for obj in objects:
            self.kubectl(
                "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(obj)
            )

    def kubeconfig_via(self, kubeconfig: Path, port: int, path: Path) -> Path:
        """Writes a copy of ``kubeconfig`` that reaches the API server through 127.0.0.1:``port``
        (a relay in front of it; the server certificate is valid for 127.0.0.1)."""
        document = yaml.safe_load(kubeconfig.read_text())
        for cluster in document["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        path.chmod(0o600)
        return path

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """Writes a kubeconfig that authenticates with a bearer ``token`` (e.g. an SA's)."""
        self._write_kubeconfig(path, user={"token": token})
        return path

    @property
    def ca(self) -> pki.CertificateAuthority:
        """The CA of this run, which the API server trusts for client certificates."""
        if self._ca is None:
            raise RuntimeError("the control plane has not been started")
        return self._ca

    def kubeconfig_for_certificate(
        self, stem: str, *, common_name: str, organizations: tuple[str, ...] = ()
    ) -> Path:
        """Issues a client certificate from the CA and writes ``<stem>.kubeconfig`` using it;
        the API server sees user ``common_name`` in groups ``organizations``."""
        pair = self.ca.issue(
            stem, common_name=common_name, organizations=organizations, client=True
        )
        path = self.workdir / f"{stem}.kubeconfig"
        self._write_kubeconfig(
            path, user={"client-certificate": str(pair.cert), "client-key": str(pair.key)}
        )
        return path

    # ---- internals -------------------------------------------------------------------

    def _write_credentials(self) -> None:
        ca = pki.CertificateAuthority(self.pki_dir)
        self._ca = ca
        ca.issue(
            "apiserver",
            common_name="kube-apiserver",
            server_hosts=(
                # In-cluster clients dial the `kubernetes` Service's ClusterIP by address.
                *sorted({"127.0.0.1", self.config.address, self.config.kubernetes_service_ip}),
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        admin = ca.issue(
            "admin",
            common_name="wasmfleet-admin",
            organizations=("system:masters",),
            client=True,
        )
        controller_manager = ca.issue(
            "kube-controller-manager", common_name="system:kube-controller-manager", client=True
        )
        if self.config.real_nodes:
            # How the API server proves itself to kubelets (logs, exec, port-forward).
            ca.issue(
                "apiserver-kubelet-client",
                common_name="kube-apiserver-kubelet-client",
                organizations=("system:masters",),
                client=True,
            )
        pki.write_service_account_keys(self.pki_dir)
        self._write_kubeconfig(
            self.kubeconfig,
            user={"client-certificate": str(admin.cert), "client-key": str(admin.key)},
        )
        self._write_kubeconfig(
            self.workdir / "kube-controller-manager.kubeconfig",
            user={
                "client-certificate": str(controller_manager.cert),
                "client-key": str(controller_manager.key),
            },
        )

    def _write_kubeconfig(self, path: Path, *, user: dict[str, str]) -> None:
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "wasmfleet-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki_dir / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [
                {
                    "name": "wasmfleet-local",
                    "context": {"cluster": "wasmfleet-local", "user": "user"},
                }
            ],
            "current-context": "wasmfleet-local",
        }
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> None:
        process = ManagedProcess(
            name,
            argv,
            log_path=self.logs_dir / f"{name}.log",
            tie_to_parent=self.config.tie_to_parent,
        )
        process.start()
        self._processes[name] = process

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            str(self.binaries.etcd),
            "--name=wasmfleet",
            f"--data-dir={self.etcd_data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=wasmfleet={peer}",
            "--log-level=warn",
        ]
        if self.config.etcd_unsafe_no_fsync:
            argv.append("--unsafe-no-fsync")
        self._spawn("etcd", argv)

    def _start_apiserver(self) -> None:
        p = self.pki_dir
        argv = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.config.address}",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={self.config.service_cluster_ip_range}",
            "--allow-privileged=true",
            "--profiling=false",
        ]
        if self.config.publishes_endpoint:
            argv += [
                f"--advertise-address={self.config.address}",
                "--endpoint-reconciler-type=lease",
            ]
        else:
            # The built-in reconciler would publish 127.0.0.1 as the `kubernetes` Service's
            # endpoint, which endpoint validation refuses; without Pods nothing needs it.
            argv.append("--endpoint-reconciler-type=none")
        if self.config.real_nodes:
            argv += [
                # Kubelets act as system:node:<name>; the Node authorizer and NodeRestriction
                # limit each to its own Node and the Pods bound to it.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            argv.append("--authorization-mode=RBAC")
        argv += self.config.extra_apiserver_args
        self._spawn("kube-apiserver", argv)

    def _start_controller_manager(self) -> None:
        p = self.pki_dir
        controllers = CONTROLLERS + (NODE_CONTROLLERS if self.config.real_nodes else ())
        argv = [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={self.workdir / 'kube-controller-manager.kubeconfig'}",
            f"--controllers={','.join(controllers)}",
            "--leader-elect=false",
            # Each controller acts as its own service account with its bootstrap RBAC role.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            # A local run has no need to wait minutes before collecting garbage.
            "--concurrent-gc-syncs=5",
        ]
        self._spawn("kube-controller-manager", argv)
