"""Where the Wasm bytes are in an OCI artifact: manifests parsed, layouts recognised, tars read.

Modules reach registries in several shapes, and the store must find the module in each without
trusting the artifact: the CNCF Wasm artifact layout (config
``application/vnd.wasm.config.v0+json``, one ``application/wasm`` layer), the older wasm-to-oci
layer type, an image index with a Wasm platform entry, and an ordinary image whose tar layer
holds a ``.wasm`` file (as ``FROM scratch`` / ``COPY app.wasm /`` builds make). Anything else
is refused with the media types that were seen.

Everything here is pure: the tar readers work on a binary stream the caller opened and never
touch the file system by member name, so a hostile tar can at worst be refused.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from wasmfleet_oci import errors
from wasmfleet_oci.reference import parse_digest

__all__ = [
    "DOCKER_IMAGE_CONFIG",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_CONFIG_TYPES",
    "INDEX_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "OCI_IMAGE_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_TAR",
    "OCI_LAYER_TAR_GZIP",
    "OCI_MANIFEST",
    "TAR_LAYER_TYPES",
    "WASM_CONFIG",
    "WASM_LAYER",
    "WASM_MAGIC",
    "WASM_TO_OCI_LAYER",
    "Descriptor",
    "ImageIndex",
    "ImageLayersPlan",
    "ImageManifest",
    "ModulePlan",
    "Platform",
    "TarEntry",
    "WasmLayerPlan",
    "extract_tar_entry",
    "parse_image_entrypoint",
    "parse_manifest",
    "parse_tar_layer",
    "plan_module_source",
    "plan_platform_manifest",
    "plan_wasm_entry",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
"""Every manifest type the store reads, in the order it prefers them."""

WASM_CONFIG = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"
WASM_TO_OCI_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
WASM_MAGIC = b"\0asm"

OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
IMAGE_CONFIG_TYPES = frozenset({OCI_IMAGE_CONFIG, DOCKER_IMAGE_CONFIG})

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_LAYER_TYPES = frozenset(
    {
        OCI_LAYER_TAR,
        OCI_LAYER_TAR_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

_SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
# Preference among index entries: lower is better.
_WASM_PLATFORM_RANK = {
    ("os", "wasip1"): 0,
    ("os", "wasip2"): 1,
    ("os", "wasi"): 2,
    ("architecture", "wasm"): 3,
}
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_CONFIG_BYTES = 1 << 20


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class Platform(_Model):
    """The platform of an image index entry."""

    architecture: str = ""
    os: str = ""
    variant: str | None = None


class Descriptor(_Model):
    """A pointer to content: its media type, sha256 digest and size in bytes."""

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    platform: Platform | None = None
    annotations: dict[str, str] | None = None

    @pydantic.field_validator("digest")
    @classmethod
    def _sha256_only(cls, value: str) -> str:
        return parse_digest(value)


class ImageManifest(_Model):
    """An OCI image manifest or a Docker v2 schema 2 manifest."""

    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: tuple[Descriptor, ...] = ()
    annotations: dict[str, str] | None = None


class ImageIndex(_Model):
    """An OCI image index or a Docker manifest list."""

    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class WasmLayerPlan:
    """The layer's bytes are the module (CNCF layout or the wasm-to-oci layer type)."""

    layer: Descriptor


