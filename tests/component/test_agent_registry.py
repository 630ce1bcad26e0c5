"""The standalone agent serving modules straight from real registries: by tag, by digest,
with basic auth and with bearer tokens, and again from its caches once the registry is gone."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from wasmfleet_harness.agent import ServedModule, agent_command, push_module
from wasmfleet_harness.processes import Workspace
from wasmfleet_harness.registry import BasicAuth, Registry


def _body(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _docker_config(path: Path, registry: Registry, auth: BasicAuth) -> Path:
    token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
    return path


def _repository(registry: Registry, name: str) -> str:
    return f"{registry.host}/agent-tests/{name}-{uuid.uuid4().hex[:8]}"


def test_serves_by_tag_and_by_digest(
    workspace: Workspace, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    repository = _repository(registry, "hello-c")
    digest = push_module(wasm_modules["hello-c"], f"{repository}:1.0")
    assert digest.startswith("sha256:")
    for source in (f"{repository}:1.0", f"{repository}@{digest}"):
        directory = workspace.subdir(f"by-{source[-6:]}")
        with ServedModule(directory, source) as served:
            assert _body(served.url + "/") == "Hello from a C Wasm microservice!\n"


def test_a_wrong_digest_is_refused(
    tmp_path: Path, registry: Registry, wasm_modules: dict[str, Path]
) -> None:
    repository = _repository(registry, "hello-rust")
    push_module(wasm_modules["hello-rust"], f"{repository}:1.0")
    done = subprocess.run(
        [
            *agent_command(),
            "run",
            "--cache-dir",
            str(tmp_path / "cache"),
            f"{repository}@sha256:{'0' * 64}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "sha256:0000" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_private_registries_with_docker_config_credentials(
    workspace: Workspace,
    registry_with_basic_auth: Registry,
    registry_with_token_auth: Registry,
    registry_basic_auth: BasicAuth,
    wasm_modules: dict[str, Path],
    kind: str,
) -> None:
    registry = registry_with_basic_auth if kind == "basic" else registry_with_token_auth
    directory = workspace.subdir(f"private-{kind}")
    config = _docker_config(directory / "config.json", registry, registry_basic_auth)
    repository = _repository(registry, "hello-go")
    push_module(wasm_modules["hello-go"], f"{repository}:1.0", "--docker-config", str(config))
    anonymous = subprocess.run(
        [*agent_command(), "run", "--cache-dir", str(directory / "anon"), f"{repository}:1.0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert anonymous.returncode == 1
    assert "registry_basic_auth" not in anonymous.stderr
    served = ServedModule(directory, f"{repository}:1.0", extra=["--docker-config", str(config)])
    with served:
        assert _body(served.url + "/") == "Hello from a Go Wasm microservice!\n"
    assert registry_basic_auth.password not in served.process.log_path.read_text()


def test_a_restart_serves_from_the_caches_with_the_registry_stopped(
    workspace: Workspace, wasm_modules: dict[str, Path]
) -> None:
    directory = workspace.subdir("restart-offline")
    own_registry = Registry(directory / "registry", name="registry-offline")
    own_registry.start()
    try:
        repository = _repository(own_registry, "hello-rust")
        push_module(wasm_modules["hello-rust"], f"{repository}:1.0")
        cache = directory / "cache"
        with ServedModule(directory / "first", f"{repository}:1.0", cache_dir=cache) as first:
            assert "Rust" in _body(first.url + "/")
            assert 'wasmfleet_agent_compile_cache_total{result="miss"} 1.0' in first.metrics()
    finally:
        own_registry.stop()
    with ServedModule(directory / "second", f"{repository}:1.0", cache_dir=cache) as second:
        assert _body(second.url + "/") == "Hello from a Rust Wasm microservice!\n"
        metrics = second.metrics()
    assert 'wasmfleet_agent_pulls_total{result="cached"} 1.0' in metrics
    assert 'wasmfleet_agent_compile_cache_total{result="hit"} 1.0' in metrics
