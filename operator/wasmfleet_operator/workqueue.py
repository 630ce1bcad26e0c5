"""A deduplicating work queue of object keys, as controller-runtime has it, with two lanes.

A key is queued at most once; a key being worked on that is added again is worked on again
right after, never by two workers at once. ``add_after`` schedules a retry.

A key added with ``soon`` (its service's bindings moved: a replica became ready, or failed)
goes in the front lane; any other (a new or changed WasmService, a resync, a fleet change
queuing every service) in the back lane. With one lane, a thousand services created at once
each waited behind the whole thousand again for the pass that saw its replicas ready, so
nearly all became Ready at the end. Workers take from the front lane first, but every
`FAIR_EVERY`-th take goes to the back lane when both hold keys, so new work is never starved
by a stream of follow-ups. A key in the back lane added again with ``soon`` moves to the
front.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

__all__ = ["FAIR_EVERY", "WorkQueue"]

FAIR_EVERY = 4
"""One take in this many goes to the back lane when both lanes hold keys."""


class WorkQueue:
    def __init__(self) -> None:
        self._front: OrderedDict[str, None] = OrderedDict()
        self._back: OrderedDict[str, None] = OrderedDict()
        self._nonempty = asyncio.Event()
        self._active: set[str] = set()
        self._again: dict[str, bool] = {}
        """Keys added while worked on, and whether any of those adds was ``soon``."""
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._takes = 0

    def __len__(self) -> int:
        return len(self._front) + len(self._back)

    def add(self, key: str, *, soon: bool = False) -> None:
        if key in self._active:
            self._again[key] = self._again.get(key, False) or soon
            return
        if key in self._front:
            return
        if key in self._back:
            if not soon:
                return
            del self._back[key]
        (self._front if soon else self._back)[key] = None
        self._nonempty.set()

    def add_after(self, key: str, delay: float) -> None:
        """Queues ``key`` after ``delay`` seconds, unless an earlier retry is already set."""
        loop = asyncio.get_running_loop()
        timer = self._timers.get(key)
        due = loop.time() + delay
        if timer is not None and not timer.cancelled() and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _take(self) -> str | None:
        if not self._front and not self._back:
            return None
        self._takes += 1
        fair_turn = self._takes % FAIR_EVERY == 0
        lane = self._back if (self._back and (fair_turn or not self._front)) else self._front
        key, _ = lane.popitem(last=False)
        return key

    async def get(self) -> str:
        key = self._take()
        while key is None:
            self._nonempty.clear()
            await self._nonempty.wait()
            key = self._take()
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._again:
            self.add(key, soon=self._again.pop(key))

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
