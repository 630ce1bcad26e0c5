"""Test hosts with their own IP addresses, in network namespaces the run creates itself.

Kubernetes refuses loopback addresses in EndpointSlices, so each local agent needs an address
of its own. A `TestHost` is a network namespace joined to the root namespace by a veth pair:
the namespace side has the host's address, the root side the peer address, on a private
/30 chosen so that it overlaps nothing on the machine. The agent process stays in the root
namespace (it talks to the API server on loopback) and opens its listening sockets inside the
host's namespace (`wasmfleet_agent.sockets.bind_in_namespace`), so traffic to the host's
address crosses the veth into the namespace, exactly like traffic to another machine.
Nothing is routed anywhere else.

Namespaces are named after the pid of the run that made them; `NetworkHosts` removes its own
on close and sweeps those of runs that died without cleaning up.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NetworkHosts", "TestHost", "netns_available", "remove_host"]

_NETNS_DIR = Path("/run/netns")
_NAME = re.compile(r"^wf(\d+)h(\d+)$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_available() -> bool:
    """Whether this process may create network namespaces (root and iproute2 present)."""
    if os.geteuid() != 0:
        return False
    try:
        return _ip("netns", "list", check=False).returncode == 0
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class TestHost:
    """One namespace with one address; ``peer`` is the root namespace's end of the link."""

    name: str
    address: str
    peer: str

    @property
    def netns(self) -> Path:
        return _NETNS_DIR / self.name


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-4", "-o", "addr", "show").stdout
    nets = []
    for match in re.finditer(r"inet (\S+)", out):
        nets.append(ipaddress.IPv4Interface(match.group(1)).network)
    return nets


def remove_host(name: str) -> None:
    """Removes the namespace ``name`` and its link, if they exist."""
    _ip("netns", "del", name, check=False)
    _ip("link", "del", f"{name}r", check=False)


class NetworkHosts:
    """Creates and removes `TestHost`s for one run."""

    def __init__(self, *, prefix: str | None = None) -> None:
        """``prefix`` names the namespaces (default ``wf<pid>``, swept once that pid is gone);
        a fixed prefix such as ``wfdev`` is for hosts that outlive the process making them."""
        self.hosts: list[TestHost] = []
        self._prefix = prefix if prefix is not None else f"wf{os.getpid()}"
        self._sweep()
        self._block = self._free_block()

    @staticmethod
    def _sweep() -> None:
        for line in _ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            match = _NAME.match(name)
            if match is None:
                continue
            pid = int(match.group(1))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                _ip("netns", "del", name, check=False)
                _ip("link", "del", f"{name}r", check=False)

    @staticmethod
    def _free_block() -> ipaddress.IPv4Network:
        used = _used_networks()
        candidates = [
            ipaddress.IPv4Network(f"10.{b}.{c}.0/24") for b in range(200, 250) for c in (0, 64, 128)
        ]
        random.shuffle(candidates)
        for block in candidates:
            if not any(block.overlaps(u) for u in used):
                return block
        raise RuntimeError("no free private /24 for test hosts")

    def add(self) -> TestHost:
        """Creates one more host; its /30 comes from this run's private /24."""
        index = len(self.hosts)
        subnet = list(self._block.subnets(new_prefix=30))[index]
        peer, address = (str(a) for a in list(subnet.hosts())[:2])
        name = f"{self._prefix}h{index}"
        root_end, host_end = f"{name}r", f"{name}n"
        if len(root_end) > 15:
            raise RuntimeError(f"interface name {root_end} too long")
        _ip("netns", "add", name)
        try:
            _ip("link", "add", root_end, "type", "veth", "peer", "name", host_end)
            _ip("link", "set", host_end, "netns", name)
            _ip("addr", "add", f"{peer}/30", "dev", root_end)
            _ip("link", "set", root_end, "up")
            _ip("-n", name, "addr", "add", f"{address}/30", "dev", host_end)
            _ip("-n", name, "link", "set", host_end, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            _ip("netns", "del", name, check=False)
            _ip("link", "del", root_end, check=False)
            raise
        host = TestHost(name=name, address=address, peer=peer)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            remove_host(host.name)
        self.hosts.clear()

    def __enter__(self) -> NetworkHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
