"""Density: one agent hosting hundreds of distinct services, its memory and its idle CPU.

Runs the real local control plane, a real registry and one agent (a node at an address of its
own in a network namespace). No operator runs: the bench writes the WasmBindings itself, one
per service, each naming a distinct module (the hello-c code under a distinct digest, as
tenants' modules would be), so only the agent is measured. It reports:

- the agent's resident memory (RSS and PSS) with no service, with every service Ready, and
  after one request to each; the increment per service;
- the agent's idle CPU (user + system) over a quiet interval with everything loaded;
- its memory once every module has gone unused for ``--unload-idle`` and been unloaded
  (``wasmfleet_agent_modules_loaded`` reaches 0), the memory bound of idle services;
- beside it, the baseline of a process per service: the RSS of one ``wasmfleet-agent serve``
  process serving one module, times the number of services.

With ``--baseline REV`` the same measurement runs first with the agent of revision ``REV``
(a git worktree under ``build/bench``), so that this tree's figures have their baseline from
the same run.

Bounded: every wait has a deadline; all traffic stays in the bench's network namespace.
Results: a table on stdout and JSON in ``build/bench/density.json`` (the baseline's in
``density-baseline.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from wasmfleet_common.kube import KubeClient, KubeConfig, resource_for
from wasmfleet_harness.agent import ServedModule
from wasmfleet_harness.binaries import REPO_ROOT, ensure_binaries
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.fleet import LocalFleet
from wasmfleet_harness.modules import build_all, with_custom_section
from wasmfleet_harness.netns import NetworkHosts, netns_available
from wasmfleet_harness.registry import Registry
from wasmfleet_oci.client import RegistryClient
from wasmfleet_oci.push import push_module
from wasmfleet_oci.reference import parse_reference

OUT = REPO_ROOT / "build" / "bench"
NAMESPACE = "density"
NODE = "dense-a"
BINDINGS = resource_for("wasmfleet.dev/v1alpha1", "WasmBinding")


@dataclass
class Memory:
    rss_mib: float
    pss_mib: float


@dataclass
class Result:
    services: int
    seconds_to_ready: float
    empty: Memory
    ready: Memory
    served: Memory
    unloaded: Memory
    unload_idle_seconds: float
    idle_cpu_percent: float
    per_service_kib: float
    process_per_service_mib: float
    threads: int
    open_fds: int


def memory(pid: int) -> Memory:
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    return Memory(round(rss, 1), round(pss, 1))


def counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of ``pid``."""
    proc = Path(f"/proc/{pid}")
    return len(list((proc / "task").iterdir())), len(list((proc / "fd").iterdir()))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0  # USER_HZ


def binding(index: int, image: str, digest: str) -> dict[str, Any]:
    name = f"svc-{index:04d}"
    return {
        "apiVersion": "wasmfleet.dev/v1alpha1",
        "kind": "WasmBinding",
        "metadata": {
            "name": f"{name}-r1",
            "namespace": NAMESPACE,
            "labels": {"wasmfleet.dev/service": name},
        },
        "spec": {
            "serviceName": name,
            "nodeName": NODE,
            "revision": "r1",
            "digest": digest,
            "workload": {"module": {"image": image}, "http": {}},
        },
    }


