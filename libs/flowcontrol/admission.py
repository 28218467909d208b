"""Lag-aware admission: carry back pressure across the Kafka buffer to the edge (GridHub's own).

Kafka decouples ingress from consumers, so a slow consumer never slows ingress by itself: lag just
grows. A signal (consumer lag, a downstream buffer's depth, a breaker's state) maps to a pressure
in [0, 1]; the controller scales the ingress quota's (or throttle's) rate down to `min_scale` at
full pressure at once, and restores it gradually, by `recovery_per_second`, as pressure falls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.clock import Clock, MonotonicClock

__all__ = [
    "AdmissionController",
    "Scalable",
    "Signal",
    "breaker_signal",
    "depth_signal",
    "lag_signal",
    "strongest",
]

logger = logging.getLogger(__name__)
Signal = Callable[[], float]


class Scalable(Protocol):
    """A rate that can be scaled down: `Quota` and `Throttle`."""

    def set_scale(self, factor: float) -> None:
        """Scale the configured rate by `factor` in (0, 1]."""
        ...


class _Sized(Protocol):
    @property
    def capacity(self) -> int: ...

    def __len__(self) -> int: ...


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def lag_signal(lag: Callable[[], float], *, low: float, high: float) -> Signal:
    """Pressure 0 at or below `low` lag, 1 at or above `high`, linear between."""
    if not low < high:
        raise ValueError("need low < high")
    return lambda: _clamp((lag() - low) / (high - low))


def depth_signal(buffer: _Sized, *, low: float = 0.5, high: float = 0.9) -> Signal:
    """Pressure from a buffer's fill ratio: 0 up to `low`, 1 from `high`."""
    return lag_signal(lambda: len(buffer) / buffer.capacity, low=low, high=high)


def breaker_signal(breaker: CircuitBreaker) -> Signal:
    """Pressure 1 while the breaker is open, 0.5 half-open, 0 closed."""
    levels = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 0.5, BreakerState.OPEN: 1.0}
    return lambda: levels[breaker.state]


def strongest(*signals: Signal) -> Signal:
    """The highest pressure of several signals."""
    return lambda: max(signal() for signal in signals)


class AdmissionController:
    """Scale `targets` by a pressure signal: `update()` on demand or `await run()` as a task."""

    def __init__(
        self,
        targets: Scalable | Sequence[Scalable],
        signal: Signal,
        *,
        min_scale: float = 0.1,
        recovery_per_second: float = 0.1,
        interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < min_scale <= 1 or recovery_per_second <= 0 or interval <= 0:
            raise ValueError("need 0 < min_scale <= 1, recovery_per_second > 0, interval > 0")
        self._targets = list(targets) if isinstance(targets, Sequence) else [targets]
        self._signal = signal
        self._min_scale = min_scale
        self._recovery = recovery_per_second
        self._interval = interval
        self._clock = clock or MonotonicClock()
        self._scale = 1.0
        self._updated = self._clock.now()

    @property
    def scale(self) -> float:
        """The factor currently applied to the targets."""
        return self._scale

    def update(self) -> float:
        """Read the signal once and rescale the targets; return the new scale."""
        now = self._clock.now()
        elapsed, self._updated = now - self._updated, now
        try:
            pressure = _clamp(self._signal())
        except Exception:
            # No reading is no news: keep the current scale rather than guess either way.
            logger.exception("admission signal failed; keeping scale %.3f", self._scale)
            return self._scale
        target = 1.0 - pressure * (1.0 - self._min_scale)
        # Back off at once (the downstream is already behind); recover at a bounded pace.
        scale = target if target < self._scale else min(target, self._scale + self._recovery * elapsed)
        if scale != self._scale:
            self._scale = scale
            for target_rate in self._targets:
                target_rate.set_scale(scale)
        return scale

    async def run(self) -> None:
        """Update every `interval` until cancelled."""
        while True:
            self.update()
            await self._clock.sleep(self._interval)
