"""The Wasmfleet API types shared by the operator and the node agents.

Only the types, their units and the generators of the CRDs and the API reference live here:
nothing in this package talks to a cluster or a registry.
"""
