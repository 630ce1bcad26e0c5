"""The WasmBindings of each service as the watch shows them, so that a pass need not list them.

A reconcile pass needs its service's bindings. Listing them (by label) was the costliest API
request of a pass, and its cost grows with the bindings in the namespace; the operator already
watches every binding. The watch, though, may not yet show what the operator itself just
wrote, and a pass that planned from a view missing its own last write would place a replica
twice. So each write this operator makes leaves an expectation: a binding created or applied
must be seen at the resourceVersion the write returned (or later), a deleted one must be seen
gone. `bindings` answers from the cache only when every expectation of the service is met;
otherwise the pass lists, as before.

resourceVersions are compared as integers, which they are on every API server backed by etcd;
if one is not, the cache stops answering and every pass lists. A listing is also folded into
the cache, fenced by the list's own resourceVersion: an event older than a listing is
dropped, so a late event cannot bring back what the listing showed gone. `distrust` (at start
and at each resync) makes a service's next pass list again, which repairs anything a broken
watch missed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wasmfleet_operator.render import LABEL_SERVICE

__all__ = ["BindingCache"]

EXPECTATION_SECONDS = 30.0
"""How long an unmet expectation holds; past it the service lists until it is met or gone."""


def _version(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


class BindingCache:
    def __init__(self) -> None:
        self._objects: dict[str, dict[str, Mapping[str, Any]]] = {}
        """service key -> binding name -> the binding as last seen."""
        self._service_of: dict[str, str] = {}
        """namespace/binding name -> its service key (its label when last seen)."""
        self._fence: dict[str, int] = {}
        """service key -> the resourceVersion of its last listing."""
        self._expected: dict[str, dict[str, tuple[int | None, float]]] = {}
        """service key -> binding name -> (the version to see, None: gone; when expected)."""
        self._unlisted: set[str] = set()
        """Services whose next pass lists (`distrust`, or a write whose answer is unknown)."""
        self.usable = True
        """False once a resourceVersion was not an integer: every pass lists."""

    # ---- what the watch shows -------------------------------------------------------

    def observe(self, obj: Mapping[str, Any], *, deleted: bool) -> None:
        metadata = obj["metadata"]
        namespace, name = metadata.get("namespace", ""), metadata["name"]
        version = _version(obj)
        if version is None:
            self.usable = False
            return
        label = (metadata.get("labels") or {}).get(LABEL_SERVICE)
        key = f"{namespace}/{label}" if label else None
        if key is not None and version <= self._fence.get(key, -1):
            return  # the last listing of its service already showed this or later
        previous_key = self._service_of.pop(f"{namespace}/{name}", None)
        if previous_key is not None:
            self._objects.get(previous_key, {}).pop(name, None)
        if not deleted and key is not None:
            self._objects.setdefault(key, {})[name] = obj
            self._service_of[f"{namespace}/{name}"] = key
        for owner in {k for k in (key, previous_key) if k is not None}:
            self._meet(owner, name, None if deleted or owner != key else version)

    def _meet(self, key: str, name: str, seen: int | None) -> None:
        expected = self._expected.get(key)
        if not expected or name not in expected:
            return
        wanted, _ = expected[name]
        if (wanted is None and seen is None) or (
            wanted is not None and seen is not None and seen >= wanted
        ):
            del expected[name]
            if not expected:
                del self._expected[key]

    # ---- what this operator wrote ---------------------------------------------------

    def wrote(self, key: str, returned: Mapping[str, Any] | None) -> None:
        """A binding of ``key`` was created or applied; ``returned`` is what the server
        answered (None if unknown: the service lists until its watch settles)."""
        version = _version(returned) if returned is not None else None
        if returned is None or version is None:
            self._unlisted.add(key)
            return
        name = returned["metadata"]["name"]
        seen = self._objects.get(key, {}).get(name)
        if seen is not None and (_version(seen) or 0) >= version:
            return
        self._expected.setdefault(key, {})[name] = (version, time.monotonic())

    def deleted(self, key: str, name: str) -> None:
        if name not in self._objects.get(key, {}):
            return
        self._expected.setdefault(key, {})[name] = (None, time.monotonic())

    # ---- what a pass reads ----------------------------------------------------------

    def bindings(self, key: str) -> list[Mapping[str, Any]] | None:
        """``key``'s bindings when the cache shows every write made for it; else None."""
        if not self.usable or key in self._unlisted or self._expected.get(key):
            return None
        return list(self._objects.get(key, {}).values())

    def listed(self, key: str, listing: Mapping[str, Any]) -> None:
        """Folds a fresh listing of ``key``'s bindings into the cache."""
        version = _version(listing)
        if version is None:
            self.usable = False
            return
        items: Sequence[Mapping[str, Any]] = listing.get("items") or []
        namespace = key.split("/", 1)[0]
        self._fence[key] = version
        for name in list(self._objects.get(key, {})):
            self._service_of.pop(f"{namespace}/{name}", None)
        self._objects[key] = {}
        for obj in items:
            name = obj["metadata"]["name"]
            self._objects[key][name] = obj
            self._service_of[f"{namespace}/{name}"] = key
            self._meet(key, name, _version(obj))
        for name, (wanted, since) in list(self._expected.get(key, {}).items()):
            if wanted is None and name not in self._objects[key]:
                self._meet(key, name, None)
            elif time.monotonic() - since > EXPECTATION_SECONDS:
                # the listing is the truth now; an expectation the watch never met is dropped
                del self._expected[key][name]
        if key in self._expected and not self._expected[key]:
            del self._expected[key]
        self._unlisted.discard(key)

    def distrust(self, keys: Iterable[str]) -> None:
        """The next pass of each of ``keys`` lists: at start (a binding deleted between the
        first listing and the watch leaves no event) and at each resync (a watch that
        restarted may have missed a deletion)."""
        self._unlisted.update(keys)

    def forget(self, key: str) -> None:
        self._objects.pop(key, None)
        self._expected.pop(key, None)
        self._fence.pop(key, None)
        self._unlisted.discard(key)
