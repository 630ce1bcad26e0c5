"""The agent's HTTP side: the per-service request handlers and the admin endpoints."""
