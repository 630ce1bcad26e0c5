"""A real Kubernetes node in namespaces of its own, joined to the harness's local control plane.

The process agents of the other suites stand in for nodes; this module runs the real thing so
that Pods (the chart's operator and agents) run as they would on a cluster: containerd with
runc, a CNI bridge network, the kubelet and kube-proxy in iptables mode, every binary built
from the pins in ``e2e/toolchain/versions.env``. `wasmfleet_harness.cluster` starts several
nodes with the cluster-wide parts (kube-scheduler, CoreDNS); a `Node` alone joins a control
plane and runs the Pods bound to it.

How several nodes fit on one development machine, the way kind fits them into containers:

- **A network namespace per node** (``/run/netns/lcnode<i>``), joined to the host's node LAN
  by a veth pair (`wasmfleet_harness.nodelan`): its own address (``10.251.0.<i+1>``), Pod
  bridge (``cni0``, Pods in ``10.250.<i>.0/24``), routes to the other nodes' Pods, and
  kube-proxy's iptables rules, so kube-proxies never share a table and the host has none.
  The node has no default route: nothing a node or Pod sends can leave the machine.
- **A mount and UTS namespace per node**, held by a keeper process (the static pause program,
  as a Pod's sandbox holds a Pod's): the kubelet's and libcni's fixed paths are bound to the
  node's own directories there, every mount containerd and the kubelet make (overlay root
  filesystems, volumes, network namespace handles) stays there and goes away with it, and
  the node's hostname is its name. Components run with ``nsenter`` into those namespaces.
- **State under the workspace**: containerd's root and state, the kubelet's root directory,
  CNI configuration and IPAM state, logs and certificates live under ``workdir``; sockets,
  whose paths must be short, under ``/run/wasmfleet-node-<pid>/n<i>``. Pods' cgroups live
  under ``/wasmfleet-node/<node name>`` in every cgroup hierarchy.
- **Images without a public registry**: the sandbox (pause) image is built locally
  (`wasmfleet_harness.nodeimages`) and imported; other images come from the local registry,
  which listens on the host's loopback only, through a relay on the node's own loopback
  (`wasmfleet_harness.nsrelay`), so an image reference means the same everywhere.

`Node.stop` drains the node through the API, stops every component, kills what survived,
drops its namespaces (and with them its interfaces, rules and mounts), removes its cgroups
and routes, puts the kernel settings back and deletes its Node object; `Node.leftovers` lists
whatever would still be there, and the tests check it is nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wasmfleet_harness import nodeimages, nodenet
from wasmfleet_harness.binaries import NodeBinaries
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.nodelan import (
    CGROUP_PARENT,
    KUBELET_ROOT,
    PRIVATE_PATHS,
    WORKDIR_FILE,
    NodeLan,
    create_cgroup,
    directory_marker,
    iptables_chains,
    kill_processes,
    matching_processes,
    mount_points,
    mounts_below,
    nat_rules,
    netns_path,
    read_kernel_settings,
    read_routes,
    remove_cgroup_tree,
    restore_kernel_settings,
    run,
)
from wasmfleet_harness.nsrelay import NamespaceRelay
from wasmfleet_harness.processes import ManagedProcess, ProcessFailedError, wait_until
from wasmfleet_harness.registry import Registry

__all__ = [
    "Node",
    "NodeConfig",
    "NodeStartError",
    "plan_foreign_unmounts",
    "start_nodes",
    "stop_nodes",
    "wait_for_pod_ready",
]

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Each node has a network namespace of its own, so the usual ports are free in every one.
_KUBELET_PORT = 10250
_KUBELET_HEALTHZ_PORT = 10248
_KUBE_PROXY_HEALTHZ_PORT = 10256
_KUBE_PROXY_METRICS_PORT = 10249
# Put on a stopping node so that nothing, DaemonSet Pods included, is placed there again.
_STOPPING_TAINT = "wasmfleet.dev/stopping"


class NodeStartError(RuntimeError):
    """A node component failed to start; the message names it and carries its log tail."""


@dataclass(frozen=True)
class NodeConfig:
    """Knobs for one node; defaults suit tests on a small machine."""

    # Which slot of the LAN the node takes: address 10.251.0.<index+1>, Pods 10.250.<index>.0/24.
    index: int = 1
    # The Node's name; ``wasmfleet-node-<index>`` when empty.
    name: str = ""
    # Extra labels; ``kubernetes.io/arch`` is the machine's unless given here.
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster_domain: str = "cluster.local"
    ready_timeout: float = 180.0
    tie_to_parent: bool = True

    @property
    def node_name(self) -> str:
        return self.name or f"wasmfleet-node-{self.index}"


# Mounts every process needs, whoever made them.
_SYSTEM_MOUNTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def plan_foreign_unmounts(mount_points: Sequence[Path], needed: Sequence[Path]) -> list[Path]:
    """Which mounts a node's new mount namespace should drop, deepest first.

    A new mount namespace starts as a copy of the host's, so it would hold on to every mount
    there: other programs' network namespace handles under ``/run/netns`` and overlay mounts
    of image builds, which their owners could then not free or mount again. The node keeps
    the root, ``/proc``, ``/sys`` and ``/dev`` and, for each path in ``needed`` (its workspace,
    binaries, sockets), the mount that path lives on and that mount's ancestors.
    """
    points = set(mount_points)

    def home(path: Path) -> Path:
        candidates = [m for m in points if m == path or m in path.parents]
        return max(candidates, key=lambda m: len(m.parts), default=Path("/"))

    keep = {Path("/")}
    for path in needed:
        mount = home(path)
        keep |= {mount} | {m for m in points if m in mount.parents}
    drop = {
        m
        for m in points
        if m not in keep and not any(m == s or s in m.parents for s in _SYSTEM_MOUNTS)
    }
    return sorted(drop, key=lambda m: (-len(m.parts), str(m)))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _get_json(plane: ControlPlane, *args: str) -> Any:
    result = plane.kubectl("get", *args, "-o", "json", check=False, timeout=30)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return json.loads(result.stdout)


def _api_answers(plane: ControlPlane) -> bool:
    try:
        return plane.get_raw("/readyz", timeout=2) == "ok"
    except (OSError, urllib.error.URLError):
        return False


def wait_for_pod_ready(
    plane: ControlPlane,
    namespace: str,
    name: str,
    *,
    timeout: float = 120.0,
    check: Callable[[], None] = lambda: None,
    diagnostics: Callable[[], str] = lambda: "",
) -> Any:
    """Polls until the Pod is Ready and returns it; ``check`` raises if a component died. On
    timeout the message has the Pod's status and ``diagnostics()`` (logs)."""
    last: list[Any] = [None]

    def ready() -> bool:
        check()
        pod = _get_json(plane, "pod", name, "-n", namespace)
        last[0] = pod
        if pod is None:
            return False
        conditions = pod.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_until(
        ready,
        timeout=timeout,
        interval=0.5,
        message=lambda: (
            f"Pod {namespace}/{name} not Ready; status: "
            f"{json.dumps((last[0] or {}).get('status'))}\n{diagnostics()}"
        ),
    )
    return last[0]


