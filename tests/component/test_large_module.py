"""A large module from a real C program (``bench/modules/sqlite-c``: SQLite's amalgamation,
downloaded at build time): it builds, the agent runs and serves it, and a second load takes
its machine code from the cache instead of compiling the two megabytes again."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from wasmfleet_agent.runtime.engine import CompiledModule, Runtime
from wasmfleet_agent.runtime.sandbox import RunLimits, SandboxSpec
from wasmfleet_agent.runtime.service import HttpModule, HttpOutcome, IncomingRequest
from wasmfleet_harness.agent import ServedModule
from wasmfleet_harness.binaries import REPO_ROOT
from wasmfleet_harness.modules import fetch_vendored
from wasmfleet_harness.processes import Workspace

MODULE = "sqlite-c"
MANIFEST = REPO_ROOT / "bench" / "modules" / MODULE / "vendor.toml"


def expected_summary(rows: int) -> list[dict[str, int]]:
    """The per-category summary main.c's table must give, computed here without SQL."""
    scores: dict[int, list[int]] = {}
    for i in range(1, rows + 1):
        scores.setdefault(i % 10, []).append(i * 7919 % 1000)
    return [
        {"category": c, "count": len(s), "sum": sum(s), "min": min(s), "max": max(s)}
        for c, s in sorted(scores.items())
    ]


def _request(method: str = "GET", query: str = "", body: bytes = b"") -> IncomingRequest:
    return IncomingRequest(
        method=method,
        path="/",
        query=query,
        headers=(("Host", "127.0.0.1:8080"),),
        body=body,
        remote_addr="127.0.0.1",
        server_name="127.0.0.1",
        server_port=8080,
    )


def _execute(compiled: CompiledModule, request: IncomingRequest) -> HttpOutcome:
    module = HttpModule(MODULE, compiled, SandboxSpec(args=(MODULE,)), RunLimits())
    return module.execute(request)


@pytest.fixture(scope="module")
def first_load(
    tmp_path_factory: pytest.TempPathFactory, wasm_modules: dict[str, Path]
) -> Iterator[tuple[Path, CompiledModule]]:
    """The module compiled once by a runtime with an empty cache: (cache dir, module)."""
    cache = tmp_path_factory.mktemp("sqlite-compiled")
    with Runtime(cache) as runtime:
        yield cache, runtime.load(wasm_modules[MODULE])


def test_the_module_is_built_from_the_pinned_amalgamation(wasm_modules: dict[str, Path]) -> None:
    assert wasm_modules[MODULE].stat().st_size > 1_500_000
    vendored = fetch_vendored(MANIFEST)  # present since the build: found, not downloaded
    header = (vendored.directory / "sqlite3.h").read_text()
    assert '#define SQLITE_VERSION        "3.51.1"' in header
    assert [p.name for p in vendored.sources] == ["sqlite3.c"]
    assert "-DSQLITE_ENABLE_FTS5" in vendored.cflags


def test_a_download_that_differs_from_its_pin_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    content = b"int answer(void) { return 42; }\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("pkg-1.0/src/answer.c")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    (tmp_path / "pkg-1.0.tar.gz").write_bytes(buffer.getvalue())
    pinned = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest = tmp_path / "vendor.toml"

    def write_manifest(sha256: str) -> None:
        manifest.write_text(
            f'url = "{(tmp_path / "pkg-1.0.tar.gz").as_uri()}"\nsha256 = "{sha256}"\n'
            'extract = ["pkg-1.0/src/answer.c"]\nsources = ["answer.c"]\n'
        )

    root = tmp_path / "vendor"
    write_manifest("0" * 64)
    with pytest.raises(RuntimeError, match="not the pinned"):
        fetch_vendored(manifest, root=root)
    assert not root.exists() or not any(root.iterdir())

    write_manifest(pinned)
    vendored = fetch_vendored(manifest, root=root)
    assert vendored.sources == (vendored.directory / "answer.c",)
    assert vendored.sources[0].read_bytes() == content
    assert [p.name for p in root.iterdir()] == [vendored.directory.name]


