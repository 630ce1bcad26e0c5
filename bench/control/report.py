"""The control bench's tables and JSON: what a run's `ScaleResult`s look like to a reader.

`render` writes the Markdown tables printed at the end of a run and put into
``docs/performance.md`` by ``bench/report.py``; `render_json` writes ``control.json``, which
``bench/report.py`` reads back into `ScaleResult`s. Both are pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from control.measurement import ScaleResult

__all__ = ["render", "render_json"]


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def _scale(r: ScaleResult) -> str:
    return f"{r.services} / {r.agents}" + (f" ({r.operator_from})" if r.operator_from else "")


def render(results: Sequence[ScaleResult]) -> str:
    """The Markdown tables of a run, one column group per scale (the first is the baseline)."""
    measured = [r for r in results if r.window_s > 0]
    base = next((r for r in measured if r.time_per_service_ms), None)
    lines = [
        "| services / agents | replicas | all Ready | placements/s | replicas Ready/s "
        "| time per service | vs first | operator CPU | CPU per service | vs first "
        "| operator peak RSS | API req/s (all / operator / agents) | operator req per service "
        "| passes per service |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.window_s <= 0:
            lines.append(f"| {_scale(r)} | {r.replicas} | {r.outcome} |" + " |" * 11)
            continue
        ready = (
            f"{r.all_ready_s:.1f} s"
            if r.all_ready_s is not None
            else f"{r.ready_services}/{r.services} in {r.window_s:.0f} s"
        )
        tps = r.time_per_service_ms
        cps = r.operator_cpu_per_service_ms
        base_tps = base.time_per_service_ms if base else None
        base_cps = base.operator_cpu_per_service_ms if base else None
        operator_requests = r.client_requests("operator")
        agent_requests = r.client_requests("agents")
        passes = r.operator.get("reconciles_ok", 0.0) + r.operator.get("reconciles_retry", 0.0)
        split = (
            f"{operator_requests / r.window_s:.0f} / {agent_requests / r.window_s:.0f}"
            if r.requests_by_client
            else "- / -"
        )
        per_service = f"{operator_requests / r.services:.1f}" if r.requests_by_client else "-"
        lines.append(
            f"| {_scale(r)} | {r.replicas} | {ready} "
            f"| {_fmt(r.placements_per_s, '{:.0f}')} | {_fmt(r.ready_replicas_per_s, '{:.0f}')} "
            f"| {_fmt(tps, '{:.1f} ms')} "
            f"| {_fmt(tps / base_tps if tps and base_tps else None, '{:.2f}')} "
            f"| {r.cpu_s.get('operator', 0.0):.1f} s | {_fmt(cps, '{:.1f} ms')} "
            f"| {_fmt(cps / base_cps if cps and base_cps else None, '{:.2f}')} "
            f"| {r.operator_peak_rss_mib:.0f} MiB "
            f"| {r.api_requests_per_s:.0f} / {split} "
            f"| {per_service} | {passes / r.services:.1f} |"
        )
    lines += [
        "",
        "| services / agents | window | kube-apiserver CPU (per service) | etcd CPU "
        "| simulated agents: CPU, peak RSS, ack p50 | bench CPU | mean reconcile pass "
        "| service latency p50 / p90 | objects at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in measured:
        objects = ", ".join(f"{v} {k}" for k, v in r.objects.items())
        apiserver = r.cpu_s.get("kube-apiserver", 0.0)
        count_ = r.operator.get("reconcile_seconds_count", 0.0)
        mean_pass = r.operator.get("reconcile_seconds_sum", 0.0) / count_ if count_ else None
        lines.append(
            f"| {_scale(r)} | {r.window_s:.1f} s "
            f"| {apiserver:.1f} s ({apiserver / r.services * 1000:.0f} ms) "
            f"| {r.cpu_s.get('etcd', 0):.1f} s "
            f"| {r.cpu_s.get('agents', 0):.1f} s, {r.agents_peak_rss_mib:.0f} MiB, "
            f"{_fmt(r.ack_latency_p50_s and r.ack_latency_p50_s * 1000, '{:.0f} ms')} "
            f"| {r.cpu_s.get('bench', 0):.1f} s "
            f"| {_fmt(mean_pass and mean_pass * 1000, '{:.0f} ms')} "
            f"| {_fmt(r.service_latency_p50_s, '{:.2f} s')} "
            f"/ {_fmt(r.service_latency_p90_s, '{:.2f} s')} | {objects} |"
        )
    keys = list(dict.fromkeys(k for r in measured for k in r.requests_by_resource))[:14]
    if keys:
        lines += [
            "",
            "| API requests per service (mean server time) | "
            + " | ".join(f"{_scale(r)}" for r in measured)
            + " |",
            "|---|" + "---:|" * len(measured),
        ]
        for key in keys:
            cells = [
                f"{r.requests_by_resource.get(key, 0) / r.services:.2f} "
                f"({_fmt(r.api_latency_ms.get(key), '{:.0f} ms')})"
                for r in measured
            ]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    clients = sorted({c for r in measured for c in r.requests_by_client})
    if clients:
        lines += [
            "",
            "| requests per second, by client | "
            + " | ".join(f"{_scale(r)}" for r in measured)
            + " |",
            "|---|" + "---:|" * len(measured),
        ]
        for client in clients:
            cells = []
            for r in measured:
                verbs = r.requests_by_client.get(client, {})
                top = ", ".join(
                    f"{v} {n}" for v, n in sorted(verbs.items(), key=lambda kv: -kv[1])[:3]
                )
                cells.append(f"{sum(verbs.values()) / r.window_s:.0f} ({top})" if verbs else "-")
            lines.append(f"| {client} | " + " | ".join(cells) + " |")
    for r in results:
        if r.error:
            lines += ["", f"{_scale(r)} failed: {r.error.splitlines()[0]}"]
    return "\n".join(lines)


def render_json(
    results: Sequence[ScaleResult], *, machine: str, settings: Mapping[str, Any]
) -> str:
    """The run as JSON: the machine, the bench's settings, and every scale's result with the
    figures derived from it."""
    return json.dumps(
        {
            "machine": machine,
            "settings": dict(settings),
            "scales": [
                {
                    **asdict(r),
                    "time_per_service_ms": r.time_per_service_ms,
                    "operator_cpu_per_service_ms": r.operator_cpu_per_service_ms,
                }
                for r in results
            ],
        },
        indent=2,
    )
