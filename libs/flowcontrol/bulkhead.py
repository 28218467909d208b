"""Semaphore bulkhead (Resilience4j): at most `max_concurrent` calls in flight, wait at most `max_wait`.

Callers that find no free permit wait in FIFO order for up to `max_wait` seconds (0: refuse at
once, Resilience4j's default) and then get `BulkheadFull`, carrying a `retry_after` hint for a
`503 Retry-After`. A caller cancelled while waiting takes no permit with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from libs.flowcontrol._permits import Permits
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import BulkheadFull
from libs.flowcontrol.observer import NULL_OBSERVER, Observer

__all__ = ["Bulkhead"]

T = TypeVar("T")


class Bulkhead:
    """Bound concurrent calls: `async with bulkhead:` or `await bulkhead.call(fn)`."""

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_wait: float = 0.0,
        max_waiting: int | None = None,
        retry_after: float = 1.0,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self._clock = clock or MonotonicClock()
        self._permits = Permits(max_concurrent, self._clock, max_waiting=max_waiting)
        self._max_wait = max_wait
        self._retry_after = retry_after
        self._observer = observer or NULL_OBSERVER
        self._observer.limit(max_concurrent)

    @property
    def max_concurrent(self) -> int:
        """The number of permits."""
        return self._permits.limit

    @property
    def in_flight(self) -> int:
        """Calls holding a permit."""
        return self._permits.in_flight

    @property
    def waiting(self) -> int:
        """Callers waiting for a permit."""
        return self._permits.waiting

    @property
    def available(self) -> int:
        """Free permits (0 while saturated)."""
        return max(0, self._permits.limit - self._permits.in_flight)

    def set_max_concurrent(self, value: int) -> None:
        """Change the limit at runtime; lowering it lets in-flight calls finish."""
        self._permits.limit = value
        self._observer.limit(value)

    def try_acquire(self) -> bool:
        """Take a permit if one is free now; never waits."""
        if self._permits.try_acquire():
            self._admitted(0.0)
            return True
        self._observer.rejected(BulkheadFull.reason)
        return False

    async def acquire(self, max_wait: float | None = None) -> None:
        """Take a permit, waiting up to `max_wait` (default: the bulkhead's); else `BulkheadFull`."""
        started = self._clock.now()
        if not await self._permits.acquire(self._max_wait if max_wait is None else max_wait):
            self._observer.rejected(BulkheadFull.reason)
            raise BulkheadFull(f"bulkhead full ({self._permits.limit} in flight)", retry_after=self._retry_after)
        self._admitted(self._clock.now() - started)

    def release(self) -> None:
        """Give a permit back."""
        self._permits.release()
        self._observer.in_flight(self._permits.in_flight)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` holding a permit."""
        await self.acquire()
        try:
            return await fn()
        finally:
            self.release()

    async def __aenter__(self) -> Bulkhead:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _admitted(self, waited: float) -> None:
        self._observer.admitted()
        self._observer.in_flight(self._permits.in_flight)
        if waited > 0:
            self._observer.waited(waited)
