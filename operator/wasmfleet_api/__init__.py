"""The Wasmfleet API types shared by the operator and the node agents."""
