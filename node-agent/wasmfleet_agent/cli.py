"""``wasmfleet-agent``: the node agent's command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from wasmfleet_agent.oci.store import PullPolicy
from wasmfleet_agent.runtime.sandbox import Preopen
from wasmfleet_agent.standalone import ModuleOptions, ServeOptions, run_module, serve
from wasmfleet_api import logs
from wasmfleet_api.units import parse_duration, parse_quantity

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
    parser.add_argument("--memory", type=_quantity, default="64Mi", help="linear memory cap")
    parser.add_argument("--fuel", type=int, help="fuel (instructions, roughly) per run")
    parser.add_argument("--cache-dir", type=Path, default=_default_cache())
    parser.add_argument(
        "--pull-policy", choices=[p.value for p in PullPolicy], default="IfNotPresent"
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="speak plain HTTP to this registry (loopback registries always may)",
    )
    parser.add_argument("--ca-file", type=Path, help="PEM bundle to trust for registries")
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
        memory_limit=args.memory,
        fuel=args.fuel,
        pull_policy=PullPolicy(args.pull_policy),
        insecure_registries=frozenset(args.insecure_registry),
        ca_file=args.ca_file,
        docker_config=args.docker_config,
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
    return parser


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
    default_level = "info" if args.command == "serve" else "warning"
    logs.configure(level=args.log_level or default_level, json_format=args.log_format == "json")
    if args.command == "serve":
        serve_options = ServeOptions(
            host=args.host,
            port=args.port,
            admin_port=args.admin_port,
            timeout=args.timeout,
            max_concurrency=args.max_concurrency,
            max_request_body=args.max_request_body,
            max_response=args.max_response,
        )
        return asyncio.run(serve(_options(args), serve_options))
    if args.command != "run" and module_args:
        parser.error("arguments after -- are for run only")
    return asyncio.run(run_module(_options(args), (*args.args, *module_args), args.timeout))


if __name__ == "__main__":
    sys.exit(main())
