"""``wasmfleet-dev``: the local system behind the README's first command.

``up`` starts a keeper process, detached from the terminal, and shows what it prints until the
system is up. The keeper builds what is missing (the control-plane and node binaries, the Wasm
modules, the operator and agent images), starts a local cluster of real nodes
(`localsystem.LocalSystem`: a node LAN, a registry on it, etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, two nodes with containerd, the kubelet and kube-proxy,
CoreDNS), then does what a user does: pushes the images, ``helm install`` of the chart with the
images' registry and tags, ``wasmfleet push`` of the example modules, ``kubectl apply`` of
``examples/*/wasmservice.yaml``. It waits until every WasmService is Ready and shows each one
answering through its Service: by ClusterIP from this machine and by DNS name from a Pod. Then
it keeps the system running until ``down`` (SIGTERM), when it stops everything and leaves
nothing behind. Its log and state are in ``.wasmfleet/``; ``status`` says what runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from wasmfleet_harness.agent import push_module
from wasmfleet_harness.binaries import REPO_ROOT
from wasmfleet_harness.localsystem import RELEASE_NAMESPACE, LocalSystem
from wasmfleet_harness.modules import build_all
from wasmfleet_harness.netns import netns_available
from wasmfleet_harness.nodelan import NodeLan
from wasmfleet_harness.probe import exec_in, probe_pod, push_probe_image
from wasmfleet_harness.processes import wait_until

__all__ = ["main"]

STATE_DIR = REPO_ROOT / ".wasmfleet"
STATE_FILE = STATE_DIR / "state.json"
LOG_FILE = STATE_DIR / "up.log"
UP_MARKER = "Up. State and logs:"

EXAMPLES = (
    "hello-rust",
    "hello-go",
    "hello-c",
    "greeter",
    "hello-component",
    "hello-http-component",
    "hello-python",
    "relay-python",
    "wordcount-job",
)
STARTUP_LIMIT = 3600.0
"""Seconds ``up`` waits for the keeper: a cold machine builds Go binaries and images first."""


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (a keeper that exited, not yet reaped) is not alive.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _load_state() -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        return None
    return loaded


def _save_state(state: dict[str, Any]) -> None:
    STATE_FILE.write_text(json.dumps(state, indent=2))


def _keeper_alive(state: dict[str, Any] | None) -> bool:
    return state is not None and _pid_alive(int(state.get("keeper", 0)))


# ---- up: start the keeper and show what it prints --------------------------------------------


def cmd_up(_args: argparse.Namespace) -> int:
    state = _load_state()
    if _keeper_alive(state):
        print(f"already up (state in {STATE_DIR}); run `make down` first", file=sys.stderr)
        return 1
    if not netns_available():
        print(
            "make up runs real Kubernetes nodes (kubelet, containerd, kube-proxy) in network and "
            "mount namespaces of their own, which needs root and iproute2; run it as root",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    STATE_DIR.mkdir(parents=True)
    with LOG_FILE.open("wb") as log:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "wasmfleet_harness.cli", "keep"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,  # survives this terminal; `make down` ends it
        )
    _save_state({"keeper": keeper.pid})
    return _follow(keeper)


def _follow(keeper: subprocess.Popen[bytes]) -> int:
    """Prints the keeper's log as it grows, until the system is up (0) or the keeper ends (1)."""
    printed = 0
    deadline = time.monotonic() + STARTUP_LIMIT
    while True:
        text = LOG_FILE.read_text(errors="replace")
        if len(text) > printed:
            sys.stdout.write(text[printed:])
            sys.stdout.flush()
            printed = len(text)
        if UP_MARKER in text:
            return 0
        if keeper.poll() is not None:
            print(
                f"\nmake up failed (the keeper exited with {keeper.returncode}); its log: "
                f"{LOG_FILE}",
                file=sys.stderr,
            )
            return 1
        if time.monotonic() > deadline:
            print(
                f"\nmake up did not finish within {STARTUP_LIMIT:.0f}s; `make down` stops it",
                file=sys.stderr,
            )
            return 1
        with contextlib.suppress(subprocess.TimeoutExpired):
            keeper.wait(timeout=0.2)


# ---- keep: the process that owns the local system ----------------------------------------------


