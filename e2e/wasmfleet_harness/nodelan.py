"""The node LAN: what the local cluster shares on the host, and what it still owns machine-wide.

Nodes (`wasmfleet_harness.node`) live in namespaces of their own, so most of a node is private
to it: its interfaces, routes and kube-proxy's iptables rules (network namespace), the paths
the kubelet and libcni write whatever their configuration (mount namespace), its hostname.
What is left on the host belongs to the cluster, and `NodeLan` owns it:

- **The LAN bridge** (``wfnode0``) with the host's address (``10.251.0.1/24``), where the API
  server listens and every node's veth is attached; the host's routes to the nodes' Pods and
  Services, tagged with protocol 251 (`wasmfleet_harness.nodenet` plans them). The host
  forwards nothing: the bridge switches between nodes, each node routes for its own Pods.
- **A lock** (``/run/wasmfleet-node.lock``): one local cluster per machine, because the
  ranges, interface and namespace names are fixed and because the kernel settings below are
  machine-wide. Any number of nodes join that cluster.
- **Kernel settings**: every kubelet sets ``vm.overcommit_memory``, ``kernel.panic_on_oops``
  and a few more at start, and cannot be told not to. They are not namespaced; the LAN records
  them before any kubelet runs, nodes put them back when they stop, and so does the LAN.
- **Mount points**: the kubelet writes to ``/var/lib/kubelet``, ``/var/log/containers`` and
  libcni to ``/var/lib/cni`` whatever they are told. Each node binds directories of its own
  over them in its mount namespace; the host only needs the (empty) directories to exist, so
  the LAN creates those that are missing and removes them again.
- **The parent cgroup** ``/wasmfleet-node`` in every hierarchy, holding one cgroup per node.

A harness killed with SIGKILL reaches none of its clean-up; the next `NodeLan` to take the
lock finds the dead run's directory (``/run/wasmfleet-node-<pid>``) and removes what it left:
processes (containerd's shims and the containers outlive their parent), namespaces, routes,
cgroups, mount points and the changed kernel settings.
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
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wasmfleet_harness import nodenet
from wasmfleet_harness.nodenet import ClusterNetwork, Route
from wasmfleet_harness.processes import wait_until

__all__ = [
    "CGROUP_PARENT",
    "KUBELET_ROOT",
    "PRIVATE_PATHS",
    "WORKDIR_FILE",
    "CommandError",
    "NodeLan",
    "apply_routes",
    "cgroup_hierarchies",
    "create_cgroup",
    "directory_marker",
    "iptables_chains",
    "kill_processes",
    "matching_processes",
    "mount_points",
    "mounts_below",
    "nat_rules",
    "netns_path",
    "read_kernel_settings",
    "read_routes",
    "remove_cgroup_tree",
    "restore_kernel_settings",
    "run",
    "unmount_below",
]

_LOCK_PATH = Path("/run/wasmfleet-node.lock")
_RUN_DIR_PREFIX = "wasmfleet-node-"
_NETNS_DIR = Path("/run/netns")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
# The parent of every node's cgroup, in each hierarchy.
CGROUP_PARENT = "wasmfleet-node"
# Chains the kubelet, kube-proxy and the CNI plugins create; no other program here uses them.
_OWNED_CHAIN = re.compile(r"^(KUBE-|CNI-)")
_TABLES = ("filter", "nat", "mangle", "raw")
# Kernel settings the kubelet sets machine-wide at start (overcommit, panic on oops, ...).
_KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Paths outside any configured directory that the kubelet (device-plugin socket, container
# log links) and libcni (its cache) write to; each node binds its own over them. The kubelet
# also uses the first as its root directory: sockets below it need a short path.
KUBELET_ROOT = Path("/var/lib/kubelet")
PRIVATE_PATHS = (KUBELET_ROOT, Path("/var/log/containers"), Path("/var/lib/cni"))
_KERNEL_SETTINGS_FILE = "kernel-settings.json"
_CREATED_PATHS_FILE = "created-paths.json"
# In a node's run directory: where its workspace is, so a later run can find its processes.
WORKDIR_FILE = "workdir"
# Interfaces of the single-node layout that came before the LAN; a dead run may have left them.
_OLD_INTERFACES = ("wfcni0",)


class CommandError(RuntimeError):
    """A command the harness ran to set up the machine failed; the message has its output."""


def run(
    argv: list[str], *, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Runs ``argv``; with ``check``, raises `CommandError` naming the command and what it
    printed if it fails (``ip`` and ``mount`` say why only on stderr)."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise CommandError(f"{shlex.join(argv)} exited with {result.returncode}: {output}")
    return result


def netns_path(name: str) -> Path:
    return _NETNS_DIR / name


def _in_netns(netns: str | None) -> list[str]:
    return [] if netns is None else ["nsenter", f"--net={netns_path(netns)}", "--"]


def _link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _netns_names() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def iptables_chains(netns: str | None = None) -> dict[str, list[str]]:
    """Chains named ``KUBE-*``/``CNI-*`` that exist now in the host's tables (or in network
    namespace ``netns``'s), per ``iptables``/``ip6tables`` table (``"ip6tables nat": [...]``)."""
    found: dict[str, list[str]] = {}
    for command in ("iptables", "ip6tables"):
        if shutil.which(f"{command}-save") is None:
            continue
        for table in _TABLES:
            out = run([*_in_netns(netns), f"{command}-save", "-t", table], check=False).stdout
            chains = [
                line[1:].split()[0]
                for line in out.splitlines()
                if line.startswith(":") and _OWNED_CHAIN.match(line[1:])
            ]
            if chains:
                found[f"{command} {table}"] = chains
    return found


