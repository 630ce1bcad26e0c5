"""The puller: bring a module into the node's cache through the registry client, once.

`ModuleStore` is what the agent uses: it answers from the `cache` when the pull policy allows
and otherwise fetches through `wasmfleet_oci.client` (the manifest, an image index's wasip1
entry, then the module layer, or an ordinary image's layers with the ``.wasm`` file taken
out of them). Pulls of one manifest that overlap share a single download. The pull policies
follow Kubernetes: ``IfNotPresent`` and ``Never`` serve from the cache without any network
call; ``Always`` asks the registry every time (so the caller's credentials are checked, and a
tag is re-resolved) but downloads only what the cache lacks.

A cached module is handed only to a caller the registry has accepted for it (`access`): the
caller of the pull that brought it in, anyone when an anonymous pull brought it, and any other
caller once a manifest HEAD with its own credentials succeeds. So with ``IfNotPresent`` a
namespace without credentials for a private module does not get it from the cache, and with
``Never`` only callers seen before do. ``Always`` asks the registry on every pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from wasmfleet_agent.store.access import AccessRecords, Shown, caller
from wasmfleet_agent.store.cache import ModuleCache, PulledModule, hash_file
from wasmfleet_oci import auth, errors, formats
from wasmfleet_oci.client import RegistryClient
from wasmfleet_oci.reference import Reference, parse_reference

__all__ = ["ModuleStore", "PullPolicy"]


class PullPolicy(enum.StrEnum):
    """When to contact the registry; the values are Kubernetes' spellings."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class ModuleStore:
    """Wasm modules pulled from OCI registries into a content-addressed, size-bounded cache.

    ``max_bytes`` bounds the modules kept (pinned modules and the one being returned may push
    the total over it until they are unpinned). ``client_factory`` is called once, at the first
    pull that needs the network. ``max_image_bytes`` bounds the layers downloaded for an
    ordinary image and what they may unpack to. With ``verify_cached`` a cached module is
    hashed again before each use.
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
        self._cache = ModuleCache(root, max_bytes, verify=verify_cached, clock=clock)
        self._access = AccessRecords(root / "access", clock=clock)
        self.max_image_bytes = max_image_bytes
        self._client_factory = client_factory
        self._client: RegistryClient | None = None
        # Manifest digest -> pulls waiting for its download; their module is not evicted
        # between the download's end and their turn to pin or use it.
        self._waiting: Counter[str] = Counter()
        self._inflight: dict[str, asyncio.Task[str]] = {}

    # -- the cache, as callers see it ---------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._cache.root

    @property
    def max_bytes(self) -> int:
        return self._cache.max_bytes

    @property
    def total_bytes(self) -> int:
        """The size of all modules in the cache."""
        return self._cache.total_bytes

    def module_digests(self) -> list[str]:
        """The digests of the cached modules, least recently used first."""
        return self._cache.module_digests()

    def path_of(self, module_digest: str) -> Path:
        """Where a module with this digest lives (whether or not it is cached now)."""
        return self._cache.path_of(module_digest)

    def pin(self, module_digest: str) -> None:
        """Keeps a cached module from eviction until a matching `unpin`; pins count up."""
        self._cache.pin(module_digest)

    def unpin(self, module_digest: str) -> None:
        """Releases one `pin` (or one ``pull(..., pin=True)``) of the module."""
        self._cache.unpin(module_digest)

    @contextlib.contextmanager
    def pinned(self, module_digest: str) -> Iterator[Path]:
        """Pins the module for the ``with`` block and yields its path."""
        with self._cache.pinned(module_digest) as path:
            yield path

    def evict(self) -> list[str]:
        """Evicts unpinned modules, least recently used first, until under ``max_bytes``."""
        return self._cache.evict(spare=self._awaited())

    def lookup(self, reference: Reference | str) -> PulledModule | None:
        """The cached module ``reference`` resolves to, without any network call, or None."""
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        manifest_digest = ref.digest if ref.digest is not None else self._cache.tagged(ref)
        if manifest_digest is None:
            return None
        return self._cache.cached(manifest_digest)

    # -- pulling ------------------------------------------------------------------------------

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
            if found is not None and await self._cache.usable(found):
                await self._check_access(ref, found.manifest_digest, credentials, policy)
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
            self._access.grant(ref.name, manifest_digest, caller(credentials))
        if ref.digest is None:
            await self._cache.record_tag(ref, manifest_digest)
        for _ in range(3):
            found = self._cache.cached(manifest_digest)
            if found is not None and await self._cache.usable(found):
                await self._check_access(ref, manifest_digest, credentials, policy)
                return self._hand_out(found, pin=pin)
            module_digest = await self._join_download(ref.with_digest(manifest_digest), credentials)
            size = self._cache.size_of(module_digest)
            if size is not None:
                # a download another caller started proves nothing about this one
                await self._check_access(ref, manifest_digest, credentials, policy)
                pulled = PulledModule(
                    manifest_digest=manifest_digest,
                    module_digest=module_digest,
                    path=self.path_of(module_digest),
                    size=size,
                    cached=False,
                )
                return self._hand_out(pulled, pin=pin)
        raise errors.RegistryError(  # pragma: no cover - needs eviction races three times over
            f"{ref}: the module kept disappearing from the cache while being pulled"
        )

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

    async def _check_access(
        self,
        ref: Reference,
        manifest_digest: str,
        credentials: auth.Credentials | None,
        policy: PullPolicy,
    ) -> None:
        """Returns when the registry has accepted this caller (or anonymous pulls) for the
        module; otherwise asks it, and raises `errors.Unauthorized` when it refuses."""
        who = caller(credentials)
        shown = self._access.shown(ref.name, manifest_digest, who)
        if shown is Shown.FRESH:
            return
        whom = "anonymous pulls" if credentials is None else "these pull credentials"
        pinned = ref.with_digest(manifest_digest)
        if policy is PullPolicy.NEVER:
            if shown is Shown.STALE:
                return
            raise errors.Unauthorized(
                f"{pinned} is cached on this node, but the registry has not been seen to grant "
                f"it to {whom}, and pull policy Never does not ask it"
            )
        try:
            await self._get_client().fetch_digest(reference=pinned, credentials=credentials)
        except (errors.Unauthorized, errors.NotFound) as error:
            self._access.forget(ref.name, manifest_digest, who)
            raise errors.Unauthorized(
                f"{pinned} is cached on this node, but the registry does not grant it to "
                f"{whom}: {error}"
            ) from None
        except errors.RegistryUnavailable:
            if shown is Shown.STALE:
                return  # granted before; the registry cannot say otherwise now
            raise
        self._access.grant(ref.name, manifest_digest, who)

    def _awaited(self) -> set[str]:
        """The modules of downloads that pulls are still waiting to hand out."""
        return self._cache.modules_of(self._waiting)

    def _hand_out(self, module: PulledModule, *, pin: bool) -> PulledModule:
        return self._cache.hand_out(module, pin=pin, spare=self._awaited())

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
        work = self._cache.new_work_dir()
        try:
            if isinstance(plan, formats.WasmLayerPlan):
                module_digest = await self._fetch_wasm_layer(reference, plan, credentials, work)
            else:
                module_digest = await self._fetch_from_image(reference, plan, credentials, work)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        await self._cache.record_manifest(reference.digest, module_digest)
        self._access.grant(reference.name, reference.digest, caller(credentials))
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
        if self._cache.has_module(layer.digest):
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
        await self._cache.admit(staged, layer.digest)
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
        staged, digest = await asyncio.to_thread(self._extract_module, reference, paths, preferred)
        await self._cache.admit(staged, digest)
        return digest

    def _extract_module(
        self, reference: Reference, layers: list[Path], preferred: list[str]
    ) -> tuple[Path, str]:
        """Takes the module out of the image's layers into the scratch space (in a thread);
        returns where it is and its digest."""
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
        return staged, hash_file(staged)
