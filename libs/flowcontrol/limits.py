"""Adaptive concurrency limits (Netflix concurrency-limits): a bulkhead whose limit follows latency.

`AIMDLimit` adds one while the limit is in use and multiplies by `backoff_ratio` on a drop or a
call slower than `latency_threshold`. `GradientLimit` (Gradient2) compares a long-term average RTT
with the latest RTT: while they agree the limit grows by a small queue allowance, when latency
rises it shrinks by up to half, smoothed. `AdaptiveLimiter` applies either to calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar, cast

from libs.flowcontrol import _calls
from libs.flowcontrol._permits import Permits
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import LimitExceeded, Refused
from libs.flowcontrol.observer import NULL_OBSERVER, Observer

__all__ = ["AIMDLimit", "AdaptiveLimiter", "GradientLimit", "LimitAlgorithm", "Ticket"]

T = TypeVar("T")


class LimitAlgorithm(Protocol):
    """Turns call samples into a concurrency limit."""

    @property
    def limit(self) -> int:
        """The current limit."""
        ...

    def update(self, rtt: float, in_flight: int, dropped: bool) -> int:
        """Take one sample (`in_flight` as seen when the call started) and return the new limit."""
        ...


def _check_bounds(initial_limit: int, min_limit: int, max_limit: int) -> None:
    if not 1 <= min_limit <= initial_limit <= max_limit:
        raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")


class AIMDLimit:
    """Additive increase, multiplicative decrease (Netflix `AIMDLimit`)."""

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 1,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        latency_threshold: float = 5.0,
    ) -> None:
        _check_bounds(initial_limit, min_limit, max_limit)
        if not 0.5 <= backoff_ratio < 1:
            raise ValueError("backoff_ratio must be in [0.5, 1)")
        self._limit = initial_limit
        self._min, self._max = min_limit, max_limit
        self._backoff_ratio = backoff_ratio
        self._latency_threshold = latency_threshold

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    def update(self, rtt: float, in_flight: int, dropped: bool) -> int:
        """Back off on a drop or slow call; grow by one only while at least half the limit is used."""
        if dropped or rtt > self._latency_threshold:
            self._limit = max(self._min, int(self._limit * self._backoff_ratio))
        elif in_flight * 2 >= self._limit:
            # An app-limited caller (few calls in flight) proves nothing about a higher limit.
            self._limit = min(self._max, self._limit + 1)
        return self._limit


class _ExpAverage:
    """Netflix `ExpAvgMeasurement`: a plain mean over `warmup` samples, then an EMA over `window`."""

    def __init__(self, window: int, warmup: int) -> None:
        self._factor = 2.0 / (window + 1)
        self._warmup = warmup
        self._count = 0
        self._sum = 0.0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self._count < self._warmup:
            self._count += 1
            self._sum += sample
            self.value = self._sum / self._count
        else:
            self.value = self.value * (1 - self._factor) + sample * self._factor
        return self.value


class GradientLimit:
    """Netflix `Gradient2Limit`: the limit follows the ratio of long-term to current RTT."""

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 1,
        max_limit: int = 200,
        smoothing: float = 0.2,
        rtt_tolerance: float = 1.5,
        long_window: int = 600,
        warmup: int = 10,
        queue_size: int = 4,
    ) -> None:
        _check_bounds(initial_limit, min_limit, max_limit)
        if not 0 < smoothing <= 1 or rtt_tolerance < 1:
            raise ValueError("need 0 < smoothing <= 1 and rtt_tolerance >= 1")
        self._estimate = float(initial_limit)
        self._min, self._max = min_limit, max_limit
        self._smoothing = smoothing
        self._tolerance = rtt_tolerance
        self._queue_size = queue_size
        self._long_rtt = _ExpAverage(long_window, warmup)

    @property
    def limit(self) -> int:
        """The current limit."""
        return int(self._estimate)

    @property
    def long_rtt(self) -> float:
        """The long-term RTT average."""
        return self._long_rtt.value

    def update(self, rtt: float, in_flight: int, dropped: bool) -> int:
        """Take one RTT sample; drops count only through their (long) RTT, as in Gradient2."""
        if rtt <= 0:
            return self.limit
        long_rtt = self._long_rtt.add(rtt)
        if long_rtt / rtt > 2:
            # Latency is back to normal after a long overload: pull the average down faster.
            self._long_rtt.value *= 0.95
        if in_flight < self._estimate / 2:
            return self.limit
        gradient = max(0.5, min(1.0, self._tolerance * long_rtt / rtt))
        target = self._estimate * gradient + self._queue_size
        smoothed = self._estimate * (1 - self._smoothing) + target * self._smoothing
        self._estimate = max(float(self._min), min(float(self._max), smoothed))
        return self.limit


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted call: when it started and how many were in flight then."""

    started: float
    in_flight: int


