"""``wasmfleet-dev``: the local environment behind the README's first command.

``up`` starts a real control plane (etcd, kube-apiserver, kube-controller-manager) and a real
OCI registry on loopback, detached from the terminal, with their state and logs in
``.wasmfleet/`` at the repository root; it builds the example modules from source and shows
them working. ``down`` stops everything ``up`` started and removes that state. ``status``
says what is running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from wasmfleet_harness.binaries import REPO_ROOT, ensure_binaries
from wasmfleet_harness.controlplane import ControlPlane, ControlPlaneConfig
from wasmfleet_harness.modules import build_all
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


def _run_module(path: Path) -> str:
    # Imported here: wasmtime is only needed for the demonstration, not for starting servers.
    import tempfile

    import wasmtime

    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    with tempfile.NamedTemporaryFile() as out:
        wasi = wasmtime.WasiConfig()
        wasi.stdout_file = out.name
        store.set_wasi(wasi)
        instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(path)))
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        try:
            start(store)
        except wasmtime.ExitTrap as exit_trap:
            if exit_trap.code != 0:
                raise
        return Path(out.name).read_text().strip()


def cmd_up(_args: argparse.Namespace) -> int:
    state = _load_state()
    if state is not None and _running_pids(state):
        print(f"already up (state in {STATE_DIR}); run `make down` first", file=sys.stderr)
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
    _step("starting the OCI registry")
    registry = Registry(STATE_DIR / "registry", tie_to_parent=False)
    try:
        registry.start()
    except BaseException:
        plane.stop()
        raise

    pids = {
        name: plane.process(name).pid
        for name in ("etcd", "kube-apiserver", "kube-controller-manager")
    }
    pids["registry"] = registry.process.pid
    STATE_FILE.write_text(
        json.dumps(
            {
                "pids": pids,
                "kubeconfig": str(plane.kubeconfig),
                "server": plane.server,
                "registry": registry.url,
            },
            indent=2,
        )
    )

    _step("the cluster answers")
    print(plane.kubectl("get", "namespaces").stdout, end="")
    _step("the example modules run under wasmtime")
    for name, path in modules.items():
        if name.startswith("hello-"):
            print(f"    {name:12} {_run_module(path)}")

    print()
    print(f"Up. State and logs: {STATE_DIR}")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print(f"  {binaries.kubectl} get namespaces")
    print(f"  curl {registry.url}/v2/_catalog")
    print("Stop with: make down")
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("nothing is up")
        return 0
    # Stop in reverse order of start so the API server never loses etcd under a client.
    for name in ("registry", "kube-controller-manager", "kube-apiserver", "etcd"):
        pid = _running_pids(state).get(name)
        if pid is None:
            continue
        os.killpg(pid, signal.SIGTERM)
        try:
            wait_until(partial(_pid_gone, pid), timeout=10)
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name}")
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    state = _load_state()
    if state is None:
        print("nothing is up")
        return 1
    running = _running_pids(state)
    print(json.dumps({**state, "running": sorted(running)}, indent=2))
    return 0 if running else 1


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
