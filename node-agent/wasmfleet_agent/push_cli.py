"""``wasmfleet push``: publish a ``.wasm`` module or component to an OCI registry as a CNCF
Wasm artifact (a component's config says ``os: wasip2`` and lists its imports, exports and
world).

Users and tests publish modules with it instead of needing oras or wasm-to-oci. It prints the
manifest digest on stdout, so ``REF@$(wasmfleet push …)`` pins exactly what was pushed. No
timestamp goes into the artifact: pushing the same file twice gives the same digest.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import wasmtime
from wasmtime import component as wcomponent

from wasmfleet_agent.runtime.component import target_world
from wasmfleet_agent.runtime.shape import COMPONENT_HEADER
from wasmfleet_oci import auth, client, errors, push, reference

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmfleet", description="Wasmfleet's tools for module authors."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    push_parser = commands.add_parser(
        "push",
        help="publish a .wasm module or component as a CNCF Wasm artifact",
        description="Publishes MODULE under REF (registry/repository:tag) in the CNCF Wasm "
        "artifact layout and prints the manifest digest.",
    )
    push_parser.add_argument("module", type=Path, metavar="MODULE", help="the .wasm file")
    push_parser.add_argument("ref", metavar="REF", help="where to push, e.g. host:5000/acme/hi:1")
    push_parser.add_argument(
        "--insecure",
        action="store_true",
        help="speak plain HTTP to this registry (loopback registries use HTTP anyway)",
    )
    push_parser.add_argument("--ca-file", type=Path, help="PEM bundle to trust for HTTPS")
    push_parser.add_argument("--username", help="registry user name")
    secret = push_parser.add_mutually_exclusive_group()
    secret.add_argument("--password", help="registry password (prefer --password-stdin)")
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    push_parser.add_argument(
        "--docker-config",
        type=Path,
        metavar="FILE",
        help="a config.json / .dockerconfigjson to take the registry's credentials from",
    )
    return parser


def _credentials(
    args: argparse.Namespace, ref: reference.Reference, parser: argparse.ArgumentParser
) -> auth.Credentials | None:
    if args.username is not None and args.docker_config is not None:
        parser.error("give either --username or --docker-config, not both")
    if args.docker_config is not None:
        try:
            configs = auth.parse_docker_config(args.docker_config.read_bytes())
        except (OSError, ValueError) as error:
            parser.error(f"--docker-config: {error}")
        return auth.find_credentials(configs, registry=ref.registry)
    if args.username is None:
        if args.password is not None or args.password_stdin:
            parser.error("a password needs --username")
        return None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    else:
        parser.error("--username needs --password or --password-stdin")
    return auth.Credentials(username=args.username, password=password)


def describe_component(data: bytes) -> push.ComponentDescription | None:
    """For a component, what its artifact's config says (its imports, exports and world);
    None for a core module. Compiling it is how wasmtime lists them, and it also refuses a
    component that is not valid before anything is pushed."""
    if not data.startswith(COMPONENT_HEADER):
        return None
    config = wasmtime.Config()
    config.wasm_component_model = True
    engine = wasmtime.Engine(config)
    try:
        component = wcomponent.Component(engine, data)
    except wasmtime.WasmtimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "invalid"
        raise ValueError(f"the file is not a valid WebAssembly component: {first}") from None
    imports = tuple(sorted(component.type.imports(engine)))
    exports = tuple(sorted(component.type.exports(engine)))
    return push.ComponentDescription(imports, exports, target_world(exports))


async def _push(
    *,
    module: bytes,
    title: str,
    ref: reference.Reference,
    settings: client.ClientSettings,
    credentials: auth.Credentials | None,
) -> push.PushedModule:
    component = describe_component(module)
    async with client.RegistryClient(settings=settings) as registry:
        return await push.push_module(
            client=registry,
            reference=ref,
            module=module,
            credentials=credentials,
            title=title,
            component=component,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        ref = reference.parse_reference(args.ref)
    except ValueError as error:
        parser.error(str(error))
    credentials = _credentials(args, ref, parser)
    try:
        module = args.module.read_bytes()
    except OSError as error:
        print(f"wasmfleet push: cannot read {args.module}: {error.strerror}", file=sys.stderr)
        return 1
    settings = client.ClientSettings(
        insecure_registries=frozenset({ref.api_host}) if args.insecure else frozenset(),
        ca_file=args.ca_file,
    )
    try:
        pushed = asyncio.run(
            _push(
                module=module,
                title=args.module.name,
                ref=ref,
                settings=settings,
                credentials=credentials,
            )
        )
    except (ValueError, errors.RegistryError) as error:
        print(f"wasmfleet push: {error}", file=sys.stderr)
        return 1
    print(pushed.manifest_digest)
    print(f"pushed {pushed.pinned} ({pushed.size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
