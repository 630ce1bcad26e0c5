"""What someone else changed in an object the operator wrote: pure comparisons.

The operator applies its objects with server-side apply, and the API server adds what the
operator does not set (a Service's clusterIP, defaults, managed fields). So an object has
drifted when a field the operator set no longer holds the value it set, not when the object
carries more. A binding's revision is a hash of its workload and digest (`render_revision`),
so a binding whose spec was edited by hand no longer matches its own revision even when the
operator no longer knows the spec of that revision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wasmfleet_api.binding import WasmBinding
from wasmfleet_operator.render import render_revision

__all__ = ["binding_drift", "drifted_fields"]


def drifted_fields(observed: Any, wanted: Any, path: str = "") -> list[str]:
    """The paths under which ``observed`` lacks or differs from what ``wanted`` sets.

    Mappings may carry more keys than ``wanted``; lists must match item for item (the
    operator's lists, endpoints, ports and environment, are replaced whole on apply).
    """
    if isinstance(wanted, Mapping):
        if not isinstance(observed, Mapping):
            return [path or "."]
        found = []
        for key, value in wanted.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in observed:
                found.append(where)
            else:
                found += drifted_fields(observed[key], value, where)
        return found
    if isinstance(wanted, list):
        if not isinstance(observed, list) or len(observed) != len(wanted):
            return [path or "."]
        found = []
        for index, (seen, meant) in enumerate(zip(observed, wanted, strict=True)):
            found += drifted_fields(seen, meant, f"{path}[{index}]")
        return found
    return [] if observed == wanted else [path or "."]


def binding_drift(binding: WasmBinding, desired: WasmBinding | None) -> list[str]:
    """How ``binding`` differs from what the operator wrote: the fields of ``desired`` (the
    binding as the operator would render it now, for the current revision) that it does not
    hold, or, for any revision, the fact that its spec no longer hashes to its revision."""
    spec = binding.spec
    found = []
    if render_revision(spec.workload, spec.digest) != spec.revision:
        found.append("spec (no longer the spec of its revision)")
    if desired is not None:
        found += [
            f"spec.{field}"
            for field in drifted_fields(spec.to_kube(), desired.spec.to_kube())
            if field
        ]
    return sorted(set(found))
