"""Where a module comes from: a local ``.wasm`` file or an OCI reference, resolved to bytes on
disk and their digest."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_agent.oci import auth
from wasmfleet_agent.oci.reference import parse_reference
from wasmfleet_agent.oci.store import ModuleStore, PullPolicy
from wasmfleet_agent.runtime.errors import ModuleLoadError

__all__ = ["LocatedModule", "is_local_path", "locate"]


@dataclass(frozen=True)
class LocatedModule:
    path: Path
    digest: str
    """The module's own sha256 (what the compiled-code cache is keyed by)."""
    source: str
    """The path or reference it was asked for, with the manifest digest for a reference."""
    cached: bool


def is_local_path(source: str) -> bool:
    """A file path (``./x.wasm``, ``/abs``, or anything ending in ``.wasm`` that exists)."""
    return source.startswith(("/", "./", "../")) or (
        source.endswith(".wasm") and Path(source).is_file()
    )


async def locate(
    source: str,
    store: ModuleStore | None,
    *,
    policy: PullPolicy = PullPolicy.IF_NOT_PRESENT,
    credentials: auth.Credentials | None = None,
) -> LocatedModule:
    """The module at ``source`` on local disk, pulled through ``store`` when a reference."""
    if is_local_path(source):
        path = Path(source)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as error:
            raise ModuleLoadError(f"cannot read {source}: {error.strerror}") from None
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return LocatedModule(path, digest, source, cached=True)
    if store is None:
        raise ModuleLoadError(f"{source} is a registry reference but no module store is set up")
    try:
        reference = parse_reference(source)
    except ValueError as error:
        raise ModuleLoadError(
            f"{source!r} is neither a .wasm file nor a reference: {error}"
        ) from None
    pulled = await store.pull(reference, policy=policy, credentials=credentials)
    return LocatedModule(
        pulled.path,
        pulled.module_digest,
        f"{source} ({pulled.manifest_digest})",
        cached=pulled.cached,
    )
