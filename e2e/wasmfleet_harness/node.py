"""A real Kubernetes node on this machine, joined to the harness's local control plane.

The process agents of the other suites stand in for nodes; this module runs the real thing so
that Pods (the chart's operator and agents, later) run as they would on a cluster: containerd
with runc, a CNI bridge network, the kubelet, kube-proxy in iptables mode, kube-scheduler and
CoreDNS, every binary built from the pins in ``e2e/toolchain/versions.env``.

How it fits on a shared development machine:

- **One node per machine.** kube-proxy owns machine-wide iptables chains (``KUBE-SERVICES``
  and friends), so `NodeAddress` takes an exclusive lock (``/run/wasmfleet-node.lock``) for as
  long as a node may run, and sweeps what a killed earlier run left behind.
- **Addresses of its own, never routed off the machine.** The node's address (``10.251.0.1``)
  sits on an interface of its own (``wfnode0``, an empty bridge: the kernel here has no dummy
  driver); Pods get addresses from ``10.250.0.0/24`` on a bridge the node
  creates (``wfcni0``); Services use the control plane's ``10.96.0.0/16``. None overlaps the
  machine's routes, the agents' test hosts (``10.200-249.x``) or its resolver; `NodeAddress`
  checks this before creating anything. Pods get no default route, only routes to the Service
  range and the node address, so nothing a Pod sends can leave the machine; the bridge
  forwards (per interface, not the machine-wide ``ip_forward``) only what comes from Pods.
- **The API server on the node's address.** Pods reach the API server through the
  ``kubernetes`` Service, whose endpoint must not be loopback: the control plane is started
  with ``ControlPlaneConfig(address=node_address.ip, real_nodes=True)`` and publishes that
  address itself (its endpoint reconciler).
- **State under the workspace.** containerd's root and state, the kubelet's root directory,
  CNI configuration and IPAM state, logs and certificates live under ``workdir``; sockets,
  whose paths must be short, under ``/run/wasmfleet-node-<pid>``. Pods' cgroups live below
  ``/wasmfleet-node`` in every cgroup hierarchy.
- **Images without a public registry.** The sandbox (pause) and CoreDNS images are built
  locally (`wasmfleet_harness.nodeimages`) and imported into containerd; other images are pulled
  from the local registry, which containerd is told to reach over plain HTTP.

- **Machine-wide settings put back.** The kubelet sets a few kernel settings at start
  (``vm.overcommit_memory``, ``kernel.panic_on_oops``, ...) and cannot be told not to; the node
  records them first and restores them on stop (a later run restores them if this one died).
  kube-proxy is told to leave conntrack sysctls and ``route_localnet`` alone.

`Node.stop` removes everything the node made: Pods (through the API, so the kubelet and CNI
tear them down), processes, containers, mounts, the bridge, iptables chains, cgroups, the
kernel settings and the few fixed paths the kubelet and libcni use whatever their
configuration; `Node.leftovers` lists whatever would still be there, and the tests check it
is nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wasmfleet_harness import nodeimages
from wasmfleet_harness.binaries import NodeBinaries
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.processes import ManagedProcess, ProcessFailedError, free_port, wait_until
from wasmfleet_harness.registry import Registry

__all__ = [
    "Node",
    "NodeAddress",
    "NodeConfig",
    "NodeNetwork",
    "NodeStartError",
    "iptables_chains",
    "service_routed",
    "service_rules_present",
]

_LOCK_PATH = Path("/run/wasmfleet-node.lock")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
# Chains the kubelet, kube-proxy and the CNI plugins create; no other program here uses them.
_OWNED_CHAIN = re.compile(r"^(KUBE-|CNI-)")
_TABLES = ("filter", "nat", "mangle", "raw")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Kernel settings the kubelet sets machine-wide at start (overcommit, panic on oops, ...);
# it has no option to leave them alone, only to refuse to start. The node records them before
# the kubelet starts and writes them back when it stops (or a later run does, if it died).
_KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
_SYSCTLS_FILE = "kernel-settings.json"
# Written into the run directory at start, so a later run can find a dead run's workspace.
_WORKDIR_FILE = "workdir"
_CREATED_PATHS_FILE = "created-paths.json"
_RUN_DIR_PREFIX = "wasmfleet-node-"
# The parent of every cgroup of the node's Pods, in each hierarchy.
_CGROUP_PARENT = "wasmfleet-node"
# Paths outside the workspace that the kubelet and containerd's CNI library use whatever they
# are configured with: the device-plugin socket, the container log symlinks, libcni's cache.
_FIXED_PATHS = (Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/var/lib/cni"))


class NodeStartError(RuntimeError):
    """A node component failed to start; the message names it and carries its log tail."""


@dataclass(frozen=True)
class NodeNetwork:
    """The node's address ranges and interface names (one node per machine)."""

    node_ip: str = "10.251.0.1"
    # kube-proxy's view of "inside the cluster"; this node's Pods use ``pod_cidr`` within it.
    cluster_cidr: str = "10.250.0.0/16"
    pod_cidr: str = "10.250.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    address_interface: str = "wfnode0"
    bridge: str = "wfcni0"

    @property
    def gateway(self) -> str:
        """The bridge's own address, the Pods' next hop to Services and the node."""
        return str(ipaddress.ip_network(self.pod_cidr)[1])

    def networks(self) -> list[ipaddress.IPv4Network]:
        return [
            ipaddress.IPv4Network(f"{self.node_ip}/32"),
            ipaddress.IPv4Network(self.cluster_cidr),
            ipaddress.IPv4Network(self.service_cidr),
        ]


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _machine_networks(exclude: set[str]) -> list[tuple[str, ipaddress.IPv4Network]]:
    """Every IPv4 route and address of this machine (main and local tables), except those on
    the ``exclude`` interfaces: (description, network)."""
    found = []
    for line in _run(["ip", "-4", "-o", "route", "show", "table", "all"]).stdout.splitlines():
        fields = line.split()
        if not fields or fields[0] in ("broadcast", "multicast", "unreachable", "blackhole"):
            continue
        if fields[0] == "local":
            fields = fields[1:]
        device = fields[fields.index("dev") + 1] if "dev" in fields else ""
        if device in exclude or fields[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            found.append((line.strip(), ipaddress.IPv4Network(fields[0], strict=False)))
    return found


def _resolver_addresses() -> list[ipaddress.IPv4Address]:
    addresses = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    addresses.append(ipaddress.IPv4Address(fields[1]))
    return addresses


def iptables_chains() -> dict[str, list[str]]:
    """Chains named ``KUBE-*``/``CNI-*`` that exist now, per ``iptables``/``ip6tables`` table
    (``"ip6tables nat": [...]``); empty when no node's rules are on the machine."""
    found: dict[str, list[str]] = {}
    for command in ("iptables", "ip6tables"):
        if shutil.which(f"{command}-save") is None:
            continue
        for table in _TABLES:
            out = _run([f"{command}-save", "-t", table], check=False).stdout
            chains = [
                line[1:].split()[0]
                for line in out.splitlines()
                if line.startswith(":") and _OWNED_CHAIN.match(line[1:])
            ]
            if chains:
                found[f"{command} {table}"] = chains
    return found


def service_routed(nat_rules: str, cluster_ip: str, port: int, protocol: str = "tcp") -> bool:
    """Whether ``nat_rules`` (``iptables-save -t nat``) send ``cluster_ip:port`` from this
    host to an endpoint: OUTPUT jumps to ``KUBE-SERVICES``, which matches the address,
    protocol and port and leads to a Service chain with at least one endpoint chain."""
    rules = [shlex.split(line) for line in nat_rules.splitlines() if line.startswith("-A ")]

    def option(rule: list[str], name: str) -> str | None:
        return rule[rule.index(name) + 1] if name in rule[:-1] else None

    if not any(r[1] == "OUTPUT" and option(r, "-j") == "KUBE-SERVICES" for r in rules):
        return False
    service_chains = {
        option(r, "-j")
        for r in rules
        if r[1] == "KUBE-SERVICES"
        and option(r, "-d") == f"{cluster_ip}/32"
        and option(r, "-p") == protocol
        and option(r, "--dport") == str(port)
    }
    return any(
        r[1] in service_chains and (option(r, "-j") or "").startswith("KUBE-SEP-") for r in rules
    )


def service_rules_present(cluster_ip: str, port: int, protocol: str = "tcp") -> bool:
    """`service_routed` on this machine's NAT table now.

    A ClusterIP is not an address of this machine: without kube-proxy's rules a packet to it
    follows the default route off the machine. Check this before sending anything to one.
    """
    nat = _run(["iptables-save", "-t", "nat"], check=False).stdout
    return service_routed(nat, cluster_ip, port, protocol)


def _remove_owned_chains() -> None:
    """Deletes every ``KUBE-*``/``CNI-*`` chain and the rules that jump to them.

    ``kube-proxy --cleanup`` removes kube-proxy's own; the kubelet's canary and firewall chains
    and the CNI plugins' chains stay behind, so the node removes them itself. Only called while
    holding the machine's node lock, when no other node's chains can exist.
    """
    for command in ("iptables", "ip6tables"):
        if shutil.which(f"{command}-save") is None:
            continue
        for table in _TABLES:
            out = _run([f"{command}-save", "-t", table], check=False).stdout
            owned = {
                line[1:].split()[0]
                for line in out.splitlines()
                if line.startswith(":") and _OWNED_CHAIN.match(line[1:])
            }
            if not owned:
                continue
            for line in out.splitlines():
                if not line.startswith("-A "):
                    continue
                rule = shlex.split(line)
                chain = rule[1]
                target = rule[rule.index("-j") + 1] if "-j" in rule else ""
                if chain not in owned and target in owned:
                    _run([command, "-w", "-t", table, "-D", *rule[1:]], check=False)
            for chain in sorted(owned):
                _run([command, "-w", "-t", table, "-F", chain], check=False)
            for chain in sorted(owned):
                _run([command, "-w", "-t", table, "-X", chain], check=False)


def _read_sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text().strip() for name in _KUBELET_SYSCTLS}


