"""A FIFO counting semaphore with a movable limit, a max wait on an injected clock, and safe cancellation.

Shared by `Bulkhead` (fixed limit) and `AdaptiveLimiter` (moving limit). A released permit is
handed straight to the oldest waiter, so a newcomer can never overtake a waiting caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from libs.flowcontrol.clock import Clock, wait_future


class Permits:
    """Counting permits; `acquire()` waits in FIFO order up to a max wait, `release()` hands over."""

    def __init__(self, limit: int, clock: Clock, *, max_waiting: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._clock = clock
        self._max_waiting = max_waiting
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """The number of permits."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        # Lowering below in-flight is allowed: releases then shrink in-flight until it fits again.
        self._limit = max(1, value)
        self._hand_over()

    @property
    def in_flight(self) -> int:
        """Permits currently held."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Callers waiting for a permit."""
        # Granted and forgotten waiters leave the deque at once, so all left are pending.
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a permit if one is free and nobody waits before us."""
        if not self._waiters and self._in_flight < self._limit:
            self._in_flight += 1
            return True
        return False

    async def acquire(self, max_wait: float) -> bool:
        """Take a permit, waiting at most `max_wait` seconds; False when none came in time."""
        if self.try_acquire():
            return True
        if max_wait <= 0 or (self._max_waiting is not None and self.waiting >= self._max_waiting):
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            granted = await wait_future(waiter, self._clock, max_wait)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The permit was handed to us just as we were cancelled: pass it on.
                self.release()
            else:
                self._forget(waiter)
            raise
        if not granted:
            self._forget(waiter)
        return granted

    def release(self) -> None:
        """Return a permit; the oldest waiter gets it if the limit allows."""
        self._in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._in_flight += 1
            waiter.set_result(None)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
