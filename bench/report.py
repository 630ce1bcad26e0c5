"""Turns the benchmarks' JSON (``build/bench/*.json``) into plots and tables in the docs.

Writes PNG plots into ``docs/performance/`` and replaces the part of ``docs/performance.md``
between ``<!-- results:start -->`` and ``<!-- results:end -->`` with the tables of the last
run, the machine it ran on, and links to the plots. A benchmark that did not run is left out.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

from wasmfleet_harness.host import describe_machine

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "build" / "bench"
DOC = REPO / "docs" / "performance.md"
PLOTS = REPO / "docs" / "performance"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def http_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    results = data["results"]
    targets = list(dict.fromkeys(r["target"] for r in results))
    levels = sorted({int(r["concurrency"]) for r in results})
    by_key = {(r["target"], int(r["concurrency"])): r for r in results}
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    width = 0.8 / len(levels)
    for index, level in enumerate(levels):
        xs = [i + index * width for i in range(len(targets))]
        rps = [by_key.get((t, level), {}).get("rps", 0.0) for t in targets]
        p50 = [by_key.get((t, level), {}).get("p50_us", 0.0) / 1000 for t in targets]
        axes[0].bar(xs, rps, width, label=f"concurrency {level}")
        axes[1].bar(xs, p50, width, label=f"concurrency {level}")
    for axis, title, unit in (
        (axes[0], "Throughput", "requests per second (log)"),
        (axes[1], "Median latency", "milliseconds (log)"),
    ):
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(targets))])
        axis.set_xticklabels(targets, rotation=60, ha="right", fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOTS / "http.png", dpi=110)
    plt.close(figure)

    lines = [
        "| target | concurrency | p50 | p99 | req/s | errors | vs bare aiohttp "
        "| vs spawning the CLI | vs wasmtime serve |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        level = int(r["concurrency"])
        module = r["target"].split("/", 1)[-1]
        served = r["target"].startswith(("agent/", "threads/", "workers/"))
        bare = by_key.get(("bare", level))
        spawn = by_key.get((f"spawn/{module}", level))
        native = by_key.get((f"wasmtime-serve/{module}", level)) or by_key.get(
            ("wasmtime-serve/hello-http-component", level)
        )
        cells = [
            f"{r['rps'] / bare['rps']:.2f}x" if bare and r["target"] != "bare" else "",
            f"{r['rps'] / spawn['rps']:.1f}x" if spawn and served else "",
            f"{r['rps'] / native['rps']:.2f}x" if native and served else "",
        ]
        lines.append(
            f"| {r['target']} | {level} | {_us(r['p50_us'])} | {_us(r['p99_us'])} "
            f"| {r['rps']:.0f} | {r['errors']} | " + " | ".join(cells) + " |"
        )
    return lines, ["![throughput and latency per target](performance/http.png)"]


def _us(value: float) -> str:
    return f"{value:.0f} µs" if value < 10_000 else f"{value / 1000:.1f} ms"


def coldpath_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    trials = data["trials"]
    cases = [c for c in ("cached", "pulled", "cold") if any(t["case"] == c for t in trials)]
    phases = list(trials[0]["phases"]) if trials else []
    figure, axis = plt.subplots(figsize=(8, 4))
    for index, case in enumerate(cases):
        chosen = [t for t in trials if t["case"] == case]
        left = 0.0
        for number, phase in enumerate(phases):
            value = sorted(t["phases"][phase] for t in chosen)[len(chosen) // 2] * 1000
            label = phase if index == 0 else None
            axis.barh(index, value, left=left, label=label, color=f"C{number}")
            left += value
    axis.set_yticks(range(len(cases)))
    axis.set_yticklabels(cases)
    axis.set_xlabel("milliseconds from create to the first 200 (median of each phase)")
    axis.axvline(500, color="black", linestyle="--", linewidth=1)
    axis.text(505, len(cases) - 0.6, "goal for cached: 500 ms", fontsize=8)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOTS / "coldpath.png", dpi=110)
    plt.close(figure)
    bench = importlib.import_module("coldpath_bench")  # the table is the bench's own
    table = bench.render(
        [bench.Trial(t["case"], t["total"], t["phases"]) for t in trials], data["restart"]
    )
    return table.splitlines(), ["![apply to first answer, by phase](performance/coldpath.png)"]


def module_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    bench = importlib.import_module("module_bench")
    results = [bench.Result(**r) for r in data["results"]]
    names = [r.module for r in results]
    figure, axis = plt.subplots(figsize=(8, 4))
    xs = range(len(names))
    series = (
        ("compile (agent)", [r.compile_ms for r in results]),
        ("wasmtime compile (CLI)", [r.cli_compile_ms or 0.0 for r in results]),
        ("cached load", [r.load_ms for r in results]),
    )
    for index, (label, values) in enumerate(series):
        axis.bar([x + index * 0.27 for x in xs], values, 0.27, label=label)
    axis.set_xticks([x + 0.27 for x in xs])
    axis.set_xticklabels(names)
    axis.set_yscale("log")
    axis.set_ylabel("milliseconds (log)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOTS / "modules.png", dpi=110)
    plt.close(figure)
    table = bench.render_tables(results, data["copies"])
    return table.splitlines(), ["![compile against cached load](performance/modules.png)"]


def density_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    bench = importlib.import_module("density_bench")
    memory = {k: bench.Memory(**data[k]) for k in ("empty", "ready", "served", "unloaded")}
    result = bench.Result(**{**data, **memory})
    return bench.render(result).splitlines(), []


def control_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    measurement = importlib.import_module("control.measurement")
    fields = {f.name for f in dataclasses.fields(measurement.ScaleResult)}
    results = [
        measurement.ScaleResult(**{k: v for k, v in r.items() if k in fields})
        for r in data["scales"]
    ]
    done = [r for r in results if r.all_ready_s]
    figure, axis = plt.subplots(figsize=(7, 4))
    services = [r.services for r in done]
    axis.plot(services, [r.all_ready_s for r in done], marker="o", label="until all Ready (s)")
    axis.plot(
        services,
        [r.cpu_s.get("operator", 0.0) for r in done],
        marker="o",
        label="operator CPU (s)",
    )
    if done:
        slope = done[0].all_ready_s / done[0].services
        axis.plot(services, [slope * n for n in services], linestyle="--", label="linear")
    axis.set_xlabel("WasmServices (agents: a tenth of that)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOTS / "control.png", dpi=110)
    plt.close(figure)
    table = importlib.import_module("control.report").render(results)
    return table.splitlines(), ["![growth with scale](performance/control.png)"]


def neighbour_section(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    bench = importlib.import_module("neighbour_bench")
    results = [bench.Result(**r) for r in data["results"]]
    return bench.render(results).splitlines(), []


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    sys.path.insert(0, str(Path(__file__).parent))  # the benches render their own tables
    body = [f"Last run: `make bench` on {describe_machine()}.", ""]
    sections = (
        ("http", "Requests through the agent", http_section),
        ("neighbour", "A short service beside sleeping neighbours", neighbour_section),
        ("coldpath", "From apply to the first answer; agent restart", coldpath_section),
        ("module", "Large modules: compile, cached load, memory", module_section),
        ("control", "Control loop at scale", control_section),
        ("density", "Density: one agent, many services", density_section),
    )
    for name, title, section in sections:
        data = _load(name)
        if data is not None:  # a benchmark that did not run is left out
            table, plots = section(data)
            body += [f"### {title}", "", *table, "", *plots, ""]
    text = DOC.read_text()
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results of the last run\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + START + "\n" + "\n".join(body) + "\n" + END + tail)
    print(f"wrote {DOC.relative_to(REPO)} and {PLOTS.relative_to(REPO)}/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