def start_nodes(nodes: Sequence[Node]) -> None:
    """Starts ``nodes`` side by side: each step runs on every node before the next step, so
    their components start and settle at the same time. Returns once every Node is Ready and
    every kube-proxy has written its rules; on failure stops them all and raises
    `NodeStartError` naming the component."""
    try:
        for node in nodes:
            node._launch_runtime()
        for node in nodes:
            node._launch_kubernetes()
        for node in nodes:
            node._await_ready()
    except BaseException:
        stop_nodes(nodes)
        raise


def stop_nodes(nodes: Sequence[Node], *, timeout: float = 90.0) -> None:
    """Drains ``nodes`` together through the API (each one's Pods torn down by its kubelet),
    then stops and removes each of them."""
    started = [node for node in nodes if node._started]
    for node in started:
        node._started = False
    if started:
        _drain(started, timeout=timeout)
    for node in started:
        node._teardown()


def _drain(nodes: Sequence[Node], *, timeout: float) -> None:
    """Taints the nodes so nothing is placed there again, deletes the Pods bound to them and
    waits until their kubelets have torn them down (containers stopped, CNI released,
    volumes unmounted)."""
    plane = nodes[0].plane
    alive = [n for n in nodes if n._kubelet_alive()]
    if not alive or not _api_answers(plane):
        return
    names = {node.name for node in alive}
    for name in sorted(names):
        plane.kubectl(
            "taint", "node", name, f"{_STOPPING_TAINT}=:NoExecute", "--overwrite", check=False
        )
        plane.kubectl(
            "delete",
            "pods",
            "-A",
            "--field-selector",
            f"spec.nodeName={name}",
            "--wait=false",
            check=False,
        )

    def gone() -> bool:
        if not any(n._kubelet_alive() for n in alive):
            return True
        listing = _get_json(plane, "pods", "-A")
        return listing is not None and not any(
            pod["spec"].get("nodeName") in names for pod in listing.get("items", [])
        )

    with contextlib.suppress(TimeoutError):
        wait_until(gone, timeout=timeout, interval=0.5)


