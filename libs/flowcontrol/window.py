"""Sliding windows of call outcomes for the circuit breaker (Resilience4j's two kinds).

`CountWindow` keeps the last N outcomes in a ring; `TimeWindow` keeps N one-second buckets of the
injected clock and forgets a bucket as time rolls past it. Both keep running totals, so recording
and reading are O(1) (amortised over idle seconds for the time window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CountWindow", "OutcomeWindow", "Snapshot", "TimeWindow"]

_FAILED = 1
_SLOW = 2


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Totals over a window; rates are percentages (0 when there are no calls)."""

    calls: int
    failed: int
    slow: int

    @property
    def failure_rate(self) -> float:
        """Failed calls as a percentage of all calls."""
        return 100.0 * self.failed / self.calls if self.calls else 0.0

    @property
    def slow_rate(self) -> float:
        """Slow calls (failed or not) as a percentage of all calls."""
        return 100.0 * self.slow / self.calls if self.calls else 0.0


class OutcomeWindow(Protocol):
    """Records outcomes and sums the ones still inside the window."""

    def record(self, now: float, *, failed: bool, slow: bool) -> Snapshot:
        """Add one outcome at time `now` and return the totals."""
        ...

    def snapshot(self, now: float) -> Snapshot:
        """The totals at time `now`."""
        ...


class CountWindow:
    """The last `size` outcomes."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._ring = [0] * size
        self._next = 0
        self._count = 0
        self._failed = 0
        self._slow = 0

    def record(self, now: float, *, failed: bool, slow: bool) -> Snapshot:
        """Add one outcome, evicting the oldest when the ring is full."""
        size = len(self._ring)
        if self._count == size:
            evicted = self._ring[self._next]
            self._failed -= evicted & _FAILED
            self._slow -= (evicted & _SLOW) >> 1
        else:
            self._count += 1
        self._ring[self._next] = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._next = (self._next + 1) % size
        self._failed += failed
        self._slow += slow
        return self.snapshot(now)

    def snapshot(self, now: float) -> Snapshot:
        """The totals over the ring."""
        return Snapshot(self._count, self._failed, self._slow)


class TimeWindow:
    """Outcomes of the last `seconds` whole seconds of the clock (the current one included)."""

    def __init__(self, seconds: int, now: float) -> None:
        if seconds < 1:
            raise ValueError("seconds must be at least 1")
        self._size = seconds
        self._calls = [0] * seconds
        self._failed = [0] * seconds
        self._slow = [0] * seconds
        self._totals = [0, 0, 0]
        self._head = math.floor(now)

    def record(self, now: float, *, failed: bool, slow: bool) -> Snapshot:
        """Add one outcome to the bucket of the current second."""
        self._roll(now)
        index = self._head % self._size
        self._calls[index] += 1
        self._failed[index] += failed
        self._slow[index] += slow
        self._totals[0] += 1
        self._totals[1] += failed
        self._totals[2] += slow
        return self.snapshot(now)

    def snapshot(self, now: float) -> Snapshot:
        """The totals over the buckets still inside the window."""
        self._roll(now)
        calls, failed, slow = self._totals
        return Snapshot(calls, failed, slow)

    def _roll(self, now: float) -> None:
        second = math.floor(now)
        if second <= self._head:
            return
        # Clear every bucket whose second has left the window; at most `size` of them.
        for elapsed in range(self._head + 1, min(second, self._head + self._size) + 1):
            index = elapsed % self._size
            self._totals[0] -= self._calls[index]
            self._totals[1] -= self._failed[index]
            self._totals[2] -= self._slow[index]
            self._calls[index] = self._failed[index] = self._slow[index] = 0
        self._head = second
