"""OCI registries for Wasm modules: one package for both programs.

The operator resolves tags to digests with it, the agents pull by digest, and ``wasmfleet
push`` publishes; all three speak to registries only through `client`, and turn pull secrets
into credentials only through `auth`, so the two programs can never disagree about either.

- `reference`: image references parsed into a typed value;
- `auth`: credentials from dockerconfigjson Secrets, ``WWW-Authenticate`` challenges, bearer
  token answers (all pure);
- `client`: the Distribution API operations (resolve, fetch and verify, push), the one module
  callers use to talk to registries, over
- `authorizer`: the auth dance (anonymous first, then Basic or a Bearer token, cached per
  registry, scope and credentials), over
- `transport`: the HTTP session, TLS, the plain-HTTP rules, redirects, retries with backoff;
- `formats`: where the Wasm bytes are in a manifest (CNCF layout, wasm-to-oci, image layers);
- `push`: publishing a module in the CNCF layout;
- `options`: the registry flags both programs take;
- `errors`: what can go wrong, by class; `atomic`: files that appear whole or not at all.

Import the modules, not names from here: ``from wasmfleet_oci import client`` and then
``client.RegistryClient``. The node's module cache is the agent's (`wasmfleet_agent.store`).
"""

__all__ = [
    "atomic",
    "auth",
    "authorizer",
    "client",
    "errors",
    "formats",
    "options",
    "push",
    "reference",
    "transport",
]
