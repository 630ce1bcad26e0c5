"""Image references (``registry/repository:tag@sha256:…``) parsed once into a typed value.

Every other part of the store works on `Reference`, never on strings, so the rules for what a
reference means live here alone: Docker's (a first path component is a registry only if it has
a dot or a port or is ``localhost``; Docker Hub names get ``docker.io`` and ``library/``), plus
one restriction of ours: digests must be sha256, the only algorithm the cache is keyed by.
Everything here is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API_HOST",
    "Reference",
    "parse_digest",
    "parse_reference",
    "parse_registry_host",
]

DOCKER_HUB = "docker.io"
"""The canonical name of Docker Hub, as it appears in normalised references."""

DOCKER_HUB_API_HOST = "registry-1.docker.io"
"""Where Docker Hub's Distribution API actually answers."""

_DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", "registry.hub.docker.com"})
_MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::(?P<port>[0-9]+))?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; ``tag`` is None only when the reference names a digest alone."""

    registry: str
    """``host[:port]`` as written (Docker Hub's aliases become ``docker.io``)."""
    repository: str
    """The repository path inside the registry, e.g. ``library/hello`` or ``acme/svc/hello``."""
    tag: str | None = None
    digest: str | None = None
    """``sha256:<64 hex>``; when set it wins over the tag for every pull."""

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` that serves the Distribution API for this registry."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else "latest"

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> Reference:
        """The same reference pinned to ``digest`` (the tag is kept for display)."""
        return replace(self, digest=parse_digest(digest))

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_digest(text: str) -> str:
    """Returns ``text`` if it is a ``sha256:`` digest with 64 lower-case hex digits.

    Raises ValueError naming what is wrong; other algorithms are refused because the module
    cache is content-addressed by sha256 alone.
    """
    if _SHA256.match(text):
        return text
    if _ANY_DIGEST.match(text):
        algorithm = text.split(":", 1)[0]
        if algorithm != "sha256":
            raise ValueError(f"only sha256 digests are supported, not {algorithm!r}")
    raise ValueError(f"{text!r} is not a digest of the form sha256:<64 lower-case hex digits>")


def parse_registry_host(text: str) -> str:
    """Validates a ``host[:port]`` and returns it in its canonical form (lower-case host).

    Docker Hub's aliases all become ``docker.io``.
    """
    match = _HOST.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a registry host[:port]")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"registry {text!r} has a port outside 1-65535")
    canonical = text.lower()
    return DOCKER_HUB if canonical in _DOCKER_HUB_ALIASES else canonical


def _looks_like_registry(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component != component.lower()
    )


def parse_reference(text: str) -> Reference:
    """Parses ``[registry[:port]/]repository[:tag][@sha256:digest]`` into a `Reference`.

    Without a registry the reference means Docker Hub (``docker.io``), where one-component
    repositories live under ``library/``. Without tag and digest the tag is ``latest``.
    Raises ValueError with a message that names the offending part.
    """
    if not text or text != text.strip():
        raise ValueError(f"{text!r} is not an image reference: it is empty or has spaces")
    remainder = text
    digest: str | None = None
    if "@" in remainder:
        remainder, _, digest_text = remainder.partition("@")
        try:
            digest = parse_digest(digest_text)
        except ValueError as error:
            raise ValueError(f"image reference {text!r}: {error}") from None

    registry = DOCKER_HUB
    first, slash, rest = remainder.partition("/")
    if slash and _looks_like_registry(first):
        try:
            registry = parse_registry_host(first)
        except ValueError as error:
            raise ValueError(f"image reference {text!r}: {error}") from None
        remainder = rest

    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.match(tag):
            raise ValueError(
                f"image reference {text!r}: tag {tag!r} must be 1-128 letters, digits, "
                "'_', '.' or '-' and not start with '.' or '-'"
            )

    if not remainder:
        raise ValueError(f"image reference {text!r} has no repository")
    for component in remainder.split("/"):
        if not _PATH_COMPONENT.match(component):
            raise ValueError(
                f"image reference {text!r}: repository component {component!r} must be "
                "lower-case letters and digits, separated by '.', '_', '__' or '-'"
            )
    repository = remainder
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > _MAX_NAME_LENGTH:
        raise ValueError(
            f"image reference {text!r}: the name is longer than {_MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)
