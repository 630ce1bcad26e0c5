"""The harness's process and workspace helpers clean up after themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from wasmfleet_harness.processes import ManagedProcess, Workspace, free_port, wait_until


def test_wait_until_returns_as_soon_as_the_condition_holds() -> None:
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), timeout=5, interval=0.001)


def test_wait_until_names_the_condition_when_it_times_out() -> None:
    with pytest.raises(TimeoutError, match="never true"):
        wait_until(lambda: False, timeout=0.05, interval=0.01, message="never true")


def test_a_workspace_is_removed_on_close(tmp_path: Path) -> None:
    with Workspace(root=tmp_path) as ws:
        (ws.subdir("a") / "file").write_text("x")
        assert ws.path.is_dir()
    assert not ws.path.exists()


def test_a_workspace_whose_owner_died_is_swept_by_the_next_one(tmp_path: Path) -> None:
    stale = tmp_path / "wasmfleet-stale"
    stale.mkdir()
    # pid 2**22 + 1 is above the kernel's maximum pid, so no process owns it.
    (stale / "owner.pid").write_text(str(2**22 + 1))
    live = tmp_path / "wasmfleet-live"
    live.mkdir()
    (live / "owner.pid").write_text(str(os.getpid()))

    with Workspace(root=tmp_path):
        assert not stale.exists()
        assert live.exists()


def test_a_stopped_process_is_reaped_and_its_log_kept(tmp_path: Path) -> None:
    process = ManagedProcess(
        "sleeper",
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        log_path=tmp_path / "sleeper.log",
    )
    process.start()
    wait_until(lambda: "up" in process.log_tail(), timeout=10)
    process.stop(grace=5)
    assert not process.alive()
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid or 0, 0)


def test_free_port_returns_a_bindable_port() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
