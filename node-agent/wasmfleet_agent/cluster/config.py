"""What a binding's module sees from ConfigMaps and Secrets, read at run time.

`resolve_config` reads every ConfigMap and Secret a workload names (environment variables
``valueFrom``, ``files`` and pull secrets), turns them into the environment, the preopened
directories and the registry credentials of the sandbox, and fingerprints what it read. The
agent calls it when a binding starts and again every few seconds: when the fingerprint
changes, the next instances see the new values, without a new WasmService revision.

Files are written below the binding's own directory as a fresh version directory per change,
reached through a symlink swapped atomically, so a request never sees a half-written set.
A Secret's values never reach a log, a status or an error message: only names do.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmfleet_api.workload import ConfigMapFiles, FileMount, SecretFiles, WorkloadSpec
from wasmfleet_common.kube import ApiError, KubeClient, resource_for
from wasmfleet_oci import auth

__all__ = ["ConfigError", "ResolvedConfig", "reads_objects", "resolve_config"]

CONFIG_MAPS = resource_for("v1", "ConfigMap")
SECRETS = resource_for("v1", "Secret")


class ConfigError(Exception):
    """A referenced ConfigMap, Secret or key is missing (and not optional) or unusable."""


@dataclass(frozen=True)
class ResolvedConfig:
    env: tuple[tuple[str, str], ...]
    # (host directory, guest path, writable)
    mounts: tuple[tuple[Path, str, bool], ...]
    credentials: Mapping[str, auth.Credentials] = field(default_factory=dict)
    fingerprint: str = ""


def _decode(kind: str, obj: Mapping[str, Any]) -> dict[str, bytes]:
    """Every key of a ConfigMap or Secret as bytes."""
    values: dict[str, bytes] = {}
    if kind == "Secret":
        for key, encoded in (obj.get("data") or {}).items():
            values[key] = base64.b64decode(encoded)
        for key, text in (obj.get("stringData") or {}).items():
            values[key] = str(text).encode()
    else:
        for key, text in (obj.get("data") or {}).items():
            values[key] = str(text).encode()
        for key, encoded in (obj.get("binaryData") or {}).items():
            values[key] = base64.b64decode(encoded)
    return values


class _Reader:
    """Reads each object once per resolution and remembers what it saw."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.seen: dict[tuple[str, str], Mapping[str, Any] | None] = {}

    async def read(self, kind: str, name: str) -> Mapping[str, Any] | None:
        if (kind, name) not in self.seen:
            resource = SECRETS if kind == "Secret" else CONFIG_MAPS
            try:
                self.seen[(kind, name)] = await self.kube.get(resource, name, self.namespace)
            except ApiError as error:
                if not error.not_found:
                    raise ConfigError(f"cannot read {kind} {name}: {error.reason}") from None
                self.seen[(kind, name)] = None
        return self.seen[(kind, name)]

    def fingerprint(self) -> str:
        versions = sorted(
            (kind, name, (obj or {}).get("metadata", {}).get("resourceVersion", "-"))
            for (kind, name), obj in self.seen.items()
        )
        return hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:16]


def reads_objects(workload: WorkloadSpec) -> bool:
    """Whether ``workload`` names any ConfigMap or Secret (else its config never changes)."""
    return (
        any(variable.value_from is not None for variable in workload.env)
        or any(m.config_map is not None or m.secret is not None for m in workload.files)
        or bool(workload.module.pull_secrets)
    )


async def resolve_config(
    kube: KubeClient, namespace: str, workload: WorkloadSpec, files_dir: Path
) -> ResolvedConfig:
    """The environment, directories and credentials ``workload`` is granted, read now."""
    reader = _Reader(kube, namespace)
    env: list[tuple[str, str]] = []
    for variable in workload.env:
        if variable.value_from is None:
            env.append((variable.name, variable.value or ""))
            continue
        source = variable.value_from
        selector = source.config_map_key_ref or source.secret_key_ref
        assert selector is not None  # the CRD requires exactly one
        kind = "ConfigMap" if source.config_map_key_ref is not None else "Secret"
        obj = await reader.read(kind, selector.name)
        values = _decode(kind, obj) if obj is not None else {}
        if selector.key not in values:
            if selector.optional:
                continue
            where = f"{kind} {selector.name}" + (" has no key " + selector.key if obj else "")
            raise ConfigError(f"env {variable.name}: {where} not found")
        try:
            env.append((variable.name, values[selector.key].decode()))
        except UnicodeDecodeError:
            raise ConfigError(
                f"env {variable.name}: {kind} {selector.name} key {selector.key} is not UTF-8"
            ) from None

    mounts = []
    for index, mount in enumerate(workload.files):
        host = await _materialize(reader, mount, files_dir / str(index))
        mounts.append((host, mount.mount_path, mount.writable))

    secrets = [
        (ref.name, await reader.read("Secret", ref.name)) for ref in workload.module.pull_secrets
    ]
    try:
        credentials = auth.pull_secret_credentials(secrets)
    except auth.PullSecretError as error:
        raise ConfigError(str(error)) from None
    return ResolvedConfig(tuple(env), tuple(mounts), credentials, reader.fingerprint())


async def _materialize(reader: _Reader, mount: FileMount, link: Path) -> Path:
    """The host directory for one mount; ConfigMap/Secret keys are written as files."""
    if mount.empty_dir is not None:
        await asyncio.to_thread(link.mkdir, parents=True, exist_ok=True)
        return link
    source: SecretFiles | ConfigMapFiles | None = mount.secret or mount.config_map
    kind = "Secret" if mount.secret is not None else "ConfigMap"
    assert source is not None  # the CRD requires exactly one source
    obj = await reader.read(kind, source.name)
    if obj is None and not source.optional:
        raise ConfigError(f"files at {mount.mount_path}: {kind} {source.name} not found")
    values = _decode(kind, obj) if obj is not None else {}
    for key in values:
        if "/" in key or key in (".", ".."):
            raise ConfigError(f"{kind} {source.name}: key {key!r} is not a file name")
    version = (obj or {}).get("metadata", {}).get("resourceVersion", "empty")
    mode = 0o400 if kind == "Secret" else 0o444
    await asyncio.to_thread(_write_version, link, f"v{version}", values, mode)
    return link


def _write_version(link: Path, version: str, values: Mapping[str, bytes], mode: int) -> None:
    """Writes ``values`` as files of a new version directory and points ``link`` at it."""
    target = link.parent / f"{link.name}.{version}"
    if not target.is_dir():
        staging = link.parent / f".{link.name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, mode=0o700)
        for key, data in values.items():
            path = staging / key
            path.write_bytes(data)
            path.chmod(mode)
        staging.rename(target)
    # Swap the link to the new version in one rename, then drop older versions.
    temporary = link.parent / f".{link.name}.link"
    temporary.unlink(missing_ok=True)
    os.symlink(target.name, temporary)
    os.replace(temporary, link)
    for old in link.parent.glob(f"{link.name}.v*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
