"""Per-key token-bucket quota: rate and burst per client, device or FTP user, with an exact retry-after.

Each key has its own bucket, so one key never spends another key's tokens. Buckets refill lazily
(no timers). Memory stays bounded: a bucket that is full and untouched for `idle_ttl` is dropped
(a fresh bucket is full too, so nobody notices), and past `max_keys` the least recently used key is
evicted. Rates are static from settings (default plus per-key overrides) and can change at runtime.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import QuotaExceeded
from libs.flowcontrol.observer import NULL_OBSERVER, Observer

__all__ = ["Quota", "QuotaDecision", "Rate"]

# Float refill arithmetic may land a hair below a whole token at exactly `retry_after`.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's refill `rate` (tokens per second) and `burst` (bucket size)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst > 0):
            raise ValueError("rate and burst must be positive")


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """The outcome of one `try_acquire`; enough to write `Retry-After` and `RateLimit` headers.

    `retry_after` is 0 when allowed, the exact time until `cost` tokens are back when refused, and
    `inf` when `cost` exceeds the burst (it can never be granted).
    """

    allowed: bool
    retry_after: float
    remaining: float
    limit: float
    rate: float
    reset_after: float


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class Quota:
    """Token buckets keyed by client: `try_acquire(key, cost)` -> `QuotaDecision`."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        overrides: Mapping[str, Rate] | None = None,
        idle_ttl: float = 300.0,
        max_keys: int = 100_000,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        if idle_ttl <= 0 or max_keys < 1:
            raise ValueError("idle_ttl must be positive and max_keys at least 1")
        self._default = Rate(rate, burst)
        self._overrides: dict[str, Rate] = dict(overrides or {})
        self._idle_ttl = idle_ttl
        self._max_keys = max_keys
        self._clock = clock or MonotonicClock()
        self._observer = observer or NULL_OBSERVER
        self._scale = 1.0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def scale(self) -> float:
        """The factor applied to every refill rate (lowered by lag-aware admission)."""
        return self._scale

    def limits(self, key: str) -> Rate:
        """The effective rate and burst for `key`, with the current scale applied."""
        spec = self._overrides.get(key, self._default)
        if self._scale == 1.0:
            return spec
        return Rate(spec.rate * self._scale, spec.burst)

    def try_acquire(self, key: str, cost: float = 1.0) -> QuotaDecision:
        """Take `cost` tokens from `key`'s bucket if it has them; never waits."""
        if cost <= 0:
            raise ValueError("cost must be positive")
        now = self._clock.now()
        self._expire_idle(now)
        limits = self.limits(key)
        bucket = self._bucket(key, now, limits)
        if cost > limits.burst:
            self._observer.rejected(QuotaExceeded.reason)
            return self._decision(False, math.inf, bucket, limits)
        if bucket.tokens + _EPSILON >= cost:
            bucket.tokens = max(0.0, bucket.tokens - cost)
            self._observer.admitted()
            return self._decision(True, 0.0, bucket, limits)
        self._observer.rejected(QuotaExceeded.reason)
        return self._decision(False, (cost - bucket.tokens) / limits.rate, bucket, limits)

    def acquire(self, key: str, cost: float = 1.0) -> QuotaDecision:
        """Like `try_acquire`, but raise `QuotaExceeded` (with `retry_after`) when refused."""
        decision = self.try_acquire(key, cost)
        if not decision.allowed:
            raise QuotaExceeded(f"quota of {key!r} exceeded", retry_after=decision.retry_after)
        return decision

    def set_rate(self, key: str, rate: float, burst: float) -> None:
        """Give `key` its own rate and burst from now on (an admin call; no restart)."""
        self._settle(key)
        self._overrides[key] = Rate(rate, burst)
        self._clamp(key)

    def clear_rate(self, key: str) -> None:
        """Put `key` back on the default rate."""
        self._settle(key)
        self._overrides.pop(key, None)
        self._clamp(key)

    def set_default(self, rate: float, burst: float) -> None:
        """Change the default rate; idle buckets refill at the new rate for their idle time too."""
        self._default = Rate(rate, burst)

    def set_scale(self, factor: float) -> None:
        """Scale every refill rate by `factor` in (0, 1]; bursts stay as configured."""
        if not 0 < factor <= 1:
            raise ValueError("scale must be in (0, 1]")
        self._scale = factor

    def sweep(self) -> int:
        """Drop every bucket that is full and idle for `idle_ttl`; return how many went."""
        now = self._clock.now()
        expired = [key for key, bucket in self._buckets.items() if self._is_idle(key, bucket, now)]
        for key in expired:
            del self._buckets[key]
        return len(expired)

    def _bucket(self, key: str, now: float, limits: Rate) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
                self.evictions += 1
            bucket = self._buckets[key] = _Bucket(limits.burst, now)
            return bucket
        self._buckets.move_to_end(key)
        bucket.tokens = min(limits.burst, bucket.tokens + (now - bucket.updated) * limits.rate)
        bucket.updated = now
        return bucket

    def _settle(self, key: str) -> None:
        """Refill `key`'s bucket at its current rate up to now, before that rate changes."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            limits = self.limits(key)
            now = self._clock.now()
            bucket.tokens = min(limits.burst, bucket.tokens + (now - bucket.updated) * limits.rate)
            bucket.updated = now

    def _clamp(self, key: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(bucket.tokens, self.limits(key).burst)

    def _is_idle(self, key: str, bucket: _Bucket, now: float) -> bool:
        idle = now - bucket.updated
        if idle < self._idle_ttl:
            return False
        limits = self.limits(key)
        return bucket.tokens + idle * limits.rate + _EPSILON >= limits.burst

    def _expire_idle(self, now: float) -> None:
        # The dict is in least-recently-used order, so only its head can be idle longest;
        # each bucket is popped at most once, which keeps this O(1) amortised per call.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if not self._is_idle(key, bucket, now):
                return
            del self._buckets[key]

    @staticmethod
    def _decision(allowed: bool, retry_after: float, bucket: _Bucket, limits: Rate) -> QuotaDecision:
        return QuotaDecision(
            allowed=allowed,
            retry_after=retry_after,
            remaining=bucket.tokens,
            limit=limits.burst,
            rate=limits.rate,
            reset_after=(limits.burst - bucket.tokens) / limits.rate,
        )
