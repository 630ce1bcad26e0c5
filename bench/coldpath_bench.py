"""From ``kubectl apply`` to the first answer, and from an agent restart to serving again.

Runs the real local control plane, a real registry, one agent (a node at an address of its
own in a network namespace) and the operator, then measures, for a one-replica WasmService
created through the API:

- (a) **cached**: the module is pulled and its machine code is in the compiled-code cache;
- (b) **pulled**: the module is in the agent's store, its machine code is not (deleted);
- (c) **cold**: a module nobody has seen (a fresh digest, pushed just before).

Each trial is split where the system hands over: the operator's reaction (create → the
WasmBinding exists; includes resolving the tag at the registry), the agent's watch (binding →
the agent starts on it, from the agent's log), pulling, compiling or loading machine code and
opening the listener (to the agent reporting Ready), the operator publishing the endpoint
(Ready → the EndpointSlice lists it), and the first 200 through that endpoint. Times come from
watches on the API server and the agent's JSON log, all on this machine's clock.

Then **agent restart**: with ``--restart-services`` services running (each a distinct module,
all cached), the agent is stopped and started again; the time from its start until every
replica answers on its new port, per module, against the goal of 0.2 s per module.

Bounded: every wait has a deadline; all traffic stays on loopback and the bench's own network
namespace. Results: a table on stdout and JSON in ``build/bench/coldpath.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from wasmfleet_common.kube import KubeClient, KubeConfig, resource_for
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.binaries import REPO_ROOT, ensure_binaries
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.fleet import LocalFleet
from wasmfleet_harness.modules import build_all, with_custom_section
from wasmfleet_harness.netns import NetworkHosts, netns_available
from wasmfleet_harness.processes import wait_until
from wasmfleet_harness.registry import Registry

OUT = REPO_ROOT / "build" / "bench"
NAMESPACE = "bench"
NODE = "bench-a"
BINDINGS = resource_for("wasmfleet.dev/v1alpha1", "WasmBinding")
SLICES = resource_for("discovery.k8s.io/v1", "EndpointSlice")
SERVICES = resource_for("wasmfleet.dev/v1alpha1", "WasmService")
PHASES = ("operator", "agent watch", "pull", "load+listen", "endpoint", "first 200")


@dataclass
class Trial:
    case: str
    total: float
    phases: dict[str, float] = field(default_factory=dict)


def _variant(module: Path, tag: str, directory: Path) -> Path:
    """The module with a custom section naming ``tag``: the same code under a new digest."""
    out = directory / f"{module.stem}-{tag}.wasm"
    out.write_bytes(with_custom_section(module.read_bytes(), tag))
    return out


def _service(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "wasmfleet.dev/v1alpha1",
        "kind": "WasmService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"module": {"image": image}, "replicas": 1, "http": {}},
    }


def _agent_times(log: Path, binding: str) -> dict[str, float]:
    """When the agent moved the binding into each state (from its JSON log)."""
    seen: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if binding not in line or not line.startswith("{"):
            continue
        record = json.loads(line)
        message = str(record.get("message", ""))
        if record.get("binding", "").endswith(binding) and message.startswith("replica "):
            state = message.removeprefix("replica ")
            stamp = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
            seen.setdefault(state, stamp)
    return seen


class Bench:
    def __init__(self, plane: ControlPlane, fleet: LocalFleet, registry: Registry) -> None:
        self.plane = plane
        self.fleet = fleet
        self.registry = registry
        self.kube = KubeClient(
            KubeConfig.from_kubeconfig(plane.kubeconfig), field_manager="wasmfleet-bench"
        )
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def close(self) -> None:
        await self.kube.close()
        await self.http.close()

    async def trial(self, case: str, name: str, image: str, deadline: float = 60.0) -> Trial:
        bindings = await self.kube.list(BINDINGS, namespace=NAMESPACE)
        slices = await self.kube.list(SLICES, namespace=NAMESPACE)
        marks: dict[str, float] = {}
        endpoint: dict[str, Any] = {}
        done = asyncio.Event()

        async def watch_bindings() -> None:
            version = bindings["metadata"]["resourceVersion"]
            selector = f"wasmfleet.dev/service={name}"
            async for _kind, obj in self.kube.watch(
                BINDINGS, resource_version=version, namespace=NAMESPACE, label_selector=selector
            ):
                now = time.time()
                marks.setdefault("binding", now)
                endpoint["binding"] = obj["metadata"]["name"]
                if (obj.get("status") or {}).get("ready"):
                    marks.setdefault("ready", now)

        async def watch_slices() -> None:
            version = slices["metadata"]["resourceVersion"]
            selector = f"kubernetes.io/service-name={name}"
            async for _kind, obj in self.kube.watch(
                SLICES, resource_version=version, namespace=NAMESPACE, label_selector=selector
            ):
                for item in obj.get("endpoints") or []:
                    if (item.get("conditions") or {}).get("ready"):
                        marks.setdefault("slice", time.time())
                        endpoint["url"] = (
                            f"http://{item['addresses'][0]}:{obj['ports'][0]['port']}/"
                        )
                        done.set()

        watchers = [asyncio.create_task(watch_bindings()), asyncio.create_task(watch_slices())]
        try:
            started = time.time()
            await self.kube.create(_service(name, image))
            await asyncio.wait_for(done.wait(), timeout=deadline)
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with self.http.get(endpoint["url"]) as response:
                        if response.status == 200:
                            await response.read()
                            break
                if time.time() - started > deadline:
                    raise TimeoutError(f"{name} never answered")
                await asyncio.sleep(0.002)
            answered = time.time()
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        agent = _agent_times(self.fleet.agents[NODE].process.log_path, endpoint["binding"])
        pulling = agent.get("Pulling", marks["binding"])
        compiling = agent.get("Compiling", pulling)
        ready = agent.get("Ready", marks.get("ready", compiling))
        phases = {
            "operator": marks["binding"] - started,
            "agent watch": max(0.0, pulling - marks["binding"]),
            "pull": compiling - pulling,
            "load+listen": ready - compiling,
            "endpoint": marks["slice"] - ready,
            "first 200": answered - marks["slice"],
        }
        return Trial(case, answered - started, phases)

    async def delete(self, name: str) -> None:
        await self.kube.delete(SERVICES, name, NAMESPACE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = await self.kube.list(
                BINDINGS, namespace=NAMESPACE, label_selector=f"wasmfleet.dev/service={name}"
            )
            if not left["items"]:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"bindings of {name} were not removed")


def _drop_compiled(fleet: LocalFleet) -> int:
    compiled = fleet.workdir / "agents" / NODE / "compiled"
    files = list(compiled.glob("*.cwasm"))
    for path in files:
        path.unlink()
    return len(files)


async def cold_paths(
    bench: Bench, modules: dict[str, Path], scratch: Path, trials: int
) -> list[Trial]:
    registry = bench.registry.host
    hello = modules["hello-c"]
    image = f"{registry}/bench/hello-c:warm"
    push_module(hello, image)
    await bench.trial("warm-up", "warmup", image)
    await bench.delete("warmup")
    results = []
    for index in range(trials):
        trial = await bench.trial("cached", f"cached-{index}", image)
        results.append(trial)
        await bench.delete(f"cached-{index}")
    for index in range(trials):
        _drop_compiled(bench.fleet)
        trial = await bench.trial("pulled", f"pulled-{index}", image)
        results.append(trial)
        await bench.delete(f"pulled-{index}")
    for index in range(trials):
        fresh = _variant(hello, f"cold{index}", scratch)
        tagged = f"{registry}/bench/hello-c:cold{index}"
        push_module(fresh, tagged)
        trial = await bench.trial("cold", f"cold-{index}", tagged)
        results.append(trial)
        await bench.delete(f"cold-{index}")
    return results


async def agent_restart(
    bench: Bench, modules: dict[str, Path], scratch: Path, count: int
) -> dict[str, float]:
    registry = bench.registry.host
    names = []
    for index in range(count):
        module = _variant(modules["hello-c"], f"restart{index}", scratch)
        image = f"{registry}/bench/restart:{index}"
        push_module(module, image)
        await bench.kube.create(_service(f"restart-{index}", image))
        names.append(f"restart-{index}")

    async def serving() -> set[str]:
        found = set()
        for name in names:
            slices = await bench.kube.list(
                SLICES, namespace=NAMESPACE, label_selector=f"kubernetes.io/service-name={name}"
            )
            for item in slices["items"]:
                for endpoint in item.get("endpoints") or []:
                    if not (endpoint.get("conditions") or {}).get("ready"):
                        continue
                    url = f"http://{endpoint['addresses'][0]}:{item['ports'][0]['port']}/"
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        async with bench.http.get(url) as response:
                            if response.status == 200:
                                found.add(name)
        return found

    deadline = time.monotonic() + 120
    while await serving() != set(names):
        if time.monotonic() > deadline:
            raise TimeoutError("the restart services never all served")
        await asyncio.sleep(0.1)
    agent = bench.fleet.agents[NODE]
    agent.process.stop()
    restarted = time.monotonic()
    bench.fleet.start_agent(NODE)
    process_up = time.monotonic() - restarted
    # Every binding must report Ready again (on a new port) and answer there.
    deadline = time.monotonic() + 120
    while True:
        bindings = await bench.kube.list(BINDINGS, namespace=NAMESPACE)
        fresh = [
            b
            for b in bindings["items"]
            if b["metadata"]["labels"].get("wasmfleet.dev/service", "").startswith("restart-")
            and (b.get("status") or {}).get("ready")
            and (b.get("status") or {}).get("restarts", 0) == 0
        ]
        if len(fresh) == count and await _all_answer(bench, fresh):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the agent never served every module again")
        await asyncio.sleep(0.02)
    total = time.monotonic() - restarted
    for name in names:
        await bench.kube.delete(SERVICES, name, NAMESPACE)
    return {
        "modules": float(count),
        "total_s": total,
        "process_ready_s": process_up,
        "per_module_s": (total - process_up) / count,
    }


async def _all_answer(bench: Bench, bindings: list[dict[str, Any]]) -> bool:
    for binding in bindings:
        status = binding["status"]
        url = f"http://{status['address']}:{status['port']}/"
        try:
            async with bench.http.get(url) as response:
                if response.status != 200:
                    return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
    return True


def render(trials: Sequence[Trial], restart: dict[str, float]) -> str:
    lines = [
        "| case | trials | p50 total | p90 total | "
        + " | ".join(f"{p} (p50)" for p in PHASES)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(PHASES),
    ]
    for case in ("cached", "pulled", "cold"):
        chosen = [t for t in trials if t.case == case]
        if not chosen:
            continue
        totals = sorted(t.total for t in chosen)
        p90 = totals[min(len(totals) - 1, round(0.9 * (len(totals) - 1)))]
        cells = [f"{statistics.median(t.phases[p] for t in chosen) * 1000:.0f} ms" for p in PHASES]
        lines.append(
            f"| {case} | {len(chosen)} | {statistics.median(totals) * 1000:.0f} ms "
            f"| {p90 * 1000:.0f} ms | " + " | ".join(cells) + " |"
        )
    if restart:
        lines += [
            "",
            "| agent restart | modules | until all serve | agent process ready | per module "
            "after that | goal |",
            "|---|---:|---:|---:|---:|---:|",
            f"| cached modules | {restart['modules']:.0f} | {restart['total_s'] * 1000:.0f} ms "
            f"| {restart['process_ready_s'] * 1000:.0f} ms "
            f"| {restart['per_module_s'] * 1000:.0f} ms | 200 ms |",
        ]
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Trial], dict[str, float]]:
    modules = build_all()
    plane = ControlPlane(ensure_binaries(), workdir / "plane")
    plane.start()
    registry = Registry(workdir / "registry")
    fleet: LocalFleet | None = None
    bench: Bench | None = None
    try:
        registry.start()
        plane.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all")
        plane.kubectl("create", "namespace", NAMESPACE)
        fleet = LocalFleet(plane, workdir / "fleet", hosts=NetworkHosts(prefix="wfbench"))
        fleet.add_agent(NODE, labels={"kubernetes.io/arch": "amd64"})
        fleet.start_operator("operator")
        wait_until(lambda: fleet is not None and fleet.leader() is not None, timeout=30)
        bench = Bench(plane, fleet, registry)
        scratch = workdir / "variants"
        scratch.mkdir()
        trials = await cold_paths(bench, modules, scratch, args.trials)
        restart = await agent_restart(bench, modules, scratch, args.restart_services)
        return trials, restart
    finally:
        if bench is not None:
            await bench.close()
        if fleet is not None:
            fleet.close()
        registry.stop()
        plane.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7, help="per case")
    parser.add_argument("--restart-services", type=int, default=10)
    args = parser.parse_args(argv)
    if not netns_available():
        print("the agent needs a network namespace: run as root with iproute2", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wasmfleet-coldpath-") as tmp:
        trials, restart = asyncio.run(run(args, Path(tmp)))
    (OUT / "coldpath.json").write_text(
        json.dumps({"trials": [asdict(t) for t in trials], "restart": restart}, indent=2)
    )
    print(render(trials, restart))
    print(f"\n(measured in {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
