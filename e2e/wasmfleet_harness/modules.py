"""Builds the example and test Wasm modules from source with the real toolchains.

A module is a directory holding one entry file; its name picks the toolchain:

- ``main.rs``: Debian's ``rustc`` with ``libstd-rust-dev-wasm32`` (``--target wasm32-wasi``);
  rustup's rustc has no wasm std here, so the Debian compiler is used by path.
- ``main.go``: ``GOOS=wasip1 GOARCH=wasm go build``.
- ``main.c``: ``clang --target=wasm32-wasi`` against Debian's ``wasi-libc``.

Modules live in ``examples/*/``, ``tests/modules/*/`` and ``bench/modules/*/`` and build into
``build/modules/``
(ignored by git). A module is rebuilt only when a file in its directory is newer than its
output. Run ``python -m wasmfleet_harness.modules`` (``make modules``) to build them all.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_harness.binaries import REPO_ROOT

__all__ = [
    "BUILD_DIR",
    "ModuleSource",
    "build_all",
    "build_module",
    "discover",
]

BUILD_DIR = REPO_ROOT / "build" / "modules"
SOURCE_ROOTS = (
    REPO_ROOT / "examples",
    REPO_ROOT / "tests" / "modules",
    REPO_ROOT / "bench" / "modules",
)
ENTRY_FILES = {"main.rs": "rust", "main.go": "go", "main.c": "c"}


@dataclass(frozen=True)
class ModuleSource:
    """A directory with one entry file; ``name`` is the directory's name."""

    name: str
    directory: Path
    entry: Path
    language: str

    @property
    def output(self) -> Path:
        return BUILD_DIR / f"{self.name}.wasm"


def discover(roots: Iterable[Path] = SOURCE_ROOTS) -> list[ModuleSource]:
    """Finds every module directory below ``roots``; names must be unique across them."""
    found: dict[str, ModuleSource] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for directory in sorted(p for p in root.iterdir() if p.is_dir()):
            entries = [directory / f for f in ENTRY_FILES if (directory / f).is_file()]
            if len(entries) != 1:
                continue
            entry = entries[0]
            if directory.name in found:
                raise ValueError(
                    f"two modules are called {directory.name!r}: "
                    f"{found[directory.name].directory} and {directory}"
                )
            found[directory.name] = ModuleSource(
                directory.name, directory, entry, ENTRY_FILES[entry.name]
            )
    return list(found.values())


def _rustc() -> str:
    return os.environ.get("WASMFLEET_RUSTC", "/usr/bin/rustc")


def _command(source: ModuleSource, output: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if source.language == "rust":
        argv = [
            _rustc(),
            source.entry.name,
            "--target",
            "wasm32-wasi",
            "-C",
            "opt-level=2",
            "-C",
            "strip=symbols",
            "-o",
            str(output),
        ]
    elif source.language == "go":
        env.update(GOOS="wasip1", GOARCH="wasm", CGO_ENABLED="0")
        argv = ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(output), source.entry.name]
    elif source.language == "c":
        argv = [
            "clang",
            "--target=wasm32-wasi",
            "-O2",
            "-Wall",
            "-Werror",
            "-o",
            str(output),
            source.entry.name,
        ]
    else:  # pragma: no cover - ENTRY_FILES is the only source of languages
        raise ValueError(source.language)
    return argv, env


def _stale(source: ModuleSource) -> bool:
    if not source.output.exists():
        return True
    built = source.output.stat().st_mtime
    return any(p.stat().st_mtime > built for p in source.directory.rglob("*") if p.is_file())


def build_module(source: ModuleSource, *, force: bool = False) -> Path:
    """Builds one module if it is stale and returns the path of its ``.wasm``."""
    if not force and not _stale(source):
        return source.output
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = source.output.with_suffix(".wasm.partial")
    argv, env = _command(source, partial)
    result = subprocess.run(
        argv, cwd=source.directory, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"building {source.name} ({source.language}) failed: {' '.join(argv)}\n"
            f"{result.stdout}{result.stderr}"
        )
    partial.replace(source.output)
    return source.output


def build_all(names: Sequence[str] = (), *, force: bool = False) -> dict[str, Path]:
    """Builds the named modules (all when ``names`` is empty); returns name -> path."""
    sources = discover()
    if names:
        known = {s.name for s in sources}
        unknown = sorted(set(names) - known)
        if unknown:
            raise KeyError(f"unknown modules {unknown}; known: {sorted(known)}")
        sources = [s for s in sources if s.name in names]
    return {s.name: build_module(s, force=force) for s in sources}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="modules to build (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    for name, path in build_all(args.names, force=args.force).items():
        print(f"{name:24} {path.stat().st_size:>9} bytes  {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
