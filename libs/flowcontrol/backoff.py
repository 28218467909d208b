"""Per-key failure back-off: each consecutive failure of a key doubles the delay before its next answer.

Built for login endpoints: `failed(key)` records a failure and returns how long to hold the answer,
`succeeded(key)` forgets the key. The memory is bounded whatever a client sends: a key's failures are
forgotten `memory` seconds after its last one, and past `max_keys` the least recently failed key is
evicted (so a flood of addresses costs at most `max_keys` small entries, and evicting one only means
that address starts its back-off again from the base delay).
"""

from __future__ import annotations

from collections import OrderedDict

from libs.flowcontrol.clock import Clock, MonotonicClock

__all__ = ["FailureBackoff"]


class _Failures:
    __slots__ = ("count", "last")

    def __init__(self, count: int, last: float) -> None:
        self.count = count
        self.last = last


class FailureBackoff:
    """Delays that grow per consecutive failure of a key: ``base * 2**(failures - 1)``, at most ``maximum``."""

    def __init__(
        self,
        base: float,
        maximum: float,
        *,
        memory: float,
        max_keys: int,
        clock: Clock | None = None,
    ) -> None:
        if base < 0 or maximum < base or memory <= 0 or max_keys < 1:
            raise ValueError("need 0 <= base <= maximum, memory > 0 and max_keys >= 1")
        self._base = base
        self._maximum = maximum
        self._memory = memory
        self._max_keys = max_keys
        self._clock = clock or MonotonicClock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._failures)

    def failures(self, key: str) -> int:
        """Consecutive failures of ``key`` still remembered (0 once forgotten)."""
        entry = self._failures.get(key)
        if entry is None or self._clock.now() - entry.last >= self._memory:
            return 0
        return entry.count

    def failed(self, key: str) -> float:
        """Record a failure of ``key``; return the delay (seconds) to hold its answer."""
        now = self._clock.now()
        self._expire(now)
        entry = self._failures.pop(key, None)
        if entry is None:
            if len(self._failures) >= self._max_keys:
                self._failures.popitem(last=False)
                self.evictions += 1
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        self._failures[key] = entry  # most recently failed last: the oldest is at the front
        return self.delay(entry.count)

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures (its next failure waits the base delay again)."""
        self._failures.pop(key, None)

    def delay(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failures."""
        if failures <= 0 or self._base == 0:
            return 0.0
        # 2**60 already dwarfs any maximum; capping the exponent keeps the float finite.
        return min(self._maximum, self._base * 2.0 ** min(failures - 1, 60))

    def _expire(self, now: float) -> None:
        # Entries are ordered by their last failure, so expired ones are all at the front.
        while self._failures:
            key, entry = next(iter(self._failures.items()))
            if now - entry.last < self._memory:
                break
            del self._failures[key]
