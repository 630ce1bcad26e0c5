"""The agent's side of the cluster: registration, heartbeat, and the bindings of its node."""