def _restore_sysctls(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        if Path("/proc/sys", name).read_text().strip() != value:
            Path("/proc/sys", name).write_text(value + "\n")


def _node_processes(markers: tuple[str, ...]) -> list[int]:
    """Processes whose command line holds one of ``markers`` (a node's workspace or run
    directory: containerd, its shims, the kubelet, ...) or that sit in the Pods' cgroups."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(m in cmdline for m in markers) or f":/{_CGROUP_PARENT}/" in cgroups:
            found.add(int(entry.name))
    return sorted(found)


def _kill_node_processes(markers: tuple[str, ...]) -> None:
    for pid in _node_processes(markers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not _node_processes(markers), timeout=10)


def _remove_cgroup_tree(top: Path) -> None:
    """Removes ``top`` and every cgroup below it, deepest first (they must hold no task)."""
    if not top.is_dir():
        return
    for directory in sorted(
        (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def _sweep_dead_run(run_dir: Path) -> None:
    """Removes what a node whose harness process died left: its processes (containerd's
    shims and the containers outlive their parent), mounts, cgroups and changed kernel
    settings, then its run directory."""
    markers = [str(run_dir)]
    with contextlib.suppress(OSError):
        markers.append((run_dir / _WORKDIR_FILE).read_text().strip())
    _kill_node_processes(tuple(markers))
    for marker in markers:
        _unmount_below(Path(marker))
    for hierarchy in _cgroup_hierarchies():
        _remove_cgroup_tree(hierarchy / _CGROUP_PARENT)
    with contextlib.suppress(OSError, ValueError):
        _restore_sysctls(json.loads((run_dir / _SYSCTLS_FILE).read_text()))
    with contextlib.suppress(OSError, ValueError):
        for path in json.loads((run_dir / _CREATED_PATHS_FILE).read_text()):
            if Path(path) in _FIXED_PATHS:
                shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def _foreign_node_processes(own_pids: set[int]) -> list[str]:
    """kubelet or kube-proxy processes on this machine that this run did not start."""
    foreign = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own_pids:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        # A zombie has exited; it only waits for its new parent to reap it.
        if comm in ("kubelet", "kube-proxy") and state != "Z":
            foreign.append(f"{comm} (pid {entry.name})")
    return foreign


class NodeAddress:
    """The node's own address on an interface of its own (an empty bridge), and the lock that
    makes it the only node.

    Create it before the control plane (whose API server listens on this address) and remove
    it after. While it exists no other `NodeAddress` on the machine can be created.
    """

    def __init__(self, network: NodeNetwork | None = None) -> None:
        self.network = network if network is not None else NodeNetwork()
        self._lock: int | None = None

    @property
    def ip(self) -> str:
        return self.network.node_ip

    def create(self) -> None:
        """Takes the machine's node lock, checks the ranges are free, sweeps what a killed
        earlier run left, and adds the address."""
        if self._lock is not None:
            return
        self._take_lock()
        try:
            foreign = _foreign_node_processes(set())
            if foreign:
                raise RuntimeError(
                    "a kubelet or kube-proxy not started by this harness runs here "
                    f"({', '.join(foreign)}); its iptables chains would collide with ours"
                )
            self._sweep_stale()
            self._check_ranges()
            interface = self.network.address_interface
            # An empty bridge holds a local address as a dummy interface would; this
            # machine's kernel has no dummy driver.
            _run(["ip", "link", "add", interface, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.ip}/32", "dev", interface])
            _run(["ip", "link", "set", interface, "up"])
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Removes the address and releases the lock."""
        if _link_exists(self.network.address_interface):
            _run(["ip", "link", "del", self.network.address_interface], check=False)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> NodeAddress:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _take_lock(self) -> None:
        descriptor = os.open(_LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise RuntimeError(
                f"another local node runs on this machine (pid {owner or '?'} holds "
                f"{_LOCK_PATH}); only one can own kube-proxy's iptables chains"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        self._lock = descriptor

    def _sweep_stale(self) -> None:
        # With the lock held, interfaces and chains of ours can only be a killed run's.
        for interface in (self.network.address_interface, self.network.bridge):
            if _link_exists(interface):
                _run(["ip", "link", "del", interface], check=False)
        for stale in Path("/run").glob(f"{_RUN_DIR_PREFIX}*"):
            pid = stale.name.removeprefix(_RUN_DIR_PREFIX)
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _sweep_dead_run(stale)
        if iptables_chains():
            _remove_owned_chains()

    def _check_ranges(self) -> None:
        ours = self.network.networks()
        clashes = [
            f"{net} overlaps {description}"
            for description, used in _machine_networks(exclude={self.network.bridge})
            for net in ours
            if net.overlaps(used)
        ]
        clashes += [
            f"{net} holds this machine's resolver {address}"
            for address in _resolver_addresses()
            for net in ours
            if address in net
        ]
        if clashes:
            raise RuntimeError("the node's address ranges are not free: " + "; ".join(clashes))


@dataclass(frozen=True)
class NodeConfig:
    """Knobs for one node; defaults suit tests on a small machine."""

    name: str = "wasmfleet-node"
    cluster_domain: str = "cluster.local"
    # The ClusterIP of CoreDNS's Service; inside the control plane's service range.
    cluster_dns: str = "10.96.0.10"
    ready_timeout: float = 180.0
    tie_to_parent: bool = True


def _mount_points() -> list[Path]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        # mountinfo escapes space, tab, newline and backslash as octal.
        points.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw)))
    return points


