"""Container images for the local node, built here from static binaries, without a daemon.

A real node pulls no image from a public registry here, so every image it runs is made by
this module: one layer holding static binaries (the pause program compiled from
``e2e/images/pause/pause.c`` with ``gcc -static``, the test program ``e2e/images/probe``
built with Go, and the cached CoreDNS binary), its config and an OCI manifest. An image is
either written as a docker-archive tar, which ``ctr images import`` loads straight into
containerd (the sandbox image, so no Pod depends on the registry), or pushed to the local
registry, from which containerd pulls it over plain HTTP as it would from any registry.

Builds are deterministic (fixed timestamps and owners), so the same binaries give the same
digests, and a tag derived from the digest changes exactly when the content does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_harness.binaries import REPO_ROOT
from wasmfleet_harness.registry import Registry, upload_blob

__all__ = [
    "IMAGE_SOURCES",
    "Image",
    "ImageFile",
    "build_pause_binary",
    "build_probe_binary",
    "push_image",
    "render_image",
    "write_docker_archive",
]

IMAGE_SOURCES = REPO_ROOT / "e2e" / "images"
BUILD_DIR = REPO_ROOT / "build" / "images"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageFile:
    """One file of an image: ``source`` on this machine lands at ``path`` (relative to /)."""

    path: str
    source: Path
    mode: int = 0o755


@dataclass(frozen=True)
class Image:
    """An image's three kinds of blob: one gzipped layer, its config and its OCI manifest."""

    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        """The manifest's digest: what a registry and containerd name the image by."""
        return _sha256(self.manifest)

    @property
    def tag(self) -> str:
        """A tag that changes exactly when the content does."""
        return self.digest.removeprefix("sha256:")[:16]


def _layer_tar(files: list[ImageFile]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for item in sorted(files, key=lambda f: f.path):
            parts = item.path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            data = item.source.read_bytes()
            info = tarfile.TarInfo("/".join(parts))
            info.size = len(data)
            info.mode = item.mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def render_image(
    files: list[ImageFile],
    *,
    entrypoint: list[str],
    cmd: list[str] | None = None,
    architecture: str = "amd64",
) -> Image:
    """Builds a one-layer image of ``files`` that runs ``entrypoint`` (pure: no I/O but
    reading the files)."""
    tar = _layer_tar(files)
    # mtime=0 keeps the gzip header, and so the digest, the same for the same content. The
    # images never leave the machine, so speed beats size: level 1 compresses the 76 MB
    # CoreDNS binary in under a second, level 9 (the default) took 8 s of every cluster start.
    layer = gzip.compress(tar, compresslevel=1, mtime=0)
    config_document = {
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": cmd or [],
            "Env": ["PATH=/"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [_sha256(tar)]},
        "history": [{"created_by": "wasmfleet_harness.nodeimages"}],
    }
    config = json.dumps(config_document, sort_keys=True).encode()
    manifest_document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": _sha256(layer), "size": len(layer)}],
    }
    manifest = json.dumps(manifest_document, sort_keys=True).encode()
    return Image(layer=layer, config=config, manifest=manifest)


def write_docker_archive(image: Image, reference: str, path: Path) -> Path:
    """Writes ``image`` as a docker-archive tar naming it ``reference`` (for ``ctr images
    import``)."""
    config_name = _sha256(image.config).removeprefix("sha256:") + ".json"
    layer_name = _sha256(image.layer).removeprefix("sha256:") + "/layer.tar"
    index = [{"Config": config_name, "RepoTags": [reference], "Layers": [layer_name]}]
    members = {
        "manifest.json": json.dumps(index).encode(),
        config_name: image.config,
        layer_name: image.layer,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def push_image(image: Image, registry: Registry, repository: str, tag: str) -> str:
    """Pushes ``image`` to ``registry`` (plain HTTP, anonymous) as ``repository:tag`` and
    returns the reference containerd can pull."""
    upload_blob(registry, repository, image.layer)
    upload_blob(registry, repository, image.config)
    registry.put_manifest(repository, tag, image.manifest, media_type=OCI_MANIFEST)
    return f"{registry.host}/{repository}:{tag}"


def _newest_mtime(directory: Path) -> float:
    return max(p.stat().st_mtime for p in directory.rglob("*") if p.is_file())


def _stale(output: Path, source_dir: Path) -> bool:
    return not output.exists() or output.stat().st_mtime < _newest_mtime(source_dir)


def build_pause_binary() -> Path:
    """Compiles the sandbox's pause program statically (rebuilt when its source changes)."""
    source_dir = IMAGE_SOURCES / "pause"
    output = BUILD_DIR / "pause"
    if _stale(output, source_dir):
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        flags = ["-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror"]
        subprocess.run(["gcc", *flags, "-o", str(output), str(source_dir / "pause.c")], check=True)
    return output


def build_probe_binary() -> Path:
    """Builds the probe program statically with Go (rebuilt when its source changes)."""
    source_dir = IMAGE_SOURCES / "probe"
    output = BUILD_DIR / "probe"
    if _stale(output, source_dir):
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(output), "."],
            cwd=source_dir,
            env={**os.environ, "CGO_ENABLED": "0"},
            check=True,
        )
    return output
