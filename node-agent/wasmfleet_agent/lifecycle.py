"""The per-binding lifecycle as an explicit state machine.

A binding moves through pulling, compiling and serving; failures are states too, with
backoff, not exceptions that vanish. `TRANSITIONS` lists every allowed move; `advance`
refuses any other, so a bug shows up as an error instead of a replica stuck in a state
nobody reports. Each state says what Kubernetes should see: `render_binding_status` turns it
into the binding's status, as the API type the operator reads it back with.

    Pending -> Pulling -> Compiling -> Ready           (http)
                                    -> Running -> Succeeded / Failed   (job)
    Pulling -> PullBackOff -> Pulling                  (registry errors, with backoff)
    Compiling / Ready / Running -> CrashLoopBackOff -> Pulling   (failures, with backoff)
    any -> Terminating                                 (binding deleted or reassigned)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from wasmfleet_api.base import Condition
from wasmfleet_api.binding import (
    STALE_CONFIGURATION_REASON,
    BindingCondition,
    BindingPhase,
    WasmBinding,
    WasmBindingStatus,
)
from wasmfleet_common.backoff import Backoff

__all__ = [
    "MAX_ERROR",
    "RESTART_BACKOFF",
    "TRANSITIONS",
    "BindingState",
    "IllegalTransitionError",
    "advance",
    "render_binding_status",
]

MAX_ERROR = 1024
"""The longest error a status carries (the rest is in the agent's log)."""


# The phases are the API's (`BindingPhase`): the state machine and the binding's status speak
# one vocabulary.
_ANY = frozenset(BindingPhase)
TRANSITIONS: dict[BindingPhase, frozenset[BindingPhase]] = {
    BindingPhase.PENDING: frozenset({BindingPhase.PULLING, BindingPhase.TERMINATING}),
    BindingPhase.PULLING: frozenset(
        {BindingPhase.COMPILING, BindingPhase.PULL_BACKOFF, BindingPhase.TERMINATING}
    ),
    BindingPhase.PULL_BACKOFF: frozenset({BindingPhase.PULLING, BindingPhase.TERMINATING}),
    BindingPhase.COMPILING: frozenset(
        {
            BindingPhase.READY,
            BindingPhase.RUNNING,
            BindingPhase.CRASH_LOOP_BACKOFF,
            BindingPhase.TERMINATING,
        }
    ),
    BindingPhase.READY: frozenset(
        {BindingPhase.CRASH_LOOP_BACKOFF, BindingPhase.PULLING, BindingPhase.TERMINATING}
    ),
    BindingPhase.RUNNING: frozenset(
        {
            BindingPhase.SUCCEEDED,
            BindingPhase.CRASH_LOOP_BACKOFF,
            BindingPhase.FAILED,
            BindingPhase.TERMINATING,
        }
    ),
    BindingPhase.CRASH_LOOP_BACKOFF: frozenset(
        {BindingPhase.PULLING, BindingPhase.FAILED, BindingPhase.TERMINATING}
    ),
    BindingPhase.SUCCEEDED: frozenset({BindingPhase.PULLING, BindingPhase.TERMINATING}),
    BindingPhase.FAILED: frozenset({BindingPhase.PULLING, BindingPhase.TERMINATING}),
    BindingPhase.TERMINATING: frozenset(),
}
assert set(TRANSITIONS) == _ANY


class IllegalTransitionError(RuntimeError):
    pass


@dataclass(frozen=True)
class BindingState:
    """Where one binding is, and what went wrong last."""

    state: BindingPhase = BindingPhase.PENDING
    restarts: int = 0
    last_error: str | None = None
    exit_code: int | None = None
    # Consecutive failures of the current kind, for backoff.
    failures: int = 0
    failure: BindingPhase | None = None
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
    to: BindingPhase,
    *,
    error: str | None = None,
    exit_code: int | None = None,
) -> BindingState:
    """The state after moving to ``to``; raises `IllegalTransitionError` for a forbidden move.

    ``error`` is kept to `MAX_ERROR` characters."""
    if error is not None:
        error = error[:MAX_ERROR]
    if to is current.state:
        return replace(current, last_error=error or current.last_error)
    if to not in TRANSITIONS[current.state]:
        raise IllegalTransitionError(f"{current.state.value} -> {to.value} is not allowed")
    failures = current.failures + 1 if to.failing else (0 if to.ready else current.failures)
    restarts = current.restarts + (1 if to is BindingPhase.CRASH_LOOP_BACKOFF else 0)
    return BindingState(
        state=to,
        restarts=restarts,
        last_error=error if error is not None else (None if to.ready else current.last_error),
        exit_code=exit_code if exit_code is not None else current.exit_code,
        failures=failures,
        failure=to if to.failing else (None if to.ready else current.failure),
    )


RESTART_BACKOFF = Backoff(base=1.0, cap=60.0)
"""The wait before a failed binding tries again: 1, 2, 4, ... seconds, up to a minute."""


def render_binding_status(
    binding: WasmBinding,
    state: BindingState,
    *,
    address: str,
    port: int | None = None,
    module_digest: str | None = None,
) -> WasmBindingStatus:
    """What an agent writes into a binding's status for a replica in ``state``."""
    conditions = []
    if state.failure is not None and not state.ready:
        conditions.append(
            Condition(
                type=BindingCondition.FAILING,
                status="True",
                reason=state.failure.value,
                message=state.last_error or state.failure.value,
            )
        )
    if state.config_error is not None:
        conditions.append(
            Condition(
                type=BindingCondition.CONFIGURATION_CURRENT,
                status="False",
                reason=STALE_CONFIGURATION_REASON,
                message=f"serving the last good configuration: {state.config_error}",
            )
        )
    return WasmBindingStatus(
        observed_generation=binding.metadata.get("generation"),
        phase=state.state,
        ready=state.ready,
        address=address,
        port=port,
        module_digest=module_digest,
        restarts=state.restarts,
        last_error=state.last_error or None,
        exit_code=state.exit_code,
        conditions=conditions,
    )
