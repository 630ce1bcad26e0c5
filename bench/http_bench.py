"""HTTP latency and throughput of the agent, side by side with its baselines, in one run.

Targets (each a server on loopback, started and stopped here):

- ``bare``: a bare aiohttp handler, the ceiling of a Python front end on this machine;
- ``agent/<module>``: ``wasmfleet-agent serve`` with a hello module (Rust, Go, C), a fresh
  Wasm instance per request, answered by the agent process itself;
- ``threads/<module>``: the agent with ``--inline-budget 0s``: every run handed to a Wasm
  thread, as before short runs went inline (`server.inline`), the baseline of that change;
- ``workers/<module>``: the same with ``--processes N`` (N = the number of cores): worker
  processes, each accepting on its socket of one ``SO_REUSEPORT`` group;
- ``spawn/<module>``: the native wasmtime CLI spawned per request (the process model);
- ``wasmtime-serve/<component>``: native ``wasmtime serve`` on a wasi:http component
  (``hello-http-component``, a Rust hello; ``hello-python``, the Python example, with
  ``-S cli=y``), the ceiling of the same engine without Python. The agent serves the same
  components (``agent/<component>``, ``workers/<component>``) with its own wasi:http host, so
  those rows compare like with like; the WAGI hello modules are compared with the Rust hello
  component.

Each target is loaded with ``wrk`` at concurrency 1, 8 and 64 for a fixed, short duration;
the table gives p50/p99 latency, requests per second, and the agent's throughput as a ratio
of the bare handler and of spawning the CLI. Every run is bounded in time; all traffic stays
on 127.0.0.1. Results: a Markdown table on stdout and JSON in ``build/bench/http.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from wasmfleet_harness.agent import wasmtime_cli as harness_wasmtime_cli
from wasmfleet_harness.host import machine_facts
from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODULES = REPO / "build" / "modules"
OUT = REPO / "build" / "bench"
HTTP_COMPONENTS = frozenset({"hello-http-component", "hello-python"})
"""Modules of the list that are wasi:http components (compared with `wasmtime serve`)."""


@dataclass(frozen=True)
class Result:
    target: str
    concurrency: int
    p50_us: float
    p99_us: float
    rps: float
    errors: int


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_wrk(text: str) -> tuple[float, float, float, int]:
    """(p50 µs, p99 µs, requests/s, errors) from ``wrk --latency`` output."""

    def percentile(p: str) -> float:
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        if match is None:
            raise ValueError(f"no {p}% line in wrk output:\n{text}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{text}")
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*?(\d+) timeout"):
        found = re.search(pattern, text)
        if found:
            errors += int(found.group(1))
    return percentile("50"), percentile("99"), float(rps.group(1)), errors


def wasmtime_cli() -> str | None:
    try:
        return str(harness_wasmtime_cli())
    except (ImportError, OSError):
        return shutil.which("wasmtime")


def targets(modules: Sequence[str]) -> list[tuple[str, list[str]]]:
    python = sys.executable
    chosen: list[tuple[str, list[str]]] = [
        ("bare", [python, str(REPO / "bench/servers/bare_aiohttp.py"), "--port", "{port}"])
    ]
    cores = os.cpu_count() or 1
    for module in modules:
        path = str(MODULES / f"{module}.wasm")
        serve = [
            str(BIN / "wasmfleet-agent"),
            "serve",
            "--module",
            path,
            "--port",
            "{port}",
            "--cache-dir",
            str(OUT / "agent-cache"),
            "--max-concurrency",
            "256",
        ]
        chosen.append((f"agent/{module}", serve))
        chosen.append((f"threads/{module}", [*serve, "--inline-budget", "0s"]))
        if cores > 1:
            chosen.append((f"workers/{module}", [*serve, "--processes", str(cores)]))
    cli = wasmtime_cli()
    if cli is not None:
        # Native wasi:http: the wasmtime CLI's own server, a fresh instance per request (its
        # default); the Rust hello component is the baseline of the WAGI modules too.
        for component in ["hello-http-component", *HTTP_COMPONENTS]:
            file = MODULES / f"{component}.wasm"
            name = f"wasmtime-serve/{component}"
            if file.is_file() and name not in (n for n, _ in chosen):
                serve = [cli, "serve", "-S", "cli=y", "--addr", "127.0.0.1:{port}", str(file)]
                chosen.append((name, serve))
    if cli is not None:
        for module in modules:
            if module in HTTP_COMPONENTS:
                continue  # the CLI runs no wasi:http component per request but `serve`
            path = str(MODULES / f"{module}.wasm")
            chosen.append(
                (
                    f"spawn/{module}",
                    [
                        python,
                        str(REPO / "bench/servers/spawn_cli.py"),
                        "--port",
                        "{port}",
                        "--wasmtime",
                        cli,
                        "--module",
                        path,
                    ],
                )
            )
    return chosen


def _answers(url: str, process: ManagedProcess) -> bool:
    process.check_alive()
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_target(
    name: str, argv: list[str], concurrencies: Sequence[int], duration: float, logs: Path
) -> list[Result]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = ManagedProcess(
        name.replace("/", "-"),
        [a.replace("{port}", str(port)) for a in argv],
        log_path=logs / f"{name.replace('/', '-')}.log",
    )
    process.start()
    results = []
    try:
        wait_until(lambda: _answers(url, process), timeout=60, message=f"{name} not serving")
        # Warm-up: compile caches, connection pools, the JIT of nothing in particular.
        subprocess.run(["wrk", "-t1", "-c8", "-d1s", url], capture_output=True, check=True)
        for concurrency in concurrencies:
            threads = 1 if concurrency < 8 else 2
            output = subprocess.run(
                [
                    "wrk",
                    f"-t{threads}",
                    f"-c{concurrency}",
                    f"-d{duration:g}s",
                    "--latency",
                    "--timeout",
                    "10s",
                    url,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            p50, p99, rps, errors = parse_wrk(output)
            results.append(Result(name, concurrency, p50, p99, rps, errors))
            print(
                f"  {name:18} c={concurrency:<3} p50={p50:9.0f}us p99={p99:9.0f}us "
                f"{rps:9.0f} req/s errors={errors}",
                flush=True,
            )
    finally:
        process.stop()
    return results


def machine() -> dict[str, str]:
    import wasmtime

    return {**machine_facts(), "wasmtime-py": getattr(wasmtime, "__version__", "?")}


def render_table(results: Sequence[Result]) -> str:
    by_key = {(r.target, r.concurrency): r for r in results}
    lines = [
        "| target | concurrency | p50 | p99 | req/s | vs bare aiohttp | vs spawning the CLI |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        bare = by_key.get(("bare", r.concurrency))
        module = r.target.split("/", 1)[-1]
        spawn = by_key.get((f"spawn/{module}", r.concurrency))
        ratio_bare = f"{r.rps / bare.rps:.2f}x" if bare and r.target != "bare" else ""
        served = r.target.startswith(("agent/", "threads/", "workers/"))
        ratio_spawn = f"{r.rps / spawn.rps:.1f}x" if spawn and served else ""
        lines.append(
            f"| {r.target} | {r.concurrency} | {r.p50_us:.0f} µs | {r.p99_us:.0f} µs "
            f"| {r.rps:.0f} | {ratio_bare} | {ratio_spawn} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modules",
        nargs="*",
        default=[
            "hello-rust",
            "hello-go",
            "hello-c",
            "primes-c",
            "hello-http-component",
            "hello-python",
        ],
    )
    parser.add_argument("--concurrency", nargs="*", type=int, default=[1, 8, 64])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (make setup installs it)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: list[Result] = []
    for name, command in targets(args.modules):
        results += run_target(name, command, args.concurrency, args.duration, OUT)
    table = render_table(results)
    (OUT / "http.json").write_text(
        json.dumps({"machine": machine(), "results": [asdict(r) for r in results]}, indent=2)
    )
    print()
    print(table)
    print(f"\n(measured in {time.monotonic() - started:.0f}s on {machine()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
