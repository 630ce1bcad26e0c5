"""The control loop at scale: many WasmServices over many agents, until every one is Ready.

For each scale (services/agents) it starts, from scratch, the real local control plane (etcd,
kube-apiserver with an audit log, kube-controller-manager) with the CRDs and the chart's
ServiceAccounts and RBAC, the real operator, and simulated agents that act through the agent's
own code at the API (`control.simulator`). One registry serves the whole run, with hello-c
pushed under a tag, so the operator resolves every service's tag to a digest for real. Then it
creates the services and measures, until every service is Ready or the scale's deadline
passes, how long that took and what it cost: time, placements per second, CPU and memory of
each component, API requests by verb, resource and client (`control.measurement`).

``--profile DIR`` samples the operator with py-spy (not a project dependency:
``.venv/bin/pip install py-spy``) during each window and writes collapsed stacks into DIR.

Everything is bounded (a deadline per scale and ``--budget`` for the whole run) and cleaned up
(child processes stopped, the scratch directory removed) on failure too. Results: Markdown
tables on stdout and JSON in ``build/bench/control.json`` (`control.report`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from control import measurement, report, simulator
from control.measurement import ScaleResult
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.binaries import REPO_ROOT, Binaries, ensure_binaries
from wasmfleet_harness.host import describe_machine
from wasmfleet_harness.processes import Workspace, install_termination_handler
from wasmfleet_harness.registry import Registry
from wasmfleet_oci.client import sha256_digest

OUT = REPO_ROOT / "build" / "bench"
MODULE = REPO_ROOT / "build" / "modules" / "hello-c.wasm"
DEFAULT_SCALES = "100/10,300/30,1000/100"


# ---- one scale --------------------------------------------------------------------------------


async def run_scale(
    args: argparse.Namespace,
    binaries: Binaries,
    workdir: Path,
    result: ScaleResult,
    image: str,
    module_digest: str,
    deadline_s: float,
) -> None:
    """Sets up one scale's cluster, measures it into ``result``, and tears it down."""
    cluster = simulator.Cluster(
        binaries,
        workdir,
        simulator.ClusterSettings(
            agents=result.agents,
            module_digest=module_digest,
            audit=args.audit,
            agents_per_process=args.agents_per_process,
            lease_duration=args.lease_duration,
            ack_delay=args.ack_delay,
            report_pending=args.report_pending,
            operator_args=tuple(args.operator_arg),
            operator_source=args.baseline_tree if result.operator_from else None,
        ),
    )
    try:
        started = time.monotonic()
        result.load_before = os.getloadavg()[0]
        await cluster.start()
        result.setup_s = time.monotonic() - started
        print(
            f"==> {result.services} services over {result.agents} agents "
            f"(setup {result.setup_s:.1f}s, deadline {deadline_s:.0f}s)",
            flush=True,
        )
        window = measurement.Measurement(
            cluster,
            result,
            image=image,
            create_concurrency=args.create_concurrency,
            profile=args.profile,
        )
        await window.run(deadline_s)
    except Exception as error:
        result.outcome = "failed"
        result.error = f"{type(error).__name__}: {error}"[:4000]
        print(f"    failed: {result.error}", file=sys.stderr, flush=True)
    finally:
        await cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ---- the whole run --------------------------------------------------------------------------


def _baseline_tree(revision: str) -> Path:
    """A detached git worktree of ``revision`` (its operator runs as the baseline)."""
    tree = OUT / f"baseline-{revision}"
    if tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )
    subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(tree), revision],
        check=True,
        capture_output=True,
    )
    return tree


def parse_scales(text: str) -> list[tuple[int, int]]:
    scales = []
    for part in text.split(","):
        services, _, agents = part.strip().partition("/")
        if not services.isdigit() or not agents.isdigit() or int(agents) < 1:
            raise argparse.ArgumentTypeError(f"a scale is SERVICES/AGENTS, not {part!r}")
        scales.append((int(services), int(agents)))
    return scales


