"""A node whose harness was killed leaves work behind; the next run on the machine removes it.

containerd's shims and the containers they run outlive the harness by design, along with
mounts, iptables chains, cgroups and the kernel settings the kubelet changed. A run killed
with SIGKILL never reaches `Node.stop`; the next `NodeAddress` finds the dead run's directory
and removes what it left. This module runs after ``test_node.py``, whose node has released the
machine's node lock by then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wasmfleet_harness.binaries import Binaries, NodeBinaries, ensure_node_binaries
from wasmfleet_harness.node import NodeAddress, iptables_chains
from wasmfleet_harness.processes import Workspace, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="a node needs root (containers, interfaces, iptables, mounts)"
)

# Started in a child process, which the test then kills as a crash or a CI timeout would.
_RUN_A_NODE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from wasmfleet_harness.binaries import Binaries, NodeBinaries
    from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
    from wasmfleet_harness.node import Node, NodeAddress

    workdir = Path(sys.argv[1])
    address = NodeAddress()
    address.create()
    plane = ControlPlane(
        Binaries.from_cache(),
        workdir / "control-plane",
        ControlPlaneConfig(address=address.ip, real_nodes=True),
    )
    plane.start()
    node = Node(plane, address, workdir / "node", NodeBinaries.from_cache())
    node.start()
    print("node up", flush=True)
    while True:
        time.sleep(60)
    """
)


def _kernel_settings() -> dict[str, str]:
    names = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
    return {name: Path("/proc/sys", name).read_text().strip() for name in names}


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name} {cmdline[:120]}")
    return found


def _mounts_below(directory: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(directory))]


def test_the_next_run_removes_what_a_killed_node_left_on_the_machine(
    binaries: Binaries, workspace: Workspace
) -> None:
    node_binaries: NodeBinaries = ensure_node_binaries()
    assert not node_binaries.missing()
    settings_before = _kernel_settings()
    workdir = workspace.subdir("killed-node")
    log = workdir / "child.log"
    with log.open("w") as output:
        child = subprocess.Popen(
            [sys.executable, "-c", _RUN_A_NODE, str(workdir)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: "node up" in log.read_text() or child.poll() is not None,
            timeout=240,
            interval=0.5,
            message=lambda: f"the child's node did not come up\n{log.read_text()[-3000:]}",
        )
        assert child.poll() is None, log.read_text()[-3000:]
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    run_dir = Path(f"/run/wasmfleet-node-{child.pid}")
    # What a killed run leaves: shims and containers (CoreDNS) still run, mounts stay.
    wait_until(
        lambda: not _processes_mentioning(f"--kubeconfig={workdir}"),
        timeout=30,
        message="the kubelet did not die with its parent",
    )
    assert _processes_mentioning(str(run_dir)), "expected containerd's shims to outlive it"
    assert _mounts_below(workdir / "node")
    assert iptables_chains()

    with NodeAddress():
        pass

    assert _processes_mentioning(str(run_dir)) == []
    assert _processes_mentioning(str(workdir)) == []
    assert _mounts_below(workdir) == []
    assert iptables_chains() == {}
    assert not run_dir.exists()
    assert _kernel_settings() == settings_before
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "wfcni0" not in links
    assert "wfnode0" not in links
