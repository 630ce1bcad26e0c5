"""``wasmfleet-operator``: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wasmfleet-operator",
        description="Reconciles WasmServices into per-node bindings, Services and status.",
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(
            f"wasmfleet-operator {metadata.version('wasmfleet')} (kopf {metadata.version('kopf')})"
        )
        return 0
    parser.error("the reconcile loop is not built yet; only --version is available")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
