"""Large modules: compiling against loading cached machine code, and the memory a module costs.

For a large module built from a real C program (``sqlite-c``: SQLite's amalgamation behind a
WAGI service) and the small hello modules, each measured in fresh processes, ``--runs`` times:

- **compile**: the agent's `Runtime` with an empty cache directory loads the module (wasmtime
  compiles it; the figure is the agent's own, compile plus writing the cache file and linking);
- **CLI compile**: ``wasmtime compile`` of the native CLI with the agent's engine settings
  (epoch interruption, the same stack limit), wall time including the process start: the
  baseline;
- **cached load**: a new process's `Runtime` loads the same module from that cache
  (deserializing, that is memory-mapping the machine code, and linking);
- **first request**: a GET through `HttpModule` (fresh instance, WAGI variables) right after the
  cached load, then a second one;
- **memory**: the process's RSS (``VmRSS``) and PSS (``smaps_rollup``) before the load, after
  it and after the first request; then ``--copies`` more copies of the module are loaded from
  the cache under distinct digests (each its own cache file, as distinct tenants' modules
  would be) and each answers one request: the increments per module.

Medians over the runs. The page cache is warm (the cache file was just written): the cached
load is not a cold read from disk. Results: Markdown tables on stdout and JSON in
``build/bench/module.json``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from wasmfleet_agent.runtime.engine import CompiledModule, EngineSettings, Runtime
from wasmfleet_agent.runtime.sandbox import RunLimits, SandboxSpec
from wasmfleet_agent.runtime.service import HttpModule, IncomingRequest
from wasmfleet_harness.agent import wasmtime_cli
from wasmfleet_harness.binaries import REPO_ROOT
from wasmfleet_harness.host import machine_facts
from wasmfleet_harness.modules import build_all

OUT = REPO_ROOT / "build" / "bench"
MODULES = ("sqlite-c", "hello-c", "hello-rust", "hello-go")
MAX_WASM_STACK = 1 << 20
"""The agent's ``max_wasm_stack`` (`wasmfleet_agent.runtime.engine`), given to the CLI too."""


@dataclass(frozen=True)
class Shape:
    """What a module is made of, from its sections."""

    wasm_bytes: int
    code_bytes: int
    functions: int


@dataclass(frozen=True)
class Memory:
    rss_kib: int
    pss_kib: int


@dataclass(frozen=True)
class LoadSample:
    """One fresh process that loads a module from the compiled-code cache."""

    load_ms: float
    first_request_ms: float
    second_request_ms: float
    before: Memory
    loaded: Memory
    served: Memory
    copies_loaded: Memory
    copies_served: Memory
    copies: int


@dataclass(frozen=True)
class Result:
    module: str
    wasm_bytes: int
    code_bytes: int
    functions: int
    cwasm_bytes: int
    compile_ms: float
    cli_compile_ms: float | None
    load_ms: float
    first_request_ms: float
    second_request_ms: float
    baseline_rss_kib: float
    load_rss_kib: float
    """RSS added by loading the first module (from the cache)."""
    first_request_rss_kib: float
    """RSS added by its first request."""
    per_copy_load_rss_kib: float
    per_copy_served_rss_kib: float
    """RSS per further module, loaded from the cache and after one request each."""
    per_copy_load_pss_kib: float
    per_copy_served_pss_kib: float
    compile_samples_ms: list[float]
    cli_samples_ms: list[float]
    load_samples_ms: list[float]


