"""The node's module store: pull a module once, verify it, keep it by digest, serve it from disk.

Three parts, each over the next:

- `source`: `locate`, which tells a local ``.wasm`` file from a registry reference (the
  standalone commands);
- `puller`: `ModuleStore`, what the agent pulls through: pull policies, downloads through
  `wasmfleet_oci.client` (manifests, image indexes, module layers, modules inside image
  layers), one download shared by the pulls that overlap;
- `cache`: the index of what is on disk: the layout, atomic files, pins, and eviction of the
  least recently used modules under ``max_bytes``. It never talks to a registry.

The names below are the store's public surface; the rest is internal to the package.
"""

from wasmfleet_agent.store.cache import PulledModule
from wasmfleet_agent.store.puller import ModuleStore, PullPolicy
from wasmfleet_agent.store.source import LocatedModule, SourceError, is_local_path, locate

__all__ = [
    "LocatedModule",
    "ModuleStore",
    "PullPolicy",
    "PulledModule",
    "SourceError",
    "is_local_path",
    "locate",
]
