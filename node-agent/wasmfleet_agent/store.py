"""The node's module cache: pull a module once, verify it, keep it by digest, serve it from disk.

Layout under ``root`` (one store per root and process):

- ``blobs/sha256/<hex>``: module bytes, named by their own sha256 (verified before the rename);
- ``manifests/sha256/<hex>``: which module a manifest digest resolved to;
- ``tags/<hash>``: which manifest a tag last resolved to (only for tag references);
- ``work/``: per-download scratch space, emptied at start-up.

Every file appears by an atomic rename (`atomic`), so nothing partial is ever served. Pulls of
one manifest that overlap share a single download. The cache stays under ``max_bytes`` by
evicting the least recently used modules that nobody has pinned. The pull policies follow
Kubernetes: ``IfNotPresent`` and ``Never`` serve from the cache without any network call;
``Always`` asks the registry every time (so the caller's credentials are checked, and a tag is
re-resolved) but downloads only what the cache lacks.

As with kubelet's image cache, ``IfNotPresent`` serves a cached module to any caller, with or
without credentials; use ``Always`` where access must be re-checked on every pull.

`locate` chooses the source of a module the standalone commands are given: a local ``.wasm``
file, read where it is, or a reference, pulled through a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_oci import atomic, auth, errors, formats
from wasmfleet_oci.client import RegistryClient
from wasmfleet_oci.reference import Reference, parse_digest, parse_reference

__all__ = [
    "LocatedModule",
    "ModuleStore",
    "PullPolicy",
    "PulledModule",
    "SourceError",
    "is_local_path",
    "locate",
]

_log = logging.getLogger(__name__)
_HEX_LENGTH = 64


class PullPolicy(enum.StrEnum):
    """When to contact the registry; the values are Kubernetes' spellings."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


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