def nat_rules(netns: str | None = None) -> str:
    """``iptables-save -t nat`` of the host, or of network namespace ``netns``."""
    return run([*_in_netns(netns), "iptables-save", "-t", "nat"], check=False).stdout


def _remove_owned_chains() -> None:
    """Deletes every ``KUBE-*``/``CNI-*`` chain of the host and the rules that jump to them.

    Nodes keep their chains in their own namespaces; only a node of the single-node layout
    that came before, killed without cleaning up, can have left these. Called with the lock
    held, when no other local node can exist.
    """
    for command in ("iptables", "ip6tables"):
        if shutil.which(f"{command}-save") is None:
            continue
        for table in _TABLES:
            out = run([f"{command}-save", "-t", table], check=False).stdout
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
                target = rule[rule.index("-j") + 1] if "-j" in rule else ""
                if rule[1] not in owned and target in owned:
                    run([command, "-w", "-t", table, "-D", *rule[1:]], check=False)
            for chain in sorted(owned):
                run([command, "-w", "-t", table, "-F", chain], check=False)
            for chain in sorted(owned):
                run([command, "-w", "-t", table, "-X", chain], check=False)


def read_routes(netns: str | None = None) -> set[Route]:
    """The routes of protocol 251 (the harness's) in the host's main table or ``netns``'s."""
    where = [] if netns is None else ["-n", netns]
    out = run(
        ["ip", *where, "-j", "route", "show", "proto", str(nodenet.ROUTE_PROTOCOL)], check=False
    ).stdout
    entries: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return nodenet.parse_routes(entries)


def apply_routes(desired: set[Route], netns: str | None = None) -> None:
    """Makes the harness's routes of the host (or ``netns``) exactly ``desired``."""
    where = [] if netns is None else ["-n", netns]
    current = read_routes(netns)
    for route in sorted(current - desired):
        run(["ip", *where, "route", "del", *route.argv()], check=False)
    for route in sorted(desired - current):
        run(["ip", *where, "route", "replace", *route.argv()])


def read_kernel_settings() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text().strip() for name in _KUBELET_SYSCTLS}