class AdaptiveLimiter:
    """A bulkhead whose limit an algorithm moves: `async with limiter:` or `await limiter.call(fn)`.

    Exceptions in `drop_on` (timeouts, refusals from further down) are drops; other exceptions
    and cancellation are ignored (no sample), as Netflix's `onIgnore`.
    """

    def __init__(
        self,
        algorithm: LimitAlgorithm,
        *,
        max_wait: float = 0.0,
        max_waiting: int | None = None,
        retry_after: float = 1.0,
        drop_on: tuple[type[BaseException], ...] = (TimeoutError, Refused),
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._algorithm = algorithm
        self._clock = clock or MonotonicClock()
        self._permits = Permits(algorithm.limit, self._clock, max_waiting=max_waiting)
        self._max_wait = max_wait
        self._retry_after = retry_after
        self._drop_on = drop_on
        self._observer = observer or NULL_OBSERVER
        self._observer.limit(algorithm.limit)

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._permits.limit

    @property
    def in_flight(self) -> int:
        """Calls holding a permit."""
        return self._permits.in_flight

    async def acquire(self, max_wait: float | None = None) -> Ticket:
        """Take a permit, waiting up to `max_wait`; raise `LimitExceeded` when none comes."""
        started = self._clock.now()
        if not await self._permits.acquire(self._max_wait if max_wait is None else max_wait):
            self._observer.rejected(LimitExceeded.reason)
            raise LimitExceeded(f"concurrency limit {self.limit} reached", retry_after=self._retry_after)
        now = self._clock.now()
        self._observer.admitted()
        self._observer.in_flight(self._permits.in_flight)
        if now > started:
            self._observer.waited(now - started)
        return Ticket(now, self._permits.in_flight)

    def on_success(self, ticket: Ticket) -> None:
        """The call succeeded: sample its RTT."""
        self._finish(ticket, dropped=False)

    def on_dropped(self, ticket: Ticket) -> None:
        """The call timed out or was refused downstream: a load signal."""
        self._finish(ticket, dropped=True)

    def on_ignore(self, ticket: Ticket) -> None:
        """The call ended in a way that says nothing about load: release without a sample."""
        self._permits.release()
        self._observer.in_flight(self._permits.in_flight)

    def on_exception(self, ticket: Ticket, error: BaseException) -> None:
        """Classify `error` with `drop_on` and finish the call."""
        if isinstance(error, self._drop_on):
            self.on_dropped(ticket)
        else:
            self.on_ignore(ticket)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` holding a permit and feed its outcome to the algorithm."""
        ticket = await self.acquire()
        try:
            result = await fn()
        except BaseException as error:
            self.on_exception(ticket, error)
            raise
        self.on_success(ticket)
        return result

    async def __aenter__(self) -> AdaptiveLimiter:
        _calls.push(self, await self.acquire())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ticket = cast(Ticket, _calls.pop(self))
        if exc is None:
            self.on_success(ticket)
        else:
            self.on_exception(ticket, exc)

    def _finish(self, ticket: Ticket, *, dropped: bool) -> None:
        rtt = self._clock.now() - ticket.started
        limit = self._algorithm.update(rtt, ticket.in_flight, dropped)
        self._permits.release()
        if limit != self._permits.limit:
            self._permits.limit = limit
            self._observer.limit(limit)
        self._observer.in_flight(self._permits.in_flight)
