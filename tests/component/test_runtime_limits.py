"""Limits that hold for the whole of a request: every memory, every table, the guest's clocks.

Each case runs a real module through both ways of running one: ``wasmfleet-agent run`` (a
job) and ``wasmfleet-agent serve`` (a request), the latter in one process and in two worker
processes. The hostile modules are written in the WebAssembly text format and assembled here
(wasmtime's ``wat2wasm``), because no compiler emits them on purpose.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from wasmfleet_harness.agent import ServedModule, agent_command
from wasmfleet_harness.processes import Workspace, wait_until

_PRINT = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (data (i32.const 256) "grew\\n")
  (data (i32.const 272) "refused\\n")
  (func $say (param $at i32) (param $length i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $length))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
"""


def _many_memories(extra: int) -> str:
    """One exported memory and ``extra`` more, each grown to 16 MiB and written all over."""
    memories = "\n".join(f"  (memory $m{i} 1)" for i in range(1, extra + 1))
    grow_and_touch = "\n".join(
        f"    (drop (memory.grow $m{i} (i32.const 255)))\n"
        f"    (memory.fill $m{i} (i32.const 0) (i32.const 1) (i32.const 16777216))"
        for i in range(1, extra + 1)
    )
    return f"""(module {_PRINT}
  (memory $m0 (export "memory") 1)
{memories}
  (func (export "_start")
{grow_and_touch}
    (call $say (i32.const 256) (i32.const 5))))
"""


def _table_grow(elements: int) -> str:
    """A module that grows its table by ``elements`` and says whether that worked."""
    return f"""(module {_PRINT}
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "_start")
    (if (i32.eq (table.grow $t (ref.null func) (i32.const {elements})) (i32.const -1))
      (then (call $say (i32.const 272) (i32.const 8)))
      (else (call $say (i32.const 256) (i32.const 5))))))
"""


def _many_tables(count: int) -> str:
    tables = "\n".join(f"  (table $t{i} 1 funcref)" for i in range(count))
    return f"""(module {_PRINT}
  (memory (export "memory") 1)
{tables}
  (func (export "_start") (call $say (i32.const 256) (i32.const 5))))
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-modules")
    sources = {
        "many-memories": _many_memories(16),
        "table-200m": _table_grow(200_000_000),
        "table-4g": _table_grow(4_000_000_000),
        "table-small": _table_grow(1_000),
        "many-tables": _many_tables(16),
    }
    paths = {}
    for name, text in sources.items():
        path = paths[name] = root / f"{name}.wasm"
        path.write_bytes(wasmtime.wat2wasm(text))
    return paths


def _run(module: Path, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), "run", "--cache-dir", str(cache), *args, str(module)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _get(url: str, *, timeout: float = 30.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def processes(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def _serve(workspace: Workspace, module: Path, processes: int, *extra: str) -> ServedModule:
    name = f"{module.stem}-{processes}"
    return ServedModule(
        workspace.subdir(f"limits-{name}"),
        module,
        extra=["--processes", str(processes), *extra],
        name=f"agent-{name}",
    )


def test_a_module_with_more_than_one_memory_is_refused_at_load_by_run(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    done = _run(hostile["many-memories"], "--memory", "16Mi", cache=tmp_path)
    assert done.returncode != 0
    assert "17 linear memories" in done.stderr
    assert "at most one" in done.stderr


def test_a_module_with_more_than_one_memory_is_refused_at_load_by_serve(
    hostile: dict[str, Path], workspace: Workspace, processes: int
) -> None:
    served = _serve(workspace, hostile["many-memories"], processes, "--memory", "16Mi")
    served.process.start()
    try:
        wait_until(
            lambda: served.process.returncode() is not None,
            timeout=60,
            message="serve kept running a module with 17 memories",
        )
    finally:
        served.stop()
    assert served.process.returncode() != 0
    log = served.process.log_tail()
    assert "17 linear memories" in log
    assert "at most one" in log


def test_a_module_with_too_many_tables_is_refused_at_load(
    hostile: dict[str, Path], tmp_path: Path
) -> None:
    done = _run(hostile["many-tables"], cache=tmp_path)
    assert done.returncode != 0
    assert "16 tables" in done.stderr


@pytest.mark.parametrize("module", ["table-200m", "table-4g"])
def test_a_table_grow_past_the_cap_fails_at_once_in_run(
    hostile: dict[str, Path], tmp_path: Path, module: str
) -> None:
    done = _run(hostile[module], "--memory", "16Mi", "--timeout", "1s", cache=tmp_path)
    assert (done.returncode, done.stdout) == (0, "refused\n"), done.stderr


def test_a_table_grow_within_the_cap_works(hostile: dict[str, Path], tmp_path: Path) -> None:
    done = _run(hostile["table-small"], "--memory", "16Mi", cache=tmp_path)
    assert (done.returncode, done.stdout) == (0, "grew\n"), done.stderr


@pytest.fixture(scope="module")
def table_agent(
    hostile: dict[str, Path], workspace: Workspace, processes: int
) -> Iterator[ServedModule]:
    served = _serve(
        workspace, hostile["table-4g"], processes, "--memory", "16Mi", "--timeout", "1s"
    )
    with served:
        yield served


def test_a_table_grow_past_the_cap_fails_at_once_in_serve(table_agent: ServedModule) -> None:
    # Uncapped, this grow ran past the 1 s deadline (504) with gigabytes resident.
    assert _get(table_agent.url + "/") == (200, "refused\n")


def test_an_absolute_sleep_on_the_monotonic_clock_sleeps_in_run(
    wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    done = _run(
        wasm_modules["probe"],
        "--env",
        "PATH_INFO=/abssleep",
        "--env",
        "QUERY_STRING=300",
        cache=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    slept = int(done.stdout.split("slept ", 1)[1].split(" ", 1)[0])
    assert slept >= 300, done.stdout


def test_an_absolute_sleep_on_the_monotonic_clock_sleeps_in_serve(
    probe_agent: ServedModule,
) -> None:
    status, body = _get(probe_agent.url + "/abssleep?200")
    assert status == 200
    slept = int(body.split("slept ", 1)[1].split(" ", 1)[0])
    assert slept >= 200, body


def test_an_absolute_sleep_past_the_deadline_is_stopped_by_it(
    probe_agent: ServedModule, probe_deadline: float
) -> None:
    status, _ = _get(probe_agent.url + f"/abssleep?{int(probe_deadline * 1000) + 5000}")
    assert status == 504


@pytest.mark.parametrize(
    ("target", "made"), [("/etc/passwd", "Operation not permitted"), ("../../etc/passwd", "made")]
)
def test_a_symlink_out_of_a_writable_directory_leads_nowhere(
    wasm_modules: dict[str, Path], tmp_path: Path, target: str, made: str
) -> None:
    """A module may leave a relative symlink pointing out of its writable directory (a
    stated limit); neither it nor the next run can read through it, and the agent removes
    such directories without following links."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = _run(
        wasm_modules["probe"],
        "--dir",
        f"{scratch}:/scratch:rw",
        "--env",
        "PATH_INFO=/symlink",
        "--env",
        f"QUERY_STRING={target}",
        cache=tmp_path / "cache",
    )
    assert done.returncode == 0, done.stderr
    assert f"symlink {made}\n" in done.stdout
    assert "read through it: " in done.stdout
    assert "root:" not in done.stdout
