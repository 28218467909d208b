"""Circuit breaker modelled on Resilience4j: closed, open, half-open over a sliding window.

Closed: outcomes go into a count- or time-based window; once it holds `minimum_calls`, a failure
rate or slow-call rate at or above its threshold opens the breaker. Open: calls fail fast with
`CallNotPermitted(retry_after=...)` for `wait_in_open`; the first look after that moves to
half-open. Half-open: `permitted_calls_in_half_open` trial calls run (concurrent callers beyond
them are refused); their rates decide between closed and open again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import TracebackType
from typing import Literal, TypeVar, cast

from libs.flowcontrol import _calls
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.observer import NULL_OBSERVER, Observer
from libs.flowcontrol.window import CountWindow, OutcomeWindow, Snapshot, TimeWindow

__all__ = ["BreakerState", "CircuitBreaker", "Permit", "StateTransition", "WindowType"]

T = TypeVar("T")
logger = logging.getLogger(__name__)
Outcome = Literal["success", "failure", "ignored"]


class BreakerState(IntEnum):
    """Breaker states; the value is the `gridhub_flow_breaker_state` gauge value."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class WindowType(StrEnum):
    """Resilience4j's `SlidingWindowType`."""

    COUNT_BASED = "count_based"
    TIME_BASED = "time_based"


@dataclass(frozen=True, slots=True)
class StateTransition:
    """Passed to state-change listeners."""

    breaker: str
    from_state: BreakerState
    to_state: BreakerState
    at: float


@dataclass(frozen=True, slots=True)
class Permit:
    """Permission for one call; hand it back with `record_success`, `record_exception`, ..."""

    generation: int
    started: float


