"""The epoch ticker waits while no run is under way and wakes when one starts."""

from __future__ import annotations

import threading

from wasmfleet_agent.runtime.engine import EpochClock


def test_the_ticker_sleeps_until_a_run_enters_and_stops_on_request() -> None:
    clock = EpochClock()
    woke = threading.Event()

    def ticker() -> None:
        while clock.wait_for_runs():
            woke.set()
            clock.leave()  # one tick's worth of work, then idle again

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    assert not woke.wait(0.2), "the ticker ran with no run under way"
    clock.enter()
    assert woke.wait(5), "a run did not wake the ticker"
    clock.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_runs_are_counted() -> None:
    clock = EpochClock()
    clock.enter()
    clock.enter()
    clock.leave()
    done = threading.Event()

    def ticker() -> None:
        clock.wait_for_runs()
        done.set()

    threading.Thread(target=ticker, daemon=True).start()
    assert done.wait(5), "one run is still under way: the ticker must not wait"
    clock.stop()