async def loaded_modules(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("wasmfleet_agent_modules_loaded "):
            return float(line.split()[1])
    raise RuntimeError("the agent exports no wasmfleet_agent_modules_loaded")


async def push_variants(registry: Registry, module: bytes, count: int) -> list[tuple[str, str]]:
    pushed = []
    async with RegistryClient() as client:
        for index in range(count):
            image = f"{registry.host}/density/svc:{index}"
            result = await push_module(
                client=client,
                reference=parse_reference(image),
                module=with_custom_section(module, f"tenant-{index}"),
            )
            pushed.append((image, result.manifest_digest))
    return pushed


async def measure(args: argparse.Namespace, workdir: Path, source: Path | None = None) -> Result:
    modules = build_all()
    plane = ControlPlane(ensure_binaries(), workdir / "plane")
    registry = Registry(workdir / "registry")
    fleet: LocalFleet | None = None
    plane.start()
    try:
        registry.start()
        plane.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all")
        plane.kubectl("create", "namespace", NAMESPACE)
        pushed = await push_variants(registry, modules["hello-c"].read_bytes(), args.services)
        fleet = LocalFleet(plane, workdir / "fleet", hosts=NetworkHosts(prefix="wfdense"))
        agent = fleet.add_agent(
            NODE,
            labels={"kubernetes.io/arch": "amd64"},
            extra_args=["--unload-idle", f"{args.unload_idle}s"],
            source=source,
        )
        pid = agent.process.pid
        assert pid is not None
        empty = memory(pid)
        async with (
            KubeClient(
                KubeConfig.from_kubeconfig(plane.kubeconfig), field_manager="wasmfleet-bench"
            ) as kube,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        ):
            started = time.monotonic()
            gate = asyncio.Semaphore(16)

            async def create(index: int, image: str, digest: str) -> None:
                async with gate:
                    await kube.create(binding(index, image, digest))

            await asyncio.gather(*(create(i, im, d) for i, (im, d) in enumerate(pushed)))
            deadline = started + args.timeout
            while True:
                items = (await kube.list(BINDINGS, namespace=NAMESPACE))["items"]
                ready = [b for b in items if (b.get("status") or {}).get("ready")]
                if len(ready) == args.services:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(ready)} of {args.services} bindings Ready")
                await asyncio.sleep(0.2)
            seconds = time.monotonic() - started
            loaded = memory(pid)
            # A quiet interval: nothing but heartbeats and the agent's own timers.
            before = cpu_seconds(pid)
            await asyncio.sleep(args.idle_seconds)
            idle = (cpu_seconds(pid) - before) / args.idle_seconds * 100
            failures = 0
            for item in ready:
                status = item["status"]
                url = f"http://{status['address']}:{status['port']}/"
                async with http.get(url) as response:
                    failures += response.status != 200
                    await response.read()
            if failures:
                raise RuntimeError(f"{failures} services did not answer 200")
            served = memory(pid)
            metrics = f"http://127.0.0.1:{agent.admin_port}/metrics"
            deadline = time.monotonic() + args.unload_idle * 3 + 30
            while await loaded_modules(http, metrics) > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("idle modules were never unloaded")
                await asyncio.sleep(0.5)
            unloaded = memory(pid)
        threads, fds = counts(pid)
    finally:
        if fleet is not None:
            fleet.close()
        registry.stop()
        plane.stop()
    baseline = ServedModule(workdir / "one", modules["hello-c"], name="one-service")
    with baseline:
        assert baseline.process.pid is not None
        single = memory(baseline.process.pid)
    return Result(
        services=args.services,
        seconds_to_ready=round(seconds, 2),
        empty=empty,
        ready=loaded,
        served=served,
        unloaded=unloaded,
        unload_idle_seconds=args.unload_idle,
        idle_cpu_percent=round(idle, 2),
        per_service_kib=round((served.rss_mib - empty.rss_mib) * 1024 / args.services, 1),
        process_per_service_mib=single.rss_mib,
        threads=threads,
        open_fds=fds,
    )


def render(result: Result) -> str:
    per_process = result.process_per_service_mib * result.services
    return "\n".join(
        [
            "| services | until all Ready | agent RSS empty | all Ready | after a request each "
            "| per service | idle CPU | idle modules unloaded | a process per service | ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result.services} | {result.seconds_to_ready:.1f} s "
            f"| {result.empty.rss_mib:.0f} MiB | {result.ready.rss_mib:.0f} MiB "
            f"| {result.served.rss_mib:.0f} MiB (PSS {result.served.pss_mib:.0f}) "
            f"| {result.per_service_kib:.0f} KiB | {result.idle_cpu_percent:.1f} % "
            f"| {result.unloaded.rss_mib:.0f} MiB (after {result.unload_idle_seconds:g} s idle) "
            f"| {per_process:.0f} MiB ({result.process_per_service_mib:.0f} MiB each) "
            f"| {per_process / result.served.rss_mib:.0f}x |",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="until all Ready")
    parser.add_argument("--unload-idle", type=float, default=5.0, help="agent's --unload-idle")
    parser.add_argument(
        "--baseline", metavar="REVISION", help="measure this revision's agent first, the same way"
    )
    args = parser.parse_args(argv)
    if not netns_available():
        print("the agent needs a network namespace: run as root with iproute2", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        from control_bench import _baseline_tree

        tree = _baseline_tree(args.baseline)
        try:
            with tempfile.TemporaryDirectory(prefix="wasmfleet-density-") as tmp:
                baseline = asyncio.run(measure(args, Path(tmp), source=tree))
        finally:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
            )
        (OUT / "density-baseline.json").write_text(json.dumps(asdict(baseline), indent=2))
        print(f"baseline {args.baseline}:")
        print(render(baseline))
        print("this tree:")
    with tempfile.TemporaryDirectory(prefix="wasmfleet-density-") as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    (OUT / "density.json").write_text(json.dumps(asdict(result), indent=2))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