def _mounts_below(directory: Path) -> list[Path]:
    return [p for p in _mount_points() if p == directory or directory in p.parents]


def _unmount_below(directory: Path) -> None:
    """Unmounts everything at or below ``directory``, deepest first (stacked mounts too)."""
    for _ in range(10):
        mounts = _mounts_below(directory)
        if not mounts:
            return
        for point in sorted(set(mounts), key=lambda p: len(p.parts), reverse=True):
            if _run(["umount", str(point)], check=False).returncode != 0:
                _run(["umount", "-l", str(point)], check=False)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Node:
    """containerd, CNI, kubelet, kube-proxy, kube-scheduler and CoreDNS for one workspace.

    ``plane`` must run with ``ControlPlaneConfig(address=address.ip, real_nodes=True)``;
    ``registry`` (optional) is made reachable over plain HTTP for image pulls.
    """

    plane: ControlPlane
    address: NodeAddress
    workdir: Path
    binaries: NodeBinaries
    registry: Registry | None = None
    config: NodeConfig = field(default_factory=NodeConfig)

    def __post_init__(self) -> None:
        self.network = self.address.network
        self.name = self.config.name
        self.logs_dir = self.workdir / "logs"
        self.pki_dir = self.workdir / "pki"
        self.containerd_root = self.workdir / "containerd" / "root"
        self.containerd_state = self.workdir / "containerd" / "state"
        self.kubelet_root = self.workdir / "kubelet"
        self.cni_conf_dir = self.workdir / "cni" / "net.d"
        self.cni_ipam_dir = self.workdir / "cni" / "ipam"
        # Unix socket paths are limited to 108 bytes; the workspace path can be long.
        self.run_dir = Path(f"/run/{_RUN_DIR_PREFIX}{os.getpid()}")
        self.containerd_socket = self.run_dir / "containerd.sock"
        self.runc_root = self.run_dir / "runc"
        self.cgroup_parent = _CGROUP_PARENT
        self.sandbox_image = ""
        self.coredns_image = ""
        self.kubelet_port = 0
        self._processes: dict[str, ManagedProcess] = {}
        self._created_cgroups: list[Path] = []
        self._veths_before: set[str] = set()
        self._pause: nodeimages.Image | None = None
        self._saved_sysctls: dict[str, str] = {}
        self._created_paths: list[Path] = []
        self._kube_proxy_config: Path | None = None
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Starts every component and returns once the Node is Ready, kube-proxy has written
        its rules, the scheduler is healthy and CoreDNS answers; stops what started and
        raises `NodeStartError` naming the component if any fails."""
        plane = self.plane.config
        if plane.address != self.address.ip or not plane.real_nodes:
            raise ValueError(
                "the control plane must run with "
                f"ControlPlaneConfig(address={self.address.ip!r}, real_nodes=True)"
            )
        # kube-proxy, the Pods' routes and the DNS address are all derived from this range.
        services = ipaddress.ip_network(plane.service_cluster_ip_range)
        if services != ipaddress.ip_network(self.network.service_cidr) or (
            ipaddress.ip_address(self.config.cluster_dns) not in services
        ):
            raise ValueError(
                f"the control plane's service range {services} must be the node's "
                f"{self.network.service_cidr} and hold its DNS address {self.config.cluster_dns}"
            )
        self._started = True
        self._veths_before = _veth_links()
        self._created_paths = [p for p in _FIXED_PATHS if not p.exists()]
        try:
            self._prepare_host()
            self._start_containerd()
            self._import_system_images()
            self._start_kubelet()
            self._start_kube_proxy()
            self._start_scheduler()
            self._deploy_coredns()
        except BaseException:
            self.stop()
            raise

    def stop(self, *, timeout: float = 90.0) -> None:
        """Removes the node's Pods, stops every component and removes what they left:
        containers, mounts, the bridge, iptables chains, cgroups and the run directory."""
        if not self._started:
            return
        self._started = False
        self._drain(timeout=timeout)
        for name in ("kube-scheduler", "kube-proxy", "kubelet", "containerd"):
            process = self._processes.pop(name, None)
            if process is not None:
                process.stop()
        self._remove_containers()
        self._cleanup_kube_proxy()
        _remove_owned_chains()
        _unmount_below(self.workdir)
        _unmount_below(self.run_dir)
        if _link_exists(self.network.bridge):
            _run(["ip", "link", "del", self.network.bridge], check=False)
        self._remove_cgroups()
        _restore_sysctls(self._saved_sysctls)
        for path in self._created_paths:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this node is still on the machine: processes, mounts, interfaces, iptables
        chains, containers, cgroups. Empty after `stop`."""
        found = [f"process {p}" for p in self._own_processes()]
        found += [f"mount {p}" for p in _mounts_below(self.workdir) + _mounts_below(self.run_dir)]
        found += [f"interface {name}" for name in (self.network.bridge,) if _link_exists(name)]
        found += [
            f"interface {name}"
            for name in sorted(_veth_links(unattached_only=True) - self._veths_before)
        ]
        found += [f"iptables {table}: {chains}" for table, chains in iptables_chains().items()]
        found += [f"container state {p}" for p in self._runc_containers()]
        found += [f"cgroup {p}" for p in self._created_cgroups if p.exists()]
        found += [f"directory {p}" for p in self._created_paths if p.exists()]
        now = _read_sysctls()
        found += [
            f"kernel setting {name}={now[name]} (was {value})"
            for name, value in self._saved_sysctls.items()
            if now[name] != value
        ]
        return found

    def process(self, name: str) -> ManagedProcess:
        """The running component called ``name``."""
        return self._processes[name]

    def ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Runs ``ctr`` against this node's containerd in the namespace the kubelet uses."""
        return _run(
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
        last: list[Any] = [None]

        def ready() -> bool:
            self._check_components()
            pod = self._get_json("pod", name, "-n", namespace)
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
                f"{json.dumps((last[0] or {}).get('status'))}\n"
                f"{self._processes['kubelet'].log_tail(20)}"
            ),
        )
        return last[0]

    # ---- start, step by step ---------------------------------------------------------

    def _prepare_host(self) -> None:
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
        (self.run_dir / _WORKDIR_FILE).write_text(str(self.workdir))
        (self.run_dir / _CREATED_PATHS_FILE).write_text(
            json.dumps([str(p) for p in self._created_paths])
        )
        self._create_cgroups()
        bridge = self.network.bridge
        prefix = ipaddress.ip_network(self.network.pod_cidr).prefixlen
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.network.gateway}/{prefix}", "dev", bridge])
        _run(["ip", "link", "set", bridge, "up"])
        # Forwarding for packets that arrive on the bridge only (Pod to Service to Pod); the
        # machine-wide net.ipv4.ip_forward stays as it is, so nothing else gets routed.
        Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").write_text("1\n")
        self._write_cni_config()

    def _create_cgroups(self) -> None:
        """``/wasmfleet-node`` in every cgroup hierarchy: the kubelet's cgroupRoot must
        exist, and one parent makes the Pods' cgroups easy to find and remove."""
        for hierarchy in _cgroup_hierarchies():
            path = hierarchy / self.cgroup_parent
            if not path.exists():
                path.mkdir()
                self._created_cgroups.append(path)
            if (hierarchy / "cpuset.cpus").exists():
                # A v1 cpuset cgroup admits no task until its CPUs and memory nodes are set.
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (path / name).write_text((hierarchy / name).read_text())

    def _write_cni_config(self) -> None:
        network = self.network
        conflist = {
            "cniVersion": "1.0.0",
            "name": "wasmfleet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": network.bridge,
                    # The harness gave the bridge its address; the plugin would also switch on
                    # net.ipv4.ip_forward for the whole machine if it were the gateway.
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.cni_ipam_dir),
                        "ranges": [[{"subnet": network.pod_cidr, "gateway": network.gateway}]],
                        # No default route: Pods reach Services and the node, nothing else.
                        "routes": [
                            {"dst": network.service_cidr, "gw": network.gateway},
                            {"dst": f"{network.node_ip}/32", "gw": network.gateway},
                        ],
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

        def answers() -> bool:
            self._processes["containerd"].check_alive()
            if not self.containerd_socket.exists():
                return False
            return (
                _run(
                    [str(self.binaries.ctr), "--address", str(self.containerd_socket), "version"],
                    check=False,
                    timeout=10,
                ).returncode
                == 0
            )

        self._wait("containerd", answers, timeout=60, what="does not answer on its socket")

    def _import_system_images(self) -> None:
        assert self._pause is not None
        self.import_image(self._pause, self.sandbox_image)
        coredns = nodeimages.render_image(
            [nodeimages.ImageFile("coredns", self.binaries.coredns)], entrypoint=["/coredns"]
        )
        self.coredns_image = self.import_image(coredns, f"wasmfleet.local/coredns:{coredns.tag}")

    def _start_kubelet(self) -> None:
        ca = self.plane.ca
        serving = ca.issue(
            "kubelet-serving",
            common_name=f"system:node:{self.name}",
            server_hosts=(self.address.ip, self.name),
        )
        kubeconfig = self.plane.kubeconfig_for_certificate(
            f"kubelet-{self.name}",
            common_name=f"system:node:{self.name}",
            organizations=("system:nodes",),
        )
        self.kubelet_port = free_port(self.address.ip)
        healthz_port = free_port()
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
            "cgroupRoot": f"/{self.cgroup_parent}",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.address.ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "clusterDNS": [self.config.cluster_dns],
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
        self._saved_sysctls = _read_sysctls()
        (self.run_dir / _SYSCTLS_FILE).write_text(json.dumps(self._saved_sysctls))
        self._spawn(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.pki_dir / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address.ip}",
                "--v=2",
            ],
            {**os.environ, "PATH": _SYSTEM_PATH},
        )
        self._wait(
            "kubelet", self._node_ready, timeout=self.config.ready_timeout, what="Node not Ready"
        )

    def _node_ready(self) -> bool:
        self._check_components()
        node = self._get_json("node", self.name)
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        # The node-lifecycle controller lifts the not-ready taint once the kubelet reports.
        taints = node.get("spec", {}).get("taints", [])
        return ready and not any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)

    def _start_kube_proxy(self) -> None:
        kubeconfig = self.plane.kubeconfig_for_certificate(
            "kube-proxy", common_name="system:kube-proxy"
        )
        healthz_port = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": self.network.cluster_cidr,
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # NodePorts only on the node's own address, never on the machine's interfaces.
            "nodePortAddresses": [f"{self.address.ip}/32"],
            "iptables": {
                # Source NAT for all Service traffic, so a reply from a Pod on the same bridge
                # returns through the host whether or not bridged traffic passes iptables.
                "masqueradeAll": True,
                # Would set route_localnet machine-wide.
                "localhostNodePorts": False,
            },
            # Leave the machine's conntrack sysctls alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        self._kube_proxy_config = self.workdir / "kube-proxy-config.yaml"
        self._kube_proxy_config.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn(
            "kube-proxy",
            [str(self.binaries.kube_proxy), f"--config={self._kube_proxy_config}", "--v=2"],
            {**os.environ, "PATH": _SYSTEM_PATH},
        )
        service_ip = self.plane.config.kubernetes_service_ip

        def programmed() -> bool:
            self._check_components()
            if not _http_ok(f"http://127.0.0.1:{healthz_port}/healthz"):
                return False
            return service_ip in _run(["iptables-save", "-t", "nat"], check=False).stdout

        self._wait("kube-proxy", programmed, timeout=60, what="no rules for the kubernetes Service")

    def _start_scheduler(self) -> None:
        kubeconfig = self.plane.kubeconfig_for_certificate(
            "kube-scheduler", common_name="system:kube-scheduler"
        )
        serving = self.plane.ca.issue(
            "kube-scheduler-serving", common_name="kube-scheduler", server_hosts=("127.0.0.1",)
        )
        port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
            ],
            None,
        )
        context = ssl.create_default_context(cafile=str(self.plane.ca.cert_path))

        def healthy() -> bool:
            self._check_components()
            return _http_ok(f"https://127.0.0.1:{port}/healthz", context)

        self._wait("kube-scheduler", healthy, timeout=60, what="/healthz does not answer ok")

    def _deploy_coredns(self) -> None:
        self.plane.kubectl_apply(*_coredns_objects(self.coredns_image, self.config))

        def available() -> bool:
            self._check_components()
            deployment = self._get_json("deployment", "coredns", "-n", "kube-system")
            return bool(deployment and deployment.get("status", {}).get("readyReplicas") == 1)

        self._wait("coredns", available, timeout=self.config.ready_timeout, what="not Ready")

    # ---- stop, step by step ----------------------------------------------------------

    def _drain(self, *, timeout: float) -> None:
        """Deletes the Pods bound to this node through the API and waits until the kubelet
        has torn them down (containers stopped, CNI released, volumes unmounted)."""
        kubelet = self._processes.get("kubelet")
        if kubelet is None or not kubelet.alive() or not self._api_answers():
            return
        self.plane.kubectl("cordon", self.name, check=False)
        selector = f"spec.nodeName={self.name}"
        self.plane.kubectl(
            "delete", "pods", "-A", "--field-selector", selector, "--wait=false", check=False
        )

        def gone() -> bool:
            if not kubelet.alive():
                return True
            listing = self._get_json("pods", "-A", "--field-selector", selector)
            return listing is not None and not listing.get("items")

        with contextlib.suppress(TimeoutError):
            wait_until(gone, timeout=timeout, interval=0.5)

    def _remove_containers(self) -> None:
        """Kills what survived the drain: every container in this node's runc root, then the
        shims of this containerd (they outlive it by design)."""
        runc = str(self.binaries.runc)
        for state in self._runc_containers():
            _run([runc, "--root", str(state.parent), "delete", "--force", state.name], check=False)
        _kill_node_processes(self._markers())

    def _cleanup_kube_proxy(self) -> None:
        if self._kube_proxy_config is None:
            return
        _run(
            [str(self.binaries.kube_proxy), "--cleanup", f"--config={self._kube_proxy_config}"],
            check=False,
        )

    def _remove_cgroups(self) -> None:
        for top in reversed(self._created_cgroups):
            _remove_cgroup_tree(top)

    # ---- helpers ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> None:
        process = ManagedProcess(
            name,
            argv,
            log_path=self.logs_dir / f"{name}.log",
            env=env,
            tie_to_parent=self.config.tie_to_parent,
        )
        process.start()
        self._processes[name] = process

    def _check_components(self) -> None:
        for process in self._processes.values():
            process.check_alive()

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

    def _api_answers(self) -> bool:
        try:
            return self.plane.get_raw("/readyz", timeout=2) == "ok"
        except (OSError, urllib.error.URLError):
            return False

    def _get_json(self, *args: str) -> Any:
        result = self.plane.kubectl("get", *args, "-o", "json", check=False, timeout=30)
        if result.returncode != 0 or not result.stdout.strip():
            return None
        return json.loads(result.stdout)

    def _runc_containers(self) -> list[Path]:
        if not self.runc_root.is_dir():
            return []
        return [state for ns in self.runc_root.iterdir() if ns.is_dir() for state in ns.iterdir()]

    def _markers(self) -> tuple[str, ...]:
        return (str(self.workdir), str(self.run_dir))

    def _own_processes(self) -> list[int]:
        return _node_processes(self._markers())


