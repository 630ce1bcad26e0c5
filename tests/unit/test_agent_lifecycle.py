"""The per-binding lifecycle allows exactly the documented moves and reports each state."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wasmfleet_agent.lifecycle import (
    MAX_ERROR,
    RESTART_BACKOFF,
    TRANSITIONS,
    BindingState,
    IllegalTransitionError,
    advance,
    render_binding_status,
    stale_config,
)
from wasmfleet_api.binding import BindingPhase, WasmBinding, WasmBindingStatus


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


def _binding() -> WasmBinding:
    return WasmBinding.model_validate(
        {
            "metadata": {"name": "b", "namespace": "team", "generation": 4},
            "spec": {
                "serviceName": "hello",
                "nodeName": "node-a",
                "revision": "r1",
                "digest": "sha256:" + "a" * 64,
                "workload": {"module": {"image": "r.example.com/hello:1"}, "http": {}},
            },
        }
    )


def _read_back(state: BindingState, **where: Any) -> WasmBindingStatus:
    """The status as the agent writes it, read the way the operator reads it."""
    written = render_binding_status(_binding(), state, address="10.0.0.7", **where).to_kube()
    return WasmBindingStatus.model_validate(json.loads(json.dumps(written)))


def test_a_ready_replica_reports_where_it_serves_and_no_failure() -> None:
    state = walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.READY)
    status = _read_back(state, port=31000, module_digest="sha256:" + "b" * 64)
    assert (status.phase, status.ready, status.port, status.address) == (
        BindingPhase.READY,
        True,
        31000,
        "10.0.0.7",
    )
    assert status.observed_generation == 4
    assert (status.failure, status.stale_configuration, status.last_error) == (None, None, None)


def test_a_replica_retried_after_a_crash_reads_back_as_failing_until_ready() -> None:
    crashed = advance(
        walk(BindingPhase.PULLING, BindingPhase.COMPILING),
        BindingPhase.CRASH_LOOP_BACKOFF,
        error="trap: unreachable",
    )
    retrying = advance(crashed, BindingPhase.PULLING)
    status = _read_back(retrying)
    assert (status.phase, status.ready) == (BindingPhase.PULLING, False)
    assert status.failure == "CrashLoopBackOff"
    assert status.last_error == "trap: unreachable"
    assert status.restarts == 1
    assert status.port is None


def test_an_error_longer_than_a_status_holds_is_cut_to_max_error() -> None:
    state = advance(walk(BindingPhase.PULLING), BindingPhase.PULL_BACKOFF, error="x" * 100_000)
    assert len(_read_back(state).last_error or "") == MAX_ERROR


@pytest.mark.parametrize("phase", [p for p in BindingPhase if p is not BindingPhase.TERMINATING])
def test_an_unexpected_error_in_any_live_state_is_a_counted_crash(phase: BindingPhase) -> None:
    before = BindingState(state=phase, restarts=2, failures=1, exit_code=3)
    crashed = advance(before, BindingPhase.CRASH_LOOP_BACKOFF, error="internal error: boom")
    assert (crashed.phase, crashed.restarts, crashed.failures) == ("CrashLoopBackOff", 3, 2)
    assert (crashed.last_error, crashed.exit_code) == ("internal error: boom", 3)
    assert crashed.failure is BindingPhase.CRASH_LOOP_BACKOFF


def test_a_failed_job_run_runs_again_counting_a_restart_and_taking_its_exit_code() -> None:
    running = walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.RUNNING)
    first = advance(running, BindingPhase.RUNNING, error="attempt 1 failed", exit_code=3)
    assert (first.phase, first.ready, first.restarts, first.exit_code) == ("Running", True, 1, 3)
    assert (first.last_error, first.failure) == ("attempt 1 failed", None)
    trapped = advance(first, BindingPhase.RUNNING, error="attempt 2 failed: trap")
    assert (trapped.restarts, trapped.failures, trapped.exit_code) == (2, 2, None)
    failed = advance(trapped, BindingPhase.FAILED, error="attempt 2 failed: trap")
    assert (failed.phase, failed.exit_code, failed.failure) == ("Failed", None, BindingPhase.FAILED)


def test_only_running_may_move_to_itself() -> None:
    for phase in (BindingPhase.PULLING, BindingPhase.READY, BindingPhase.PULL_BACKOFF):
        with pytest.raises(IllegalTransitionError):
            advance(BindingState(state=phase), phase)


def test_a_ready_binding_reports_its_last_good_configuration_until_it_reads_again() -> None:
    ready = walk(BindingPhase.PULLING, BindingPhase.COMPILING, BindingPhase.READY)
    stale = stale_config(ready, "Secret s1 not found")
    assert (stale.phase, stale.ready, stale.last_error) == ("Ready", True, "Secret s1 not found")
    status = _read_back(stale, port=31000)
    assert status.stale_configuration == "serving the last good configuration: Secret s1 not found"
    assert status.failure is None
    current = stale_config(stale, None)
    assert (current.config_error, current.last_error) == (None, None)
    assert _read_back(current, port=31000).stale_configuration is None
    with pytest.raises(IllegalTransitionError):
        stale_config(walk(BindingPhase.PULLING), "gone")
