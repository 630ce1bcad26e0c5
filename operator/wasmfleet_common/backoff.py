"""The one backoff policy of every retry loop: exponential, doubling from a base to a cap.

Registry requests, the agent's binding watch and its replicas' restarts, a job's retries,
start-up calls to the API server and supervised tasks all wait by it, each with its own base
and cap, so a change to how Wasmfleet backs off is made once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Waits of ``base``, then twice as long after each further failure, never over ``cap``."""

    base: float
    cap: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (0 after none)."""
        if failures <= 0:
            return 0.0
        # The exponent is bounded so that a long outage never overflows a float.
        return float(min(self.cap, self.base * 2 ** min(failures - 1, 64)))
