"""The sandbox with real modules built from C, Rust and Go: what a guest sees and how each
kind of misbehaviour is stopped, inside one process."""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from wasmfleet_agent.runtime.engine import TICK_SECONDS, EngineSettings, Runtime
from wasmfleet_agent.runtime.errors import ModuleLoadError, SandboxConfigError
from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, SandboxSpec, run
from wasmfleet_agent.runtime.service import HttpModule, IncomingRequest

SLACK = 0.1  # what a deadline may be overrun by (the acceptance bound), far above one tick


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(tmp_path / "compiled") as value:
        yield value


def _probe(path: str, query: str = "") -> tuple[tuple[str, str], ...]:
    return (("PATH_INFO", path), ("QUERY_STRING", query))


def test_compiled_code_is_cached_and_reused_by_a_new_runtime(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    cache = tmp_path / "compiled"
    with Runtime(cache) as first:
        compiled = first.load(wasm_modules["hello-go"])
        assert compiled.source == "compiled"
        assert first.is_cached(compiled.digest)
    files = list(cache.glob("*.cwasm"))
    assert len(files) == 1
    assert not list(cache.glob("*.partial*"))
    with Runtime(cache) as second:
        again = second.load(wasm_modules["hello-go"])
        assert again.source == "cache"
        assert again.seconds < compiled.seconds
        assert run(again, SandboxSpec()).stdout == b"Hello from a Go Wasm microservice!\n"
        # another engine setting is another cache entry
        metered = second.load(wasm_modules["hello-go"], settings=EngineSettings(fuel=True))
        assert metered.source == "compiled"
    assert len(list(cache.glob("*.cwasm"))) == 2


def test_a_damaged_cache_file_is_replaced_by_a_fresh_compile(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    cache = tmp_path / "compiled"
    with Runtime(cache) as runtime:
        compiled = runtime.load(wasm_modules["hello-c"])
    (cached,) = cache.glob("*.cwasm")
    cached.write_bytes(b"not machine code")
    with Runtime(cache) as runtime:
        again = runtime.load(wasm_modules["hello-c"])
        assert again.source == "compiled"
        assert run(again, SandboxSpec()).ok
    assert cached.read_bytes() != b"not machine code"
    assert compiled.digest == again.digest


def test_modules_that_cannot_run_are_refused_with_a_clear_reason(
    tmp_path: Path, runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    not_wasm = tmp_path / "not.wasm"
    not_wasm.write_text("#!/bin/sh\necho hello\n")
    with pytest.raises(ModuleLoadError, match="not a WebAssembly binary"):
        runtime.load(not_wasm)
    truncated = tmp_path / "truncated.wasm"
    truncated.write_bytes(wasm_modules["hello-c"].read_bytes()[:2000])
    with pytest.raises(ModuleLoadError, match="does not compile"):
        runtime.load(truncated)
    unknown_import = tmp_path / "import.wasm"
    unknown_import.write_bytes(
        wasmtime.wat2wasm(
            '(module (import "env" "launch_missiles" (func)) '
            '(memory (export "memory") 1) (func (export "_start")))'
        )
    )
    with pytest.raises(ModuleLoadError, match="launch_missiles"):
        runtime.load(unknown_import)
    reactor = tmp_path / "reactor.wasm"
    reactor.write_bytes(
        wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_initialize")))')
    )
    with pytest.raises(ModuleLoadError, match="exports no _start function"):
        runtime.load(reactor)


def test_the_guest_sees_only_what_its_spec_grants(
    tmp_path: Path, runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    os.environ["WASMFLEET_HOST_SECRET"] = "must-not-leak"
    try:
        probe = runtime.load(wasm_modules["probe"])
        result = run(probe, SandboxSpec(env=(*_probe("/env"), ("GIVEN", "yes"))))
    finally:
        del os.environ["WASMFLEET_HOST_SECRET"]
    body = result.stdout.decode()
    assert "GIVEN=yes" in body
    assert "WASMFLEET_HOST_SECRET" not in body
    assert "PATH=" not in body
    assert "HOME=" not in body

    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "note.txt").write_text("visible\n")
    spec = SandboxSpec(env=_probe("/open", "/data/note.txt"), preopens=(Preopen(granted, "/data"),))
    assert b"opened /data/note.txt: visible" in run(probe, spec).stdout
    for outside in ("/etc/passwd", "/data/../../etc/passwd", "/proc/self/environ"):
        spec = SandboxSpec(env=_probe("/open", outside), preopens=(Preopen(granted, "/data"),))
        assert f"denied {outside}".encode() in run(probe, spec).stdout


def test_directories_are_read_only_unless_granted_writable(
    tmp_path: Path, runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    job = runtime.load(wasm_modules["jobprobe"])
    output = tmp_path / "output"
    output.mkdir()
    read_only = run(job, SandboxSpec(preopens=(Preopen(output, "/output"),)))
    assert b"output: not writable" in read_only.stdout
    assert not (output / "result.txt").exists()
    writable = run(job, SandboxSpec(preopens=(Preopen(output, "/output", writable=True),)))
    assert b"output: written" in writable.stdout
    assert (output / "result.txt").read_text() == "written by jobprobe\n"
    with pytest.raises(SandboxConfigError, match="does not exist"):
        SandboxSpec(preopens=(Preopen(tmp_path / "missing", "/x"),)).check()


@pytest.mark.parametrize(
    ("module", "env"),
    [
        ("probe", _probe("/loop")),
        ("probe", _probe("/sleep", "5000")),
        ("sleep-go", (("QUERY_STRING", "5000"),)),
    ],
    ids=["busy-loop-c", "sleep-c", "sleep-go"],
)
def test_the_deadline_stops_running_and_sleeping_guests(
    runtime: Runtime, wasm_modules: dict[str, Path], module: str, env: tuple[tuple[str, str]]
) -> None:
    compiled = runtime.load(wasm_modules[module])
    result = run(compiled, SandboxSpec(env=env), limits=RunLimits(deadline_seconds=0.25))
    assert result.failure is not None
    assert result.failure.kind == "deadline"
    assert 0.25 <= result.seconds < 0.25 + SLACK


def test_a_sleep_shorter_than_the_deadline_completes(
    runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    for module, env in (
        ("probe", _probe("/sleep", "30")),
        ("sleep-go", (("QUERY_STRING", "30"),)),
    ):
        result = run(runtime.load(wasm_modules[module]), SandboxSpec(env=env))
        assert result.ok, result.failure
        assert b"slept 30 ms" in result.stdout
        assert result.seconds >= 0.03


def test_memory_growth_stops_at_the_limit(runtime: Runtime, wasm_modules: dict[str, Path]) -> None:
    probe = runtime.load(wasm_modules["probe"])
    result = run(probe, SandboxSpec(env=_probe("/membomb"), memory_limit=16 << 20))
    assert result.failure is not None
    assert result.failure.kind == "memory"
    assert b"out of memory" in result.stderr
    # the next run of the same module starts from a fresh, small instance
    assert run(probe, SandboxSpec(env=_probe("/plain"), memory_limit=16 << 20)).ok


def test_endless_output_is_cut_at_the_limit(
    runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    probe = runtime.load(wasm_modules["probe"])
    limits = RunLimits(deadline_seconds=10, max_output=1 << 20)
    result = run(probe, SandboxSpec(env=_probe("/flood")), limits=limits)
    assert result.failure is not None
    assert result.failure.kind == "output"
    assert len(result.stdout) == 1 << 20
    assert result.seconds < 1.0  # cut at the next tick, not at the deadline


def test_fuel_bounds_the_work_of_a_run(tmp_path: Path, wasm_modules: dict[str, Path]) -> None:
    with Runtime(tmp_path / "compiled") as runtime:
        metered = runtime.load(wasm_modules["probe"], settings=EngineSettings(fuel=True))
        spent = run(metered, SandboxSpec(env=_probe("/loop"), fuel=5_000_000))
        assert spent.failure is not None
        assert spent.failure.kind == "fuel"
        enough = run(metered, SandboxSpec(env=_probe("/plain"), fuel=5_000_000))
        assert enough.ok


def test_stack_exhaustion_is_a_trap_of_that_run_only(
    runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    probe = runtime.load(wasm_modules["probe"])
    result = run(probe, SandboxSpec(env=_probe("/recurse")))
    assert result.failure is not None
    assert result.failure.kind in ("trap", "stack")
    assert "out of bounds" in result.failure.detail or "stack" in result.failure.detail


def test_runs_on_many_threads_keep_their_deadlines_and_output_apart(
    runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    probe = runtime.load(wasm_modules["probe"])
    echo_rust = runtime.load(wasm_modules["echo-rust"])

    def echo(index: int) -> bytes:
        spec = SandboxSpec(env=(("REQUEST_METHOD", "POST"), *_probe("/e", f"n={index}")))
        return run(echo_rust, spec, stdin=f"body {index}".encode()).stdout

    def spin(_: int) -> str | None:
        result = run(probe, SandboxSpec(env=_probe("/loop")), limits=RunLimits(0.3))
        return None if result.failure is None else result.failure.kind

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        started = time.monotonic()
        spinners = [pool.submit(spin, i) for i in range(3)]
        echoes = list(pool.map(echo, range(200)))
        echo_time = time.monotonic() - started
        assert [s.result() for s in spinners] == ["deadline"] * 3
    for index, output in enumerate(echoes):
        assert f"POST /e n={index}\n".encode() in output
        assert output.endswith(f"body {index}".encode())
    # the echoes were not queued behind the spinning guests
    assert echo_time < 0.3 + 10 * TICK_SECONDS + 5


def test_an_idle_module_is_unloaded_and_loaded_again_on_use(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    loads: list[str] = []
    with Runtime(
        tmp_path / "compiled",
        unload_idle_seconds=60,
        on_compile=lambda source, _seconds: loads.append(source),
    ) as runtime:
        module = tmp_path / "hello.wasm"
        module.write_bytes(wasm_modules["hello-c"].read_bytes())
        slot = runtime.slot(module, runtime.load(module))
        service = HttpModule("hello", slot, SandboxSpec(), RunLimits())
        request = IncomingRequest("GET", "/", "", (), b"", "127.0.0.1", "localhost", 80)
        assert service.execute(request).status == 200
        assert runtime.unload_idle() == 0  # used a moment ago
        in_use = slot.get()  # a run under way keeps its code whatever the sweeper does
        assert runtime.unload_idle(now=time.monotonic() + 61) == 1
        assert not slot.loaded
        assert run(in_use, SandboxSpec()).ok
        assert service.execute(request).status == 200  # loaded again, from the cache
        assert slot.loaded
        assert loads == ["compiled", "cache"]

        runtime.unload_idle(now=time.monotonic() + 61)
        module.unlink()
        for cached in (tmp_path / "compiled").glob("*.cwasm"):
            cached.unlink()
        outcome = service.execute(request)
        assert outcome.status == 500
        assert outcome.error is not None
        assert "cannot be read" in outcome.error
