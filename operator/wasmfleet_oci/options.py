"""Command-line options for reaching registries, shared by the agent's and the operator's CLIs."""

from __future__ import annotations

import argparse
from pathlib import Path

from wasmfleet_oci.client import ClientSettings

__all__ = ["add_registry_options", "registry_settings"]


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="speak plain HTTP to this registry (loopback registries always may)",
    )
    parser.add_argument("--ca-file", type=Path, help="PEM bundle to trust for registries")


def registry_settings(args: argparse.Namespace) -> ClientSettings:
    return ClientSettings(
        insecure_registries=frozenset(args.insecure_registry), ca_file=args.ca_file
    )
