"""Modules built from Rust, Go and C sources run under wasmtime-py and print their greeting."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

GREETINGS = {
    "hello-rust": "Hello from a Rust Wasm microservice!\n",
    "hello-go": "Hello from a Go Wasm microservice!\n",
    "hello-c": "Hello from a C Wasm microservice!\n",
}


def _run_start(path: Path, stdout: Path) -> None:
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(path))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.stdout_file = str(stdout)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    code = 0
    try:
        start(store)
    except wasmtime.ExitTrap as exit_trap:
        # Go's runtime always leaves through proc_exit, even with status 0.
        code = exit_trap.code
    assert code == 0


@pytest.mark.parametrize("name", sorted(GREETINGS))
def test_a_module_built_from_source_prints_its_greeting(
    name: str, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    path = wasm_modules[name]
    assert path.read_bytes()[:4] == b"\0asm"
    stdout = tmp_path / "stdout"
    _run_start(path, stdout)
    assert stdout.read_text() == GREETINGS[name]