@dataclass(frozen=True)
class ImageLayersPlan:
    """An ordinary image: the module is a ``.wasm`` file inside one of its tar layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


ModulePlan = WasmLayerPlan | ImageLayersPlan


@dataclass(frozen=True)
class TarEntry:
    """A tar member that matters for finding the module.

    ``kind`` is ``file`` for a regular ``.wasm`` file, ``link`` for a symbolic or hard link
    named ``*.wasm``, ``special`` for any other non-regular member named ``*.wasm``,
    ``whiteout`` for an overlay deletion of ``path`` and ``opaque`` for an overlay marker that
    hides everything below the directory ``path`` in lower layers.
    """

    path: str
    kind: Literal["file", "link", "special", "whiteout", "opaque"]
    size: int = 0


def _media_type_of(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _validation_message(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "document"
    return f"{where}: {first['msg']}"


def parse_manifest(body: bytes, *, content_type: str | None = None) -> ImageManifest | ImageIndex:
    """Parses a manifest or index; the ``mediaType`` field wins over ``content_type``.

    Raises `errors.UnsupportedArtifact` for Docker schema 1, unknown media types and malformed
    documents (including digests that are not sha256).
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise errors.UnsupportedArtifact("the manifest is not JSON") from None
    if not isinstance(document, dict):
        raise errors.UnsupportedArtifact("the manifest is not a JSON object")
    field = document.get("mediaType")
    media_type = _media_type_of(field if isinstance(field, str) else None) or _media_type_of(
        content_type
    )
    if media_type in _SCHEMA1_TYPES or document.get("schemaVersion") == 1:
        raise errors.UnsupportedArtifact("Docker schema 1 manifests are not supported")
    model: type[ImageManifest] | type[ImageIndex]
    if media_type in INDEX_TYPES or (media_type is None and "manifests" in document):
        model = ImageIndex
    elif media_type in MANIFEST_TYPES or (media_type is None and "config" in document):
        model = ImageManifest
    else:
        raise errors.UnsupportedArtifact(
            f"manifest media type {media_type or '(none)'} is not one of "
            f"{', '.join(MANIFEST_ACCEPT)}"
        )
    try:
        return model.model_validate(document)
    except pydantic.ValidationError as error:
        raise errors.UnsupportedArtifact(
            f"malformed manifest: {_validation_message(error)}"
        ) from None


def _describe_platform(descriptor: Descriptor) -> str:
    platform = descriptor.platform
    if platform is None:
        return "(no platform)"
    text = f"{platform.os or '?'}/{platform.architecture or '?'}"
    return f"{text}/{platform.variant}" if platform.variant else text


def plan_platform_manifest(index: ImageIndex) -> Descriptor:
    """Chooses the index entry for a Wasm platform.

    Preference: os ``wasip1``, then ``wasip2`` (a component), then ``wasi``, then architecture
    ``wasm``; among equals, the
    first listed. Raises `errors.UnsupportedArtifact` listing the platforms seen if none fits.
    """
    best: tuple[int, int, Descriptor] | None = None
    for position, entry in enumerate(index.manifests):
        if entry.platform is None:
            continue
        for (attribute, value), rank in _WASM_PLATFORM_RANK.items():
            if getattr(entry.platform, attribute) == value and (best is None or rank < best[0]):
                best = (rank, position, entry)
    if best is None:
        seen = ", ".join(_describe_platform(m) for m in index.manifests) or "none"
        raise errors.UnsupportedArtifact(
            "the image index has no entry for a Wasm platform (os wasip1, wasip2 or wasi, or "
            f"architecture wasm); platforms seen: {seen}"
        )
    return best[2]


def _describe_types(manifest: ImageManifest) -> str:
    layers = ", ".join(layer.media_type for layer in manifest.layers) or "none"
    return f"config {manifest.config.media_type}, layers: {layers}"


def plan_module_source(manifest: ImageManifest) -> ModulePlan:
    """Decides where the module's bytes are in ``manifest``.

    Raises `errors.UnsupportedArtifact` naming the media types seen when the artifact is none
    of the layouts this store reads.
    """
    layers = manifest.layers
    if manifest.config.media_type == WASM_CONFIG:
        if len(layers) == 1 and layers[0].media_type == WASM_LAYER:
            return WasmLayerPlan(layer=layers[0])
        raise errors.UnsupportedArtifact(
            f"a Wasm artifact (config {WASM_CONFIG}) must have exactly one {WASM_LAYER} layer; "
            f"this one has {_describe_types(manifest)}"
        )
    wasm_layers = [layer for layer in layers if layer.media_type in (WASM_LAYER, WASM_TO_OCI_LAYER)]
    if len(layers) == 1 and len(wasm_layers) == 1:
        return WasmLayerPlan(layer=wasm_layers[0])
    if (
        not wasm_layers
        and layers
        and manifest.config.media_type in IMAGE_CONFIG_TYPES
        and all(layer.media_type in TAR_LAYER_TYPES for layer in layers)
    ):
        return ImageLayersPlan(config=manifest.config, layers=layers)
    raise errors.UnsupportedArtifact(
        f"no Wasm module found in this artifact ({_describe_types(manifest)}); expected config "
        f"{WASM_CONFIG} with one {WASM_LAYER} layer, one {WASM_TO_OCI_LAYER} layer, or an "
        "image whose tar layers hold a .wasm file"
    )