class CircuitBreaker:
    """A Resilience4j-style circuit breaker: `async with breaker:` or `await breaker.call(fn)`."""

    def __init__(
        self,
        name: str = "breaker",
        *,
        failure_rate_threshold: float = 50.0,
        slow_call_rate_threshold: float = 100.0,
        slow_call_duration_threshold: float = 60.0,
        window_type: WindowType = WindowType.COUNT_BASED,
        window_size: int = 100,
        minimum_calls: int = 100,
        wait_in_open: float = 60.0,
        permitted_calls_in_half_open: int = 10,
        max_wait_in_half_open: float = 0.0,
        record_exceptions: tuple[type[BaseException], ...] = (),
        ignore_exceptions: tuple[type[BaseException], ...] = (),
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        if not (0 < failure_rate_threshold <= 100 and 0 < slow_call_rate_threshold <= 100):
            raise ValueError("rate thresholds are percentages in (0, 100]")
        if min(window_size, minimum_calls, permitted_calls_in_half_open) < 1:
            raise ValueError("window_size, minimum_calls and permitted calls must be at least 1")
        self.name = name
        self._failure_threshold = failure_rate_threshold
        self._slow_threshold = slow_call_rate_threshold
        self._slow_duration = slow_call_duration_threshold
        self._window_type = WindowType(window_type)
        self._window_size = window_size
        self._minimum_calls = minimum_calls
        self._wait_in_open = wait_in_open
        self._permitted_in_half_open = permitted_calls_in_half_open
        self._max_wait_in_half_open = max_wait_in_half_open
        self._record = record_exceptions
        self._ignore = ignore_exceptions
        self._clock = clock or MonotonicClock()
        self._observer = observer or NULL_OBSERVER
        self._listeners: list[Callable[[StateTransition], object]] = []
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._since = self._clock.now()
        self._trial_permits = 0
        self._window, self._needed = self._closed_window()
        self._observer.breaker_state(BreakerState.CLOSED)

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose wait is over reads as half-open."""
        return self._current(self._clock.now())

    def snapshot(self) -> Snapshot:
        """Totals of the current state's window."""
        return self._window.snapshot(self._clock.now())

    def add_listener(self, listener: Callable[[StateTransition], object]) -> None:
        """Call `listener` on every state change (synchronously; exceptions are logged)."""
        self._listeners.append(listener)

    def acquire(self) -> Permit:
        """Ask permission for one call; raise `CallNotPermitted` when open or out of trial calls."""
        now = self._clock.now()
        state = self._current(now)
        if state is BreakerState.CLOSED:
            self._observer.admitted()
            return Permit(self._generation, now)
        if state is BreakerState.HALF_OPEN and self._trial_permits > 0:
            self._trial_permits -= 1
            self._observer.admitted()
            return Permit(self._generation, now)
        self._observer.rejected(CallNotPermitted.reason)
        if state is BreakerState.OPEN:
            retry_after: float | None = max(0.0, self._since + self._wait_in_open - now)
        else:
            retry_after = None
        raise CallNotPermitted(f"circuit breaker {self.name!r} is {state.name}", retry_after=retry_after)

    def classify(self, error: BaseException) -> Outcome:
        """How an exception counts: ignore list first, then record list (empty: everything fails)."""
        if isinstance(error, self._ignore) or not isinstance(error, Exception):
            return "ignored"
        if not self._record or isinstance(error, self._record):
            return "failure"
        return "success"

    def record_success(self, permit: Permit) -> None:
        """The call succeeded (it may still count as slow)."""
        self._on_outcome(permit, failed=False)

    def record_failure(self, permit: Permit) -> None:
        """The call failed, whatever the exception lists say (e.g. an HTTP 503 response)."""
        self._on_outcome(permit, failed=True)

    def record_exception(self, permit: Permit, error: BaseException) -> Outcome:
        """The call raised `error`; count it as `classify` says and return that."""
        outcome = self.classify(error)
        if outcome == "ignored":
            self.release(permit)
        else:
            self._on_outcome(permit, failed=outcome == "failure")
        return outcome

    def release(self, permit: Permit) -> None:
        """The call does not count (ignored, cancelled); a half-open trial permit is returned."""
        if permit.generation == self._generation and self._state is BreakerState.HALF_OPEN:
            self._trial_permits += 1

    def transition_to(self, state: BreakerState) -> None:
        """Force a state (an admin action or a test); the new state starts with an empty window."""
        self._transition(state, self._clock.now())

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        fallback: Callable[[BaseException], Awaitable[T]] | None = None,
    ) -> T:
        """Run `fn` under the breaker; `fallback(error)` answers refusals and counted failures."""
        try:
            permit = self.acquire()
        except CallNotPermitted as refused:
            if fallback is None:
                raise
            return await fallback(refused)
        try:
            result = await fn()
        except Exception as error:
            if self.record_exception(permit, error) == "failure" and fallback is not None:
                return await fallback(error)
            raise
        except BaseException:
            self.release(permit)
            raise
        self.record_success(permit)
        return result

    async def __aenter__(self) -> CircuitBreaker:
        _calls.push(self, self.acquire())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        permit = cast(Permit, _calls.pop(self))
        if exc is None:
            self.record_success(permit)
        else:
            self.record_exception(permit, exc)

    def _on_outcome(self, permit: Permit, *, failed: bool) -> None:
        if permit.generation != self._generation:
            return  # admitted under an earlier state; R4j would not let it decide this one
        now = self._clock.now()
        slow = now - permit.started > self._slow_duration
        totals = self._window.record(now, failed=failed, slow=slow)
        if totals.calls < self._needed:
            return
        exceeded = totals.failure_rate >= self._failure_threshold or totals.slow_rate >= self._slow_threshold
        if self._state is BreakerState.CLOSED and exceeded:
            self._transition(BreakerState.OPEN, now)
        elif self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.OPEN if exceeded else BreakerState.CLOSED, now)

    def _current(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._since + self._wait_in_open:
            self._transition(BreakerState.HALF_OPEN, now)
        elif (
            self._state is BreakerState.HALF_OPEN
            and self._max_wait_in_half_open > 0
            and now >= self._since + self._max_wait_in_half_open
        ):
            self._transition(BreakerState.OPEN, now)
        return self._state

    def _closed_window(self) -> tuple[OutcomeWindow, int]:
        if self._window_type is WindowType.COUNT_BASED:
            return CountWindow(self._window_size), min(self._minimum_calls, self._window_size)
        return TimeWindow(self._window_size, self._clock.now()), self._minimum_calls

    def _transition(self, to: BreakerState, now: float) -> None:
        previous = self._state
        self._state = to
        self._generation += 1
        self._since = now
        if to is BreakerState.CLOSED:
            self._window, self._needed = self._closed_window()
        elif to is BreakerState.HALF_OPEN:
            self._trial_permits = self._permitted_in_half_open
            self._window = CountWindow(self._permitted_in_half_open)
            self._needed = min(self._minimum_calls, self._permitted_in_half_open)
        self._observer.breaker_state(to)
        event = StateTransition(self.name, previous, to, now)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("breaker %s: state listener failed", self.name)
