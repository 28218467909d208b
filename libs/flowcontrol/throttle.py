"""Smooth pacing (GCRA) with a max wait: callers wait their turn or are refused at once.

The generic cell rate algorithm keeps one number, the theoretical arrival time (TAT), and lets
`burst` units through back to back before spacing them `1 / rate` apart. Waiting callers queue in
FIFO order and only the head sleeps on the clock, so a cancelled waiter simply leaves the queue and
everyone behind it moves up: no slot is reserved for a caller that is gone.
"""

from __future__ import annotations

import asyncio
from collections import deque

from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import Throttled
from libs.flowcontrol.observer import NULL_OBSERVER, Observer

__all__ = ["Throttle"]

_EPSILON = 1e-9


class _Waiter:
    __slots__ = ("cost", "turn")

    def __init__(self, cost: float, turn: asyncio.Future[None]) -> None:
        self.cost = cost
        self.turn = turn


class Throttle:
    """Pace callers to `rate` units per second with bursts up to `burst`; wait at most `max_wait`."""

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        max_wait: float = 1.0,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self._clock = clock or MonotonicClock()
        self._observer = observer or NULL_OBSERVER
        self._max_wait = max_wait
        self._rate = rate
        self._burst = burst
        self._scale = 1.0
        self._interval = 0.0
        self._tat = self._clock.now()
        self._queue: deque[_Waiter] = deque()
        self._queued = 0.0
        self._apply(rate, burst, 1.0)

    @property
    def rate(self) -> float:
        """Effective units per second (configured rate times scale)."""
        return self._rate * self._scale

    @property
    def waiting(self) -> int:
        """Callers waiting for their turn."""
        return len(self._queue)

    def projected_wait(self, cost: float = 1.0) -> float:
        """How long a caller arriving now with `cost` would wait behind the current queue."""
        now = self._clock.now()
        return self._start(now, self._queued + cost) - now

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Go now if the pace allows it and nobody is waiting; never waits."""
        self._check_cost(cost)
        now = self._clock.now()
        if self._queue or self._start(now, cost) - now > _EPSILON:
            self._observer.rejected(Throttled.reason)
            return False
        self._go(now, cost)
        return True

    async def acquire(
        self, cost: float = 1.0, *, deadline: float | None = None, max_wait: float | None = None
    ) -> float:
        """Wait for this caller's turn and return the seconds waited.

        Raise `Throttled` at once (nothing reserved) when the projected wait would pass `deadline`
        (on this throttle's clock), the call's `max_wait` or the throttle's `max_wait`.
        """
        self._check_cost(cost)
        now = self._clock.now()
        allowed = self._max_wait if max_wait is None else min(max_wait, self._max_wait)
        if deadline is not None:
            allowed = min(allowed, deadline - now)
        wait = self._start(now, self._queued + cost) - now
        if wait > allowed + _EPSILON:
            self._observer.rejected(Throttled.reason)
            raise Throttled(
                f"throttled: wait {wait:.3f}s exceeds {max(allowed, 0.0):.3f}s",
                retry_after=wait - max(allowed, 0.0),
            )
        if not self._queue and wait <= _EPSILON:
            self._go(now, cost)
            return 0.0
        waiter = _Waiter(cost, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self._queued += cost
        try:
            if self._queue[0] is not waiter:
                await waiter.turn
            # Only the head sleeps; it re-checks after waking because the rate may have changed.
            while True:
                current = self._clock.now()
                delay = self._start(current, cost) - current
                if delay <= _EPSILON:
                    break
                await self._clock.sleep(delay)
        finally:
            self._leave(waiter)
        self._go(self._clock.now(), cost)
        waited = self._clock.now() - now
        self._observer.waited(waited)
        return waited

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the pace at runtime; debt already built up is carried over in units."""
        self._apply(rate, self._burst if burst is None else burst, self._scale)

    def set_scale(self, factor: float) -> None:
        """Scale the rate by `factor` in (0, 1] (used by lag-aware admission)."""
        if not 0 < factor <= 1:
            raise ValueError("scale must be in (0, 1]")
        self._apply(self._rate, self._burst, factor)

    def _apply(self, rate: float, burst: float, scale: float) -> None:
        if not (rate > 0 and burst > 0):
            raise ValueError("rate and burst must be positive")
        now = self._clock.now()
        debt_units = max(0.0, self._tat - now) / self._interval if self._interval else 0.0
        self._rate, self._burst, self._scale = rate, burst, scale
        self._interval = 1.0 / (rate * scale)
        self._tat = now + debt_units * self._interval

    def _start(self, now: float, cost_through: float) -> float:
        """Earliest start of a unit of work once `cost_through` units (ours included) have gone."""
        tat = max(self._tat, now) + cost_through * self._interval
        return max(now, tat - self._burst * self._interval)

    def _go(self, now: float, cost: float) -> None:
        self._tat = max(self._tat, now) + cost * self._interval
        self._observer.admitted()

    def _leave(self, waiter: _Waiter) -> None:
        was_head = bool(self._queue) and self._queue[0] is waiter
        self._queue.remove(waiter)
        # Reset when empty so float drift from fractional costs cannot accumulate.
        self._queued = self._queued - waiter.cost if self._queue else 0.0
        if was_head and self._queue and not self._queue[0].turn.done():
            self._queue[0].turn.set_result(None)

    def _check_cost(self, cost: float) -> None:
        if not 0 < cost <= self._burst:
            raise ValueError("cost must be positive and at most the burst")
