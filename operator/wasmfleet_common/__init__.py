"""What both programs need to run as processes of a cluster, beside the API types.

- `kube`: the one place where Wasmfleet's own code talks to the Kubernetes API, with the
  retry-until-stopped loop for start-up calls;
- `supervisor`: long-running tasks that must not die quietly;
- `backoff`: the one backoff policy of every retry loop;
- `logs`: JSON or text logging with structured extras.
"""

__all__ = ["backoff", "kube", "logs", "supervisor"]
