"""The node agent's OCI store: pull Wasm modules from registries, verify them, cache them.

One place per concern:

- `reference`: image references parsed into a typed value;
- `auth`: credentials from dockerconfigjson, ``WWW-Authenticate`` challenges, bearer tokens;
- `client`: the Distribution API client (the only module that talks to registries);
- `formats`: where the Wasm bytes are in a manifest (CNCF layout, wasm-to-oci, image layers);
- `store`: the content-addressed, size-bounded module cache and the pull policies;
- `push`: publishing a module in the CNCF layout;
- `errors`: what can go wrong, by class; `atomic`: files that appear whole or not at all.

Import the modules, not names from here: ``from wasmfleet_agent.oci import store`` and then
``store.ModuleStore``.
"""

__all__ = ["atomic", "auth", "client", "errors", "formats", "push", "reference", "store"]
