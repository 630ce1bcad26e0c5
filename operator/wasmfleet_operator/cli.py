"""``wasmfleet-operator``: the operator's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from wasmfleet_api.units import parse_duration
from wasmfleet_common import logs
from wasmfleet_oci.options import add_registry_options, registry_settings

__all__ = ["main"]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmfleet-operator",
        description="Reconciles WasmServices into per-node bindings, Services and status.",
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the operator (waits to be the leader first)",
        description="Runs the operator: takes the leader Lease, then watches WasmServices, "
        "bindings, agents, their Leases and Nodes, and reconciles.",
    )
    run.add_argument("--kubeconfig", type=Path, help="default: in-cluster service account")
    run.add_argument(
        "--namespace",
        default="wasmfleet-system",
        help="namespace of the leader Lease and of the agents' heartbeat Leases",
    )
    run.add_argument("--leader-lease", default="wasmfleet-operator")
    run.add_argument("--leader-lease-duration", type=_duration, default="15s")
    run.add_argument("--leader-retry", type=_duration, default="2s")
    run.add_argument(
        "--node-grace-period",
        type=_duration,
        default="40s",
        help="how long an agent may be NotReady before its replicas move",
    )
    run.add_argument("--workers", type=int, default=4, help="concurrent reconcile passes")
    run.add_argument("--resync", type=_duration, default="60s")
    add_registry_options(run)
    run.add_argument(
        "--health-port", type=int, help="serve /healthz, /readyz and /metrics on this port"
    )
    run.add_argument("--health-host", default="0.0.0.0", help="address of those endpoints")
    run.add_argument(
        "--fault-injection",
        action="store_true",
        help="for tests: POST /debug/crash/TASK on the health port ends that task",
    )
    run.add_argument("--log-format", choices=["json", "text"], default="json")
    run.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(
            f"wasmfleet-operator {metadata.version('wasmfleet')} (kopf {metadata.version('kopf')})"
        )
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    logs.configure(level=args.log_level, json_format=args.log_format == "json")
    # One line per watch event ("Handler ... succeeded") is noise; failures still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from wasmfleet_common.kube import KubeConfig
    from wasmfleet_operator.main import OperatorOptions, run_operator

    kube = (
        KubeConfig.from_kubeconfig(args.kubeconfig)
        if args.kubeconfig is not None
        else KubeConfig.in_cluster()
    )
    options = OperatorOptions(
        kube=kube,
        kubeconfig_path=str(args.kubeconfig) if args.kubeconfig is not None else None,
        namespace=args.namespace,
        leader_lease=args.leader_lease,
        leader_lease_duration=args.leader_lease_duration,
        leader_retry=args.leader_retry,
        node_grace_period=args.node_grace_period,
        workers=args.workers,
        resync_seconds=args.resync,
        registry=registry_settings(args),
        health_port=args.health_port,
        health_host=args.health_host,
        fault_injection=args.fault_injection,
    )
    return asyncio.run(run_operator(options))


if __name__ == "__main__":
    sys.exit(main())