def _normalize_path(path: str, *, working_dir: str = "/") -> str:
    joined = posixpath.join(working_dir or "/", path)
    return posixpath.normpath(joined).lstrip("/")


def parse_image_entrypoint(config: bytes) -> list[str]:
    """The paths an image config names as its program, best first, relative to the root.

    That is the first word of ``Entrypoint``, then of ``Cmd``, each resolved against
    ``WorkingDir`` when relative. An unreadable config yields no preference, not an error:
    the layers may still hold a single ``.wasm`` file.
    """
    if len(config) > _MAX_CONFIG_BYTES:
        return []
    try:
        document = json.loads(config)
    except (ValueError, UnicodeDecodeError):
        return []
    section = document.get("config") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        return []
    working_dir = section.get("WorkingDir")
    if not isinstance(working_dir, str):
        working_dir = "/"
    found: list[str] = []
    for key in ("Entrypoint", "Cmd"):
        words = section.get(key)
        if isinstance(words, list) and words and isinstance(words[0], str) and words[0]:
            path = _normalize_path(words[0], working_dir=working_dir)
            if path not in found:
                found.append(path)
    return found


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _LimitedReader(io.RawIOBase):
    """Reads from ``source`` and refuses to deliver more than ``limit`` bytes in total."""

    def __init__(self, source: _Readable, limit: int) -> None:
        self._source = source
        self._left = limit
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._source.read(min(len(view), self._left + 1))
        if len(data) > self._left:
            raise errors.ModuleTooLarge(
                f"a layer unpacks to more than {self._limit} bytes; refusing it"
            )
        self._left -= len(data)
        view[: len(data)] = data
        return len(data)


def _open_tar(stream: IO[bytes], *, max_unpacked_bytes: int) -> tarfile.TarFile:
    stream.seek(0)
    magic = stream.read(4)
    stream.seek(0)
    source: _Readable = stream
    if magic[:2] == _GZIP_MAGIC:
        source = gzip.GzipFile(fileobj=stream, mode="rb")
    elif magic == _ZSTD_MAGIC:
        raise errors.UnsupportedArtifact("zstd-compressed layers are not supported")
    limited = io.BufferedReader(_LimitedReader(source, max_unpacked_bytes))
    try:
        return tarfile.open(fileobj=limited, mode="r|")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise errors.UnsupportedArtifact(f"a layer is not a tar archive: {error}") from None


