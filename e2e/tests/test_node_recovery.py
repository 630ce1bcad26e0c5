"""A cluster whose harness was killed leaves work behind; the next run on the machine removes it.

containerd's shims and the containers they run outlive the harness by design, and with them
the nodes' namespaces; the host keeps the LAN bridge, its routes, the cgroups, the mount points
and the kernel settings the kubelets changed. A run killed with SIGKILL reaches none of its
clean-up; the next `NodeLan` finds the dead run's directory and removes what it left. This
module runs after ``test_cluster.py`` and ``test_node.py``, whose LANs have released the
machine's lock by then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wasmfleet_harness.binaries import Binaries, NodeBinaries
from wasmfleet_harness.nodelan import (
    CGROUP_PARENT,
    PRIVATE_PATHS,
    NodeLan,
    cgroup_hierarchies,
    iptables_chains,
    read_routes,
)
from wasmfleet_harness.processes import Workspace, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="a node needs root (namespaces, interfaces, mounts, cgroups)"
)

# Started in a child process, which the test then kills as a crash or a CI timeout would.
_RUN_A_CLUSTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from wasmfleet_harness.cluster import local_cluster

    with local_cluster(Path(sys.argv[1]), nodes=2):
        print("cluster up", flush=True)
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


def _node_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("lcnode")]


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_the_next_run_removes_what_a_killed_cluster_left_on_the_machine(
    binaries: Binaries, node_binaries: NodeBinaries, workspace: Workspace
) -> None:
    assert not node_binaries.missing()
    with NodeLan():
        pass  # the machine as it is without any cluster, whatever an earlier run left
    settings_before = _kernel_settings()
    paths_before = {p: p.exists() for p in PRIVATE_PATHS}
    workdir = workspace.subdir("killed-cluster")
    log = workdir / "child.log"
    with log.open("w") as output:
        child = subprocess.Popen(
            [sys.executable, "-c", _RUN_A_CLUSTER, str(workdir)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: "cluster up" in log.read_text() or child.poll() is not None,
            timeout=240,
            interval=0.5,
            message=lambda: f"the child's cluster did not come up\n{log.read_text()[-3000:]}",
        )
        assert child.poll() is None, log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    run_dir = Path(f"/run/wasmfleet-node-{child.pid}")
    # What a killed run leaves: shims and containers (CoreDNS) still run and hold their
    # node's namespaces; the LAN, its routes and the changed kernel settings stay.
    wait_until(
        lambda: not _processes_mentioning(f"--kubeconfig={workdir}"),
        timeout=30,
        message="the kubelets did not die with their parent",
    )
    assert _processes_mentioning(str(run_dir)), "expected containerd's shims to outlive it"
    assert sorted(_node_namespaces()) == ["lcnode1", "lcnode2"]
    assert "wfnode0" in _links()
    assert read_routes()

    with NodeLan() as lan:
        # The sweep ran before the new LAN was made: only the new LAN's own parts are here.
        assert lan.joined == frozenset()

    assert lan.leftovers() == []
    assert _processes_mentioning(str(run_dir)) == []
    assert _processes_mentioning(str(workdir)) == []
    assert _node_namespaces() == []
    assert "lcnode" not in _links()
    assert "wfnode0" not in _links()
    assert read_routes() == set()
    assert iptables_chains() == {}
    assert not run_dir.exists()
    assert not any((h / CGROUP_PARENT).exists() for h in cgroup_hierarchies())
    assert _kernel_settings() == settings_before
    assert {p: p.exists() for p in PRIVATE_PATHS} == paths_before