@dataclass
class Node:
    """containerd, CNI, the kubelet and kube-proxy of one node, in namespaces of its own.

    ``plane`` must run with ``ControlPlaneConfig(address=lan.host_ip, real_nodes=True)``;
    ``registry`` (optional) is reachable from the node for image pulls.
    """

    plane: ControlPlane
    lan: NodeLan
    workdir: Path
    binaries: NodeBinaries
    registry: Registry | None = None
    config: NodeConfig = field(default_factory=NodeConfig)

    def __post_init__(self) -> None:
        self.network = self.lan.network
        self.slot = self.network.slot(self.config.index)
        self.name = self.config.node_name
        self.ip = self.slot.ip
        self.netns = self.slot.netns
        self.logs_dir = self.workdir / "logs"
        self.pki_dir = self.workdir / "pki"
        self.containerd_root = self.workdir / "containerd" / "root"
        self.containerd_state = self.workdir / "containerd" / "state"
        self.cni_conf_dir = self.workdir / "cni" / "net.d"
        self.cni_ipam_dir = self.workdir / "cni" / "ipam"
        # Bound over the fixed paths (/var/lib/kubelet, ...) in the node's mount namespace.
        self.private_dir = self.workdir / "private"
        # The kubelet's root directory as the host sees it; the kubelet sees KUBELET_ROOT.
        self.kubelet_root = self.private_dir / KUBELET_ROOT.relative_to("/")
        # Unix socket paths are limited to 108 bytes; the workspace path can be long.
        self.run_dir = self.lan.run_dir / f"n{self.config.index}"
        self.containerd_socket = self.run_dir / "containerd.sock"
        self.runc_root = self.run_dir / "runc"
        self.cgroup = f"/{CGROUP_PARENT}/{self.name}"
        self.sandbox_image = ""
        self._processes: dict[str, ManagedProcess] = {}
        self._created_cgroups: list[Path] = []
        self._relay: NamespaceRelay | None = None
        self._net_inode: int | None = None
        self._mount_inode: int | None = None
        self._pause: nodeimages.Image | None = None
        self._admin_labels: dict[str, str] = {}
        self._kube_proxy_healthz = f"http://{self.ip}:{_KUBE_PROXY_HEALTHZ_PORT}/healthz"
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Starts every component and returns once the Node is Ready and kube-proxy has
        written its rules; stops what started and raises `NodeStartError` naming the
        component if any fails."""
        start_nodes([self])

    def stop(self, *, timeout: float = 90.0) -> None:
        """Drains the node, stops every component and removes what they left: containers,
        namespaces (interfaces, rules, mounts), routes, cgroups and the Node object."""
        stop_nodes([self], timeout=timeout)

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine: processes, mounts, namespaces,
        interfaces, routes, iptables chains, containers, cgroups, kernel settings. Empty
        after `stop`."""
        found = [f"process {p}" for p in self._own_processes()]
        found += [f"mount {p}" for p in mounts_below(self.workdir) + mounts_below(self.run_dir)]
        found += [f"network namespace {self.netns}"] if netns_path(self.netns).exists() else []
        found += (
            [f"interface {self.slot.host_link}"]
            if run(["ip", "link", "show", "dev", self.slot.host_link], check=False).returncode == 0
            else []
        )
        found += [
            f"route {' '.join(r.argv())}"
            for r in sorted(read_routes())
            if r.dst == self.slot.pod_cidr or r.via == self.ip
        ]
        found += [f"iptables {table}: {chains}" for table, chains in iptables_chains().items()]
        found += [f"container state {p}" for p in self._runc_containers()]
        found += [f"cgroup {p}" for p in self._created_cgroups if p.exists()]
        now = read_kernel_settings()
        found += [
            f"kernel setting {name}={now[name]} (was {value})"
            for name, value in self.lan.kernel_settings.items()
            if now[name] != value
        ]
        return found

    def process(self, name: str) -> ManagedProcess:
        """The running component called ``name`` (``containerd``, ``kubelet``,
        ``kube-proxy``, or ``namespaces`` for the keeper)."""
        return self._processes[name]

    def nsenter(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` in the node's namespaces (network, mount, UTS), as its components run."""
        return run([*self._enter(), *argv], check=False, timeout=timeout)

    def service_rules_present(
        self, cluster_ip: str, port: int, protocol: str = "tcp", *, entry: str = "PREROUTING"
    ) -> bool:
        """Whether this node's kube-proxy rules send ``cluster_ip:port`` to an endpoint, for
        traffic the node forwards (``PREROUTING``: its Pods', the host's) or sends itself
        (``OUTPUT``). Check this before sending to a ClusterIP through the node."""
        return nodenet.service_routed(
            nat_rules(self.netns), cluster_ip, port, protocol, entry=entry
        )

    def ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Runs ``ctr`` against this node's containerd in the namespace the kubelet uses."""
        return run(
            [
                str(self.binaries.ctr),
                "--address",
                str(self.containerd_socket),
                "-n",
                "k8s.io",
                *args,
            ],
            timeout=timeout,
        )

    def import_image(self, image: nodeimages.Image, reference: str) -> str:
        """Loads ``image`` into containerd as ``reference`` (for Pods with
        ``imagePullPolicy: Never``) and returns the reference."""
        archive = nodeimages.write_docker_archive(
            image, reference, self.workdir / "images" / f"{image.tag}.tar"
        )
        self.ctr("images", "import", "--platform", "linux/amd64", str(archive))
        return reference

    def wait_for_pod_ready(self, namespace: str, name: str, *, timeout: float = 120.0) -> Any:
        """Polls until the Pod is Ready and returns it; on timeout the message has its
        status and the kubelet's log tail."""
        return wait_for_pod_ready(
            self.plane,
            namespace,
            name,
            timeout=timeout,
            check=self.check_components,
            diagnostics=lambda: self._processes["kubelet"].log_tail(20),
        )

    def check_components(self) -> None:
        """Raises `ProcessFailedError` if a component of the node has exited."""
        for process in self._processes.values():
            process.check_alive()

    # ---- start, step by step ---------------------------------------------------------

    def _validate(self) -> None:
        plane = self.plane.config
        if plane.address != self.lan.host_ip or not plane.real_nodes:
            raise ValueError(
                "the control plane must run with "
                f"ControlPlaneConfig(address={self.lan.host_ip!r}, real_nodes=True)"
            )
        # kube-proxy, the Pods' routes and the DNS address are all derived from this range.
        services = ipaddress.ip_network(plane.service_cluster_ip_range)
        if services != ipaddress.ip_network(self.network.service_cidr):
            raise ValueError(
                f"the control plane's service range {services} must be the cluster's "
                f"{self.network.service_cidr}"
            )

    def _launch_runtime(self) -> None:
        """Namespaces, Pod network, routes, the registry relay and containerd."""
        self._validate()
        self.lan.claim(self.config.index)
        self._started = True
        for directory in (
            self.logs_dir,
            self.pki_dir,
            self.containerd_root,
            self.containerd_state,
            self.kubelet_root,
            self.cni_conf_dir,
            self.cni_ipam_dir,
            self.run_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        (self.run_dir / WORKDIR_FILE).write_text(str(self.workdir))
        self._created_cgroups = create_cgroup(self.cgroup.lstrip("/"))
        self._create_namespaces()
        self._create_pod_bridge()
        self.lan.join(self.config.index)
        if self.registry is not None and self.registry.address.startswith("127."):
            # A loopback registry is relayed onto the node's own loopback (the same name
            # everywhere); one on the LAN's host address is reached directly.
            self._relay = NamespaceRelay(netns_path(self.netns), self.registry.port)
            self._relay.start()
        self._start_containerd()

    def _launch_kubernetes(self) -> None:
        """Waits for containerd, imports the sandbox image, starts the kubelet and kube-proxy."""
        self._wait("containerd", self._containerd_answers, timeout=60, what="no answer")
        assert self._pause is not None
        self.import_image(self._pause, self.sandbox_image)
        self._start_kubelet()
        self._start_kube_proxy()

    def _await_ready(self) -> None:
        """Waits for the Node to be Ready, labels it, and waits for kube-proxy's rules."""
        self._wait(
            "kubelet", self._node_ready, timeout=self.config.ready_timeout, what="Node not Ready"
        )
        if self._admin_labels:
            self.plane.kubectl(
                "label",
                "node",
                self.name,
                "--overwrite",
                *(f"{k}={v}" for k, v in sorted(self._admin_labels.items())),
            )
        self._wait(
            "kube-proxy",
            self._kube_proxy_programmed,
            timeout=60,
            what="no rules for the kubernetes Service",
        )

    def _enter(self) -> list[str]:
        keeper = self._processes["namespaces"]
        return ["nsenter", f"--target={keeper.pid}", "--mount", "--uts", "--net", "--"]

    def _create_namespaces(self) -> None:
        """The node's network namespace on the LAN, and a keeper holding its mount and UTS
        namespaces, with the fixed paths bound to the node's own directories."""
        slot = self.slot
        run(["ip", "netns", "add", self.netns])
        self._net_inode = os.stat(netns_path(self.netns)).st_ino
        in_netns = ["ip", "-n", self.netns]
        run(
            [
                "ip",
                "link",
                "add",
                slot.host_link,
                "type",
                "veth",
                "peer",
                "name",
                nodenet.LAN_INTERFACE,
                "netns",
                self.netns,
            ]
        )
        run(["ip", "link", "set", slot.host_link, "master", self.network.bridge, "up"])
        run([*in_netns, "link", "set", "lo", "up"])
        run(
            [
                *in_netns,
                "addr",
                "add",
                f"{slot.ip}/{slot.lan_prefix_len}",
                "dev",
                nodenet.LAN_INTERFACE,
            ]
        )
        run([*in_netns, "link", "set", nodenet.LAN_INTERFACE, "up"])
        # The node routes for its Pods; the setting is the namespace's own, not the machine's.
        forwarding = "net.ipv4.ip_forward=1"
        run(["nsenter", f"--net={netns_path(self.netns)}", "--", "sysctl", "-qw", forwarding])

        pause = nodeimages.build_pause_binary().resolve()
        keeper = ManagedProcess(
            "namespaces",
            [
                "nsenter",
                f"--net={netns_path(self.netns)}",
                "--",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                str(pause),
                # Not read by pause; names the node in the process list for a later sweep.
                directory_marker(self.run_dir),
            ],
            log_path=self.logs_dir / "namespaces.log",
            tie_to_parent=self.config.tie_to_parent,
        )
        keeper.start()
        self._processes["namespaces"] = keeper
        own_mounts = os.stat("/proc/self/ns/mnt").st_ino

        def entered() -> bool:
            keeper.check_alive()
            try:
                exe = Path(os.readlink(f"/proc/{keeper.pid}/exe"))
                mounts = os.stat(f"/proc/{keeper.pid}/ns/mnt").st_ino
            except OSError:
                return False
            return exe == pause and mounts != own_mounts

        self._wait("namespaces", entered, timeout=10, what="the keeper did not start")
        self._mount_inode = os.stat(f"/proc/{keeper.pid}/ns/mnt").st_ino
        run([*self._enter(), "hostname", self.name])
        needed = [
            self.workdir,
            self.run_dir,
            self.plane.workdir,
            pause,
            self.binaries.kubelet,
            self.binaries.kube_proxy,
            self.binaries.containerd,
            self.binaries.runc,
            self.binaries.cni_bin_dir,
        ]
        for _ in range(5):  # stacked mounts show one layer at a time
            foreign = plan_foreign_unmounts(mount_points(keeper.pid), needed)
            if not foreign:
                break
            for point in foreign:
                run([*self._enter(), "umount", "--lazy", str(point)], check=False)
        for target in PRIVATE_PATHS:
            source = self.private_dir / target.relative_to("/")
            source.mkdir(parents=True, exist_ok=True)
            run([*self._enter(), "mount", "--bind", str(source), str(target)])

    def _create_pod_bridge(self) -> None:
        slot = self.slot
        in_netns = ["ip", "-n", self.netns]
        prefix = ipaddress.ip_network(slot.pod_cidr).prefixlen
        run([*in_netns, "link", "add", nodenet.POD_BRIDGE, "type", "bridge"])
        mac = nodenet.bridge_mac(slot.gateway)
        run([*in_netns, "link", "set", nodenet.POD_BRIDGE, "address", mac])
        run([*in_netns, "addr", "add", f"{slot.gateway}/{prefix}", "dev", nodenet.POD_BRIDGE])
        run([*in_netns, "link", "set", nodenet.POD_BRIDGE, "up"])
        conflist = {
            "cniVersion": "1.0.0",
            "name": "wasmfleet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": nodenet.POD_BRIDGE,
                    # The harness gave the bridge its address already.
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.cni_ipam_dir),
                        "ranges": [[{"subnet": slot.pod_cidr, "gateway": slot.gateway}]],
                        "routes": self.network.pod_routes(slot),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf_dir / "10-wasmfleet.conflist").write_text(json.dumps(conflist, indent=2))

    def _containerd_config(self) -> str:
        cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
        cri_images = "plugins.'io.containerd.cri.v1.images'"
        registry_dir = self.workdir / "containerd" / "certs.d"
        if self.registry is not None:
            host_dir = registry_dir / self.registry.host
            host_dir.mkdir(parents=True, exist_ok=True)
            (host_dir / "hosts.toml").write_text(
                f'server = "{self.registry.url}"\n\n'
                f'[host."{self.registry.url}"]\n'
                '  capabilities = ["pull", "resolve"]\n'
            )
        return f"""\
version = 3
root = "{self.containerd_root}"
state = "{self.containerd_state}"
# NRI would listen on /var/run/nri; nothing here uses it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.run_dir / "containerd.sock.ttrpc"}"

[plugins.'io.containerd.internal.v1.opt']
  path = "{self.workdir / "containerd" / "opt"}"

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "{self.run_dir / "s"}"

[{cri_runtime}]
  # Processes here may not lower oom_score_adj, which the sandbox asks for (-998).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{cri_runtime}.containerd]
  default_runtime_name = "runc"

[{cri_runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri_runtime}.containerd.runtimes.runc.options]
  BinaryName = "{self.binaries.runc}"
  Root = "{self.runc_root}"
  SystemdCgroup = false

[{cri_runtime}.cni]
  bin_dirs = ["{self.binaries.cni_bin_dir}"]
  conf_dir = "{self.cni_conf_dir}"
  max_conf_num = 1

[{cri_images}]
  snapshotter = "overlayfs"

[{cri_images}.pinned_images]
  sandbox = "{self.sandbox_image}"

[{cri_images}.registry]
  config_path = "{registry_dir}"

[plugins.'io.containerd.grpc.v1.cri']
  # In the node's network namespace: only its kubelet reaches this.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""

    def _start_containerd(self) -> None:
        pause = nodeimages.render_image(
            [nodeimages.ImageFile("pause", nodeimages.build_pause_binary())], entrypoint=["/pause"]
        )
        self._pause = pause
        self.sandbox_image = f"wasmfleet.local/pause:{pause.tag}"
        config_path = self.workdir / "containerd" / "config.toml"
        config_path.write_text(self._containerd_config())
        env = {
            **os.environ,
            # containerd finds its shim on PATH.
            "PATH": f"{self.binaries.containerd.parent}:{_SYSTEM_PATH}",
        }
        self._spawn(
            "containerd", [str(self.binaries.containerd), "--config", str(config_path)], env
        )

    def _containerd_answers(self) -> bool:
        self.check_components()
        if not self.containerd_socket.exists():
            return False
        version = [str(self.binaries.ctr), "--address", str(self.containerd_socket), "version"]
        return run(version, check=False, timeout=10).returncode == 0

    def _start_kubelet(self) -> None:
        ca = self.plane.ca
        serving = ca.issue(
            f"kubelet-serving-{self.name}",
            common_name=f"system:node:{self.name}",
            server_hosts=(self.ip, self.name),
        )
        kubeconfig = self.plane.kubeconfig_for_certificate(
            f"kubelet-{self.name}",
            common_name=f"system:node:{self.name}",
            organizations=("system:nodes",),
        )
        kubelet_labels, self._admin_labels = nodenet.plan_node_labels(
            nodenet.machine_architecture(platform.machine()), self.config.labels
        )
        resolv_conf = self.workdir / "resolv.conf"
        # Pods with dnsPolicy Default (CoreDNS itself) get this, not the machine's resolver:
        # nothing in the cluster should query a server outside it.
        resolv_conf.write_text("options ndots:1\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # The machine mounts cgroup v1 controllers; the kubelet refuses them by default.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": self.cgroup,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.ip,
            "port": _KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": _KUBELET_HEALTHZ_PORT,
            "clusterDNS": [self.network.cluster_dns],
            "clusterDomain": self.config.cluster_domain,
            "resolvConf": str(resolv_conf),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca.cert_path)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "rotateCertificates": False,
            "failSwapOn": False,
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "maxPods": 50,
            # A development disk is often fuller than a server's: evict late, not at 10 %.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
        }
        config_path = self.workdir / "kubelet-config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={KUBELET_ROOT}",
                f"--cert-dir={self.pki_dir / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.ip}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(kubelet_labels.items())),
                "--v=2",
            ],
            {**os.environ, "PATH": _SYSTEM_PATH},
        )

    def _node_ready(self) -> bool:
        self.check_components()
        node = _get_json(self.plane, "node", self.name)
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        # The node-lifecycle controller lifts the not-ready taint once the kubelet reports.
        taints = node.get("spec", {}).get("taints", [])
        return ready and not any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)

    def _start_kube_proxy(self) -> None:
        kubeconfig = self.plane.kubeconfig_for_certificate(
            f"kube-proxy-{self.name}", common_name="system:kube-proxy"
        )
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": self.network.cluster_cidr,
            # On the LAN, so the harness can ask it from the host.
            "healthzBindAddress": f"{self.ip}:{_KUBE_PROXY_HEALTHZ_PORT}",
            "metricsBindAddress": f"127.0.0.1:{_KUBE_PROXY_METRICS_PORT}",
            "nodePortAddresses": [f"{self.ip}/32"],
            "iptables": {
                # Source NAT for all Service traffic, so a reply from a Pod on the same bridge
                # returns through the node whether or not bridged traffic passes iptables.
                "masqueradeAll": True,
                # Would set route_localnet.
                "localhostNodePorts": False,
            },
            # Leave conntrack sysctls alone (some are machine-wide).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        config_path = self.workdir / "kube-proxy-config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn(
            "kube-proxy",
            [str(self.binaries.kube_proxy), f"--config={config_path}", "--v=2"],
            {**os.environ, "PATH": _SYSTEM_PATH},
        )

    def _kube_proxy_programmed(self) -> bool:
        self.check_components()
        if not _http_ok(self._kube_proxy_healthz):
            return False
        return self.plane.config.kubernetes_service_ip in nat_rules(self.netns)

    # ---- stop, step by step ----------------------------------------------------------

    def _teardown(self) -> None:
        for name in ("kube-proxy", "kubelet", "containerd"):
            process = self._processes.pop(name, None)
            if process is not None:
                process.stop()
        self._remove_containers()
        keeper = self._processes.pop("namespaces", None)
        if keeper is not None:
            keeper.stop()
        kill_processes(**self._selection())
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        self.lan.leave(self.config.index)
        # Deleting the pair now: the kernel frees a namespace, and the veth end in it,
        # only some time after its last handle is gone.
        run(["ip", "link", "del", self.slot.host_link], check=False)
        if netns_path(self.netns).exists():
            run(["ip", "netns", "del", self.netns], check=False)
        for top in reversed(self._created_cgroups):
            remove_cgroup_tree(top)
        restore_kernel_settings(self.lan.kernel_settings)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self._forget()
        self.lan.release(self.config.index)

    def _remove_containers(self) -> None:
        """Kills what survived the drain: every container in this node's runc root (their
        processes, cgroups and state)."""
        runc = str(self.binaries.runc)
        for state in self._runc_containers():
            run([runc, "--root", str(state.parent), "delete", "--force", state.name], check=False)

    def _forget(self) -> None:
        """Deletes the Node object and whatever Pods are still bound to it: the node has left
        the cluster (its kubelet would have re-registered it had it still run)."""
        if not _api_answers(self.plane):
            return
        self.plane.kubectl(
            "delete",
            "pods",
            "-A",
            "--field-selector",
            f"spec.nodeName={self.name}",
            "--force",
            "--grace-period=0",
            check=False,
        )
        self.plane.kubectl("delete", "node", self.name, "--ignore-not-found", check=False)

    # ---- helpers ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> None:
        process = ManagedProcess(
            name,
            [*self._enter(), *argv],
            log_path=self.logs_dir / f"{name}.log",
            env=env,
            tie_to_parent=self.config.tie_to_parent,
        )
        process.start()
        self._processes[name] = process

    def _kubelet_alive(self) -> bool:
        kubelet = self._processes.get("kubelet")
        return kubelet is not None and kubelet.alive()

    def _wait(self, name: str, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Polls ``condition`` for component ``name``; raises `NodeStartError` with the
        component's log tail if it exits or the deadline passes."""
        try:
            wait_until(condition, timeout=timeout, interval=0.25)
        except ProcessFailedError as error:
            raise NodeStartError(f"{name}: a component exited while starting: {error}") from None
        except TimeoutError:
            process = self._processes.get(name)
            tail = process.log_tail(30) if process is not None else ""
            raise NodeStartError(f"{name}: {what} after {timeout:.0f}s\n{tail}") from None

    def _runc_containers(self) -> list[Path]:
        if not self.runc_root.is_dir():
            return []
        return [state for ns in self.runc_root.iterdir() if ns.is_dir() for state in ns.iterdir()]

    def _selection(self) -> dict[str, Any]:
        """How to find this node's processes: by workspace and run directory in the command
        line, by the Pods' cgroup, by the node's namespaces."""
        return {
            "markers": (directory_marker(self.workdir), directory_marker(self.run_dir)),
            "cgroup": self.cgroup,
            "net_namespaces": {self._net_inode} if self._net_inode is not None else set(),
            "mount_namespaces": {self._mount_inode} if self._mount_inode is not None else set(),
        }

    def _own_processes(self) -> list[int]:
        return matching_processes(**self._selection())
