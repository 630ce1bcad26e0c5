"""``wasmfleet-agent``: the node agent's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wasmfleet-agent",
        description="Pulls, compiles, caches and serves Wasm modules on one node.",
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(
            f"wasmfleet-agent {metadata.version('wasmfleet')} "
            f"(wasmtime {metadata.version('wasmtime')})"
        )
        return 0
    parser.error("the runtime is not built yet; only --version is available")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
