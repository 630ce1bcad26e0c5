"""The errors the OCI store raises, in one small hierarchy.

Callers (the agent's binding lifecycle, the CLI) decide between "back off and retry" and "report
and stop" by class alone: `RegistryUnavailable` is transient, `Unauthorized`, `NotFound`,
`DigestMismatch` and `UnsupportedArtifact` are not. Messages name the registry, repository and
digest involved, never credentials, tokens or signed query strings.
"""

# The names follow the Distribution specification's error codes (MANIFEST_UNKNOWN,
# UNAUTHORIZED, ...) rather than an "Error" suffix: callers read `errors.Unauthorized`.
# ruff: noqa: N818

from __future__ import annotations

__all__ = [
    "BlobUnknown",
    "DigestMismatch",
    "ManifestUnknown",
    "ModuleNotCached",
    "ModuleTooLarge",
    "NotFound",
    "RegistryError",
    "RegistryUnavailable",
    "Unauthorized",
    "UnsupportedArtifact",
]


class RegistryError(Exception):
    """Anything that kept a module from being pulled or pushed."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or kept failing (5xx, 429) after every retry."""


class Unauthorized(RegistryError):
    """The registry or its token service refused access with the credentials at hand."""


class NotFound(RegistryError):
    """The registry does not have the repository, manifest or blob asked for."""


class ManifestUnknown(NotFound):
    """No manifest under that tag or digest."""


class BlobUnknown(NotFound):
    """No blob under that digest."""


class DigestMismatch(RegistryError):
    """Content did not hash to the digest (or did not have the size) that named it."""


class UnsupportedArtifact(RegistryError):
    """The artifact holds no Wasm module this agent knows how to find, or holds it unsafely."""


class ModuleTooLarge(RegistryError):
    """The module, or a layer holding it, is larger than the limits allow."""


class ModuleNotCached(RegistryError):
    """Pull policy Never, and the module is not in the cache."""
