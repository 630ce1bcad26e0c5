"""The Wasmfleet operator: reconciles WasmServices into per-node bindings, Services and status."""