async def run(args: argparse.Namespace, workspace: Workspace) -> list[measurement.ScaleResult]:
    started = time.monotonic()
    binaries = ensure_binaries()
    registry = Registry(workspace.subdir("registry"))
    # with a baseline, each scale runs twice in a row: the baseline's operator, then this one
    operators = [f"baseline {args.baseline}", ""] if args.baseline else [""]
    results = [
        measurement.ScaleResult(
            services=s, agents=a, replicas=sum(1 + i % 2 for i in range(s)), operator_from=operator
        )
        for s, a in args.scales
        for operator in operators
    ]
    try:
        registry.start()
        image = f"{registry.host}/bench/hello-c:1.0"
        await asyncio.to_thread(push_module, MODULE, image)
        module_digest = sha256_digest(MODULE.read_bytes())
        for index, result in enumerate(results):
            left = args.budget - (time.monotonic() - started)
            # Leave room for this scale's setup and teardown (~30 s) within the budget.
            deadline = min(args.deadline, left - 30)
            if deadline < 15:
                result.outcome = "skipped: out of time budget"
                print(f"==> {result.services}/{result.agents}: {result.outcome}", flush=True)
                continue
            await run_scale(
                args,
                binaries,
                workspace.path / f"scale-{index}",
                result,
                image,
                module_digest,
                deadline,
            )
    finally:
        registry.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=parse_scales(DEFAULT_SCALES),
        help=f"comma-separated SERVICES/AGENTS (default {DEFAULT_SCALES})",
    )
    parser.add_argument(
        "--deadline", type=float, default=180.0, help="most seconds per scale until all Ready"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=340.0,
        help="seconds for the whole run; scales that no longer fit are skipped",
    )
    parser.add_argument("--create-concurrency", type=int, default=16)
    parser.add_argument("--agents-per-process", type=int, default=50)
    parser.add_argument(
        "--lease-duration", type=int, default=20, help="the agents' (the product default)"
    )
    parser.add_argument(
        "--ack-delay", type=float, default=0.0, help="seconds a simulated agent takes to be Ready"
    )
    parser.add_argument(
        "--report-pending",
        action="store_true",
        help="agents write Pending before Ready, as a real agent's first write",
    )
    parser.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for `wasmfleet-operator run` (repeatable): --operator-arg=--workers=8",
    )
    parser.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="audit log on the API server, to split requests by client",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the operator with py-spy during each window (collapsed stacks in DIR)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REVISION",
        help="also run each scale with the operator of this git revision, just before this "
        "tree's (checked out as a git worktree under build/bench)",
    )
    parser.add_argument("--out", type=Path, default=OUT / "control.json")
    args = parser.parse_args(argv)
    if not MODULE.is_file():
        print(f"{MODULE} is missing: run `make modules`", file=sys.stderr)
        return 2
    install_termination_handler()
    started = time.monotonic()
    args.baseline_tree = _baseline_tree(args.baseline) if args.baseline else None
    try:
        with Workspace(root=Path(tempfile.gettempdir()), prefix="wasmfleet-control-") as ws:
            results = asyncio.run(run(args, ws))
    except KeyboardInterrupt:
        print("interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        if args.baseline_tree is not None:
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO_ROOT),
                    "worktree",
                    "remove",
                    "--force",
                    str(args.baseline_tree),
                ],
                check=False,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        report.render_json(
            results,
            machine=describe_machine(),
            settings={
                "lease_duration_s": args.lease_duration,
                "ack_delay_s": args.ack_delay,
                "report_pending": args.report_pending,
                "create_concurrency": args.create_concurrency,
                "agents_per_process": args.agents_per_process,
                "operator_args": args.operator_arg,
                "audit_log": args.audit,
                "baseline": args.baseline,
            },
        )
    )
    print()
    print(report.render(results))
    print(f"\n(measured in {time.monotonic() - started:.0f}s; JSON in {args.out})")
    return 1 if any(r.outcome == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
