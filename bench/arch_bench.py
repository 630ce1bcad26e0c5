"""The agent's runtime in its arm64 image (aarch64 code under qemu-user) beside its amd64 image.

Both images come from the project's image store (built first if missing, as `make images`
does, without pushing). In each image's root, as the image's own user, one Python process
compiles a module into an empty cache, loads it again from that cache, and runs it to
completion ``--runs`` times (a fresh instance each time: the work of one request without
the HTTP layer). The figures are the arm64 image's against the amd64 image's on this
machine: what emulation costs here, not what real ARM hardware would do.

    .venv/bin/python bench/arch_bench.py [--modules hello-c primes-c] [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "e2e"))

from wasmfleet_harness.images.build import build_images, default_store  # noqa: E402
from wasmfleet_harness.images.recipe import PLATFORMS, Platform  # noqa: E402
from wasmfleet_harness.images.rootfs import Bind, ImageRoot  # noqa: E402

MODULES = REPO / "build" / "modules"

# Runs inside the image: its own Python, its own wasmtime wheel, the agent's runtime.
_PROBE = """
import json, sys, time
from pathlib import Path
from wasmfleet_agent.runtime.engine import Runtime
from wasmfleet_agent.runtime.sandbox import SandboxSpec, run

module, runs, cache = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
with Runtime(cache / "cold") as runtime:
    code = runtime.load(module)
    compiled = time.perf_counter() - started
with Runtime(cache / "cold") as runtime:
    started = time.perf_counter()
    code = runtime.load(module)
    cached = time.perf_counter() - started
    spec = SandboxSpec(args=(module.name,))
    first = run(code, spec)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run(code, spec)
        samples.append(time.perf_counter() - started)
        assert result.exit_code == first.exit_code and result.stdout == first.stdout
samples.sort()
print(json.dumps({
    "compile": compiled,
    "cached_load": cached,
    "run_p50": samples[len(samples) // 2],
    "run_mean": sum(samples) / len(samples),
    "exit": first.exit_code,
    "stdout_bytes": len(first.stdout),
}))
"""


def _root(platform: Platform, local: str) -> ImageRoot:
    store = default_store()
    container = store.run("from", "--quiet", local).stdout.strip()
    config = store.image_config(local)
    return ImageRoot.from_config(store.mount(container), config["config"])


def _measure(root: ImageRoot, module: Path, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="arch-bench-") as scratch:
        cache = Path(scratch)
        cache.chmod(0o777)
        started = time.perf_counter()
        done = root.run(
            ["python3", "-c", _PROBE, f"/bench/{module.name}", str(runs), "/bench/cache"],
            binds=[Bind(module, f"/bench/{module.name}"), Bind(cache, "/bench/cache", True)],
            timeout=1800,
        )
        wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{module.name}: the probe failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process"] = wall
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=["hello-c", "primes-c"])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    (agent,) = build_images(names=["agent"])
    roots = {p.platform: _root(p.platform, p.local) for p in agent.platforms}
    try:
        results: dict[str, dict[Platform, dict[str, float]]] = {}
        for name in args.modules:
            module = MODULES / f"{name}.wasm"
            results[name] = {p: _measure(roots[p], module, args.runs) for p in PLATFORMS}
            same = {(r["exit"], r["stdout_bytes"]) for r in results[name].values()}
            assert len(same) == 1, f"{name}: the platforms disagree: {results[name]}"
    finally:
        default_store().remove_all_containers()
    amd64, arm64 = PLATFORMS
    print(
        "\n| module | figure | linux/amd64 | linux/arm64 (qemu-user) | arm64 / amd64 |\n"
        "|---|---|---:|---:|---:|"
    )
    for name, by_platform in results.items():
        for key, label in (
            ("compile", "compile, empty cache"),
            ("cached_load", "load from the compiled cache"),
            ("run_p50", f"one run, fresh instance (p50 of {args.runs})"),
            ("process", "the whole probe process (Python start included)"),
        ):
            here, there = by_platform[amd64][key], by_platform[arm64][key]
            print(f"| {name} | {label} | {_ms(here)} | {_ms(there)} | {there / here:.1f}x |")
    print(f"\n(measured in {time.perf_counter() - started:.0f}s)")
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


if __name__ == "__main__":
    raise SystemExit(main())
