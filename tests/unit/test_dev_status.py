"""``wasmfleet-dev status`` and ``up`` say when the local system's keeper is gone, and the way
back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wasmfleet_harness import cli


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cli, "STATE_DIR", tmp_path)
    monkeypatch.setattr(cli, "STATE_FILE", tmp_path / "state.json")
    monkeypatch.setattr(cli, "LOG_FILE", tmp_path / "up.log")
    return tmp_path


def test_a_dead_keeper_is_reported_with_its_log_and_the_way_back(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state_dir / "state.json").write_text(json.dumps({"keeper": dead.pid}))
    assert cli.main(["status"]) == 1
    out = capsys.readouterr().out
    assert f"DOWN: the keeper (pid {dead.pid}) is not running" in out
    assert str(state_dir / "up.log") in out
    assert "Recover with: make down && make up" in out


def test_a_running_keeper_means_already_up(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (state_dir / "state.json").write_text(json.dumps({"keeper": alive.pid}))
        assert cli.main(["status"]) == 0
        assert "starting: the cluster is not up yet" in capsys.readouterr().out
        assert cli.main(["up"]) == 1
        assert "already up" in capsys.readouterr().err
    finally:
        alive.kill()
        alive.wait()