def restore_kernel_settings(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        if Path("/proc/sys", name).read_text().strip() != value:
            Path("/proc/sys", name).write_text(value + "\n")


def _namespace_inode(pid: str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def matching_processes(
    *,
    markers: Iterable[str] = (),
    cgroup: str | None = None,
    net_namespaces: Iterable[int] = (),
    mount_namespaces: Iterable[int] = (),
) -> list[int]:
    """Processes whose command line holds one of ``markers`` (`directory_marker` of a node's
    workspace or run directory: containerd, its shims, the kubelet, ...), that sit in
    ``cgroup`` (a path such as ``/wasmfleet-node/wasmfleet-node-1``, in any hierarchy: the
    Pods' containers), or that are in one of the given network or mount namespaces (by
    inode)."""
    markers = tuple(markers)
    nets, mounts = set(net_namespaces), set(mount_namespaces)
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cgroups = (entry / "cgroup").read_text() if cgroup is not None else ""
        except OSError:
            continue
        if (
            any(m in cmdline for m in markers)
            or (cgroup is not None and _in_cgroup(cgroups, cgroup))
            or (nets and _namespace_inode(entry.name, "net") in nets)
            or (mounts and _namespace_inode(entry.name, "mnt") in mounts)
        ):
            found.add(int(entry.name))
    return sorted(found)


def directory_marker(directory: Path) -> str:
    """What a command line holds when it names a path in ``directory``: the path and a slash,
    so that ``/run/wasmfleet-node-12`` does not also find ``/run/wasmfleet-node-123``."""
    return f"{directory}/"


def _in_cgroup(proc_cgroup: str, cgroup: str) -> bool:
    """Whether a ``/proc/<pid>/cgroup`` text puts the process at or below ``cgroup`` in any
    hierarchy (lines read ``ID:CONTROLLERS:PATH``)."""
    for line in proc_cgroup.splitlines():
        path = line.split(":", 2)[-1]
        if path == cgroup or path.startswith(cgroup + "/"):
            return True
    return False


def kill_processes(**selection: Any) -> None:
    """SIGKILLs every process `matching_processes` finds and waits until none is left."""

    def remaining() -> list[int]:
        return matching_processes(**selection)

    for pid in remaining():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not remaining(), timeout=10, interval=0.1)


def cgroup_hierarchies() -> list[Path]:
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


def create_cgroup(relative: str) -> list[Path]:
    """Creates ``relative`` in every hierarchy (its parent must exist) and returns those it
    created."""
    created = []
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / relative
        if not path.exists():
            path.mkdir()
            created.append(path)
        if (hierarchy / "cpuset.cpus").exists():
            # A v1 cpuset cgroup admits no task until its CPUs and memory nodes are set.
            for name in ("cpuset.cpus", "cpuset.mems"):
                (path / name).write_text((path.parent / name).read_text())
    return created


def remove_cgroup_tree(top: Path) -> None:
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


def mount_points(pid: int | None = None) -> list[Path]:
    """Mount points as this process (or process ``pid``, in its mount namespace) sees them."""
    points = []
    source = Path("/proc", "self" if pid is None else str(pid), "mountinfo")
    for line in source.read_text().splitlines():
        raw = line.split()[4]
        # mountinfo escapes space, tab, newline and backslash as octal.
        points.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw)))
    return points


def mounts_below(directory: Path) -> list[Path]:
    """The host's mounts at or below ``directory``."""
    return [p for p in mount_points() if p == directory or directory in p.parents]


def unmount_below(directory: Path) -> None:
    """Unmounts everything at or below ``directory``, deepest first (stacked mounts too)."""
    for _ in range(10):
        mounts = mounts_below(directory)
        if not mounts:
            return
        for point in sorted(set(mounts), key=lambda p: len(p.parts), reverse=True):
            if run(["umount", str(point)], check=False).returncode != 0:
                run(["umount", "-l", str(point)], check=False)


def _machine_networks(exclude: set[str]) -> list[tuple[str, ipaddress.IPv4Network]]:
    """Every IPv4 route and address of this machine (all tables), except the harness's own
    routes and those on the ``exclude`` interfaces: (description, network)."""
    found = []
    for line in run(["ip", "-4", "-o", "route", "show", "table", "all"]).stdout.splitlines():
        fields = line.split()
        if not fields or fields[0] in ("broadcast", "multicast", "blackhole"):
            continue
        if fields[0] in ("local", "unreachable"):
            fields = fields[1:]
        if f"proto {nodenet.ROUTE_PROTOCOL}" in line:
            continue
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


def _foreign_node_processes() -> list[str]:
    """kubelet or kube-proxy processes on this machine that no harness run started: they
    would fight over the kernel settings and the kubelet's fixed paths."""
    foreign = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
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


