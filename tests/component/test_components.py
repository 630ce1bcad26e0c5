"""WASI 0.2 components of the wasi:cli/command world, run by the agent as it runs modules.

The components are the project's own C and Rust test programs and examples made into
components with the preview 1 command adapter (``component.toml``), so each one is compared
with the module it was made from: the same WAGI answers, the same limits, the same job output
and exit codes. What the agent refuses is built here as component text, one defect each.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from wasmfleet_agent.runtime.engine import MAX_COMPONENT_MEMORIES, Runtime
from wasmfleet_agent.runtime.errors import ModuleLoadError
from wasmfleet_agent.runtime.sandbox import Preopen, SandboxSpec, run
from wasmfleet_harness.agent import ServedModule, push_module
from wasmfleet_harness.processes import Workspace, wait_until
from wasmfleet_harness.registry import Registry
from wasmfleet_oci import formats

DEADLINE = 0.5
SLACK = 0.3


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(tmp_path / "compiled") as value:
        yield value


def _served(workspace: Workspace, module: Path, name: str) -> ServedModule:
    return ServedModule(
        workspace.subdir(name),
        module,
        extra=[
            "--timeout",
            f"{int(DEADLINE * 1000)}ms",
            "--max-response",
            "1Mi",
            "--memory",
            "16Mi",
            "--env",
            "GIVEN=yes",
        ],
        name=name,
    )


@pytest.fixture(scope="module")
def agents(
    workspace: Workspace, wasm_modules: dict[str, Path]
) -> Iterator[dict[str, ServedModule]]:
    """The probe served as a module and as a component, by two agents set up alike."""
    served = {
        "module": _served(workspace, wasm_modules["probe"], "components-probe-module"),
        "component": _served(workspace, wasm_modules["probe-component"], "components-probe"),
    }
    try:
        for agent in served.values():
            agent.start()
        yield served
    finally:
        for agent in served.values():
            agent.stop()


def _request(url: str, body: bytes | None = None) -> tuple[int, bytes, float]:
    started = time.monotonic()
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("X-Test", "component")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, error.read(), time.monotonic() - started


# ---- what it is ------------------------------------------------------------------------------


def test_a_command_component_is_loaded_as_a_component_of_its_world_and_cached(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    cache = tmp_path / "compiled"
    with Runtime(cache) as first:
        compiled = first.load(wasm_modules["hello-component"])
        assert (compiled.kind, compiled.source) == ("component", "compiled")
        assert compiled.world.startswith("wasi:cli/command@0.2.")
        module = first.load(wasm_modules["hello-rust"])
        assert (module.kind, module.world) == ("module", "wasi_snapshot_preview1 command")
    assert len(list(cache.glob("*.cwasm"))) == 2
    with Runtime(cache) as second:
        again = second.load(wasm_modules["hello-component"])
        assert (again.kind, again.source) == ("component", "cache")
        result = run(again, SandboxSpec())
        assert result.ok, result
        assert b"Hello from a Rust Wasm microservice!" in result.stdout


def test_a_damaged_compiled_component_is_compiled_again(
    tmp_path: Path, wasm_modules: dict[str, Path]
) -> None:
    cache = tmp_path / "compiled"
    with Runtime(cache) as runtime:
        compiled = runtime.load(wasm_modules["hello-component"])
        (cached,) = cache.glob("*.cwasm")
        cached.write_bytes(cached.read_bytes()[:1000])
        again = runtime.load(wasm_modules["hello-component"], compiled.digest)
        assert again.source == "compiled"
        assert run(again, SandboxSpec()).ok


# ---- jobs: the same as the module it was made from -------------------------------------------


@pytest.mark.parametrize(
    ("module", "component", "args", "code"),
    [
        ("jobprobe", "jobprobe-component", ("first", "second word", "exit=3"), 3),
        ("wordcount-job", "wordcount-component", ("/input",), 0),
        ("wordcount-job", "wordcount-component", ("/nowhere",), 1),
    ],
)
def test_a_component_job_sees_and_does_what_its_module_does(
    runtime: Runtime,
    tmp_path: Path,
    wasm_modules: dict[str, Path],
    module: str,
    component: str,
    args: tuple[str, ...],
    code: int,
) -> None:
    given = tmp_path / "input"
    given.mkdir()
    (given / "a.txt").write_text("one two three\n")
    (given / "b.txt").write_text("four five\n")
    spec = SandboxSpec(
        args=("job.wasm", *args),
        env=(("A", "1"), ("B", "two words")),
        preopens=(Preopen(given, "/input"),),
    )
    results = [run(runtime.load(wasm_modules[name]), spec) for name in (module, component)]
    assert results[0].exit_code == code, results[0]
    assert (results[1].stdout, results[1].stderr) == (results[0].stdout, results[0].stderr)
    assert results[1].failure is None
    # WASI 0.2's wasi:cli/exit takes ok or err, so the adapter turns every non-zero code into
    # 1, as `wasmtime run` of the same component does (test_agent_jobs compares them)
    assert results[1].exit_code == min(code, 1)


def test_a_component_job_sees_nothing_of_the_host(
    runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    result = run(runtime.load(wasm_modules["jobprobe-component"]), SandboxSpec())
    assert result.ok, result
    lines = result.stdout.decode().splitlines()
    assert not [line for line in lines if line.startswith("env ")], "no host environment"
    assert "input: none" in lines
    assert "output: not writable" in lines
    assert "host file: denied" in lines


# ---- WAGI: the same answers and the same limits ------------------------------------------------


def test_a_command_component_answers_wagi_requests_as_its_module_does(
    agents: dict[str, ServedModule],
) -> None:
    for target, body in (
        ("/echo?a=%3Cb%3E&c=d", b"posted body"),
        ("/status?status=404", None),
        ("/plain", None),
        ("/env/x", None),
    ):
        answers = [
            _request(agents[kind].url + target, body)[:2] for kind in ("module", "component")
        ]
        # each agent listens on a port of its own, which the module sees (SERVER_PORT)
        answers = [
            (status, text.replace(str(agents[kind].port).encode(), b"PORT"))
            for kind, (status, text) in zip(("module", "component"), answers, strict=True)
        ]
        assert answers[1] == answers[0], target
    status, text, _ = _request(agents["component"].url + "/echo", b"hi")
    assert status == 200
    assert b"x-test=component" in text
    assert b"body=hi" in text


@pytest.mark.parametrize(
    ("path", "status"),
    [("/loop", 504), ("/membomb", 500), ("/recurse", 500), ("/flood", 502)],
)
def test_a_misbehaving_component_is_stopped_like_a_module_and_the_next_request_is_served(
    agents: dict[str, ServedModule], path: str, status: int
) -> None:
    for kind in ("module", "component"):
        got, _, seconds = _request(agents[kind].url + path)
        assert got == status, (kind, path)
        assert seconds < DEADLINE + SLACK + 1.0, (kind, path, seconds)
    assert _request(agents["component"].url + "/plain")[0] == 200


def test_a_component_asleep_past_its_deadline_gets_504_once_its_sleep_ends(
    agents: dict[str, ServedModule],
) -> None:
    """A limit, measured: the module's sleep is the agent's own and ends at the deadline; the
    component's is wasmtime's WASI 0.2 host, which epoch interruption cannot cut short."""
    module_status, _, module_seconds = _request(agents["module"].url + "/sleep?1500")
    status, _, seconds = _request(agents["component"].url + "/sleep?1500")
    assert (module_status, status) == (504, 504)
    assert module_seconds < DEADLINE + SLACK
    assert seconds >= 1.5


# ---- what the agent refuses ------------------------------------------------------------------


def _component(
    *,
    imports: str = "wasi:cli/environment@0.2.0",
    export: str = "wasi:cli/run@0.2.0",
    memories: int = 1,
) -> bytes:
    memory_modules = "\n".join(
        f'(core module $m{i} (memory (export "memory") 1))\n(core instance (instantiate $m{i}))'
        for i in range(memories - 1)
    )
    return bytes(
        wasmtime.wat2wasm(f"""
    (component
      (import "{imports}" (instance (export "get-arguments" (func (result (list string))))))
      (core module $m (func (export "run") (result i32) i32.const 0) (memory (export "memory") 1))
      (core instance $i (instantiate $m))
      {memory_modules}
      (func $run (result (result)) (canon lift (core func $i "run")))
      (instance $inst (export "run" (func $run)))
      (export "{export}" (instance $inst))
    )""")
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            _component(export="wasi:http/incoming-handler@0.2.0"),
            "exports wasi:http/incoming-handler@0.2.0 without handle",
        ),
        (_component(export="acme:tools/main@1.0.0"), "targets no world this agent hosts"),
        (
            _component(imports="acme:db/query@1.0.0"),
            "imports acme:db/query@1.0.0, which this agent does not provide",
        ),
        (
            _component(imports="wasi:cli/environment@0.3.0"),
            "imports wasi:cli/environment@0.3.0, which this agent does not provide",
        ),
        (
            _component(memories=MAX_COMPONENT_MEMORIES + 1),
            f"defines {MAX_COMPONENT_MEMORIES + 1} linear memories",
        ),
        (_component()[:-7], "truncated or malformed"),
        (b"\0asm\x0d\0\x01\0garbage", "truncated or malformed"),
        (b"\0asm\x0c\0\x01\0", "neither a core module (01000000) nor a component"),
    ],
    ids=[
        "proxy-world-without-handle",
        "unknown-world",
        "unhosted-import",
        "wasi-0.3-import",
        "too-many-memories",
        "truncated",
        "garbage-after-header",
        "unknown-version",
    ],
)
def test_a_component_the_agent_cannot_run_is_refused_at_load_with_the_reason(
    runtime: Runtime, tmp_path: Path, data: bytes, reason: str
) -> None:
    path = tmp_path / "bad.wasm"
    path.write_bytes(data)
    with pytest.raises(ModuleLoadError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        runtime.load(path)


def test_a_refused_component_does_not_stop_the_agent_serving_it(
    workspace: Workspace, tmp_path: Path
) -> None:
    path = tmp_path / "unknown-world.wasm"
    path.write_bytes(_component(export="acme:tools/main@1.0.0"))
    served = ServedModule(workspace.subdir("components-refused"), path, name="components-refused")
    served.process.start()
    try:
        wait_until(lambda: served.process.returncode() is not None, timeout=60)
    finally:
        served.stop()
    assert served.process.returncode() == 1, "refused with an error, not a crash"
    assert "targets no world this agent hosts" in served.process.log_tail()


# ---- pushed and pulled -------------------------------------------------------------------------


def _get(url: str, accept: str = "*/*") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def test_a_pushed_component_says_what_it_is_and_runs_from_the_registry(
    registry: Registry, wasm_modules: dict[str, Path], workspace: Workspace
) -> None:
    reference = f"{registry.host}/wasmfleet/components/hello:1.0"
    push_module(wasm_modules["hello-component"], reference)
    manifest = json.loads(
        _get(
            f"{registry.url}/v2/wasmfleet/components/hello/manifests/1.0",
            accept=formats.OCI_MANIFEST,
        )
    )
    assert manifest["config"]["mediaType"] == formats.WASM_CONFIG
    config = json.loads(
        _get(f"{registry.url}/v2/wasmfleet/components/hello/blobs/{manifest['config']['digest']}")
    )
    assert config["os"] == "wasip2"
    assert config["component"]["target"].startswith("wasi:cli/command@0.2.")
    assert any(name.startswith("wasi:cli/run@0.2.") for name in config["component"]["exports"])
    assert any(name.startswith("wasi:cli/stdout@0.2.") for name in config["component"]["imports"])
    served = ServedModule(
        workspace.subdir("components-pulled"), reference, name="components-pulled"
    )
    served.start()
    try:
        status, body, _ = _request(served.url + "/")
        assert status == 200
        assert b"Hello from a Rust Wasm microservice!" in body
    finally:
        served.stop()
