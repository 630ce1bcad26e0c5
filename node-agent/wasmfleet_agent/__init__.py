"""The Wasmfleet node agent: pulls, compiles, caches and serves Wasm modules on one node."""
