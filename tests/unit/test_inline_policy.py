"""`InlinePolicy`: when a service's next request runs on the event loop's thread."""

from __future__ import annotations

import pytest

from wasmfleet_agent.server.inline import LONG_IN_A_ROW, MAX_REQUIRED, InlinePolicy


def test_a_service_goes_inline_after_enough_short_runs_in_a_row() -> None:
    policy = InlinePolicy(budget=0.002, short=0.001, required=3)
    policy.ran(0.0005)
    policy.ran(0.0005)
    assert not policy.inline
    policy.ran(0.0005)
    assert policy.inline


def test_long_runs_in_a_row_or_a_wait_reset_the_streak_and_leave_inline() -> None:
    policy = InlinePolicy(required=2)
    policy.ran(0.0001)
    policy.ran(0.5)  # long
    policy.ran(0.5)  # long again: the module's runs are long
    policy.ran(0.0001)
    assert not policy.inline
    policy.ran(0.0001)
    assert policy.inline
    for _ in range(LONG_IN_A_ROW):
        policy.ran(0.5)
    assert not policy.inline
    policy.ran(0.0001)
    policy.ran(0.0001)
    assert policy.inline
    policy.ran(0.0001, waited=True)  # slept in a host call: never inline while it does
    assert not policy.inline
    policy.ran(0.0001)
    assert not policy.inline


def test_a_long_run_alone_among_short_ones_neither_counts_nor_leaves_inline() -> None:
    policy = InlinePolicy(required=3)
    policy.ran(0.0001)
    policy.ran(0.0015)  # an outlier: a collection, page faults, the GIL taken back
    policy.ran(0.0001)
    assert not policy.inline
    policy.ran(0.0001)
    assert policy.inline
    for _ in range(50):
        policy.ran(0.0015)
        policy.ran(0.0001)
    assert policy.inline


def test_an_outlier_then_a_wait_leaves_inline_at_once() -> None:
    policy = InlinePolicy(required=1)
    policy.ran(0.0001)
    assert policy.inline
    policy.ran(0.0015)
    policy.ran(0.0001, waited=True)
    assert not policy.inline


def test_a_module_that_always_waits_never_goes_inline() -> None:
    policy = InlinePolicy(required=1)
    for _ in range(100):
        policy.ran(0.0, waited=True)
    assert not policy.inline


def test_each_overrun_doubles_the_short_runs_needed_up_to_a_cap() -> None:
    policy = InlinePolicy(required=8)
    policy.inline = True
    policy.overran()
    assert not policy.inline
    assert policy.required == 16
    for _ in range(15):
        policy.ran(0.0001)
    assert not policy.inline
    policy.ran(0.0001)
    assert policy.inline
    for _ in range(20):
        policy.overran()
    assert policy.required == MAX_REQUIRED
    assert policy.overruns == 21


def test_a_budget_shorter_than_a_short_run_is_refused() -> None:
    with pytest.raises(ValueError, match="inline budget"):
        InlinePolicy(budget=0.0005, short=0.001)