def _sweep_run(run_dir: Path) -> None:
    """Removes what the harness run of ``run_dir`` has on the machine besides the LAN itself:
    the processes of its nodes (by workspace, run directory, cgroup and namespace), their
    namespaces, mounts of the single-node layout, cgroups, the kernel settings it changed and
    the mount points it created. For a run that died, and for this run's own at the end.

    Called with the lock held: every node namespace and node cgroup is then this cluster's.
    """
    directories = [run_dir]
    for workdir_file in (run_dir / WORKDIR_FILE, *run_dir.glob(f"*/{WORKDIR_FILE}")):
        with contextlib.suppress(OSError):
            directories.append(Path(workdir_file.read_text().strip()))
    stale_namespaces = [n for n in _netns_names() if re.fullmatch(r"lcnode\d+", n)]
    nets = {os.stat(netns_path(n)).st_ino for n in stale_namespaces}
    kill_processes(
        markers=[directory_marker(d) for d in directories],
        cgroup=f"/{CGROUP_PARENT}",
        net_namespaces=nets,
    )
    for name in stale_namespaces:
        run(["ip", "netns", "del", name], check=False)
    for directory in directories:
        unmount_below(directory)
    for hierarchy in cgroup_hierarchies():
        remove_cgroup_tree(hierarchy / CGROUP_PARENT)
    with contextlib.suppress(OSError, ValueError):
        restore_kernel_settings(json.loads((run_dir / _KERNEL_SETTINGS_FILE).read_text()))
    with contextlib.suppress(OSError, ValueError):
        for path in json.loads((run_dir / _CREATED_PATHS_FILE).read_text()):
            if Path(path) in PRIVATE_PATHS:
                shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)


