"""Job mode beside the native wasmtime CLI: the same modules, arguments, environment and
directories must give the same output and exit codes; and the agent's own job plumbing."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from wasmfleet_agent.runtime.engine import Runtime
from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, SandboxSpec, run
from wasmfleet_agent.runtime.service import JobRunner, run_job
from wasmfleet_common.backoff import Backoff
from wasmfleet_harness.agent import agent_command, wasmtime_cli


@dataclass(frozen=True)
class Case:
    module: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    input_files: dict[str, str]
    writable_output: bool
    program: str


CASES = {
    "c-args-env-dirs-exit3": Case(
        "jobprobe",
        ("first", "second word", "exit=3"),
        (("A", "1"), ("B", "two words")),
        {"one.txt": "1\n", "two.txt": "2\n"},
        True,
        "jobprobe.wasm",
    ),
    "c-nothing-granted": Case("jobprobe", (), (), {}, False, "jobprobe.wasm"),
    "rust-exit5": Case(
        "jobprobe-rust",
        ("--flag", "exit=5"),
        (("LANG_SEEN", "rust"),),
        {"data.txt": "hello from the input\n"},
        False,
        "jobprobe-rust.wasm",
    ),
    "go-wordcount": Case(
        "wordcount-job",
        ("/input",),
        (),
        {"a.txt": "one two three\n", "b.txt": "four five\n"},
        False,
        "wordcount-job.wasm",
    ),
    "go-wordcount-missing-dir": Case(
        "wordcount-job", ("/nowhere",), (), {}, False, "wordcount-job.wasm"
    ),
    # WASI 0.2 components (wasi:cli/command) made from the modules above
    "c-component-args-env-dirs-exit3": Case(
        "jobprobe-component",
        ("first", "second word", "exit=3"),
        (("A", "1"), ("B", "two words")),
        {"one.txt": "1\n", "two.txt": "2\n"},
        True,
        "jobprobe-component.wasm",
    ),
    "go-component-wordcount": Case(
        "wordcount-component",
        ("/input",),
        (),
        {"a.txt": "one two three\n", "b.txt": "four five\n"},
        False,
        "wordcount-component.wasm",
    ),
}


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def _prepare(root: Path, case: Case) -> tuple[Path | None, Path | None]:
    input_dir = output_dir = None
    if case.input_files:
        input_dir = root / "input"
        input_dir.mkdir(parents=True)
        for name, text in case.input_files.items():
            (input_dir / name).write_text(text)
    if case.writable_output:
        output_dir = root / "output"
        output_dir.mkdir(parents=True)
    return input_dir, output_dir


def _run(argv: list[str], cwd: Path) -> Outcome:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env={}
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def module_copies(tmp_path: Path, wasm_modules: dict[str, Path]) -> Path:
    # both runners see the module under the same file name (it becomes argv[0])
    directory = tmp_path / "modules"
    directory.mkdir()
    for name, path in wasm_modules.items():
        shutil.copy(path, directory / f"{name}.wasm")
    return directory


@pytest.mark.parametrize("name", list(CASES))
def test_job_mode_matches_the_native_wasmtime_cli(
    tmp_path: Path, module_copies: Path, name: str
) -> None:
    case = CASES[name]
    module = module_copies / case.program
    native_root, agent_root = tmp_path / "native", tmp_path / "agent"
    native_in, native_out = _prepare(native_root, case)
    agent_in, agent_out = _prepare(agent_root, case)

    native = [str(wasmtime_cli()), "run"]
    agent = [*agent_command(), "run", "--cache-dir", str(tmp_path / "cache")]
    for key, value in case.env:
        native += ["--env", f"{key}={value}"]
        agent += ["--env", f"{key}={value}"]
    if native_in is not None and agent_in is not None:
        native += ["--dir", f"{native_in}::/input"]
        agent += ["--dir", f"{agent_in}:/input:ro"]
    if native_out is not None and agent_out is not None:
        native += ["--dir", f"{native_out}::/output"]
        agent += ["--dir", f"{agent_out}:/output:rw"]
    native_result = _run([*native, str(module), *case.args], module_copies)
    agent_result = _run([*agent, str(module), "--", *case.args], module_copies)

    assert agent_result == native_result
    if native_out is not None and agent_out is not None:
        assert (agent_out / "result.txt").read_text() == (native_out / "result.txt").read_text()


def test_a_trap_exits_like_the_native_cli(tmp_path: Path, module_copies: Path) -> None:
    module = str(module_copies / "probe.wasm")
    native = _run([str(wasmtime_cli()), "run", "--env", "PATH_INFO=/recurse", module], tmp_path)
    agent = _run(
        [
            *agent_command(),
            "run",
            "--cache-dir",
            str(tmp_path / "c"),
            "--env",
            "PATH_INFO=/recurse",
            module,
        ],
        tmp_path,
    )
    assert native.code == agent.code == 134
    assert "out of bounds memory access" in agent.stderr


def test_a_job_logs_each_output_line_with_its_service(
    tmp_path: Path, wasm_modules: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.txt").write_text("alpha beta\n")
    with Runtime(tmp_path / "compiled") as runtime:
        compiled = runtime.load(wasm_modules["wordcount-job"])
        spec = SandboxSpec(args=("wordcount", "/data"), preopens=(Preopen(data, "/data"),))
        with caplog.at_level(logging.INFO, logger="wasmfleet_agent.runtime.service"):
            result = run_job(compiled, spec, timeout=30, name="team-a/wordcount")
    assert result.exit_code == 0
    lines = [(r.getMessage(), r.__dict__["stream"], r.__dict__["service"]) for r in caplog.records]
    assert lines == [
        ("a.txt 2", "stdout", "team-a/wordcount"),
        ("total 2", "stdout", "team-a/wordcount"),
    ]


def test_an_endless_jobs_output_stops_at_the_cap_with_a_last_line_saying_so(
    tmp_path: Path, wasm_modules: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A run that prints without end is stopped once it has written ``max_output`` bytes:
    its sink gets exactly that many, the run fails as ``output``, and the job's log ends
    with the agent's line saying why (the run's deadline is far away)."""
    spec = SandboxSpec(args=("probe",), env=(("PATH_INFO", "/flood"),))
    cap = 300_000
    with Runtime(tmp_path / "compiled") as runtime:
        compiled = runtime.load(wasm_modules["probe"])
        received: list[bytes] = []
        result = run(
            compiled,
            spec,
            limits=RunLimits(deadline_seconds=60, max_output=cap),
            sink=lambda _stream, data: received.append(data),
        )
        assert result.failure is not None
        assert (result.failure.kind, result.exit_code) == ("output", None)
        assert sum(map(len, received)) == cap
        assert b"".join(received).startswith(b"content-type: text/plain\n\nxxxx")

        with caplog.at_level(logging.INFO, logger="wasmfleet_agent.runtime.service"):
            job = run_job(compiled, spec, timeout=60, max_output=cap, name="team-a/flood")
    assert job.failure is not None
    assert job.failure.kind == "output"
    assert job.failure.detail == f"wrote more than {cap} bytes of output"
    last = caplog.records[-1]
    assert (last.__dict__["stream"], last.__dict__["service"]) == ("agent", "team-a/flood")
    assert last.getMessage().startswith(f"output stopped: the run wrote more than {cap} bytes")
    assert all(r.__dict__["stream"] == "stdout" for r in caplog.records[:-1])


async def test_failed_jobs_are_retried_with_exponential_backoff(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    import asyncio

    with Runtime(tmp_path / "compiled") as runtime:
        compiled = runtime.load(wasm_modules["jobprobe-rust"])
        failing = SandboxSpec(args=("job", "exit=7"))
        delays: list[float] = []

        async def record(delay: float) -> None:
            delays.append(delay)

        runner = JobRunner(
            run_once=lambda: asyncio.to_thread(run_job, compiled, failing, timeout=10, name="j"),
            backoff_limit=3,
            backoff=Backoff(base=0.5, cap=1.5),
            sleep=record,
        )
        attempts = await runner.run()
        assert [a.exit_code for a in attempts] == [7, 7, 7, 7]
        assert delays == [0.5, 1.0, 1.5]

        succeeding = SandboxSpec(args=("job", "exit=0"))
        runner.run_once = lambda: asyncio.to_thread(
            run_job, compiled, succeeding, timeout=10, name="j"
        )
        assert [a.exit_code for a in await runner.run()] == [0]