def _safe_member_path(name: str) -> str:
    """The member's path relative to the root; refuses absolute paths and ``..``."""
    if name.startswith("/"):
        raise errors.UnsupportedArtifact(f"a layer has a member with an absolute path: {name!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise errors.UnsupportedArtifact(f"a layer has a member whose path has '..': {name!r}")
    return "/".join(parts)


def _entry_for(member: tarfile.TarInfo) -> TarEntry | None:
    path = _safe_member_path(member.name)
    directory, base = posixpath.split(path)
    if base == _OPAQUE_MARKER:
        return TarEntry(path=directory, kind="opaque")
    if base.startswith(_WHITEOUT_PREFIX):
        return TarEntry(
            path=posixpath.join(directory, base[len(_WHITEOUT_PREFIX) :]), kind="whiteout"
        )
    if not base.endswith(".wasm"):
        return None
    if member.isreg():
        return TarEntry(path=path, kind="file", size=member.size)
    if member.issym() or member.islnk():
        return TarEntry(path=path, kind="link")
    if member.isdir():
        return None
    return TarEntry(path=path, kind="special")


def _tar_failure(error: BaseException) -> errors.UnsupportedArtifact:
    return errors.UnsupportedArtifact(f"a layer is not a readable tar archive: {error}")


def parse_tar_layer(stream: IO[bytes], *, max_unpacked_bytes: int) -> list[TarEntry]:
    """Reads a tar or tar+gzip layer from ``stream`` and lists its ``.wasm`` and overlay entries.

    Every member's path is checked: an absolute path or a ``..`` component anywhere refuses
    the whole layer (`errors.UnsupportedArtifact`), as does unpacking to more than
    ``max_unpacked_bytes`` (`errors.ModuleTooLarge`, against decompression bombs).
    """
    found: list[TarEntry] = []
    try:
        with _open_tar(stream, max_unpacked_bytes=max_unpacked_bytes) as archive:
            for member in archive:
                entry = _entry_for(member)
                if entry is not None:
                    found.append(entry)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as error:
        raise _tar_failure(error) from None
    return found


def _below(path: str, directory: str) -> bool:
    return not directory or path == directory or path.startswith(directory + "/")


def plan_wasm_entry(
    layers: Sequence[Sequence[TarEntry]], *, preferred: Sequence[str] = ()
) -> tuple[int, TarEntry]:
    """Chooses the ``.wasm`` file an image means, as ``(layer position, entry)``.

    Layers are applied bottom to top with overlay whiteouts, so a file deleted or replaced by
    a later layer is not chosen. A path in ``preferred`` (from `parse_image_entrypoint`) wins;
    otherwise the image must hold exactly one ``.wasm`` file. Links and special files are never
    chosen: naming one is an error, not a reason to follow it.
    """
    visible: dict[str, tuple[int, TarEntry]] = {}
    for position, entries in enumerate(layers):
        # A layer's whiteouts hide what the layers below it hold, not its own files.
        for entry in entries:
            if entry.kind in ("whiteout", "opaque"):
                for path in [p for p in visible if _below(p, entry.path)]:
                    del visible[path]
        for entry in entries:
            if entry.kind not in ("whiteout", "opaque"):
                visible[entry.path] = (position, entry)
    for path in preferred:
        chosen = visible.get(path)
        if chosen is None:
            continue
        if chosen[1].kind != "file":
            raise errors.UnsupportedArtifact(
                f"the image's entrypoint /{path} is a {chosen[1].kind}, not a regular file; "
                "links are not followed"
            )
        return chosen
    regular = sorted((path, found) for path, found in visible.items() if found[1].kind == "file")
    if len(regular) == 1:
        return regular[0][1]
    if not regular:
        others = sorted(visible)
        detail = f" (only links or special files: {', '.join(others)})" if others else ""
        raise errors.UnsupportedArtifact(f"the image's layers hold no regular .wasm file{detail}")
    names = ", ".join(f"/{path}" for path, _ in regular[:10])
    more = f" and {len(regular) - 10} more" if len(regular) > 10 else ""
    raise errors.UnsupportedArtifact(
        f"the image holds several .wasm files ({names}{more}) and its Entrypoint/Cmd names "
        "none of them"
    )


def extract_tar_entry(
    stream: IO[bytes],
    *,
    path: str,
    out: IO[bytes],
    max_bytes: int,
    max_unpacked_bytes: int,
) -> int:
    """Copies the regular member at ``path`` from the layer in ``stream`` into ``out``.

    Returns the number of bytes copied (the last member of that path wins, as in tar). Raises
    `errors.ModuleTooLarge` beyond ``max_bytes`` and `errors.UnsupportedArtifact` if the member
    is missing or not a regular file.
    """
    copied: int | None = None
    try:
        with _open_tar(stream, max_unpacked_bytes=max_unpacked_bytes) as archive:
            for member in archive:
                if _safe_member_path(member.name) != path:
                    continue
                if not member.isreg():
                    raise errors.UnsupportedArtifact(f"/{path} is not a regular file")
                if member.size > max_bytes:
                    raise errors.ModuleTooLarge(
                        f"/{path} has {member.size} bytes, more than the limit of {max_bytes}"
                    )
                source = archive.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise errors.UnsupportedArtifact(f"/{path} has no data")
                out.seek(0)
                out.truncate()
                copied = 0
                while chunk := source.read(1 << 16):
                    out.write(chunk)
                    copied += len(chunk)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as error:
        raise _tar_failure(error) from None
    if copied is None:
        raise errors.UnsupportedArtifact(f"the layer has no member /{path}")
    return copied
