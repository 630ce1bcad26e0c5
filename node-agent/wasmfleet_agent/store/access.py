"""Which callers the registry has let pull a cached module, so a private module stays private.

The cache is shared by every namespace on the node, and a cached module needs no network to
serve. Without a check, a tenant who learns the digest of another tenant's private module
could run it on any node where it is cached. So the store hands a cached module only to a
caller the registry has accepted for it: the pull that brought it in records its caller, and
any other caller is checked once at the registry (a manifest HEAD with its own credentials)
before it is served. A module the registry gave to an anonymous pull is public: every caller
may have it.

A record is one empty file under ``access/``, named by a hash of the repository, the manifest
digest and the caller (``anonymous`` or a one-way fingerprint of its credentials), and dated by
its modification time. Records survive restarts (pull policy ``Never`` then still works for
callers seen before), are checked again at the registry after ``ttl`` (so a revoked credential
stops reaching new replicas within it; while the registry is out of reach an expired record
still counts), and at most ``max_records`` are kept, the oldest going first.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from wasmfleet_oci import auth

__all__ = ["ANONYMOUS", "AccessRecords", "Shown", "caller"]

ANONYMOUS = "anonymous"


class Shown(enum.Enum):
    """What the records say about a caller and a module."""

    FRESH = "fresh"
    """Accepted by the registry within the last ``ttl``."""
    STALE = "stale"
    """Accepted once, longer ago than ``ttl``."""
    UNKNOWN = "unknown"


def caller(credentials: auth.Credentials | None) -> str:
    """The caller a record is kept for: ``anonymous``, or its credentials' fingerprint."""
    return ANONYMOUS if credentials is None else credentials.fingerprint()


class AccessRecords:
    """The node's records of callers the registry accepted, per repository and manifest."""

    def __init__(
        self,
        root: Path,
        *,
        ttl: float = 3600.0,
        max_records: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.ttl = ttl
        self.max_records = max_records
        self._clock = clock
        root.mkdir(parents=True, exist_ok=True)

    def shown(self, repository: str, manifest_digest: str, who: str) -> Shown:
        """Whether ``who`` (or anonymous pulls, which cover everyone) was accepted for the
        module of ``manifest_digest`` in ``repository``."""
        best = Shown.UNKNOWN
        for name in dict.fromkeys((ANONYMOUS, who)):
            try:
                written = self._path(repository, manifest_digest, name).stat().st_mtime
            except FileNotFoundError:
                continue
            if self._clock() - written < self.ttl:
                return Shown.FRESH
            best = Shown.STALE
        return best

    def grant(self, repository: str, manifest_digest: str, who: str) -> None:
        """Records that the registry accepted ``who`` for this module, now."""
        path = self._path(repository, manifest_digest, who)
        fresh = not path.exists()
        path.touch()
        now = self._clock()
        os.utime(path, (now, now))
        if fresh:
            self._prune()

    def forget(self, repository: str, manifest_digest: str, who: str) -> None:
        """Drops the record of ``who`` (the registry refused it)."""
        self._path(repository, manifest_digest, who).unlink(missing_ok=True)

    def _path(self, repository: str, manifest_digest: str, who: str) -> Path:
        key = hashlib.sha256(f"{repository}\0{manifest_digest}\0{who}".encode()).hexdigest()
        return self.root / key

    def _prune(self) -> None:
        entries = list(os.scandir(self.root))
        if len(entries) <= self.max_records:
            return
        entries.sort(key=lambda entry: entry.stat().st_mtime)
        for entry in entries[: len(entries) - self.max_records]:
            Path(entry.path).unlink(missing_ok=True)