class NodeLan:
    """The node LAN and the machine's lock: create it before the control plane (whose API
    server listens on `host_ip`), join nodes to it, remove it after.

    While it exists no other `NodeLan` on the machine can be created.
    """

    def __init__(self, network: ClusterNetwork | None = None) -> None:
        self.network = network if network is not None else ClusterNetwork()
        problems = self.network.problems()
        if problems:
            raise ValueError("the cluster's ranges do not fit together: " + "; ".join(problems))
        self.run_dir = Path(f"/run/{_RUN_DIR_PREFIX}{os.getpid()}")
        self.kernel_settings: dict[str, str] = {}
        self._lock: int | None = None
        self._joined: set[int] = set()
        self._claimed: set[int] = set()
        self._created_paths: list[Path] = []
        self._created_cgroups: list[Path] = []
        # Nodes join and leave from the thread that starts them; routes change under this.
        self._routes_lock = threading.Lock()

    @property
    def host_ip(self) -> str:
        """The host's address on the LAN, for ``ControlPlaneConfig(address=...)``."""
        return self.network.host_ip

    @property
    def created(self) -> bool:
        """Whether the LAN exists (and this run holds the machine's lock)."""
        return self._lock is not None

    @property
    def joined(self) -> frozenset[int]:
        """Indices of the nodes on the LAN now."""
        return frozenset(self._joined)

    def create(self) -> None:
        """Takes the lock, sweeps what a killed earlier run left, checks the ranges are free,
        records the kernel settings and creates the bridge, routes, cgroup and mount points."""
        if self._lock is not None:
            return
        self._take_lock()
        try:
            # A killed run's kubelets may still be dying: the sweep waits for them first.
            self._sweep_stale()
            foreign = _foreign_node_processes()
            if foreign:
                raise RuntimeError(
                    "a kubelet or kube-proxy not started by this harness runs here "
                    f"({', '.join(foreign)}); it would fight ours over the kernel settings"
                )
            self._check_ranges()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.kernel_settings = read_kernel_settings()
            (self.run_dir / _KERNEL_SETTINGS_FILE).write_text(json.dumps(self.kernel_settings))
            self._created_paths = [p for p in PRIVATE_PATHS if not p.exists()]
            (self.run_dir / _CREATED_PATHS_FILE).write_text(
                json.dumps([str(p) for p in self._created_paths])
            )
            for path in self._created_paths:
                path.mkdir(parents=True)
            self._created_cgroups = create_cgroup(CGROUP_PARENT)
            bridge = self.network.bridge
            prefix = ipaddress.ip_network(self.network.lan).prefixlen
            # A bridge with no port but the nodes' veths: the host's address lives on it, and
            # it switches between nodes without the host routing anything.
            run(["ip", "link", "add", bridge, "type", "bridge"])
            run(["ip", "link", "set", bridge, "address", nodenet.bridge_mac(self.host_ip)])
            run(["ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", bridge])
            run(["ip", "link", "set", bridge, "up"])
            apply_routes(nodenet.plan_host_routes(self.network, ()))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Removes the bridge and routes, whatever of this run's nodes is still here, the
        cgroup and mount points, puts the kernel settings back and releases the lock."""
        if self._lock is None:
            return  # without the lock, the LAN on this machine is another run's
        apply_routes(set())
        if _link_exists(self.network.bridge):
            run(["ip", "link", "del", self.network.bridge], check=False)
        _sweep_run(self.run_dir)
        self._joined.clear()
        self._claimed.clear()
        os.close(self._lock)
        self._lock = None

    def __enter__(self) -> NodeLan:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def claim(self, index: int) -> None:
        """Reserves slot ``index`` for a node about to start; two nodes of one LAN would
        otherwise share (and remove) each other's namespace, address and routes."""
        with self._routes_lock:
            if not self.created:
                raise ValueError("the node LAN has not been created")
            if index in self._claimed:
                raise ValueError(f"node slot {index} is taken on this LAN")
            self._claimed.add(index)

    def release(self, index: int) -> None:
        """Frees slot ``index`` once its node is gone."""
        with self._routes_lock:
            self._claimed.discard(index)

    def join(self, index: int) -> None:
        """Routes node ``index`` (its namespace and veth exist): the host and every node on
        the LAN reach its Pods, and it reaches theirs."""
        with self._routes_lock:
            self._joined.add(index)
            self._apply_routes()

    def leave(self, index: int) -> None:
        """Removes node ``index``'s routes from the host and the other nodes."""
        with self._routes_lock:
            self._joined.discard(index)
            self._apply_routes()

    def leftovers(self) -> list[str]:
        """What of the LAN is still on the machine. Empty after `remove`."""
        found = [f"interface {self.network.bridge}"] if _link_exists(self.network.bridge) else []
        found += [f"route {' '.join(r.argv())}" for r in sorted(read_routes())]
        found += [f"cgroup {p}" for p in self._created_cgroups if p.exists()]
        found += [f"directory {p}" for p in self._created_paths if p.exists()]
        found += [f"run directory {self.run_dir}"] if self.run_dir.exists() else []
        now = read_kernel_settings()
        found += [
            f"kernel setting {name}={now[name]} (was {value})"
            for name, value in self.kernel_settings.items()
            if now[name] != value
        ]
        return found

    def _apply_routes(self) -> None:
        apply_routes(nodenet.plan_host_routes(self.network, self._joined))
        for index in self._joined:
            netns = self.network.slot(index).netns
            apply_routes(nodenet.plan_node_routes(self.network, index, self._joined), netns)

    def _take_lock(self) -> None:
        descriptor = os.open(_LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise RuntimeError(
                f"another local cluster runs on this machine (pid {owner or '?'} holds "
                f"{_LOCK_PATH}); its ranges, names and kernel settings are the same as ours"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        self._lock = descriptor

    def _sweep_stale(self) -> None:
        # With the lock held, namespaces, interfaces, routes and chains of ours can only be a
        # killed run's.
        for stale in Path("/run").glob(f"{_RUN_DIR_PREFIX}*"):
            pid = stale.name.removeprefix(_RUN_DIR_PREFIX)
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _sweep_run(stale)
        for name in _netns_names():
            if re.fullmatch(r"lcnode\d+", name):
                net = os.stat(netns_path(name)).st_ino
                kill_processes(net_namespaces={net})
                run(["ip", "netns", "del", name], check=False)
        for interface in (self.network.bridge, *_OLD_INTERFACES):
            if _link_exists(interface):
                run(["ip", "link", "del", interface], check=False)
        apply_routes(set())
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
            raise RuntimeError("the cluster's address ranges are not free: " + "; ".join(clashes))
