"""The index of the node's module cache: what is on disk, what is pinned, what goes first.

Layout under ``root`` (one cache per root and process):

- ``blobs/sha256/<hex>``: module bytes, named by their own sha256 (verified before the rename);
- ``manifests/sha256/<hex>``: which module a manifest digest resolved to;
- ``tags/<hash>``: which manifest a tag last resolved to (only for tag references);
- ``work/``: per-download scratch space, emptied at start-up.

Every file appears by an atomic rename (`wasmfleet_oci.atomic`), so nothing partial is ever
served, and what a crash left half-written is removed when the index is read at start-up.
The index stays under ``max_bytes`` by evicting the least recently used modules that nobody
has pinned (and that the caller does not ask to spare); the order survives a restart in the
files' modification times.

It never talks to a registry: the `puller` brings modules in through `admit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_oci import atomic
from wasmfleet_oci.reference import Reference, parse_digest

__all__ = ["ModuleCache", "PulledModule", "hash_file"]

_log = logging.getLogger(__name__)
_HEX_LENGTH = 64


@dataclass(frozen=True)
class PulledModule:
    """A module in the cache, ready to be read (and compiled) from ``path``."""

    manifest_digest: str
    module_digest: str
    path: Path
    size: int
    cached: bool
    """True when no module bytes were downloaded for this pull."""


@dataclass
class _Entry:
    size: int
    last_used: float


def _hex(digest: str) -> str:
    return parse_digest(digest).split(":", 1)[1]


def _tag_key(reference: Reference) -> str:
    return f"{reference.registry}/{reference.repository}:{reference.tag}"


def hash_file(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path``, read in pieces (blocking: run it in a thread)."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


class ModuleCache:
    """A content-addressed, size-bounded index of the modules under ``root``.

    ``max_bytes`` bounds the modules kept (pinned and spared modules may push the total over
    it until they are released). With ``verify``, a cached module is hashed again before it is
    handed out. ``clock`` gives the wall-clock times the LRU order is kept in.
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        verify: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self.verify = verify
        self._clock = clock
        self._blobs = root / "blobs" / "sha256"
        self._manifest_dir = root / "manifests" / "sha256"
        self._tag_dir = root / "tags"
        self._work = root / "work"
        self._entries: dict[str, _Entry] = {}
        self._manifests: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._pins: Counter[str] = Counter()
        self._load()

    # -- what is cached -----------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """The size of all modules in the cache."""
        return sum(entry.size for entry in self._entries.values())

    def module_digests(self) -> list[str]:
        """The digests of the cached modules, least recently used first."""
        return sorted(self._entries, key=lambda digest: self._entries[digest].last_used)

    def path_of(self, module_digest: str) -> Path:
        """Where a module with this digest lives (whether or not it is cached now)."""
        return self._blobs / _hex(module_digest)

    def size_of(self, module_digest: str) -> int | None:
        """The size of a cached module, or None when it is not in the index."""
        entry = self._entries.get(module_digest)
        return None if entry is None else entry.size

    def has_module(self, module_digest: str) -> bool:
        """Whether the module is indexed and its file is there."""
        return module_digest in self._entries and self.path_of(module_digest).is_file()

    def tagged(self, reference: Reference) -> str | None:
        """The manifest digest ``reference``'s tag last resolved to, if recorded."""
        return self._tags.get(_tag_key(reference))

    def cached(self, manifest_digest: str) -> PulledModule | None:
        """The cached module a manifest resolved to, or None."""
        module_digest = self._manifests.get(manifest_digest)
        if module_digest is None or module_digest not in self._entries:
            return None
        return PulledModule(
            manifest_digest=manifest_digest,
            module_digest=module_digest,
            path=self.path_of(module_digest),
            size=self._entries[module_digest].size,
            cached=True,
        )

    def modules_of(self, manifest_digests: Iterable[str]) -> set[str]:
        """The cached modules these manifests resolved to (unknown manifests are skipped)."""
        return {self._manifests[m] for m in manifest_digests if m in self._manifests}

    async def usable(self, module: PulledModule) -> bool:
        """Whether a cached module can be handed out now: its file is there (and, with
        ``verify``, still hashes right) and it is still in the cache when this returns.
        A module that fails is removed from the index."""
        if self.verify:
            try:
                actual = await asyncio.to_thread(hash_file, module.path)
            except OSError:
                actual = None
            if actual != module.module_digest:
                _log.warning("cached module %s is damaged; pulling it again", module.module_digest)
                self.remove(module.module_digest)
                return False
        elif not module.path.is_file():
            self.remove(module.module_digest)
            return False
        return module.module_digest in self._entries

    # -- pins and use -------------------------------------------------------------------------

    def pin(self, module_digest: str) -> None:
        """Keeps a cached module from eviction until a matching `unpin`; pins count up."""
        if module_digest not in self._entries:
            raise KeyError(f"{module_digest} is not in the module cache")
        self._pins[module_digest] += 1

    def unpin(self, module_digest: str) -> None:
        """Releases one `pin` of the module."""
        if self._pins[module_digest] <= 0:
            raise ValueError(f"{module_digest} is not pinned")
        self._pins[module_digest] -= 1
        if self._pins[module_digest] == 0:
            del self._pins[module_digest]

    @contextlib.contextmanager
    def pinned(self, module_digest: str) -> Iterator[Path]:
        """Pins the module for the ``with`` block and yields its path."""
        self.pin(module_digest)
        try:
            yield self.path_of(module_digest)
        finally:
            self.unpin(module_digest)

    def hand_out(
        self, module: PulledModule, *, pin: bool, spare: Collection[str] = ()
    ) -> PulledModule:
        """Marks ``module`` as used now (and pins it if asked), then evicts what is over the
        limit, sparing ``module`` and the ``spare`` modules; returns ``module``."""
        now = self._clock()
        self._entries[module.module_digest].last_used = now
        with contextlib.suppress(OSError):
            os.utime(module.path, (now, now))  # the order survives a restart
        if pin:
            self.pin(module.module_digest)
        self.evict(spare={module.module_digest, *spare})
        return module

    def evict(self, *, spare: Collection[str] = ()) -> list[str]:
        """Evicts modules that are neither pinned nor in ``spare``, least recently used first,
        until the cache is under ``max_bytes``; returns their digests."""
        total = self.total_bytes
        evicted: list[str] = []
        for digest in self.module_digests():
            if total <= self.max_bytes:
                break
            if digest in spare or self._pins[digest] > 0:
                continue
            total -= self._entries[digest].size
            self.remove(digest)
            evicted.append(digest)
        if total > self.max_bytes:
            _log.warning(
                "module cache holds %d bytes, over its %d-byte limit: the rest is in use",
                total,
                self.max_bytes,
            )
        return evicted

    def remove(self, module_digest: str) -> None:
        """Forgets a module, its file and every manifest and tag record that led to it."""
        self._entries.pop(module_digest, None)
        self.path_of(module_digest).unlink(missing_ok=True)
        for manifest in [m for m, module in self._manifests.items() if module == module_digest]:
            del self._manifests[manifest]
            (self._manifest_dir / _hex(manifest)).unlink(missing_ok=True)
            for key in [k for k, m in self._tags.items() if m == manifest]:
                del self._tags[key]
                (self._tag_dir / hashlib.sha256(key.encode()).hexdigest()).unlink(missing_ok=True)

    # -- bringing modules in ------------------------------------------------------------------

    def new_work_dir(self) -> Path:
        """A fresh, empty scratch directory for one download (the caller removes it)."""
        work = self._work / uuid.uuid4().hex
        work.mkdir(parents=True)
        return work

    async def admit(self, staged: Path, module_digest: str) -> None:
        """Moves a verified module from the scratch space into the cache under its digest."""
        await asyncio.to_thread(self._commit, staged, module_digest)
        size = self.path_of(module_digest).stat().st_size
        self._entries[module_digest] = _Entry(size, self._clock())

    async def record_manifest(self, manifest_digest: str, module_digest: str) -> None:
        """Records which module a manifest resolved to."""
        self._manifests[manifest_digest] = module_digest
        record = json.dumps({"module": module_digest}).encode()
        await asyncio.to_thread(
            atomic.write_atomically, self._manifest_dir / _hex(manifest_digest), record
        )

    async def record_tag(self, reference: Reference, manifest_digest: str) -> None:
        """Records which manifest ``reference``'s tag resolved to."""
        key = _tag_key(reference)
        if self._tags.get(key) == manifest_digest:
            return
        path = self._tag_dir / hashlib.sha256(key.encode()).hexdigest()
        record = json.dumps({"reference": key, "manifest": manifest_digest}).encode()
        await asyncio.to_thread(atomic.write_atomically, path, record)
        self._tags[key] = manifest_digest

    def _commit(self, staged: Path, digest: str) -> None:
        with staged.open("rb+") as handle:
            os.fsync(handle.fileno())
        destination = self.path_of(digest)
        os.replace(staged, destination)
        atomic.fsync_directory(destination.parent)

    # -- start-up -----------------------------------------------------------------------------

    def _load(self) -> None:
        for directory in (self._blobs, self._manifest_dir, self._tag_dir):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._work, ignore_errors=True)
        self._work.mkdir(parents=True, exist_ok=True)
        for path in self._blobs.iterdir():
            if path.name.startswith(atomic.PARTIAL_PREFIX):
                path.unlink(missing_ok=True)  # a download a crash interrupted
                continue
            if len(path.name) != _HEX_LENGTH or not path.is_file():
                continue
            stat = path.stat()
            self._entries[f"sha256:{path.name}"] = _Entry(stat.st_size, stat.st_mtime)
        for path in self._manifest_dir.iterdir():
            record = self._read_record(path)
            module = record.get("module") if record else None
            if isinstance(module, str) and module in self._entries:
                self._manifests[f"sha256:{path.name}"] = module
            else:
                path.unlink(missing_ok=True)
        for path in self._tag_dir.iterdir():
            record = self._read_record(path)
            key, manifest = (record.get("reference"), record.get("manifest")) if record else (0, 0)
            if isinstance(key, str) and isinstance(manifest, str) and manifest in self._manifests:
                self._tags[key] = manifest
            else:
                path.unlink(missing_ok=True)

    @staticmethod
    def _read_record(path: Path) -> dict[str, object] | None:
        if path.name.startswith(atomic.PARTIAL_PREFIX):
            path.unlink(missing_ok=True)
            return None
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None
