"""Where a wasi:http request's time goes in the agent, and what one host call costs.

The agent serves a wasi:http component with a host of its own, written in Python over
wasmtime-py's component API (`wasmfleet_agent.runtime.wasi_http`): every call the guest makes
into WASI crosses from wasmtime into Python and back, converting its arguments and results
value by value. This benchmark serves the Rust and the Python hello components directly
through `sandbox.handle_http` (no HTTP server in front), profiles the runs with cProfile, and
splits each request into:

- instantiating the component (``Linker.instantiate``);
- the host calls the guest made, counted, with their mean cost (everything between wasmtime
  calling into Python and Python returning, conversions included);
- the rest: the guest's own code, the store, the call of ``handle``.

Beside them, side by side in the same run, the same component's request under native
``wasmtime serve`` at concurrency 1 (latency of one request over loopback HTTP, from a
Python client), so the ratio is of one run only. Results: a table on stdout and JSON in
``build/bench/wasi_http.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import pstats
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from wasmfleet_agent.runtime import sandbox, wasi_http
from wasmfleet_agent.runtime.engine import Runtime
from wasmfleet_harness.agent import wasmtime_cli
from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
MODULES = REPO / "build" / "modules"
OUT = REPO / "build" / "bench"
COMPONENTS = ("hello-http-component", "hello-python")


def _request() -> wasi_http.Exchange:
    incoming = wasi_http.IncomingHttp("GET", "/", "http", "bench:80", (("accept", b"*/*"),), b"")
    return wasi_http.Exchange(incoming, max_output=1 << 20)


def _through_handle(runtime: Runtime, path: Path, count: int) -> dict[str, float]:
    compiled = runtime.load(path)
    spec = sandbox.SandboxSpec()
    for _ in range(5):  # warm: machine code, Python caches
        sandbox.handle_http(compiled, spec, _request(), deadline_seconds=10)
    seconds = []
    for _ in range(count):  # timed, not profiled
        state = _request()
        started = time.perf_counter()
        result = sandbox.handle_http(compiled, spec, state, deadline_seconds=10)
        seconds.append(time.perf_counter() - started)
        if result.failure is not None or state.response is None:
            raise RuntimeError(f"{path.name}: {result.failure}")
    profile = cProfile.Profile()
    profiled = time.perf_counter()
    for _ in range(count):  # profiled, for where the time goes
        profile.enable()
        sandbox.handle_http(compiled, spec, _request(), deadline_seconds=10)
        profile.disable()
    profiled = time.perf_counter() - profiled
    stats = pstats.Stats(profile)
    host_calls = host_seconds = instantiate = 0.0
    for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        calls, cumulative = row[1], row[3]
        if filename.endswith("wasi_http.py") and function == "call":
            host_calls += calls
            host_seconds += cumulative
        if filename.endswith("component/_linker.py") and function == "instantiate":
            instantiate += cumulative
    total = sum(seconds)
    return {
        "profiled_us_per_request": profiled / count * 1e6,
        "requests": count,
        "p50_us": statistics.median(seconds) * 1e6,
        "mean_us": total / count * 1e6,
        "instantiate_us": instantiate / count * 1e6,
        "host_calls_per_request": host_calls / count,
        "host_us_per_request": host_seconds / count * 1e6,
        "us_per_host_call": host_seconds / host_calls * 1e6 if host_calls else 0.0,
    }


def _native(path: Path, count: int, logs: Path) -> float | None:
    """p50 µs of one request to native ``wasmtime serve`` at concurrency 1."""
    try:
        cli = wasmtime_cli()
    except (ImportError, OSError):
        return None
    port = free_port()
    argv = [str(cli), "serve", "-S", "cli=y", "--addr", f"127.0.0.1:{port}", str(path)]
    process = ManagedProcess(f"native-{path.stem}", argv, log_path=logs / f"{path.stem}.log")
    process.start()
    try:

        def ready() -> bool:
            process.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(ready, timeout=120, message=lambda: process.log_tail())
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        seconds = []
        for number in range(count + 5):
            started = time.perf_counter()
            connection.request("GET", "/")
            connection.getresponse().read()
            if number >= 5:
                seconds.append(time.perf_counter() - started)
        connection.close()
        return statistics.median(seconds) * 1e6
    finally:
        process.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per component")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = {}
    with tempfile.TemporaryDirectory() as cache, Runtime(Path(cache)) as runtime:
        for name in COMPONENTS:
            path = MODULES / f"{name}.wasm"
            if not path.is_file():
                print(f"{path} is missing: make modules", file=sys.stderr)
                return 2
            count = args.requests if name != "hello-python" else max(20, args.requests // 5)
            row = _through_handle(runtime, path, count)
            row["native_serve_p50_us"] = _native(path, count, OUT) or 0.0
            rows[name] = row
    (OUT / "wasi_http.json").write_text(json.dumps(rows, indent=2))
    print(
        "| component | handle_http p50 | instantiate | host calls | per host call "
        "| host calls in all | the rest | native `wasmtime serve` p50 (HTTP) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        rest = r["profiled_us_per_request"] - r["instantiate_us"] - r["host_us_per_request"]
        native = r["native_serve_p50_us"]
        ratio = f"{r['p50_us'] / native:.2f}x" if native else ""
        print(
            f"| {name} | {r['p50_us']:.0f} µs | {r['instantiate_us']:.0f} µs "
            f"| {r['host_calls_per_request']:.0f} | {r['us_per_host_call']:.1f} µs "
            f"| {r['host_us_per_request']:.0f} µs | {rest:.0f} µs | {native:.0f} µs | {ratio} |"
        )
    print(
        "\n(handle_http p50 is timed without the profiler; the split is measured under "
        "cProfile, which slows Python code, so it over-states the host calls' share; the "
        "ratio is of p50s in this run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