def _cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies (v1 controllers and the unified v2 one) under
    /sys/fs/cgroup."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        point = Path(left.split()[4])
        if fstype in ("cgroup", "cgroup2") and (
            point == _CGROUP_ROOT or _CGROUP_ROOT in point.parents
        ):
            found.append(point)
    return found


def _veth_links(*, unattached_only: bool = False) -> set[str]:
    """Host ends of CNI veth pairs (named ``veth<hex>`` by the bridge plugin; the agents' test
    hosts name theirs differently). ``unattached_only`` keeps those on no bridge: once this
    node's bridge is gone, a veth of its Pods would be one, while another program's Pods
    stay on that program's bridge."""
    out = _run(["ip", "-o", "link", "show", "type", "veth"], check=False).stdout
    names = set()
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("veth") and not (unattached_only and " master " in line):
            names.add(name)
    return names


def _coredns_objects(image: str, config: NodeConfig) -> Iterator[dict[str, Any]]:
    """CoreDNS as a Deployment and the ``kube-dns`` Service at the cluster DNS address.

    The Corefile answers only for the cluster domain and reverse zones: it has no ``forward``,
    so no query ever leaves the machine.
    """
    labels = {"k8s-app": "kube-dns"}
    namespace = "kube-system"
    corefile = (
        ".:53 {\n"
        "    errors\n"
        "    health :8080\n"
        "    ready :8181\n"
        f"    kubernetes {config.cluster_domain} in-addr.arpa ip6.arpa {{\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "        ttl 5\n"
        "    }\n"
        "    cache 5\n"
        "}\n"
    )
    yield {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "coredns", "namespace": namespace},
    }
    yield {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "wasmfleet:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    yield {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "wasmfleet:coredns"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "wasmfleet:coredns",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": namespace}],
    }
    yield {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "coredns", "namespace": namespace},
        "data": {"Corefile": corefile},
    }
    yield {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "coredns",
                    "dnsPolicy": "Default",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "coredns",
                            "image": image,
                            # Imported into containerd by the node; there is nothing to pull.
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8181},
                                "periodSeconds": 2,
                            },
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                },
            },
        },
    }
    yield {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": namespace, "labels": labels},
        "spec": {
            "selector": labels,
            "clusterIP": config.cluster_dns,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    }
