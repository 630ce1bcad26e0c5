"""Builds the operator and agent images for every platform and pushes each as one image index.

`build_images` is the whole procedure; ``make images`` and the tests call it. For each image:

1. its tag is computed from what goes into it (`recipe.image_tag`): the files its Dockerfile
   copies, and the base image of each platform;
2. when the registry already has an index of that tag with every platform, nothing else
   happens (a warm run with unchanged code);
3. each platform's image is built from the project's Dockerfile with buildah, unless the
   image store has it from an earlier run; ``BASE`` is the local Debian base of that
   platform (`base`), ``BUILD_BASE`` the one of this machine's platform, and pip installs
   from wheels downloaded beforehand (`wheelhouse`);
4. a manifest list of the platforms' images is made and, given a registry, pushed with
   every image as an OCI image index.

The store, the bases, the wheels and the build logs live under ``~/.cache/wasmfleet/images``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_harness.binaries import REPO_ROOT, cache_dir
from wasmfleet_harness.images import distribution
from wasmfleet_harness.images.base import BaseImage, apt_mirror, ensure_base, require_emulation
from wasmfleet_harness.images.buildah import Buildah
from wasmfleet_harness.images.recipe import (
    IMAGE_NAMES,
    PLATFORMS,
    BaseSpec,
    ContextFile,
    ImageSpec,
    Platform,
    content_digest,
    image_spec,
    image_tag,
    is_excluded,
    parse_copy_sources,
    parse_dockerignore,
    parse_image_project,
    render_pip_conf,
)
from wasmfleet_harness.images.wheelhouse import ensure_wheels

__all__ = [
    "BuiltImage",
    "PlatformImage",
    "build_images",
    "context_files",
    "default_store",
    "host_platform",
    "images_cache",
]

# buildah's run-time state (locks, mounts) belongs on a tmpfs that a reboot clears.
RUNROOT = Path("/run/wasmfleet/buildah")
CONSTRAINTS = REPO_ROOT / ".ci" / "constraints.txt"


def images_cache() -> Path:
    return cache_dir() / "images"


def default_store(cache: Path | None = None) -> Buildah:
    """The project's image store: bases, built images and manifest lists."""
    return Buildah(root=(cache or images_cache()) / "storage", runroot=RUNROOT)


def host_platform() -> Platform:
    return Platform.of_machine(os.uname().machine)


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image of a `BuiltImage`."""

    platform: Platform
    local: str
    """Its name in the image store."""
    seconds: float
    """Seconds its build took in this run; 0 when it was reused."""
    size: int
    """Bytes of its layers, unpacked."""


@dataclass(frozen=True)
class BuiltImage:
    """One image, every platform: where it is and what it took."""

    name: str
    repository: str
    """``registry/wasmfleet/agent`` once pushed, ``localhost/wasmfleet/agent`` otherwise."""
    tag: str
    digest: str | None
    """The image index's digest in the registry; None when nothing was pushed."""
    platforms: tuple[PlatformImage, ...]
    outcome: str
    """``built`` (at least one platform), ``cached`` (all from the store) or ``in registry``
    (the registry had the tag: nothing built or pushed)."""

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pinned(self) -> str:
        """``repository@digest``: what a cluster should run (the tag is for people)."""
        if self.digest is None:
            raise ValueError(f"{self.reference} was not pushed")
        return f"{self.repository}@{self.digest}"


def context_files(root: Path, sources: Sequence[str], dockerignore: str) -> list[ContextFile]:
    """The files of the build context under ``sources`` that ``.dockerignore`` lets in."""
    rules = parse_dockerignore(dockerignore)
    files: list[ContextFile] = []
    for source in sources:
        if is_excluded(rules, source):
            raise ValueError(f"{source} is copied into an image but .dockerignore leaves it out")
        path = root / source
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in paths:
            relative = file.relative_to(root).as_posix()
            if not is_excluded(rules, relative):
                executable = bool(file.stat().st_mode & 0o111)
                files.append(ContextFile(relative, executable, file.read_bytes()))
    return files


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)


def build_images(
    *,
    registry: str | None = None,
    names: Sequence[str] = IMAGE_NAMES,
    platforms: Sequence[Platform] = PLATFORMS,
    base: BaseSpec | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] = _say,
) -> list[BuiltImage]:
    """Builds (or reuses) the named images for ``platforms`` and, given ``registry``
    (``host:port``, plain HTTP), pushes each as an image index tagged by its content.

    Returns one `BuiltImage` per name, in order. Cold, this makes the Debian bases first
    (debootstrap: about a minute for amd64, several for arm64 under emulation).
    """
    cache = cache or images_cache()
    store = default_store(cache)
    if base is None:
        base = BaseSpec(mirror=apt_mirror(BaseSpec.suite) or BaseSpec.mirror)
    builder = host_platform()
    for platform in platforms:
        # Every build runs a step of each platform (useradd): fail early, and say why.
        require_emulation(platform)
    bases: dict[Platform, BaseImage] = {}
    for platform in sorted({*platforms, builder}):
        made = ensure_base(
            store,
            base,
            platform,
            cache=cache / "base",
            log=cache / "logs" / f"base-{platform.architecture}.log",
        )
        bases[platform] = made
        progress(f"base image for {platform}: {made.reference} ({made.seconds:.0f}s)")
    return [
        _build(image_spec(name), store, bases, builder, platforms, registry, cache, progress)
        for name in names
    ]