class ModuleStore:
    """A content-addressed, size-bounded cache of Wasm modules pulled from OCI registries.

    ``max_bytes`` bounds the modules kept (pinned modules and the one being returned may push
    the total over it until they are unpinned). ``client_factory`` is called once, at the first
    pull that needs the network. ``max_image_bytes`` bounds the layers downloaded for an
    ordinary image and what they may unpack to.
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        client_factory: Callable[[], RegistryClient] = RegistryClient,
        max_image_bytes: int = 512 * 1024 * 1024,
        verify_cached: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self.max_image_bytes = max_image_bytes
        self.verify_cached = verify_cached
        self._client_factory = client_factory
        self._client: RegistryClient | None = None
        self._clock = clock
        self._blobs = root / "blobs" / "sha256"
        self._manifest_dir = root / "manifests" / "sha256"
        self._tag_dir = root / "tags"
        self._work = root / "work"
        self._entries: dict[str, _Entry] = {}
        self._manifests: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._pins: Counter[str] = Counter()
        # Manifest digest -> pulls waiting for its download; their module is not evicted
        # between the download's end and their turn to pin or use it.
        self._waiting: Counter[str] = Counter()
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._load()

    # -- public API ---------------------------------------------------------------------------

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

    def lookup(self, reference: Reference | str) -> PulledModule | None:
        """The cached module ``reference`` resolves to, without any network call, or None."""
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        manifest_digest = ref.digest if ref.digest is not None else self._tags.get(_tag_key(ref))
        if manifest_digest is None:
            return None
        return self._cached(manifest_digest)

    async def pull(
        self,
        reference: Reference | str,
        *,
        policy: PullPolicy | str = PullPolicy.IF_NOT_PRESENT,
        credentials: auth.Credentials | None = None,
        pin: bool = False,
    ) -> PulledModule:
        """Makes the module ``reference`` names available on disk and returns where it is.

        ``policy`` also takes Kubernetes' spelling (``"IfNotPresent"``). With ``pin`` the
        module stays pinned (never evicted) until `unpin` is called for it.
        Raises `errors.ModuleNotCached` for policy Never with nothing cached, and the other
        `errors.RegistryError` kinds when the registry or the artifact is at fault.
        """
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        policy = PullPolicy(policy)
        if policy is not PullPolicy.ALWAYS:
            found = self.lookup(ref)
            if found is not None and await self._usable(found):
                return self._hand_out(found, pin=pin)
            if policy is PullPolicy.NEVER:
                raise errors.ModuleNotCached(
                    f"{ref} is not in the module cache and the pull policy is Never"
                )
        if ref.digest is not None and policy is not PullPolicy.ALWAYS:
            manifest_digest = ref.digest  # fetching the manifest by digest verifies it anyway
        else:
            client = self._get_client()
            manifest_digest = await client.fetch_digest(reference=ref, credentials=credentials)
        if ref.digest is None:
            await self._record_tag(ref, manifest_digest)
        for _ in range(3):
            found = self._cached(manifest_digest)
            if found is not None and await self._usable(found):
                return self._hand_out(found, pin=pin)
            module_digest = await self._join_download(ref.with_digest(manifest_digest), credentials)
            entry = self._entries.get(module_digest)
            if entry is not None:
                pulled = PulledModule(
                    manifest_digest=manifest_digest,
                    module_digest=module_digest,
                    path=self.path_of(module_digest),
                    size=entry.size,
                    cached=False,
                )
                return self._hand_out(pulled, pin=pin)
        raise errors.RegistryError(  # pragma: no cover - needs eviction races three times over
            f"{ref}: the module kept disappearing from the cache while being pulled"
        )

    def pin(self, module_digest: str) -> None:
        """Keeps a cached module from eviction until a matching `unpin`; pins count up."""
        if module_digest not in self._entries:
            raise KeyError(f"{module_digest} is not in the module cache")
        self._pins[module_digest] += 1

    def unpin(self, module_digest: str) -> None:
        """Releases one `pin` (or one ``pull(..., pin=True)``) of the module."""
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

    def evict(self) -> list[str]:
        """Evicts unpinned modules, least recently used first, until under ``max_bytes``."""
        return self._evict(protect=None)

    async def close(self) -> None:
        """Cancels downloads under way and closes the registry client."""
        for task in list(self._inflight.values()):
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(BaseException):
                await task
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- cache state --------------------------------------------------------------------------

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

    def _cached(self, manifest_digest: str) -> PulledModule | None:
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

    async def _usable(self, module: PulledModule) -> bool:
        """Whether a cached module can be handed out now: its file is there (and, with
        ``verify_cached``, still hashes right) and it is still in the cache when this returns."""
        if self.verify_cached:
            try:
                actual = await asyncio.to_thread(_hash_file, module.path)
            except OSError:
                actual = None
            if actual != module.module_digest:
                _log.warning("cached module %s is damaged; pulling it again", module.module_digest)
                self._remove(module.module_digest)
                return False
        elif not module.path.is_file():
            self._remove(module.module_digest)
            return False
        return module.module_digest in self._entries

    async def _join_download(
        self, reference: Reference, credentials: auth.Credentials | None
    ) -> str:
        """Downloads the artifact at ``reference`` (a digest), or waits for the download of it
        that is already under way; returns the module's digest."""
        assert reference.digest is not None
        manifest_digest = reference.digest
        task = self._inflight.get(manifest_digest)
        if task is None:
            task = asyncio.create_task(
                self._download(reference, credentials), name=f"pull {manifest_digest}"
            )
            self._inflight[manifest_digest] = task
            task.add_done_callback(self._forget_task(manifest_digest))
        self._waiting[manifest_digest] += 1
        try:
            # Shielded: one caller giving up does not cancel the others' download.
            return await asyncio.shield(task)
        finally:
            self._waiting[manifest_digest] -= 1
            if self._waiting[manifest_digest] == 0:
                del self._waiting[manifest_digest]

    def _hand_out(self, module: PulledModule, *, pin: bool) -> PulledModule:
        now = self._clock()
        self._entries[module.module_digest].last_used = now
        with contextlib.suppress(OSError):
            os.utime(module.path, (now, now))  # the order survives a restart
        if pin:
            self.pin(module.module_digest)
        self._evict(protect=module.module_digest)
        return module

    def _evict(self, *, protect: str | None) -> list[str]:
        total = self.total_bytes
        evicted: list[str] = []
        awaited = {self._manifests.get(manifest) for manifest in self._waiting}
        for digest in self.module_digests():
            if total <= self.max_bytes:
                break
            if digest == protect or self._pins[digest] > 0 or digest in awaited:
                continue
            total -= self._entries[digest].size
            self._remove(digest)
            evicted.append(digest)
        if total > self.max_bytes:
            _log.warning(
                "module cache holds %d bytes, over its %d-byte limit: the rest is in use",
                total,
                self.max_bytes,
            )
        return evicted

    def _remove(self, module_digest: str) -> None:
        self._entries.pop(module_digest, None)
        self.path_of(module_digest).unlink(missing_ok=True)
        for manifest in [m for m, module in self._manifests.items() if module == module_digest]:
            del self._manifests[manifest]
            (self._manifest_dir / _hex(manifest)).unlink(missing_ok=True)
            for key in [k for k, m in self._tags.items() if m == manifest]:
                del self._tags[key]
                (self._tag_dir / hashlib.sha256(key.encode()).hexdigest()).unlink(missing_ok=True)

    async def _record_tag(self, reference: Reference, manifest_digest: str) -> None:
        key = _tag_key(reference)
        if self._tags.get(key) == manifest_digest:
            return
        path = self._tag_dir / hashlib.sha256(key.encode()).hexdigest()
        record = json.dumps({"reference": key, "manifest": manifest_digest}).encode()
        await asyncio.to_thread(atomic.write_atomically, path, record)
        self._tags[key] = manifest_digest

    def _forget_task(self, manifest_digest: str) -> Callable[[asyncio.Task[str]], None]:
        def forget(task: asyncio.Task[str]) -> None:
            if self._inflight.get(manifest_digest) is task:
                del self._inflight[manifest_digest]
            if not task.cancelled():
                task.exception()  # retrieved here so a failure nobody awaited is not logged

        return forget

    def _get_client(self) -> RegistryClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    # -- downloading --------------------------------------------------------------------------

    async def _download(self, reference: Reference, credentials: auth.Credentials | None) -> str:
        """Fetches the artifact ``reference`` (pinned to a digest) names; returns the module's
        digest once the module is committed to the cache and the manifest recorded."""
        assert reference.digest is not None
        client = self._get_client()
        fetched = await client.fetch_manifest(reference=reference, credentials=credentials)
        manifest = formats.parse_manifest(fetched.body, content_type=fetched.media_type)
        if isinstance(manifest, formats.ImageIndex):
            entry = formats.plan_platform_manifest(manifest)
            child = await client.fetch_manifest(
                reference=reference.with_digest(entry.digest), credentials=credentials
            )
            manifest = formats.parse_manifest(child.body, content_type=child.media_type)
            if isinstance(manifest, formats.ImageIndex):
                raise errors.UnsupportedArtifact(
                    f"{reference}: an image index inside an image index is not supported"
                )
        plan = formats.plan_module_source(manifest)
        work = self._work / uuid.uuid4().hex
        work.mkdir(parents=True)
        try:
            if isinstance(plan, formats.WasmLayerPlan):
                module_digest = await self._fetch_wasm_layer(reference, plan, credentials, work)
            else:
                module_digest = await self._fetch_from_image(reference, plan, credentials, work)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        self._manifests[reference.digest] = module_digest
        record = json.dumps({"module": module_digest}).encode()
        await asyncio.to_thread(
            atomic.write_atomically, self._manifest_dir / _hex(reference.digest), record
        )
        return module_digest

    def _check_module_size(self, reference: Reference, size: int) -> None:
        if size > self.max_bytes:
            raise errors.ModuleTooLarge(
                f"the module of {reference} has {size} bytes, more than the whole cache "
                f"({self.max_bytes} bytes)"
            )

    async def _fetch_wasm_layer(
        self,
        reference: Reference,
        plan: formats.WasmLayerPlan,
        credentials: auth.Credentials | None,
        work: Path,
    ) -> str:
        layer = plan.layer
        if layer.digest in self._entries and self.path_of(layer.digest).is_file():
            return layer.digest  # the same module under another manifest
        self._check_module_size(reference, layer.size)
        staged = work / "module.wasm"
        client = self._get_client()
        await client.fetch_blob(
            reference=reference, descriptor=layer, destination=staged, credentials=credentials
        )
        with staged.open("rb") as handle:
            magic = handle.read(len(formats.WASM_MAGIC))
        if magic != formats.WASM_MAGIC:
            raise errors.UnsupportedArtifact(
                f"the {layer.media_type} layer of {reference} is not a WebAssembly binary"
            )
        await asyncio.to_thread(self._commit_module, staged, layer.digest)
        self._register(layer.digest)
        return layer.digest

    async def _fetch_from_image(
        self,
        reference: Reference,
        plan: formats.ImageLayersPlan,
        credentials: auth.Credentials | None,
        work: Path,
    ) -> str:
        total = sum(layer.size for layer in plan.layers)
        if total > self.max_image_bytes:
            raise errors.ModuleTooLarge(
                f"the layers of {reference} have {total} bytes, more than the "
                f"{self.max_image_bytes} allowed for an image"
            )
        client = self._get_client()
        config = await client.fetch_blob_bytes(
            reference=reference, descriptor=plan.config, credentials=credentials
        )
        preferred = formats.parse_image_entrypoint(config)
        paths: list[Path] = []
        for position, layer in enumerate(plan.layers):
            path = work / f"layer-{position}"
            await client.fetch_blob(
                reference=reference, descriptor=layer, destination=path, credentials=credentials
            )
            paths.append(path)
        digest = await asyncio.to_thread(self._extract_module, reference, paths, preferred)
        self._register(digest)
        return digest

    def _extract_module(
        self, reference: Reference, layers: list[Path], preferred: list[str]
    ) -> str:
        listings = []
        for path in layers:
            with path.open("rb") as stream:
                listings.append(
                    formats.parse_tar_layer(stream, max_unpacked_bytes=self.max_image_bytes)
                )
        position, entry = formats.plan_wasm_entry(listings, preferred=preferred)
        self._check_module_size(reference, entry.size)
        staged = layers[position].with_name("module.wasm")
        with layers[position].open("rb") as stream, staged.open("w+b") as out:
            formats.extract_tar_entry(
                stream,
                path=entry.path,
                out=out,
                max_bytes=self.max_bytes,
                max_unpacked_bytes=self.max_image_bytes,
            )
            out.seek(0)
            if out.read(len(formats.WASM_MAGIC)) != formats.WASM_MAGIC:
                raise errors.UnsupportedArtifact(
                    f"/{entry.path} in the image {reference} is not a WebAssembly binary"
                )
        digest = _hash_file(staged)
        self._commit_module(staged, digest)
        return digest

    def _commit_module(self, staged: Path, digest: str) -> None:
        """Moves a verified module from the scratch space into the cache (runs in a thread)."""
        with staged.open("rb+") as handle:
            os.fsync(handle.fileno())
        destination = self.path_of(digest)
        os.replace(staged, destination)
        atomic.fsync_directory(destination.parent)

    def _register(self, digest: str) -> None:
        self._entries[digest] = _Entry(self.path_of(digest).stat().st_size, self._clock())


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


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
