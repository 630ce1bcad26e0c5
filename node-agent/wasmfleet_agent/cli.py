"""``wasmfleet-agent``: the node agent's command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from wasmfleet_agent.runtime.sandbox import Preopen
from wasmfleet_agent.standalone import ModuleOptions, ServeOptions, run_module, serve
from wasmfleet_agent.store import PullPolicy
from wasmfleet_api.units import parse_duration, parse_quantity
from wasmfleet_common import logs
from wasmfleet_oci.options import add_registry_options, registry_settings

__all__ = ["main"]


def _env(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _dir(text: str) -> Preopen:
    parts = text.split(":")
    mode = "ro"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not all(parts):
        raise argparse.ArgumentTypeError(
            f"expected HOST:GUEST, HOST:GUEST:ro or HOST:GUEST:rw, got {text!r}"
        )
    return Preopen(Path(parts[0]), parts[1], writable=mode == "rw")


def _quantity(text: str) -> int:
    try:
        return parse_quantity(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasmfleet" / "agent"


def _module_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env",
        type=_env,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable the module sees (repeatable; nothing else is passed)",
    )
    parser.add_argument(
        "--dir",
        type=_dir,
        action="append",
        default=[],
        metavar="HOST:GUEST[:ro|:rw]",
        help="preopen a host directory at GUEST (read-only unless :rw; repeatable)",
    )
    parser.add_argument(
        "--allow-outbound",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an origin (https://api.example.com, http://10.0.0.5:8080) a wasi:http component "
        "may send requests to (repeatable; none by default)",
    )
    parser.add_argument("--memory", type=_quantity, default="64Mi", help="linear memory cap")
    parser.add_argument("--fuel", type=int, help="fuel (instructions, roughly) per run")
    parser.add_argument("--cache-dir", type=Path, default=_default_cache())
    parser.add_argument(
        "--pull-policy", choices=[p.value for p in PullPolicy], default="IfNotPresent"
    )
    add_registry_options(parser)
    parser.add_argument(
        "--docker-config", type=Path, metavar="FILE", help="registry credentials (config.json)"
    )
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument("--log-level", help="info for serve, warning for run")


def _options(args: argparse.Namespace) -> ModuleOptions:
    return ModuleOptions(
        source=args.module,
        cache_dir=args.cache_dir,
        env=tuple(args.env),
        dirs=tuple(args.dir),
        outbound=tuple(args.allow_outbound),
        memory_limit=args.memory,
        fuel=args.fuel,
        pull_policy=PullPolicy(args.pull_policy),
        insecure_registries=frozenset(args.insecure_registry),
        ca_file=args.ca_file,
        docker_config=args.docker_config,
        unload_idle_seconds=getattr(args, "unload_idle", 0.0),
    )


def _serving_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``serve`` and ``node`` share about the processes that answer requests."""
    parser.add_argument(
        "--unload-idle",
        type=_duration,
        default="10m",
        help="drop a module's machine code after this long without a request (0s: never); "
        "the next request loads it again from the cache",
    )
    parser.add_argument(
        "--processes",
        type=_positive,
        default=1,
        help="processes answering requests (more than 1: worker processes, one per core)",
    )
    parser.add_argument(
        "--inline-budget",
        type=_duration,
        default="2ms",
        help="CPU time a short run may spend on the event loop's thread before it is stopped "
        "and run again on a Wasm thread (0s: every run on a thread); only modules without "
        "writable directories or outbound hosts",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmfleet-agent",
        description="Pulls, compiles, caches and serves Wasm modules on one node.",
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="serve one module over HTTP (WAGI)",
        description="Serves MODULE (a .wasm path or a registry reference) over HTTP: "
        "a fresh instance per request, WAGI/CGI conventions.",
    )
    serve_parser.add_argument("--module", required=True, metavar="REF|PATH")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--admin-port", type=int, help="port of /healthz /readyz /metrics")
    serve_parser.add_argument("--timeout", type=_duration, default="30s", help="per request")
    serve_parser.add_argument("--max-concurrency", type=int, default=64)
    serve_parser.add_argument("--max-request-body", type=_quantity, default="1Mi")
    serve_parser.add_argument("--max-response", type=_quantity, default="16Mi")
    serve_parser.add_argument(
        "--idle-timeout",
        type=_duration,
        default="75s",
        help="close a connection after this long without a complete request (idle between "
        "requests, or stuck in its headers)",
    )
    _serving_arguments(serve_parser)
    _module_arguments(serve_parser)
    run_parser = commands.add_parser(
        "run",
        help="run a module to completion (like the wasmtime CLI)",
        description="Runs _start of MODULE with ARGS, the terminal's stdio, and only the "
        "env and directories given; exits with the module's exit code.",
    )
    run_parser.add_argument("module", metavar="REF|PATH")
    run_parser.add_argument(
        "args", nargs="*", metavar="ARGS", help="the module's arguments (after --)"
    )
    run_parser.add_argument("--timeout", type=_duration, help="stop the module after this long")
    _module_arguments(run_parser)
    _node_arguments(
        commands.add_parser(
            "node",
            help="join a cluster: register, heartbeat, run this node's bindings",
            description="Registers this node's WasmAgent, renews its heartbeat Lease and runs "
            "every WasmBinding assigned to the node, reporting each one's status.",
        )
    )
    return parser


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="node this agent serves (default: $NODE_NAME, else the host name)",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("NODE_IP"),
        required=not os.environ.get("NODE_IP"),
        help="IP address replicas are served on (default: $NODE_IP)",
    )
    parser.add_argument(
        "--netns",
        type=Path,
        help="open listening sockets in this network namespace (a local test host)",
    )
    parser.add_argument("--kubeconfig", type=Path, help="default: in-cluster service account")
    parser.add_argument("--state-dir", type=Path, default=_default_cache())
    parser.add_argument("--lease-namespace", default="wasmfleet-system")
    parser.add_argument("--lease-duration", type=_duration, default="20s")
    parser.add_argument("--capacity", type=int, default=256, help="most replicas hosted")
    parser.add_argument("--admin-port", type=int, help="port of /healthz /readyz /metrics")
    parser.add_argument("--admin-host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=64, help="threads running Wasm")
    _serving_arguments(parser)
    parser.add_argument(
        "--drain", type=_duration, default="2s", help="keep serving a removed binding this long"
    )
    parser.add_argument(
        "--memory-budget",
        type=_quantity,
        default="0",
        help="most linear memory and tables all running instances may hold together "
        "(shared by the processes; 0: no bound); a request that finds no room within 1s "
        "gets 503",
    )
    parser.add_argument(
        "--job-timeout",
        type=_duration,
        default="1h",
        help="a job run's deadline when its WasmService sets no job.timeout",
    )
    parser.add_argument(
        "--job-max-output",
        type=_quantity,
        default="1Mi",
        help="most stdout and stderr one job run may write to the log; the run ends there",
    )
    parser.add_argument(
        "--config-refresh",
        type=_duration,
        default="10s",
        help="how often referenced ConfigMaps and Secrets are read again",
    )
    parser.add_argument(
        "--fault-injection",
        action="store_true",
        help="for tests: POST /debug/crash/TASK on the admin port ends that task as a crash would",
    )
    add_registry_options(parser)
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument("--log-level", default="info")


def _node(args: argparse.Namespace) -> int:
    from wasmfleet_agent.cluster.node import NodeOptions, run_node
    from wasmfleet_agent.cluster.plans import JobLimits
    from wasmfleet_agent.cluster.registration import AgentIdentity, kube_architecture
    from wasmfleet_common.kube import KubeConfig

    kube = (
        KubeConfig.from_kubeconfig(args.kubeconfig)
        if args.kubeconfig is not None
        else KubeConfig.in_cluster()
    )
    options = NodeOptions(
        identity=AgentIdentity(
            node_name=args.node_name,
            address=args.address,
            architecture=kube_architecture(),
            lease_namespace=args.lease_namespace,
            lease_duration_seconds=max(1, round(args.lease_duration)),
            capacity=args.capacity,
        ),
        state_dir=args.state_dir,
        kube=kube,
        netns=args.netns,
        registry=registry_settings(args),
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        workers=args.workers,
        processes=args.processes,
        inline_budget=args.inline_budget,
        unload_idle_seconds=args.unload_idle,
        drain_seconds=args.drain,
        config_refresh_seconds=args.config_refresh,
        jobs=JobLimits(default_timeout=args.job_timeout, max_output=args.job_max_output),
        memory_budget=args.memory_budget or None,
        fault_injection=args.fault_injection,
    )
    return asyncio.run(run_node(options))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    module_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, module_args = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    if args.version:
        print(
            f"wasmfleet-agent {metadata.version('wasmfleet')} "
            f"(wasmtime {metadata.version('wasmtime')})"
        )
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    default_level = "warning" if args.command == "run" else "info"
    logs.configure(level=args.log_level or default_level, json_format=args.log_format == "json")
    if args.command == "node":
        return _node(args)
    if args.command == "serve":
        serve_options = ServeOptions(
            host=args.host,
            port=args.port,
            admin_port=args.admin_port,
            timeout=args.timeout,
            max_concurrency=args.max_concurrency,
            max_request_body=args.max_request_body,
            max_response=args.max_response,
            idle_timeout=args.idle_timeout,
            processes=args.processes,
            inline_budget=args.inline_budget,
        )
        return asyncio.run(serve(_options(args), serve_options))
    if args.command != "run" and module_args:
        parser.error("arguments after -- are for run only")
    return asyncio.run(run_module(_options(args), (*args.args, *module_args), args.timeout))


if __name__ == "__main__":
    sys.exit(main())
