"""When a service's request may run on the event loop's own thread instead of a Wasm thread.

Handing a request to a thread of the pool and its answer back costs more than a short module's
whole run: two thread wake-ups, the GIL passed back and forth, a write to the loop's wake-up
pipe (about 110 µs a request at concurrency 1 on the 2-core development machine, where
hello-c's run is about 150 µs). A service whose runs are short is therefore run inline, on the
loop's thread, but only as a try: the run gets a budget of CPU time, and one that spends it
(seen at the next epoch tick) or that would sleep or wait in a host call is stopped and run
again from the start on a thread with the rest of its deadline. So an inline run never holds
the loop much longer than the budget plus one epoch tick, whatever the module does.

Running a request twice is only invisible when a run leaves nothing behind but its answer: a
module with a writable directory or a component that may send outbound requests is never run
inline (`HttpModule.repeatable`).

Runs are measured in CPU time of their thread, not wall time: a threaded run under load spends
most of its wall time waiting for the GIL, which says nothing about how long it would hold the
loop. A service starts on threads. It goes inline after `required` runs in a row that each took
at most `short` of CPU and never slept or waited in a host call; `LONG_IN_A_ROW` runs in a row
that are not short send it back to threads (and start the count again), and a try stopped at
its budget also doubles `required` (up to `MAX_REQUIRED`), so a module whose runs are sometimes
long holds the loop less and less often. A module that sleeps or waits for anything (a timer, a
slow upstream) never runs inline: one wait is enough.

A single long run among short ones is not taken as the module's nature: a run's CPU time also
holds what the process did on its thread meanwhile (a garbage collection, page faults, taking
the GIL back from busy threads). Counted at once, such outliers sent a busy service of short
runs to threads, where the contention of many threads made more of them, so it stayed there
(measured: a wasi:http hello whose runs take 0.4-0.5 ms of CPU ran a fifth of its requests on
threads at concurrency 64). An inline run stays bounded by the budget whatever is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["INLINE_BUDGET", "LONG_IN_A_ROW", "MAX_REQUIRED", "SHORT_RUN", "InlinePolicy"]

INLINE_BUDGET = 0.002
"""CPU seconds an inline try may spend before it is stopped and run again on a thread."""
SHORT_RUN = 0.001
"""A run that took at most this much CPU (and never waited) counts as short."""
FIRST_REQUIRED = 8
MAX_REQUIRED = 4096
LONG_IN_A_ROW = 2
"""Runs in a row that are not short before a service leaves the loop's thread."""


@dataclass
class InlinePolicy:
    """One service's choice between its next run inline and on a thread (loop thread only)."""

    budget: float = INLINE_BUDGET
    short: float = SHORT_RUN
    required: int = FIRST_REQUIRED
    """Short runs in a row needed before the next run goes inline."""
    streak: int = field(default=0, init=False)
    long_runs: int = field(default=0, init=False)
    """Runs in a row that were not short (and did not wait)."""
    inline: bool = field(default=False, init=False)
    overruns: int = field(default=0, init=False)
    """Tries stopped at the budget and run again on a thread, since the start."""

    def __post_init__(self) -> None:
        if not 0 < self.short <= self.budget:
            raise ValueError("the inline budget must be positive and no shorter than a short run")

    def ran(self, cpu_seconds: float, *, waited: bool = False) -> None:
        """A run (inline or threaded) finished after ``cpu_seconds`` of CPU; ``waited``: it
        slept or waited in a host call."""
        long = cpu_seconds > self.short
        if long and not waited:
            self.long_runs += 1
            if self.long_runs < LONG_IN_A_ROW:
                return  # maybe an outlier: neither short nor yet the module's nature
        if waited or long:
            self.inline = False
            self.streak = 0
            self.long_runs = 0
            return
        self.long_runs = 0
        if not self.inline:
            self.streak += 1
            if self.streak >= self.required:
                self.inline = True

    def overran(self) -> None:
        """A try was stopped at its budget (it then runs again on a thread)."""
        self.overruns += 1
        self.inline = False
        self.streak = 0
        self.required = min(MAX_REQUIRED, self.required * 2)
