"""Head-of-line blocking: a short service's latency beside a neighbour whose requests sleep.

One agent process serves two services (`servers/two_services.py`: the same event loop,
thread pool and runtime, as two bindings on one agent). The short one (the probe's ``/echo``)
is measured with ``wrk`` at concurrency 1 alone, then again while the other service is held
busy by 16 clients whose requests each sleep for 90% of the deadline. The performance issue's
bar: the short service's p99 beside the sleepers within 2 ms of its p99 alone. Both modes of
the agent are measured in the same run: short runs inline (the default) and every run on a
Wasm thread (``--inline-budget 0``), the baseline. All traffic is on 127.0.0.1; every load is
bounded in time. Results: a Markdown table on stdout and JSON in
``build/bench/neighbour.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from http_bench import parse_wrk

from wasmfleet_harness.host import machine_facts
from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "bench"
PROBE = REPO / "build" / "modules" / "probe.wasm"
DEADLINE = 1.0
SLEEPERS = 16


@dataclass(frozen=True)
class Result:
    mode: str
    alone_p50_us: float
    alone_p99_us: float
    beside_p50_us: float
    beside_p99_us: float
    sleeper_rps: float

    @property
    def p99_added_ms(self) -> float:
        return (self.beside_p99_us - self.alone_p99_us) / 1000


def _wrk(url: str, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            f"{DEADLINE * 5:g}s",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    return parse_wrk(output)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def measure(mode: str, inline_budget: float, seconds: float, logs: Path) -> Result:
    short_port, sleeper_port = free_port(), free_port()
    process = ManagedProcess(
        f"neighbour-{mode}",
        [
            sys.executable,
            str(REPO / "bench/servers/two_services.py"),
            "--module",
            str(PROBE),
            "--ports",
            str(short_port),
            str(sleeper_port),
            "--cache-dir",
            str(OUT / "neighbour-cache"),
            "--deadline",
            str(DEADLINE),
            "--inline-budget",
            str(inline_budget),
        ],
        log_path=logs / f"neighbour-{mode}.log",
    )
    short = f"http://127.0.0.1:{short_port}/echo"
    sleeper = f"http://127.0.0.1:{sleeper_port}/sleep?{int(DEADLINE * 900)}"
    process.start()
    try:
        wait_until(lambda: _answers(short), timeout=60, message=f"{mode}: not serving")
        _wrk(short, 1, 1)  # warm-up; the short service goes inline here when it may
        alone = _wrk(short, 1, seconds)
        load = subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{SLEEPERS}",
                f"-d{seconds + 2 * DEADLINE:g}s",
                "--latency",
                "--timeout",
                f"{DEADLINE * 5:g}s",
                sleeper,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(DEADLINE)  # every sleeper client has a request asleep by now
            beside = _wrk(short, 1, seconds)
            output, _ = load.communicate(timeout=seconds + 30)
        finally:
            load.kill()
        sleeper_rps = parse_wrk(output)[2]
    finally:
        process.stop()
    return Result(mode, alone[0], alone[1], beside[0], beside[1], sleeper_rps)


def render(results: Sequence[Result]) -> str:
    lines = [
        "| agent | alone p50 / p99 | beside sleepers p50 / p99 | p99 added (bar: 2 ms) "
        "| sleeper req/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.alone_p50_us:.0f} / {r.alone_p99_us:.0f} µs "
            f"| {r.beside_p50_us:.0f} / {r.beside_p99_us:.0f} µs | {r.p99_added_ms:+.2f} ms "
            f"| {r.sleeper_rps:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    if not PROBE.is_file():
        print(f"{PROBE} is missing (make setup builds it)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    results = [
        measure("short runs inline", 0.002, args.duration, OUT),
        measure("every run on a thread", 0.0, args.duration, OUT),
    ]
    (OUT / "neighbour.json").write_text(
        json.dumps({"machine": machine_facts(), "results": [asdict(r) for r in results]}, indent=2)
    )
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
