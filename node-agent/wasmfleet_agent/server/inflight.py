"""Requests in flight per service, counted across the agent's worker processes.

A service's ``maxConcurrency`` bounds the requests running at once on its replica, however
many processes answer them. The counts live in a shared memory file: one 64-bit cell per
(service slot, worker), each written only by its own worker, so no lock is needed; a worker
admits a request when the sum of its service's cells is below the limit. Two workers
admitting at the same instant may both pass at the boundary, so the limit holds to within
the number of workers. When a worker dies, the agent zeroes its cells before starting it
again, so requests it had in flight are not counted forever.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

__all__ = ["InFlightCells", "ServiceCells"]

_CELL = 8


class InFlightCells:
    """The shared table: ``slots`` services by ``workers`` cells."""

    def __init__(self, fd: int, *, slots: int, workers: int) -> None:
        self.fd = fd
        self.slots = slots
        self.workers = workers
        self._map = mmap.mmap(fd, slots * workers * _CELL)
        self._cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, *, slots: int, workers: int) -> InFlightCells:
        fd = os.memfd_create("wasmfleet-inflight", os.MFD_CLOEXEC)  # passed on explicitly
        os.ftruncate(fd, slots * workers * _CELL)
        return cls(fd, slots=slots, workers=workers)

    def service(self, slot: int, worker: int) -> ServiceCells:
        if not 0 <= slot < self.slots or not 0 <= worker < self.workers:
            raise ValueError(f"no cell for slot {slot}, worker {worker}")
        return ServiceCells(self, slot * self.workers, worker)

    def total(self, slot: int) -> int:
        base = slot * self.workers
        return sum(self._cells[base : base + self.workers])

    def reset_worker(self, worker: int) -> None:
        for slot in range(self.slots):
            self._cells[slot * self.workers + worker] = 0

    def reset_slot(self, slot: int) -> None:
        base = slot * self.workers
        for worker in range(self.workers):
            self._cells[base + worker] = 0

    def close(self) -> None:
        self._cells.release()
        self._map.close()
        os.close(self.fd)


@dataclass
class ServiceCells:
    """One worker's view of one service: its own cell to move, every cell to read."""

    table: InFlightCells
    base: int
    worker: int

    def total(self) -> int:
        cells = self.table._cells
        return sum(cells[self.base : self.base + self.table.workers])

    def add(self, delta: int) -> None:
        self.table._cells[self.base + self.worker] += delta
