"""The per-binding lifecycle as an explicit state machine.

A binding moves through pulling, compiling and serving; failures are states too, with
backoff, not exceptions that vanish. `TRANSITIONS` lists every allowed move; `advance`
refuses any other, so a bug shows up as an error instead of a replica stuck in a state
nobody reports. Each state says what Kubernetes should see (`phase`, `ready`), which is
what the agent writes into the binding's status.

    Pending -> Pulling -> Compiling -> Ready           (http)
                                    -> Running -> Succeeded / Failed   (job)
    Pulling -> PullBackOff -> Pulling                  (registry errors, with backoff)
    Compiling / Ready / Running -> CrashLoopBackOff -> Pulling   (failures, with backoff)
    any -> Terminating                                 (binding deleted or reassigned)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

__all__ = [
    "TRANSITIONS",
    "BindingState",
    "IllegalTransitionError",
    "State",
    "advance",
    "backoff_seconds",
]


class State(Enum):
    PENDING = "Pending"
    PULLING = "Pulling"
    PULL_BACKOFF = "PullBackOff"
    COMPILING = "Compiling"
    READY = "Ready"
    RUNNING = "Running"
    CRASH_LOOP_BACKOFF = "CrashLoopBackOff"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TERMINATING = "Terminating"

    @property
    def ready(self) -> bool:
        """Whether a replica in this state serves (http) or runs (job)."""
        return self in (State.READY, State.RUNNING, State.SUCCEEDED)

    @property
    def failing(self) -> bool:
        return self in (State.PULL_BACKOFF, State.CRASH_LOOP_BACKOFF, State.FAILED)


_ANY = frozenset(State)
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.PULLING, State.TERMINATING}),
    State.PULLING: frozenset({State.COMPILING, State.PULL_BACKOFF, State.TERMINATING}),
    State.PULL_BACKOFF: frozenset({State.PULLING, State.TERMINATING}),
    State.COMPILING: frozenset(
        {State.READY, State.RUNNING, State.CRASH_LOOP_BACKOFF, State.TERMINATING}
    ),
    State.READY: frozenset({State.CRASH_LOOP_BACKOFF, State.PULLING, State.TERMINATING}),
    State.RUNNING: frozenset(
        {State.SUCCEEDED, State.CRASH_LOOP_BACKOFF, State.FAILED, State.TERMINATING}
    ),
    State.CRASH_LOOP_BACKOFF: frozenset({State.PULLING, State.FAILED, State.TERMINATING}),
    State.SUCCEEDED: frozenset({State.PULLING, State.TERMINATING}),
    State.FAILED: frozenset({State.PULLING, State.TERMINATING}),
    State.TERMINATING: frozenset(),
}
assert set(TRANSITIONS) == _ANY


class IllegalTransitionError(RuntimeError):
    pass


@dataclass(frozen=True)
class BindingState:
    """Where one binding is, and what went wrong last."""

    state: State = State.PENDING
    restarts: int = 0
    last_error: str | None = None
    exit_code: int | None = None
    # Consecutive failures of the current kind, for backoff.
    failures: int = 0
    failure: State | None = None
    """The failing state of the latest failure, kept through the retries after it (which
    pass through Pulling and Compiling) until the binding is ready again."""
    config_error: str | None = None
    """Why a ready binding serves its last good configuration (a source it reads is gone)."""

    @property
    def phase(self) -> str:
        return self.state.value

    @property
    def ready(self) -> bool:
        return self.state.ready


def advance(
    current: BindingState,
    to: State,
    *,
    error: str | None = None,
    exit_code: int | None = None,
) -> BindingState:
    """The state after moving to ``to``; raises `IllegalTransitionError` for a forbidden move."""
    if to is current.state:
        return replace(current, last_error=error or current.last_error)
    if to not in TRANSITIONS[current.state]:
        raise IllegalTransitionError(f"{current.state.value} -> {to.value} is not allowed")
    failures = current.failures + 1 if to.failing else (0 if to.ready else current.failures)
    restarts = current.restarts + (1 if to is State.CRASH_LOOP_BACKOFF else 0)
    return BindingState(
        state=to,
        restarts=restarts,
        last_error=error if error is not None else (None if to.ready else current.last_error),
        exit_code=exit_code if exit_code is not None else current.exit_code,
        failures=failures,
        failure=to if to.failing else (None if to.ready else current.failure),
    )


def backoff_seconds(failures: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff after ``failures`` consecutive failures: 1, 2, 4, ... capped."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 1)))
