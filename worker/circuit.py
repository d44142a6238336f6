"""A circuit breaker per data source: a source that keeps failing is skipped for a while.

Closed: reads go through; ``failures`` failures in a row open it. Open: reads
fail at once (the job gets its fallback in milliseconds instead of waiting for
the deadline) until ``reset_s`` has passed. Half-open: one trial read goes
through; success closes the circuit, failure opens it again. No restart needed.

Only the source's own failures count. A read that ends for the customer's
reasons (the source refused their value) or the worker's (the job was
cancelled) is `undecided`: it neither counts as a failure nor resets the
count, so no customer can open a circuit for everyone else. Any other error
(a driver's exception a connector let through included) is a failure. Every
outcome frees the half-open trial, so a circuit never stays open for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.errors import CircuitOpen

__all__ = ["Circuit", "CircuitOpen"]  # CircuitOpen lives in worker.errors; kept for its users


@dataclass
class Circuit:
    failures: int = 5
    reset_s: float = 10.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _failed: int = 0
    _opened_at: float | None = None
    _trial: bool = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.reset_s:
            return "half-open"
        return "open"

    def before(self) -> None:
        """Call before a read; raises `CircuitOpen` when the read must not happen."""
        state = self.state
        if state == "open" or (state == "half-open" and self._trial):
            raise CircuitOpen
        if state == "half-open":
            self._trial = True

    def succeeded(self) -> None:
        self._failed = 0
        self._opened_at = None
        self._trial = False

    def undecided(self) -> None:
        """The read said nothing about the source: leave the count, let another trial go."""
        self._trial = False

    def failed(self) -> None:
        self._trial = False
        if self._opened_at is not None:
            self._opened_at = self.clock()  # the trial failed: open again
            return
        self._failed += 1
        if self._failed >= self.failures:
            self._opened_at = self.clock()
