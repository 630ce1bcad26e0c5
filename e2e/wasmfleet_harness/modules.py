"""Builds the example and test Wasm modules from source with the real toolchains.

A module is a directory holding one entry file; its name picks the toolchain:

- ``main.rs``: Debian's ``rustc`` with ``libstd-rust-dev-wasm32`` (``--target wasm32-wasi``);
  rustup's rustc has no wasm std here, so the Debian compiler is used by path.
- ``main.go``: ``GOOS=wasip1 GOARCH=wasm go build``.
- ``component.toml``: a WASI 0.2 component made from another module of this list (``from``)
  with the preview 1 adapter (``adapter``: ``command``), by ``wasm-tools component new``
  (`e2e/toolchain/wasm-tools.sh` builds the tool and fetches the adapters, pinned).
- ``lib.rs`` beside ``wit/world.wit``: a ``wasi:http`` component written against the canonical
  ABI by hand (``no_std``): Debian's ``rustc`` for ``wasm32-unknown-unknown``, then
  ``wasm-tools component embed`` with the world and ``component new``.
- ``app.py`` beside ``wit/world.wit``: a Python component, by ``componentize-py`` (PyPI,
  pinned in ``pyproject.toml``) for the world named in ``world.wit``.
  Both take the WASI 0.2 WIT that ``world.wit`` refers to from the pinned ``wasip2`` crate
  (`e2e/toolchain/wasm-tools.sh`).
- ``main.c``: ``clang --target=wasm32-wasi`` against Debian's ``wasi-libc``. A C module may
  build with third-party source that is downloaded, not committed: its ``vendor.toml`` names
  an archive (``url``, pinned ``sha256``), the files to ``extract`` from it, which of them are
  ``sources`` to compile with ``main.c``, and ``cflags``; the files are kept under
  ``~/.cache/wasmfleet/vendor/`` (see `fetch_vendored`).

Modules live in ``examples/*/``, ``tests/modules/*/`` and ``bench/modules/*/`` and build into
``build/modules/``
(ignored by git). A module is rebuilt only when a file in its directory is newer than its
output. Run ``python -m wasmfleet_harness.modules`` (``make modules``) to build them all.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wasmfleet_harness.binaries import REPO_ROOT, cache_dir

__all__ = [
    "BUILD_DIR",
    "ModuleSource",
    "Vendored",
    "build_all",
    "build_module",
    "discover",
    "fetch_vendored",
    "with_custom_section",
]

BUILD_DIR = REPO_ROOT / "build" / "modules"
SOURCE_ROOTS = (
    REPO_ROOT / "examples",
    REPO_ROOT / "tests" / "modules",
    REPO_ROOT / "bench" / "modules",
)
ENTRY_FILES = {
    "main.rs": "rust",
    "main.go": "go",
    "main.c": "c",
    "component.toml": "component",
    "lib.rs": "rust-wit",
    "app.py": "python",
}
WIT_LANGUAGES = ("rust-wit", "python")
"""Components built against a WIT world of their own (``wit/world.wit``)."""
WASM_TOOLS_SCRIPT = REPO_ROOT / "e2e" / "toolchain" / "wasm-tools.sh"
ADAPTERS = ("command", "reactor")
VENDOR_FILE = "vendor.toml"
_HEX64 = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True)
class Vendored:
    """Third-party C source, extracted into ``directory`` (which goes on the include path)."""

    directory: Path
    sources: tuple[Path, ...]
    cflags: tuple[str, ...]


def _strings(manifest: Path, spec: dict[str, object], key: str) -> tuple[str, ...]:
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{manifest}: {key} must be a list of strings")
    return tuple(value)


def fetch_vendored(manifest: Path, *, root: Path | None = None) -> Vendored:
    """The files a ``vendor.toml`` names, downloaded and extracted on first use.

    The archive must match the pinned sha256, or nothing is kept. Extracted files live in a
    directory named for the archive and its checksum under ``root`` (default: ``vendor/`` in
    the project's cache, ``~/.cache/wasmfleet``), reused while it is complete; it appears by a
    rename, so an interrupted download leaves nothing behind that looks finished.
    """
    spec = tomllib.loads(manifest.read_text())
    url, sha256 = spec.get("url"), spec.get("sha256")
    if not isinstance(url, str) or not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise ValueError(f"{manifest}: url and sha256 (64 lowercase hex digits) are required")
    members = _strings(manifest, spec, "extract")
    names = [PurePosixPath(member).name for member in members]
    sources = _strings(manifest, spec, "sources")
    if len(set(names)) != len(names) or not set(sources) <= set(names):
        raise ValueError(f"{manifest}: extracted names must be unique and include every source")
    root = root if root is not None else cache_dir() / "vendor"
    directory = root / f"{PurePosixPath(url).name}-{sha256[:12]}"
    if not all((directory / name).is_file() for name in names):
        _download_and_extract(url, sha256, members, root, directory)
    return Vendored(
        directory,
        tuple(directory / name for name in sources),
        _strings(manifest, spec, "cflags"),
    )


def _download_and_extract(
    url: str, sha256: str, members: Sequence[str], root: Path, directory: Path
) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "wasmfleet-build"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            data = response.read()
    except OSError as error:
        raise RuntimeError(f"downloading {url} failed: {error}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise RuntimeError(f"{url} has sha256 {actual}, not the pinned {sha256}")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in members:
                info = next((i for i in archive.getmembers() if i.name == member), None)
                handle = archive.extractfile(info) if info and info.isfile() else None
                if handle is None:
                    raise RuntimeError(f"{url} holds no regular file {member}")
                (staging / PurePosixPath(member).name).write_bytes(handle.read())
        staging.chmod(0o755)  # mkdtemp makes it private; the files are not secrets
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
        argv = ["clang", "--target=wasm32-wasi", "-O2", "-Wall", "-Werror"]
        sources = [source.entry.name]
        manifest = source.directory / VENDOR_FILE
        if manifest.is_file():
            vendored = fetch_vendored(manifest)
            argv += [*vendored.cflags, "-I", str(vendored.directory)]
            sources += [str(path) for path in vendored.sources]
        argv += ["-o", str(output), *sources]
    else:  # pragma: no cover - ENTRY_FILES is the only source of languages (components aside)
        raise ValueError(source.language)
    return argv, env


def _stale(source: ModuleSource, inputs: Sequence[Path] = ()) -> bool:
    if not source.output.exists():
        return True
    built = source.output.stat().st_mtime
    files = [p for p in source.directory.rglob("*") if p.is_file()]
    return any(p.stat().st_mtime > built for p in [*files, *inputs])


def component_toolchain() -> tuple[Path, Path]:
    """``wasm-tools`` and the directory of the preview 1 adapters, made on first use."""
    paths = _toolchain()
    return paths["wasm_tools"], paths["adapters"]


def _toolchain() -> dict[str, Path]:
    """``wasm_tools``, ``adapters`` and ``wit`` (the WASI 0.2 WIT), made on first use."""
    done = subprocess.run(
        ["bash", str(WASM_TOOLS_SCRIPT)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{WASM_TOOLS_SCRIPT} failed:\n{done.stderr}")
    lines = (line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {key: Path(value) for key, value in lines}


_WORLD = re.compile(r"^\s*world\s+([a-z][a-z0-9-]*)\s*\{", re.MULTILINE)


def _build_wit_component(source: ModuleSource, force: bool) -> Path:
    """A component of the world in the module's ``wit/world.wit`` (``lib.rs`` or ``app.py``)."""
    world_file = source.directory / "wit" / "world.wit"
    worlds = _WORLD.findall(world_file.read_text()) if world_file.is_file() else []
    if len(worlds) != 1:
        raise ValueError(f"{world_file} must exist and define exactly one world")
    if not force and not _stale(source, [WASM_TOOLS_SCRIPT]):
        return source.output
    tools = _toolchain()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = source.output.with_suffix(".wasm.partial")
    with tempfile.TemporaryDirectory(prefix=f"{source.name}-") as scratch:
        work = Path(scratch)
        shutil.copytree(source.directory / "wit", work / "wit")
        shutil.copytree(tools["wit"] / "deps", work / "wit" / "deps", dirs_exist_ok=True)
        wasm_tools = str(tools["wasm_tools"])
        if source.language == "rust-wit":
            core, embedded = work / "core.wasm", work / "embedded.wasm"
            steps = [
                [_rustc(), "--edition", "2021", "--crate-type", "cdylib",
                 "--target", "wasm32-unknown-unknown", "-C", "opt-level=2", "-C", "panic=abort",
                 "-C", "strip=symbols", "-o", str(core), str(source.entry)],
                [wasm_tools, "component", "embed", str(work / "wit"), "--world", worlds[0],
                 str(core), "-o", str(embedded)],
                [wasm_tools, "component", "new", str(embedded), "-o", str(partial)],
            ]  # fmt: skip
        else:
            componentize = Path(sys.executable).parent / "componentize-py"
            steps = [
                [str(componentize), "-d", str(work / "wit"), "-w", worlds[0], "componentize",
                 "-p", str(source.directory), source.entry.stem, "-o", str(partial)],
            ]  # fmt: skip
        steps.append([wasm_tools, "validate", str(partial)])
        for argv in steps:
            _step(source, argv, partial, cwd=work)
    partial.replace(source.output)
    return source.output


def _step(
    source: ModuleSource,
    argv: list[str],
    partial: Path,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> None:
    """Runs one build step of ``source``; on failure removes ``partial`` and says why."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"building {source.name} ({source.language}) failed: {' '.join(argv)}\n"
            f"{result.stdout}{result.stderr}"
        )


def _build_component(source: ModuleSource, force: bool) -> Path:
    spec = tomllib.loads(source.entry.read_text())
    origin, adapter = spec.get("from"), spec.get("adapter", "command")
    known = {s.name: s for s in discover()}
    core_languages = ("rust", "go", "c")
    if (
        origin not in known
        or known[origin].language not in core_languages
        or adapter not in ADAPTERS
    ):
        raise ValueError(
            f"{source.entry}: `from` must name a module of {sorted(known)} (not a component) "
            f"and `adapter` be one of {ADAPTERS}"
        )
    core = build_module(known[str(origin)], force=force)
    if not force and not _stale(source, [core, WASM_TOOLS_SCRIPT]):
        return source.output
    wasm_tools, adapters = component_toolchain()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = source.output.with_suffix(".wasm.partial")
    for argv in (
        [
            str(wasm_tools),
            "component",
            "new",
            str(core),
            "--adapt",
            f"wasi_snapshot_preview1={adapters / f'wasi_snapshot_preview1.{adapter}.wasm'}",
            "-o",
            str(partial),
        ],
        [str(wasm_tools), "validate", str(partial)],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"building {source.name} failed: {' '.join(argv)}\n{result.stderr}")
    partial.replace(source.output)
    return source.output


def build_module(source: ModuleSource, *, force: bool = False) -> Path:
    """Builds one module if it is stale and returns the path of its ``.wasm``."""
    if source.language == "component":
        return _build_component(source, force)
    if source.language in WIT_LANGUAGES:
        return _build_wit_component(source, force)
    if not force and not _stale(source):
        return source.output
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = source.output.with_suffix(".wasm.partial")
    argv, env = _command(source, partial)
    _step(source, argv, partial, cwd=source.directory, env=env)
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


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def with_custom_section(module: bytes, name: str, *, padding: int = 0) -> bytes:
    """``module`` with a custom section called ``name`` (``padding`` zero bytes long) appended:
    the same code, still valid Wasm, under a new digest (for tests and benchmarks that need
    many distinct modules, or larger ones)."""
    encoded = name.encode()
    payload = _leb128(len(encoded)) + encoded + b"\0" * padding
    return module + b"\x00" + _leb128(len(payload)) + payload
