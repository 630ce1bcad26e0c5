"""The per-binding lifecycle allows exactly the documented moves and reports each state."""

from __future__ import annotations

import pytest

from wasmfleet_agent.lifecycle import (
    TRANSITIONS,
    BindingState,
    IllegalTransitionError,
    State,
    advance,
    backoff_seconds,
)


def walk(*states: State) -> BindingState:
    current = BindingState()
    for state in states:
        current = advance(current, state)
    return current


def test_an_http_binding_becomes_ready_through_pulling_and_compiling() -> None:
    final = walk(State.PULLING, State.COMPILING, State.READY)
    assert (final.phase, final.ready, final.restarts) == ("Ready", True, 0)


def test_a_pull_failure_backs_off_and_retries() -> None:
    current = walk(State.PULLING)
    current = advance(current, State.PULL_BACKOFF, error="401 Unauthorized")
    assert (current.phase, current.ready, current.last_error) == (
        "PullBackOff",
        False,
        "401 Unauthorized",
    )
    current = advance(advance(current, State.PULLING), State.PULL_BACKOFF, error="again")
    assert current.failures == 2
    current = walk(State.PULLING, State.COMPILING, State.READY)
    assert current.failures == 0


def test_a_crash_counts_a_restart_and_keeps_the_error_until_ready_again() -> None:
    current = walk(State.PULLING, State.COMPILING, State.READY)
    current = advance(current, State.CRASH_LOOP_BACKOFF, error="trap")
    assert (current.restarts, current.last_error, current.ready) == (1, "trap", False)
    current = advance(advance(advance(current, State.PULLING), State.COMPILING), State.READY)
    assert (current.restarts, current.last_error) == (1, None)


def test_a_job_runs_to_success_with_its_exit_code() -> None:
    current = walk(State.PULLING, State.COMPILING, State.RUNNING)
    current = advance(current, State.SUCCEEDED, exit_code=0)
    assert (current.phase, current.exit_code) == ("Succeeded", 0)


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (State.PENDING, State.READY),
        (State.PULLING, State.READY),
        (State.TERMINATING, State.PULLING),
        (State.PULL_BACKOFF, State.COMPILING),
        (State.READY, State.SUCCEEDED),
    ],
)
def test_a_move_outside_the_table_is_refused(start: State, to: State) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{start.value} -> {to.value}"):
        advance(BindingState(state=start), to)


def test_every_state_can_terminate_except_terminating_itself() -> None:
    for state, targets in TRANSITIONS.items():
        assert (State.TERMINATING in targets) is (state is not State.TERMINATING)


def test_every_state_other_than_pending_is_reachable() -> None:
    reachable = set().union(*TRANSITIONS.values())
    assert reachable == set(State) - {State.PENDING}


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff_seconds(40) == 300.0


def test_the_latest_failure_is_kept_through_its_retries_until_ready() -> None:
    current = advance(walk(State.PULLING, State.COMPILING), State.CRASH_LOOP_BACKOFF, error="e")
    assert current.failure is State.CRASH_LOOP_BACKOFF
    current = advance(advance(current, State.PULLING), State.COMPILING)
    assert (current.phase, current.failure) == ("Compiling", State.CRASH_LOOP_BACKOFF)
    current = advance(advance(current, State.CRASH_LOOP_BACKOFF, error="e"), State.PULLING)
    current = advance(advance(current, State.PULL_BACKOFF, error="401"), State.PULLING)
    assert current.failure is State.PULL_BACKOFF
    assert walk(State.PULLING, State.COMPILING, State.READY).failure is None
    assert advance(advance(current, State.COMPILING), State.READY).failure is None
