"""A real OCI registry (Debian's ``docker-registry``, distribution 2.8) on loopback.

Used by the component tests, the e2e tests and the local run. Auth is optional and real:
Basic auth through an htpasswd file with a bcrypt hash (written with Apache's ``htpasswd``),
or bearer tokens from a `TokenServer` the registry is configured to trust. TLS is optional
too (a serving certificate from the harness's CA), for tests of custom CA bundles.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from wasmfleet_harness.processes import ManagedProcess, free_port, wait_until
from wasmfleet_harness.token_server import TokenServer
from wasmfleet_oci import formats
from wasmfleet_oci.client import sha256_digest
from wasmfleet_oci.push import render_wasm_config, render_wasm_manifest

__all__ = [
    "BasicAuth",
    "Registry",
    "RegistryTls",
    "push_raw_layer",
    "registry_binary",
    "upload_blob",
]


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str


@dataclass(frozen=True)
class RegistryTls:
    """The registry's serving certificate and key, and the CA that issued them (PEM files)."""

    cert: Path
    key: Path
    ca: Path


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
        token_server: TokenServer | None = None,
        tls: RegistryTls | None = None,
        tie_to_parent: bool = True,
        name: str = "registry",
        port: int | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        """``address`` is where it listens: loopback, or an address of the project's own (the
        node LAN's host address, so that Pods reach it too)."""
        if auth is not None and token_server is not None:
            raise ValueError("a registry uses either basic auth or a token server, not both")
        self.workdir = workdir
        self.auth = auth
        self.token_server = token_server
        self.tls = tls
        self.name = name
        self.address = address
        self.port = port if port is not None else free_port(address)
        self.host = f"{address}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.storage = workdir / "storage"
        self._started_token_server = False
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
        http: dict[str, object] = {"addr": self.host, "secret": secrets.token_hex(16)}
        if self.tls is not None:
            http["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
            },
            "http": http,
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
        if self.token_server is not None:
            if not self.token_server.running:
                self.token_server.start()
                self._started_token_server = True
            config["auth"] = self.token_server.registry_auth_config()
        (self.workdir / "config.yml").write_text(yaml.safe_dump(config))
        self._process.start()
        wait_until(
            self._answers,
            timeout=timeout,
            message=lambda: f"registry not answering on {self.url}\n{self._process.log_tail()}",
        )

    def _answers(self) -> bool:
        self._process.check_alive()
        context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        try:
            with urllib.request.urlopen(self.url + "/v2/", timeout=2, context=context):
                return True
        except urllib.error.HTTPError as error:
            return error.code == 401  # answering, and asking for credentials
        except OSError:
            return False

    def stop(self) -> None:
        self._process.stop()
        if self._started_token_server and self.token_server is not None:
            self.token_server.stop()
            self._started_token_server = False

    def kill(self) -> None:
        """SIGKILLs the registry (a crash); a token server it started keeps running."""
        self._process.kill()

    def put_manifest(self, repository: str, tag: str, manifest: bytes, *, media_type: str) -> None:
        """PUTs ``manifest`` as ``repository:tag`` (plain HTTP, no auth); its blobs must be
        uploaded first (`upload_blob`)."""
        request = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{tag}",
            data=manifest,
            method="PUT",
            headers={"Content-Type": media_type},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


def upload_blob(registry: Registry, repository: str, blob: bytes) -> str:
    """Uploads ``blob`` to ``repository`` in one request (plain HTTP, no auth); returns its
    digest."""
    digest = sha256_digest(blob)
    start = urllib.request.Request(f"{registry.url}/v2/{repository}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start, timeout=10) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    separator = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{separator}digest={digest}",
        data=blob,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(put, timeout=10):
        pass
    return digest


def push_raw_layer(registry: Registry, repository: str, tag: str, layer: bytes) -> None:
    """Publishes ``layer`` as a Wasm artifact's module whatever its bytes are, as a tool that
    does not look inside (unlike ``wasmfleet push``) would; plain HTTP, no auth."""
    config = render_wasm_config(module_digest=sha256_digest(layer))
    descriptors = []
    for blob, media_type in ((config, formats.WASM_CONFIG), (layer, formats.WASM_LAYER)):
        digest = upload_blob(registry, repository, blob)
        descriptors.append(
            formats.Descriptor.model_validate(
                {"mediaType": media_type, "digest": digest, "size": len(blob)}
            )
        )
    manifest = render_wasm_manifest(config=descriptors[0], layer=descriptors[1])
    registry.put_manifest(repository, tag, manifest, media_type=formats.OCI_MANIFEST)
