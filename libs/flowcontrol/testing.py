"""Test doubles for flow-control policies: a deterministic clock and a recording observer.

Service tests import these too, so they live in the library rather than under `tests/`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["FakeClock", "RecordingObserver"]

T = TypeVar("T")


class FakeClock:
    """A clock that only moves when the test calls `advance()`; `sleep()` parks until then.

    `advance(dt)` wakes sleepers in deadline order, setting `now()` to each sleeper's deadline
    before waking it and letting the event loop settle, so work scheduled by a woken task within
    the same advance (a retry after a backoff, say) also runs. Tests never sleep for real.
    """

    def __init__(self, start: float = 0.0, *, settle_rounds: int = 25) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._settle_rounds = settle_rounds

    def now(self) -> float:
        """The fake time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Park until `advance()` moves time past `now() + seconds`; a zero sleep just yields."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._sequence), future))
        try:
            await future
        finally:
            # A cancelled sleeper stays in the heap; advance() skips futures that are done.
            future.cancel()

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in `sleep()` right now."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline of a parked sleeper, if any."""
        pending = [when for when, _, future in self._sleepers if not future.done()]
        return min(pending) if pending else None

    def tick(self, seconds: float) -> None:
        """Move time forward synchronously, for policies that never sleep (quota, breaker windows).

        Refuses to jump past a parked sleeper's deadline: use `advance()` to wake sleepers.
        """
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        deadline = self.next_deadline
        if deadline is not None and deadline <= self._now + seconds:
            raise RuntimeError("a sleeper is due; use `await advance()`")
        self._now += seconds

    async def settle(self) -> None:
        """Let ready tasks run until they park again (a fixed number of loop iterations)."""
        for _ in range(self._settle_rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper whose deadline is reached."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        target = self._now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._now = max(self._now, when)
            future.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def run(self, awaitable: Awaitable[T], *, max_elapsed: float = 86_400.0) -> T:
        """Run `awaitable` to completion, advancing time to each next sleeper's deadline.

        Raise `RuntimeError` (after cancelling it) if the task waits on something other than
        the clock, or if more than `max_elapsed` fake seconds pass.
        """
        task = asyncio.ensure_future(awaitable)
        started = self._now
        while True:
            await self.settle()
            if task.done():
                return task.result()
            deadline = self.next_deadline
            if deadline is None or deadline - started > max_elapsed:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise RuntimeError("task is not waiting on this clock (or ran past max_elapsed)")
            await self.advance(deadline - self._now)


@dataclass
class RecordingObserver:
    """An `Observer` that keeps what it was told, for assertions in tests."""

    admitted_count: int = 0
    rejected_reasons: Counter[str] = field(default_factory=Counter)
    dropped_strategies: Counter[str] = field(default_factory=Counter)
    depths: list[int] = field(default_factory=list)
    in_flights: list[int] = field(default_factory=list)
    breaker_states: list[int] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    limits: list[float] = field(default_factory=list)

    def admitted(self, count: int = 1) -> None:
        """Count admitted units."""
        self.admitted_count += count

    def rejected(self, reason: str, count: int = 1) -> None:
        """Count refusals by reason."""
        self.rejected_reasons[reason] += count

    def dropped(self, strategy: str, count: int = 1) -> None:
        """Count dropped items by strategy."""
        self.dropped_strategies[strategy] += count

    def buffer_depth(self, depth: int) -> None:
        """Remember each reported depth."""
        self.depths.append(depth)

    def in_flight(self, count: int) -> None:
        """Remember each reported in-flight count."""
        self.in_flights.append(count)

    def breaker_state(self, state: int) -> None:
        """Remember each reported breaker state code."""
        self.breaker_states.append(state)

    def waited(self, seconds: float) -> None:
        """Remember each reported wait."""
        self.waits.append(seconds)

    def limit(self, value: float) -> None:
        """Remember each reported limit."""
        self.limits.append(value)