def _leb128(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, offset


def parse_shape(data: bytes) -> Shape:
    """Size of the code section and number of function bodies of a core Wasm module."""
    if data[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a core WebAssembly module")
    offset, code_bytes, functions = 8, 0, 0
    while offset < len(data):
        section = data[offset]
        size, body = _leb128(data, offset + 1)
        if section == 10:
            code_bytes = size
            functions, _ = _leb128(data, body)
        offset = body + size
    return Shape(len(data), code_bytes, functions)


def read_memory() -> Memory:
    """This process's resident set and proportional set size, in KiB."""
    rss = pss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    rollup = Path("/proc/self/smaps_rollup")
    if rollup.exists():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return Memory(rss, pss)


def _settled_memory() -> Memory:
    gc.collect()
    return read_memory()


# The children: each runs in a fresh interpreter and prints one JSON object.


def _digest(module: Path) -> str:
    """Given to `Runtime.load`, as the agent gives the registry's: no hashing inside a load."""
    return "sha256:" + hashlib.sha256(module.read_bytes()).hexdigest()


def child_compile(module: Path, cache: Path) -> dict[str, float]:
    with Runtime(cache) as runtime:
        compiled = runtime.load(module, _digest(module))
    if compiled.source != "compiled":
        raise RuntimeError(f"expected a compile, got a load from {compiled.source}")
    return {"compile_ms": compiled.seconds * 1000}


def child_load(module: Path, cache: Path, copies: int) -> LoadSample:
    request = IncomingRequest(
        method="GET",
        path="/",
        query="",
        headers=(("Host", "127.0.0.1:8080"), ("User-Agent", "module-bench")),
        body=b"",
        remote_addr="127.0.0.1",
        server_name="127.0.0.1",
        server_port=8080,
    )

    def serve(compiled: CompiledModule) -> float:
        http = HttpModule(module.stem, compiled, SandboxSpec(args=(module.name,)), RunLimits())
        started = time.perf_counter()
        outcome = http.execute(request)
        elapsed = (time.perf_counter() - started) * 1000
        if outcome.status != 200:
            raise RuntimeError(f"{module.stem} answered {outcome.status}: {outcome.error}")
        return elapsed

    with Runtime(cache) as runtime:
        (cached,) = cache.glob("*.cwasm")
        digests = [f"sha256:{index + 1:064x}" for index in range(copies)]
        for digest in digests:
            shutil.copyfile(cached, runtime.cache_path(digest, EngineSettings()))
        digest = _digest(module)
        before = _settled_memory()
        compiled = runtime.load(module, digest)
        if compiled.source != "cache":
            raise RuntimeError(f"expected a load from the cache, got {compiled.source}")
        loaded = _settled_memory()
        first = serve(compiled)
        second = serve(compiled)
        served = _settled_memory()
        more = [runtime.load(module, digest) for digest in digests]
        if any(c.source != "cache" for c in more):
            raise RuntimeError("a copy was compiled instead of loaded from the cache")
        copies_loaded = _settled_memory()
        for copy in more:
            serve(copy)
        copies_served = _settled_memory()
    return LoadSample(
        compiled.seconds * 1000,
        first,
        second,
        before,
        loaded,
        served,
        copies_loaded,
        copies_served,
        copies,
    )


def _run_child(argv: Sequence[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {list(argv)} failed:\n{done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cli_compile_ms(cli: Path, module: Path, scratch: Path) -> float:
    output = scratch / f"{module.stem}.cli.cwasm"
    started = time.perf_counter()
    subprocess.run(
        [
            str(cli),
            "compile",
            "-W",
            "epoch-interruption=y",
            "-W",
            f"max-wasm-stack={MAX_WASM_STACK}",
            "-o",
            str(output),
            str(module),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elapsed = (time.perf_counter() - started) * 1000
    output.unlink()
    return elapsed


def _cli() -> Path | None:
    try:
        return wasmtime_cli()
    except (ImportError, OSError):
        found = shutil.which("wasmtime")
        return Path(found) if found else None


def measure(name: str, path: Path, *, runs: int, copies: int, cli: Path | None) -> Result:
    shape = parse_shape(path.read_bytes())
    compiles: list[float] = []
    loads: list[LoadSample] = []
    cli_times: list[float] = []
    cwasm_bytes = 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="module-bench-") as scratch:
            cache = Path(scratch) / "cache"
            compiled = _run_child(["--child", "compile", str(path), str(cache)])
            compiles.append(float(compiled["compile_ms"]))
            cwasm_bytes = sum(p.stat().st_size for p in cache.glob("*.cwasm"))
            sample = _run_child(["--child", "load", str(path), str(cache), str(copies)])
            loads.append(_load_sample(sample))
            if cli is not None:
                cli_times.append(cli_compile_ms(cli, path, Path(scratch)))

    def per_copy(increment: Callable[[LoadSample], int]) -> float:
        return statistics.median([increment(s) / s.copies for s in loads])

    return Result(
        module=name,
        wasm_bytes=shape.wasm_bytes,
        code_bytes=shape.code_bytes,
        functions=shape.functions,
        cwasm_bytes=cwasm_bytes,
        compile_ms=statistics.median(compiles),
        cli_compile_ms=statistics.median(cli_times) if cli_times else None,
        load_ms=statistics.median([s.load_ms for s in loads]),
        first_request_ms=statistics.median([s.first_request_ms for s in loads]),
        second_request_ms=statistics.median([s.second_request_ms for s in loads]),
        baseline_rss_kib=statistics.median([s.before.rss_kib for s in loads]),
        load_rss_kib=statistics.median([s.loaded.rss_kib - s.before.rss_kib for s in loads]),
        first_request_rss_kib=statistics.median(
            [s.served.rss_kib - s.loaded.rss_kib for s in loads]
        ),
        per_copy_load_rss_kib=per_copy(lambda s: s.copies_loaded.rss_kib - s.served.rss_kib),
        per_copy_served_rss_kib=per_copy(lambda s: s.copies_served.rss_kib - s.served.rss_kib),
        per_copy_load_pss_kib=per_copy(lambda s: s.copies_loaded.pss_kib - s.served.pss_kib),
        per_copy_served_pss_kib=per_copy(lambda s: s.copies_served.pss_kib - s.served.pss_kib),
        compile_samples_ms=compiles,
        cli_samples_ms=cli_times,
        load_samples_ms=[s.load_ms for s in loads],
    )


def _load_sample(raw: dict[str, Any]) -> LoadSample:
    memories = {key: Memory(**value) for key, value in raw.items() if isinstance(value, dict)}
    return LoadSample(**{**raw, **memories})


def _size(count: float) -> str:
    return f"{count / 1e6:.2f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB" if abs(kib) >= 1024 else f"{kib:.0f} KiB"


def render_tables(results: Sequence[Result], copies: int) -> str:
    lines = [
        "| module | .wasm | code section | functions | machine code (.cwasm) | compile (agent)"
        " | `wasmtime compile` (CLI) | agent / CLI | cached load | compile / cached load"
        " | first request | second request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cli = _ms(r.cli_compile_ms) if r.cli_compile_ms is not None else "n/a"
        versus = f"{r.compile_ms / r.cli_compile_ms:.2f}x" if r.cli_compile_ms else ""
        lines.append(
            f"| {r.module} | {_size(r.wasm_bytes)} | {_size(r.code_bytes)} | {r.functions} "
            f"| {_size(r.cwasm_bytes)} | {_ms(r.compile_ms)} | {cli} | {versus} "
            f"| {_ms(r.load_ms)} | {r.compile_ms / r.load_ms:.0f}x "
            f"| {_ms(r.first_request_ms)} | {_ms(r.second_request_ms)} |"
        )
    lines += [
        "",
        "| module | process before | + one module (cached load) | + its first request"
        " | per further module, loaded (RSS / PSS) | per further module after one request"
        " (RSS / PSS) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.module} | {_mib(r.baseline_rss_kib)} | {_mib(r.load_rss_kib)} "
            f"| {_mib(r.first_request_rss_kib)} "
            f"| {_mib(r.per_copy_load_rss_kib)} / {_mib(r.per_copy_load_pss_kib)} "
            f"| {_mib(r.per_copy_served_rss_kib)} / {_mib(r.per_copy_served_pss_kib)} |"
        )
    lines.append(
        f"\n(further modules: {copies} copies loaded from the cache under distinct digests)"
    )
    return "\n".join(lines)


def machine(cli: Path | None) -> dict[str, str]:
    cli_version = "none"
    if cli is not None:
        cli_version = subprocess.run(
            [str(cli), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return {
        **machine_facts(),
        "wasmtime-py": metadata.version("wasmtime"),
        "wasmtime-cli": cli_version,
    }


def _child_main(argv: Sequence[str]) -> int:
    kind, module, cache, *rest = argv
    if kind == "compile":
        print(json.dumps(child_compile(Path(module), Path(cache))))
    else:
        print(json.dumps(asdict(child_load(Path(module), Path(cache), int(rest[0])))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--child"]:
        return _child_main(arguments[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=list(MODULES))
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per measurement")
    parser.add_argument("--copies", type=int, default=8, help="further copies loaded per run")
    args = parser.parse_args(arguments)
    started = time.monotonic()
    paths = build_all(args.modules)
    cli = _cli()
    results = []
    for name in args.modules:
        result = measure(name, paths[name], runs=args.runs, copies=args.copies, cli=cli)
        print(
            f"  {name:12} compile {_ms(result.compile_ms):>9}"
            f"  cli {_ms(result.cli_compile_ms or 0):>9}  cached load {_ms(result.load_ms):>8}",
            flush=True,
        )
        results.append(result)
    host = machine(cli)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "module.json").write_text(
        json.dumps(
            {
                "machine": host,
                "runs": args.runs,
                "copies": args.copies,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    print()
    print(render_tables(results, args.copies))
    print(f"\n(measured in {time.monotonic() - started:.0f}s on {host})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
