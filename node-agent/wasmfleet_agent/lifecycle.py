"""The per-binding lifecycle as an explicit state machine.

A binding moves through pulling, compiling and serving; failures are states too, with
backoff, not exceptions that vanish. `TRANSITIONS` lists every allowed move; `advance`
refuses any other, so a bug shows up as an error instead of a replica stuck in a state
nobody reports. Every change of a `BindingState` is made here (`advance`, `stale_config`):
the runner never builds one. Each state says what Kubernetes should see:
`render_binding_status` turns it into the binding's status, as the API type the operator
reads it back with.

    Pending -> Pulling -> Compiling -> Ready           (http)
                                    -> Running -> Succeeded / Failed   (job)
    Running -> Running                                 (a failed run, tried again)
    Pulling -> PullBackOff -> Pulling                  (registry errors, with backoff)
    any but Terminating -> CrashLoopBackOff -> Pulling (failures, with backoff)
    any -> Terminating                                 (binding deleted or reassigned)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from wasmfleet_api.base import Condition
from wasmfleet_api.binding import (
    STALE_CONFIGURATION_REASON,
    BindingCondition,
    BindingPhase,
    ModuleInfo,
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
    "stale_config",
]

MAX_ERROR = 1024
"""The longest error a status carries (the rest is in the agent's log)."""

# The phases are the API's (`BindingPhase`): the state machine and the binding's status speak
# one vocabulary.
_P = BindingPhase
_CRASH = _P.CRASH_LOOP_BACKOFF
TRANSITIONS: dict[BindingPhase, frozenset[BindingPhase]] = {
    _P.PENDING: frozenset({_P.PULLING}),
    _P.PULLING: frozenset({_P.COMPILING, _P.PULL_BACKOFF}),
    _P.PULL_BACKOFF: frozenset({_P.PULLING}),
    _P.COMPILING: frozenset({_P.READY, _P.RUNNING}),
    _P.READY: frozenset({_P.PULLING}),
    # Running -> Running: a job's run failed and it runs again (after job.backoff).
    _P.RUNNING: frozenset({_P.RUNNING, _P.SUCCEEDED, _P.FAILED}),
    _P.CRASH_LOOP_BACKOFF: frozenset({_P.PULLING, _P.FAILED}),
    _P.SUCCEEDED: frozenset({_P.PULLING}),
    _P.FAILED: frozenset({_P.PULLING}),
    _P.TERMINATING: frozenset(),
}
# An unexpected error (a bug, a call that failed in a way nothing expected) can strike in any
# state a replica is in, CrashLoopBackOff included: it always backs off before the next try.
# Every state can end (the binding is gone).
for _phase, _targets in TRANSITIONS.items():
    if _phase is not _P.TERMINATING:
        TRANSITIONS[_phase] = _targets | {_CRASH, _P.TERMINATING}
del _phase, _targets
assert set(TRANSITIONS) == set(BindingPhase)

_RUN_ENDS = frozenset({_P.RUNNING, _P.SUCCEEDED, _P.FAILED})
"""Where a job's run that ended goes: again, done, or out of retries."""


class IllegalTransitionError(RuntimeError):
    pass


@dataclass(frozen=True)
class BindingState:
    """Where one binding is, and what went wrong last."""

    state: BindingPhase = BindingPhase.PENDING
    restarts: int = 0
    last_error: str | None = None
    exit_code: int | None = None
    """The exit code of the job's latest run (None: it trapped, or none ran yet)."""
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
    """The state after moving to ``to``; raises `IllegalTransitionError` for a move the table
    does not list.

    A move to the state it is in (a run failed and runs again, a crash before the retry
    began) counts as a restart and a failure. A move that ends a job's run takes that run's
    ``exit_code``, None included; any other move keeps the last one unless given. ``error``
    is kept to `MAX_ERROR` characters.
    """
    if to not in TRANSITIONS[current.state]:
        raise IllegalTransitionError(f"{current.state.value} -> {to.value} is not allowed")
    if error is not None:
        error = error[:MAX_ERROR]
    again = to is current.state
    ends_run = current.state is _P.RUNNING and to in _RUN_ENDS
    return BindingState(
        state=to,
        restarts=current.restarts + (1 if again or to is _CRASH else 0),
        last_error=error if error is not None else (None if to.ready else current.last_error),
        exit_code=exit_code if exit_code is not None or ends_run else current.exit_code,
        failures=current.failures + 1
        if to.failing or again
        else (0 if to.ready else current.failures),
        failure=to if to.failing else (None if to.ready else current.failure),
    )


def stale_config(current: BindingState, why: str | None) -> BindingState:
    """A ready binding that serves its last good configuration because its configuration
    cannot be read (``why``), or, with None, one that can read it again."""
    if current.state is not _P.READY:
        raise IllegalTransitionError(
            f"only a Ready binding serves a configuration, not a {current.state.value} one"
        )
    if why is not None:
        why = why[:MAX_ERROR]
    return replace(current, config_error=why, last_error=why)


RESTART_BACKOFF = Backoff(base=1.0, cap=60.0)
"""The wait before a failed binding tries again: 1, 2, 4, ... seconds, up to a minute."""


def render_binding_status(
    binding: WasmBinding,
    state: BindingState,
    *,
    address: str,
    port: int | None = None,
    module_digest: str | None = None,
    module: ModuleInfo | None = None,
    agent_instance: str | None = None,
) -> WasmBindingStatus:
    """What an agent writes into a binding's status for a replica in ``state`` (as the agent
    run ``agent_instance``)."""
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
        module=module,
        restarts=state.restarts,
        last_error=state.last_error or None,
        exit_code=state.exit_code,
        conditions=conditions,
        agent_instance=agent_instance,
    )
