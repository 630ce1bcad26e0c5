"""``wasmfleet-dev``: the local environment behind the README's first command.

``up`` starts, detached from the terminal, a real control plane (etcd, kube-apiserver,
kube-controller-manager), a real OCI registry on loopback (on port 5001, the one the examples
name, when it is free), three agents registered as nodes amd64-a, amd64-b and arm64-a, each
at an address of its own in a network namespace, and the operator. It builds the example
modules from source, pushes them, applies ``examples/*/wasmservice.yaml``, waits until every
WasmService is Ready and shows ``kubectl get wasmservices``, a request to every endpoint and
the job's output. State and logs are in ``.wasmfleet/`` at the repository root. ``down``
stops everything ``up`` started and removes that state; ``status`` says what is running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Sequence
from functools import partial

from wasmfleet_harness.agent import push_module
from wasmfleet_harness.binaries import REPO_ROOT, ensure_binaries
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.fleet import LocalFleet, endpoints_of
from wasmfleet_harness.modules import build_all
from wasmfleet_harness.netns import NetworkHosts, netns_available, remove_host
from wasmfleet_harness.processes import wait_until
from wasmfleet_harness.registry import Registry

__all__ = ["main"]

STATE_DIR = REPO_ROOT / ".wasmfleet"
STATE_FILE = STATE_DIR / "state.json"


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _pid_gone(pid: int) -> bool:
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _load_state() -> dict[str, object] | None:
    try:
        loaded: dict[str, object] = json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        return None
    return loaded


def _running_pids(state: dict[str, object]) -> dict[str, int]:
    pids = state.get("pids", {})
    assert isinstance(pids, dict)
    return {str(name): int(pid) for name, pid in pids.items() if _pid_alive(int(pid))}


EXAMPLES = ("hello-rust", "hello-go", "hello-c", "greeter", "wordcount-job")
EXAMPLE_REGISTRY = "localhost:5001"
NODES = {"amd64-a": "amd64", "amd64-b": "amd64", "arm64-a": "arm64"}


def _registry_port() -> int | None:
    """5001, the port the examples name, when it is free; any free port otherwise."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 5001))
        except OSError:
            return None
    return 5001


def _save_state(state: dict[str, object]) -> None:
    STATE_FILE.write_text(json.dumps(state, indent=2))