def cmd_keep(_args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    started = time.monotonic()
    system = LocalSystem(STATE_DIR / "system", progress=lambda line: print(line, flush=True))
    try:
        _step("control-plane and node binaries (the first run builds them from source)")
        _step(
            "starting the local cluster: registry, etcd, kube-apiserver, "
            "kube-controller-manager, kube-scheduler, 2 nodes (containerd, kubelet, "
            "kube-proxy), CoreDNS"
        )
        system.start()
        state = {
            "keeper": os.getpid(),
            "kubeconfig": str(system.plane.kubeconfig),
            "kubectl": str(system.binaries.kubectl),
            "server": system.plane.server,
            "registry": system.registry.host,
        }
        _save_state(state)
        if stop.is_set():
            return 0
        _install_and_show(system)
        print()
        print(f"{UP_MARKER} {STATE_DIR} (up in {time.monotonic() - started:.0f}s)")
        print(f"  export KUBECONFIG={system.plane.kubeconfig}")
        print(f"  {system.binaries.kubectl} get wasmservices,wasmbindings,wasmagents,nodes")
        print(f"  {system.binaries.kubectl} -n {RELEASE_NAMESPACE} logs ds/wasmfleet-agent")
        print(f"  curl {system.registry.url}/v2/_catalog")
        print("Stop with: make down", flush=True)
        stop.wait()
        return 0
    except Exception as error:  # printed for `up` to show; the system is stopped below
        print(f"\nERROR: {error}", flush=True)
        return 1
    finally:
        print("stopping the local system", flush=True)
        system.stop()
        print("stopped", flush=True)


def _install_and_show(system: LocalSystem) -> None:
    plane = system.plane
    _step("Wasm modules and components from Rust, Go, C and Python sources")
    modules = build_all()
    _step("the operator and agent images (linux/amd64 and linux/arm64), pushed to the registry")
    images = system.build_images()
    for image in images:
        print(f"    {image.reference}  ({image.outcome})")
    _step("helm install wasmfleet charts/wasmfleet (the images' registry and tags)")
    started = time.monotonic()
    system.install(images)
    print(f"    every Pod Running and Ready in {time.monotonic() - started:.1f}s")
    print(plane.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide").stdout, end="")

    _step("pushing the example modules")
    for name in EXAMPLES:
        reference = f"{system.registry.host}/wasmfleet/examples/{name}:1.0"
        print(f"    {reference}  {push_module(modules[name], reference, '--insecure')}")
    _step("kubectl apply -f examples/*/wasmservice.yaml")
    for name in EXAMPLES:
        plane.kubectl("apply", "-n", "default", "-f", "-", input=system.example_manifest(name))
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

    services = [name for name in EXAMPLES if not name.endswith("-job")]
    _step("a request to every Service by its ClusterIP, from this machine")
    for name in services:
        service = plane.kubectl_json("get", "service", "-n", "default", name)
        ip, port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"]
        wait_until(
            partial(system.cluster.service_routed_from_host, ip, port),
            timeout=30,
            message=f"kube-proxy never routed {ip}:{port}: nothing is sent to it",
        )
        url = f"http://{ip}:{port}/"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode(errors="replace").strip()
        print(f"    {name:16} {url:28} {body}")
    _step("a request to every Service by its DNS name, from a Pod")
    probe_image = push_probe_image(system.registry)
    plane.kubectl_apply(probe_pod("client", probe_image, "serve", "client"))
    system.cluster.wait_for_pod_ready("default", "client")
    for name in services:
        port = plane.kubectl_json("get", "service", "-n", "default", name)["spec"]["ports"][0][
            "port"
        ]
        url = f"http://{name}.default.svc.cluster.local:{port}/"
        body = exec_in(plane, "default", "client", "/probe", "get", url).strip()
        print(f"    {name:16} {url:56} {body}")
    _step("the wordcount job's output, from its agent's log")
    for line in _job_output(plane, "default/wordcount"):
        print(f"    {line}")


def _job_output(plane: Any, service: str) -> list[str]:
    logs = plane.kubectl(
        "logs",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        "app.kubernetes.io/component=agent",
        "--tail=-1",
        "--prefix=false",
        check=False,
    ).stdout
    lines = []
    for raw in logs.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(raw)
            if record.get("service") == service and record.get("stream") == "stdout":
                lines.append(str(record.get("message", "")))
    return lines


# ---- down and status -----------------------------------------------------------------------


def cmd_down(_args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("nothing is up")
        return 0
    pid = int(state.get("keeper", 0))
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not _pid_alive(pid), timeout=180, interval=0.2)
            print("stopped the local system")
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            print("the keeper did not stop in time: killed", file=sys.stderr)
    # Whatever a keeper that died left (processes, namespaces, routes, mounts, kernel
    # settings) is removed by the next node LAN to take the machine's lock.
    lan = NodeLan()
    lan.create()
    lan.remove()
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    """Whether the keeper runs, then the nodes, the release's Pods and the WasmServices.

    In the local system the kubelets restart the operator's and agents' Pods as they would
    in any cluster; the keeper itself is not restarted: if it died, `make down && make up`.
    """
    state = _load_state()
    if state is None:
        print("nothing is up")
        return 1
    if not _keeper_alive(state):
        print(
            f"DOWN: the keeper (pid {state.get('keeper')}) is not running; its log is "
            f"{LOG_FILE}\nRecover with: make down && make up"
        )
        return 1
    print(f"keeper running (pid {state['keeper']}); log {LOG_FILE}")
    if "kubeconfig" not in state:
        print("starting: the cluster is not up yet")
        return 0
    kubectl = [state["kubectl"], "--kubeconfig", state["kubeconfig"]]
    for args in (
        ["get", "nodes", "-o", "wide"],
        ["get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide"],
        ["get", "wasmservices", "-A"],
    ):
        done = subprocess.run([*kubectl, *args], capture_output=True, text=True, check=False)
        print(done.stdout + done.stderr, end="")
    print(f"kubeconfig: {state['kubeconfig']}\nregistry:   {state['registry']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmfleet-dev", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the local system and show it working").set_defaults(
        handler=cmd_up
    )
    commands.add_parser("down", help="stop everything `up` started").set_defaults(handler=cmd_down)
    commands.add_parser("status", help="say what is running").set_defaults(handler=cmd_status)
    commands.add_parser("keep", help="(internal) own the local system until SIGTERM").set_defaults(
        handler=cmd_keep
    )
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
