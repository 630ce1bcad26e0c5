"""Where the standalone commands' module comes from: a local ``.wasm`` file or a registry.

``wasmfleet-agent serve`` and ``run`` take either a path or a reference; `locate` decides which
it is, reads a file where it is, and pulls a reference through a `ModuleStore`, so the
commands get the same answer either way: a path on local disk and the module's digest.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_agent.store.puller import ModuleStore, PullPolicy
from wasmfleet_oci import auth
from wasmfleet_oci.reference import parse_reference

__all__ = ["LocatedModule", "SourceError", "is_local_path", "locate"]


class SourceError(ValueError):
    """A module source that is neither a readable file nor a usable reference."""


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
            raise SourceError(f"cannot read {source}: {error.strerror}") from None
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return LocatedModule(path, digest, source, cached=True)
    if store is None:
        raise SourceError(f"{source} is a registry reference but no module store is set up")
    try:
        reference = parse_reference(source)
    except ValueError as error:
        raise SourceError(f"{source!r} is neither a .wasm file nor a reference: {error}") from None
    pulled = await store.pull(reference, policy=policy, credentials=credentials)
    return LocatedModule(
        pulled.path,
        pulled.module_digest,
        f"{source} ({pulled.manifest_digest})",
        cached=pulled.cached,
    )
