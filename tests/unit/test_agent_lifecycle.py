"""The per-binding lifecycle allows exactly the documented moves and reports each state."""

from __future__ import annotations

import pytest

from wasmfleet_agent.lifecycle import (
    RESTART_BACKOFF,
    TRANSITIONS,
    BindingState,
    IllegalTransitionError,
    advance,
)
from wasmfleet_api.binding import BindingPhase


def walk(*states: BindingPhase) -> BindingState:
    current = BindingState()
    for state in states:
        current = advance(current, state)
    return current


def test_an_http_binding_becomes_ready_through_pulling_and_compiling() -> None:
    final = walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.READY)
    assert (final.phase, final.ready, final.restarts) == ("Ready", True, 0)


def test_a_pull_failure_backs_off_and_retries() -> None:
    current = walk(BindingPhase.PULLING)
    current = advance(current, BindingPhase.PULL_BACKOFF, error="401 Unauthorized")
    assert (current.phase, current.ready, current.last_error) == (
        "PullBackOff",
        False,
        "401 Unauthorized",
    )
    current = advance(
        advance(current, BindingPhase.PULLING), BindingPhase.PULL_BACKOFF, error="again"
    )
    assert current.failures == 2
    current = walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.READY)
    assert current.failures == 0


def test_a_crash_counts_a_restart_and_keeps_the_error_until_ready_again() -> None:
    current = walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.READY)
    current = advance(current, BindingPhase.CRASH_LOOP_BACKOFF, error="trap")
    assert (current.restarts, current.last_error, current.ready) == (1, "trap", False)
    current = advance(
        advance(advance(current, BindingPhase.PULLING), BindingPhase.COMPILING), BindingPhase.READY
    )
    assert (current.restarts, current.last_error) == (1, None)


def test_a_job_runs_to_success_with_its_exit_code() -> None:
    current = walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.RUNNING)
    current = advance(current, BindingPhase.SUCCEEDED, exit_code=0)
    assert (current.phase, current.exit_code) == ("Succeeded", 0)


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (BindingPhase.PENDING, BindingPhase.READY),
        (BindingPhase.PULLING, BindingPhase.READY),
        (BindingPhase.TERMINATING, BindingPhase.PULLING),
        (BindingPhase.PULL_BACKOFF, BindingPhase.COMPILING),
        (BindingPhase.READY, BindingPhase.SUCCEEDED),
    ],
)
def test_a_move_outside_the_table_is_refused(start: BindingPhase, to: BindingPhase) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{start.value} -> {to.value}"):
        advance(BindingState(state=start), to)


def test_every_state_can_terminate_except_terminating_itself() -> None:
    for state, targets in TRANSITIONS.items():
        assert (BindingPhase.TERMINATING in targets) is (state is not BindingPhase.TERMINATING)


def test_every_state_other_than_pending_is_reachable() -> None:
    reachable = set().union(*TRANSITIONS.values())
    assert reachable == set(BindingPhase) - {BindingPhase.PENDING}


def test_backoff_doubles_and_is_capped() -> None:
    assert [RESTART_BACKOFF.delay(n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert RESTART_BACKOFF.delay(40) == 60.0


def test_the_latest_failure_is_kept_through_its_retries_until_ready() -> None:
    current = advance(
        walk(BindingPhase.PULLING, BindingPhase.COMPILING),
        BindingPhase.CRASH_LOOP_BACKOFF,
        error="e",
    )
    assert current.failure is BindingPhase.CRASH_LOOP_BACKOFF
    current = advance(advance(current, BindingPhase.PULLING), BindingPhase.COMPILING)
    assert (current.phase, current.failure) == ("Compiling", BindingPhase.CRASH_LOOP_BACKOFF)
    current = advance(
        advance(current, BindingPhase.CRASH_LOOP_BACKOFF, error="e"), BindingPhase.PULLING
    )
    current = advance(
        advance(current, BindingPhase.PULL_BACKOFF, error="401"), BindingPhase.PULLING
    )
    assert current.failure is BindingPhase.PULL_BACKOFF
    assert walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.READY).failure is None
    assert advance(advance(current, BindingPhase.COMPILING), BindingPhase.READY).failure is None