def _build(
    spec: ImageSpec,
    store: Buildah,
    bases: dict[Platform, BaseImage],
    builder: Platform,
    platforms: Sequence[Platform],
    registry: str | None,
    cache: Path,
    progress: Callable[[str], None],
) -> BuiltImage:
    project = parse_image_project((REPO_ROOT / spec.pyproject).read_text(), directory=spec.project)
    dockerfile = REPO_ROOT / spec.dockerfile
    # The Dockerfile is read by the builder, not through the context: it counts on its own.
    files = [
        ContextFile(spec.dockerfile, False, dockerfile.read_bytes()),
        *context_files(
            REPO_ROOT,
            parse_copy_sources(dockerfile.read_text()),
            (REPO_ROOT / ".dockerignore").read_text(),
        ),
    ]
    parameters = {f"base {p}": bases[p].reference for p in platforms}
    parameters["build base"] = bases[builder].reference
    tag = image_tag(project.version, content_digest(files, parameters))
    local = {p: f"localhost/{spec.repository}:{tag}-{p.architecture}" for p in platforms}

    if registry is not None:
        index = distribution.fetch_manifest(registry, spec.repository, tag)
        if index is not None and set(platforms) <= set(distribution.index_platforms(index)):
            progress(f"{spec.name}: {registry}/{spec.repository}:{tag} is in the registry")
            return BuiltImage(
                name=spec.name,
                repository=f"{registry}/{spec.repository}",
                tag=tag,
                digest=index.digest,
                platforms=tuple(
                    PlatformImage(p, local[p], 0.0, _size(store, local[p])) for p in platforms
                ),
                outcome="in registry",
            )

    wheels = cache / "wheels"
    pip_conf = cache / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text(render_pip_conf(find_links="/wheelhouse"))
    built: list[PlatformImage] = []
    for platform in platforms:
        started = time.monotonic()
        if not store.image_exists(local[platform]):
            progress(f"{spec.name}: building {local[platform]} for {platform}")
            target = bases[platform]
            ensure_wheels(
                project,
                platform,
                python=target.python,
                glibc=target.glibc,
                constraints=CONSTRAINTS,
                directory=wheels,
            )
            store.build(
                context=REPO_ROOT,
                dockerfile=dockerfile,
                platform=platform,
                tag=local[platform],
                build_args={
                    "BASE": target.reference,
                    "BUILD_BASE": bases[builder].reference,
                    # buildah 1.28 does not set BUILDPLATFORM itself.
                    "BUILDPLATFORM": str(builder),
                },
                volumes=[f"{wheels}:/wheelhouse:ro", f"{pip_conf}:/etc/pip.conf:ro"],
                log=cache / "logs" / f"{spec.name}-{platform.architecture}.log",
            )
            seconds = time.monotonic() - started
        else:
            seconds = 0.0
        built.append(
            PlatformImage(platform, local[platform], seconds, _size(store, local[platform]))
        )

    listed = f"localhost/{spec.repository}:{tag}"
    store.create_manifest_list(listed, [local[p] for p in platforms])
    # Only the newest build of an image stays in the store, which would otherwise grow by an
    # image per platform with every change. Lists first: they name the images.
    stale = [
        name
        for name in store.image_names(f"localhost/{spec.repository}")
        if not name.rpartition(":")[2].startswith(tag)
    ]
    for name in sorted(stale, key=lambda n: not store.manifest_exists(n)):
        store.remove_image(name)
    outcome = "built" if any(b.seconds for b in built) else "cached"
    if registry is None:
        return BuiltImage(
            spec.name, f"localhost/{spec.repository}", tag, None, tuple(built), outcome
        )
    progress(f"{spec.name}: pushing {registry}/{spec.repository}:{tag}")
    digest = store.push_manifest_list(
        listed,
        f"{registry}/{spec.repository}:{tag}",
        tls_verify=False,
        digest_file=cache / "logs" / f"{spec.name}.digest",
    )
    return BuiltImage(
        spec.name, f"{registry}/{spec.repository}", tag, digest, tuple(built), outcome
    )


def _size(store: Buildah, reference: str) -> int:
    return store.image_size(reference) if store.image_exists(reference) else 0
