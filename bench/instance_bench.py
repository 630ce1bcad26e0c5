"""Cost of one fresh instance, inside one process: the agent's sandbox beside bare wasmtime-py.

For each hello module, in the same process and run: ``bare`` creates a Store with a WASI
config whose stdout is a memory file, instantiates through an InstancePre and calls
``_start`` (the least wasmtime-py allows); ``sandbox`` is the agent's `sandbox.run` with its
limits (memory cap, epoch deadline callback, output cap, stdin, stderr); ``wagi`` adds the
CGI variables of a request. Prints microseconds per run and the ratio to ``bare``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import wasmtime

from wasmfleet_agent.runtime.cgi import request_variables
from wasmfleet_agent.runtime.engine import CompiledModule, Runtime
from wasmfleet_agent.runtime.sandbox import SandboxSpec, run

MODULES = Path(__file__).resolve().parents[1] / "build" / "modules"


def _timed(action: Callable[[], object], runs: int) -> float:
    """Median over five batches of the mean µs per call."""
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(runs):
            action()
        batches.append((time.perf_counter() - started) / runs * 1e6)
    return statistics.median(batches)


def _bare(compiled: CompiledModule, stdout: str) -> None:
    store = wasmtime.Store(compiled.engine)
    config = wasmtime.WasiConfig()
    config.stdout_file = stdout
    store.set_wasi(config)
    store.set_epoch_deadline(1 << 40)
    assert compiled.pre is not None, "a core module"
    instance = compiled.pre.instantiate(store)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    try:
        start(store)
    except wasmtime.ExitTrap as exit_trap:  # Go ends with proc_exit(0)
        if exit_trap.code != 0:
            raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=["hello-rust", "hello-go", "hello-c"])
    parser.add_argument("--runs", type=int, default=500, help="runs per batch")
    args = parser.parse_args(argv)
    memfd = os.memfd_create("bench-stdout")
    path = f"/proc/self/fd/{memfd}"
    variables = request_variables(
        method="GET",
        path="/",
        query="",
        headers=[("Host", "127.0.0.1:8080"), ("User-Agent", "bench"), ("Accept", "*/*")],
        body_length=0,
        remote_addr="127.0.0.1",
        server_name="127.0.0.1",
        server_port=8080,
        server_software="wasmfleet-agent/bench",
    )
    print("| module | bare wasmtime-py | agent sandbox | + WAGI request env | ratio |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as cache, Runtime(Path(cache)) as runtime:
        for name in args.modules:
            compiled = runtime.load(MODULES / f"{name}.wasm")

            spec = SandboxSpec(args=(name,))
            bare_us = _timed(partial(_bare, compiled, path), args.runs)
            sandbox_us = _timed(partial(run, compiled, spec), args.runs)
            wagi_us = _timed(partial(run, compiled, spec, extra_env=variables), args.runs)
            print(
                f"| {name} | {bare_us:.0f} µs | {sandbox_us:.0f} µs | {wagi_us:.0f} µs "
                f"| {wagi_us / bare_us:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