def cmd_up(_args: argparse.Namespace) -> int:
    state = _load_state()
    if state is not None and _running_pids(state):
        down = _down_components(state)
        if down:
            print(
                f"partly up: {', '.join(down)} not running (see `make status`); recover with "
                "`make down && make up`",
                file=sys.stderr,
            )
        else:
            print(f"already up (state in {STATE_DIR}); run `make down` first", file=sys.stderr)
        return 1
    if not netns_available():
        print(
            "make up gives each agent an address of its own in a network namespace, which "
            "needs root and iproute2; run it as root",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    STATE_DIR.mkdir(parents=True)

    _step("control-plane binaries (the first run builds them from source: several minutes)")
    binaries = ensure_binaries()
    _step("Wasm modules from Rust, Go and C sources")
    modules = build_all()

    _step("starting etcd, kube-apiserver and kube-controller-manager")
    started = time.monotonic()
    plane = ControlPlane(
        binaries,
        STATE_DIR / "control-plane",
        ControlPlaneConfig(tie_to_parent=False, etcd_unsafe_no_fsync=False),
    )
    plane.start()
    print(f"    ready in {time.monotonic() - started:.1f}s at {plane.server}")
    pids: dict[str, int] = {
        name: plane.process(name).pid or 0
        for name in ("etcd", "kube-apiserver", "kube-controller-manager")
    }
    state = {"pids": pids, "kubeconfig": str(plane.kubeconfig), "server": plane.server}
    _save_state(state)

    _step("starting the OCI registry")
    registry = Registry(STATE_DIR / "registry", tie_to_parent=False, port=_registry_port())
    registry.start()
    pids["registry"] = registry.process.pid or 0
    state["registry"] = registry.url
    _save_state(state)

    _step("installing the CRDs")
    plane.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    plane.kubectl(
        "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=wasmfleet"
    )

    _step("starting three agents (nodes amd64-a, amd64-b, arm64-a) and the operator")
    fleet = LocalFleet(
        plane, STATE_DIR / "fleet", hosts=NetworkHosts(prefix="wfdev"), tie_to_parent=False
    )
    state["netns"] = []
    for node, arch in NODES.items():
        # amd64-b answers requests in two worker processes (`--processes 2`)
        processes = 2 if node == "amd64-b" else 1
        agent = fleet.add_agent(node, labels={"kubernetes.io/arch": arch}, processes=processes)
        pids[f"agent-{node}"] = agent.process.pid or 0
        state["netns"] = [h.name for h in fleet.hosts.hosts]
        _save_state(state)
    operator = fleet.start_operator("operator")
    pids["operator"] = operator.process.pid or 0
    _save_state(state)

    _step("pushing the example modules to the registry")
    for name in EXAMPLES:
        reference = f"{registry.host}/wasmfleet/examples/{name}:1.0"
        print(f"    {reference}  {push_module(modules[name], reference)}")

    _step("applying examples/*/wasmservice.yaml")
    for name in EXAMPLES:
        manifest = (REPO_ROOT / "examples" / name / "wasmservice.yaml").read_text()
        if registry.port != 5001:
            manifest = manifest.replace(EXAMPLE_REGISTRY, registry.host)
        plane.kubectl("apply", "-n", "default", "-f", "-", input=manifest)

    _step("waiting until every WasmService is Ready")
    plane.kubectl(
        "wait",
        "--for=condition=Ready",
        "wasmservices",
        "--all",
        "-n",
        "default",
        "--timeout=180s",
        timeout=200,
    )
    print(plane.kubectl("get", "wasmservices", "-n", "default").stdout, end="")
    _step("a request to every endpoint of every Service")
    for name in EXAMPLES:
        for target in endpoints_of(plane, "default", name.removesuffix("-job")):
            url = f"http://{target.address}:{target.port}/"
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode(errors="replace").strip()
            print(f"    {name:10} {target.node:8} {url:28} {body}")
    _step("the wordcount job's output, from its agent's log")
    for line in _job_output(fleet, "default/wordcount"):
        print(f"    {line}")

    print()
    print(f"Up. State and logs: {STATE_DIR}")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print(f"  {binaries.kubectl} get wasmservices,wasmbindings,wasmagents")
    print(f"  curl {registry.url}/v2/_catalog")
    print("Stop with: make down")
    return 0


def _job_output(fleet: LocalFleet, service: str) -> list[str]:
    lines = []
    for log in sorted((fleet.workdir / "logs").glob("agent-*.log")):
        for raw in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if record.get("service") == service and record.get("stream") == "stdout":
                lines.append(str(record.get("message", "")))
    return lines


def cmd_down(_args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("nothing is up")
        return 0
    # Stop in reverse order of start: the operator and agents first, etcd last.
    pids = state.get("pids", {})
    assert isinstance(pids, dict)
    for name in reversed(list(pids)):
        pid = _running_pids(state).get(name)
        if pid is None:
            continue
        os.killpg(pid, signal.SIGTERM)
        try:
            wait_until(partial(_pid_gone, pid), timeout=10)
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name}")
    hosts = state.get("netns", [])
    assert isinstance(hosts, list)
    for host in hosts:
        remove_host(str(host))
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return 0


def _down_components(state: dict[str, object]) -> list[str]:
    pids = state.get("pids", {})
    assert isinstance(pids, dict)
    running = _running_pids(state)
    return [str(name) for name in pids if name not in running]


def cmd_status(_args: argparse.Namespace) -> int:
    """One line per component `up` started; exit 1 and the way back when any is not running.

    The processes are not supervised (in a cluster, the operator's Deployment and the agents'
    DaemonSet restart them): a component that died stays down until the system is restarted.
    """
    state = _load_state()
    if state is None:
        print("nothing is up")
        return 1
    pids = state.get("pids", {})
    assert isinstance(pids, dict)
    running = _running_pids(state)
    logs = {
        "etcd": "control-plane/logs",
        "kube-apiserver": "control-plane/logs",
        "kube-controller-manager": "control-plane/logs",
        "registry": "registry",
    }
    for name, pid in pids.items():
        if name in running:
            print(f"{name:26} running  (pid {pid})")
        else:
            where = STATE_DIR / logs.get(str(name), "fleet/logs")
            print(f"{name:26} DOWN     (was pid {pid}; its log is under {where})")
    print(f"kubeconfig: {state.get('kubeconfig')}")
    print(f"registry:   {state.get('registry')}")
    down = _down_components(state)
    if down:
        print(f"\n{len(down)} component(s) down. Recover with: make down && make up")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmfleet-dev", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the local system and show it working").set_defaults(
        handler=cmd_up
    )
    commands.add_parser("down", help="stop everything `up` started").set_defaults(handler=cmd_down)
    commands.add_parser("status", help="say what is running").set_defaults(handler=cmd_status)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
