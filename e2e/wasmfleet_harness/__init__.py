"""The local environment: a real control plane, a real OCI registry and Wasm modules from source.

Used by the pytest fixtures (`wasmfleet_harness.pytest_plugin`) and by ``wasmfleet-dev``, the
command behind ``make up``.
"""
