"""A real OCI registry (Debian's ``docker-registry``, distribution 2.8) on loopback.

Used by the component tests, the e2e tests and the local run. Basic auth is optional and
real: an htpasswd file with a bcrypt hash, written with Apache's ``htpasswd``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until

__all__ = ["BasicAuth", "Registry", "registry_binary"]


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str


def registry_binary() -> str:
    path = shutil.which("docker-registry") or shutil.which("registry")
    if path is None:
        raise RuntimeError(
            "no OCI registry binary: install Debian's docker-registry package (make setup does)"
        )
    return path


class Registry:
    """One registry process with its storage under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth: BasicAuth | None = None,
        tie_to_parent: bool = True,
        name: str = "registry",
    ) -> None:
        self.workdir = workdir
        self.auth = auth
        self.name = name
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.storage = workdir / "storage"
        self._process = ManagedProcess(
            name,
            [registry_binary(), "serve", str(workdir / "config.yml")],
            log_path=workdir / f"{name}.log",
            tie_to_parent=tie_to_parent,
        )

    @property
    def process(self) -> ManagedProcess:
        return self._process

    def start(self, *, timeout: float = 30.0) -> None:
        """Writes the config, starts the server and waits until ``/v2/`` answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.auth is not None:
            htpasswd = self.workdir / "htpasswd"
            hashed = subprocess.run(
                ["htpasswd", "-nbB", self.auth.username, self.auth.password],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            htpasswd.write_text(hashed.strip() + "\n")
            config["auth"] = {"htpasswd": {"realm": "wasmfleet", "path": str(htpasswd)}}
        (self.workdir / "config.yml").write_text(yaml.safe_dump(config))
        self._process.start()
        wait_until(
            self._answers,
            timeout=timeout,
            message=lambda: f"registry not answering on {self.url}\n{self._process.log_tail()}",
        )

    def _answers(self) -> bool:
        self._process.check_alive()
        try:
            with urllib.request.urlopen(self.url + "/v2/", timeout=2):
                return True
        except urllib.error.HTTPError as error:
            return error.code == 401  # answering, and asking for credentials
        except OSError:
            return False

    def stop(self) -> None:
        self._process.stop()

    def kill(self) -> None:
        self._process.kill()
