"""``wasmfleet-dev status`` says which component of the local system is down and the way back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wasmfleet_harness import cli


def test_a_dead_component_is_named_with_its_log_and_the_way_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        monkeypatch.setattr(cli, "STATE_DIR", tmp_path)
        monkeypatch.setattr(cli, "STATE_FILE", tmp_path / "state.json")
        (tmp_path / "state.json").write_text(
            json.dumps({"pids": {"etcd": alive.pid, "operator": dead.pid}, "kubeconfig": "k"})
        )
        assert cli.main(["status"]) == 1
        out = capsys.readouterr().out
        assert f"etcd                       running  (pid {alive.pid})" in out
        assert "operator                   DOWN" in out
        assert str(tmp_path / "fleet/logs") in out
        assert "Recover with: make down && make up" in out
        assert cli.main(["up"]) == 1
        assert "partly up: operator not running" in capsys.readouterr().err
    finally:
        alive.kill()
        alive.wait()