def test_the_runtime_compiles_it_and_it_answers_a_summary_computed_by_sqlite(
    first_load: tuple[Path, CompiledModule],
) -> None:
    _, compiled = first_load
    assert compiled.source == "compiled"
    outcome = _execute(compiled, _request(query="rows=250"))
    assert outcome.status == 200, outcome.error
    assert ("Content-Type", "application/json") in outcome.headers
    summary = json.loads(outcome.body)
    assert summary["sqlite"] == "3.51.1"
    assert summary["rows"] == 250
    assert summary["categories"] == expected_summary(250)


def test_it_runs_one_sql_statement_from_the_request_body(
    first_load: tuple[Path, CompiledModule],
) -> None:
    _, compiled = first_load
    sql = b"SELECT category, count(*) AS n, max(score) AS top FROM items GROUP BY category"
    outcome = _execute(compiled, _request("POST", "rows=30", sql))
    assert outcome.status == 200, outcome.error
    lines = outcome.body.decode().splitlines()
    assert lines[0] == "category\tn\ttop"
    assert lines[1:] == [f"{s['category']}\t3\t{s['max']}" for s in expected_summary(30)]

    # a full build: JSON and math functions, FTS5 and R*Tree compiled in
    functions = (
        b"SELECT json_group_array(name) AS j, round(sqrt(16), 1) AS r FROM items WHERE id < 3"
    )
    assert _execute(compiled, _request("POST", "", functions)).body == (
        b'j\tr\n["item-1","item-2"]\t4.0\n'
    )
    options = b"SELECT * FROM pragma_compile_options WHERE compile_options LIKE 'ENABLE_%'"
    enabled = _execute(compiled, _request("POST", "", options)).body.decode().split()
    assert {"ENABLE_FTS5", "ENABLE_RTREE", "ENABLE_MATH_FUNCTIONS"} <= set(enabled)
    refused = _execute(compiled, _request("POST", "", b"SELECT nope FROM items"))
    assert refused.status == 400
    assert refused.body == b"no such column: nope\n"
    assert _execute(compiled, _request(query="rows=many")).status == 400


def test_a_new_runtime_loads_its_machine_code_from_the_cache_faster_than_compiling(
    first_load: tuple[Path, CompiledModule], wasm_modules: dict[str, Path]
) -> None:
    cache, compiled = first_load
    with Runtime(cache) as runtime:
        again = runtime.load(wasm_modules[MODULE])
        assert again.source == "cache"
        assert again.digest == compiled.digest
        # measured ratio is several hundred; 5x only guards against a silent recompile
        assert again.seconds * 5 < compiled.seconds
        outcome = _execute(again, _request(query="rows=10"))
    assert outcome.status == 200
    assert json.loads(outcome.body)["categories"] == expected_summary(10)


def _post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_agent_serves_it_and_a_restarted_agent_takes_it_from_the_cache(
    workspace: Workspace, wasm_modules: dict[str, Path]
) -> None:
    workdir = workspace.subdir("serve-sqlite")
    first = ServedModule(workdir, wasm_modules[MODULE], name="agent-first")
    with first:
        assert 'wasmfleet_agent_compile_cache_total{result="miss"} 1.0' in first.metrics()
        status, text = _post(first.url + "/?rows=5", b"SELECT sum(score) AS total FROM items")
    assert (status, text) == (200, f"total\n{sum(i * 7919 % 1000 for i in range(1, 6))}\n")

    again = ServedModule(workdir, wasm_modules[MODULE], cache_dir=first.cache_dir, name="agent")
    with again:
        assert 'wasmfleet_agent_compile_cache_total{result="hit"} 1.0' in again.metrics()
        assert _post(again.url + "/", b"SELECT")[0] == 400
        status, text = _post(again.url + "/?rows=100000", b"SELECT count(*) AS n FROM items")
    assert (status, text) == (200, "n\n100000\n")
