"""Declarative policies: a service declares every boundary's flow control in its settings, in one place.

    class Settings(BaseSettings):
        boundaries: dict[str, BoundaryPolicy] = {
            "rest_ingress": BoundaryPolicy(quota=QuotaSettings(rate=50, burst=100),
                                           bulkhead=BulkheadSettings(max_concurrent=64)),
        }

`build_boundary(name, policy)` turns one entry into policy objects sharing one clock and one
metrics observer labelled `name`. Defaults here equal the constructors' defaults (a unit test
checks it), so leaving a field out means the same in code and in settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from libs.flowcontrol.admission import AdmissionController, Signal
from libs.flowcontrol.breaker import CircuitBreaker, WindowType
from libs.flowcontrol.buffer import BoundedBuffer, DropCallback, OverflowStrategy
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.delivery import DeliveryPolicy
from libs.flowcontrol.limits import AdaptiveLimiter, AIMDLimit, GradientLimit, LimitAlgorithm
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.observer import NULL_OBSERVER, Observer
from libs.flowcontrol.perclient import PerClientLimit
from libs.flowcontrol.quota import Quota, Rate
from libs.flowcontrol.throttle import Throttle

__all__ = [
    "AdmissionSettings",
    "Boundary",
    "BoundaryPolicy",
    "BreakerSettings",
    "BufferSettings",
    "BulkheadSettings",
    "DeliverySettings",
    "LimiterSettings",
    "PerClientSettings",
    "QuotaSettings",
    "RateSettings",
    "ThrottleSettings",
    "build_boundaries",
    "build_boundary",
]

T = TypeVar("T")
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=1)]
Percent = Annotated[float, Field(gt=0, le=100)]


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateSettings(_Settings):
    """A per-key override of a quota."""

    rate: Positive
    burst: Positive


class QuotaSettings(_Settings):
    """Token bucket per key (`Quota`)."""

    rate: Positive
    burst: Positive
    overrides: dict[str, RateSettings] = Field(default_factory=dict)
    idle_ttl: Positive = 300.0
    max_keys: Count = 100_000


class ThrottleSettings(_Settings):
    """Smooth pacing (`Throttle`)."""

    rate: Positive
    burst: Positive = 1.0
    max_wait: NonNegative = 1.0


class BulkheadSettings(_Settings):
    """Max concurrent calls (`Bulkhead`)."""

    max_concurrent: Count
    max_wait: NonNegative = 0.0
    max_waiting: Count | None = None
    retry_after: NonNegative = 1.0


class PerClientSettings(_Settings):
    """Calls in flight per client key (`PerClientLimit`), checked before the bulkhead or limiter."""

    max_per_client: Count
    max_clients: Count = 10_000
    retry_after: NonNegative = 1.0


class LimiterSettings(_Settings):
    """Adaptive concurrency (`AdaptiveLimiter` with `AIMDLimit` or `GradientLimit`)."""

    algorithm: Literal["aimd", "gradient"] = "gradient"
    initial_limit: Count = 20
    min_limit: Count = 1
    max_limit: Count = 200
    max_wait: NonNegative = 0.0
    retry_after: NonNegative = 1.0
    backoff_ratio: Annotated[float, Field(ge=0.5, lt=1)] = 0.9
    latency_threshold: Positive = 5.0
    smoothing: Annotated[float, Field(gt=0, le=1)] = 0.2
    rtt_tolerance: Annotated[float, Field(ge=1)] = 1.5
    long_window: Count = 600
    queue_size: Annotated[int, Field(ge=0)] = 4


class BufferSettings(_Settings):
    """Bounded buffer (`BoundedBuffer`)."""

    capacity: Count
    strategy: OverflowStrategy = OverflowStrategy.BACKPRESSURE


class BreakerSettings(_Settings):
    """Circuit breaker (`CircuitBreaker`); exception lists are code, passed to `build_boundary`."""

    failure_rate_threshold: Percent = 50.0
    slow_call_rate_threshold: Percent = 100.0
    slow_call_duration_threshold: Positive = 60.0
    window_type: WindowType = WindowType.COUNT_BASED
    window_size: Count = 100
    minimum_calls: Count = 100
    wait_in_open: Positive = 60.0
    permitted_calls_in_half_open: Count = 10
    max_wait_in_half_open: NonNegative = 0.0


class DeliverySettings(_Settings):
    """Ack/nack retries and dead-lettering (`DeliveryPolicy`)."""

    max_attempts: Count = 5
    base_backoff: NonNegative = 0.1
    max_backoff: NonNegative = 5.0
    multiplier: Annotated[float, Field(ge=1)] = 2.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.2
    retry_unexpected: bool = True


class AdmissionSettings(_Settings):
    """Lag-aware admission scaling this boundary's quota and throttle (`AdmissionController`)."""

    min_scale: Annotated[float, Field(gt=0, le=1)] = 0.1
    recovery_per_second: Positive = 0.1
    interval: Positive = 1.0


class BoundaryPolicy(_Settings):
    """Everything one boundary uses; leave a policy out to not use it.

    `timeout` (seconds per call) and `max_body_bytes` (413 / max file size) are read by adapters, and so are
    `body_timeout` and `min_body_rate`: a request body gets `body_timeout` seconds plus one second per
    `min_body_rate` bytes received to arrive in full (408 otherwise), so a client trickling its body cannot
    hold a permit for long, while a large body at a decent rate always fits.
    """

    quota: QuotaSettings | None = None
    throttle: ThrottleSettings | None = None
    bulkhead: BulkheadSettings | None = None
    per_client: PerClientSettings | None = None
    limiter: LimiterSettings | None = None
    buffer: BufferSettings | None = None
    breaker: BreakerSettings | None = None
    delivery: DeliverySettings | None = None
    admission: AdmissionSettings | None = None
    timeout: Positive | None = None
    max_body_bytes: Count | None = None
    body_timeout: Positive | None = None
    min_body_rate: Positive | None = None


@dataclass
class Boundary:
    """The policy objects of one boundary, built from its `BoundaryPolicy`."""

    name: str
    policy: BoundaryPolicy
    clock: Clock
    observer: Observer
    quota: Quota | None = None
    throttle: Throttle | None = None
    bulkhead: Bulkhead | None = None
    per_client: PerClientLimit | None = None
    limiter: AdaptiveLimiter | None = None
    breaker: CircuitBreaker | None = None
    delivery: DeliveryPolicy | None = None

    def buffer(self, on_drop: DropCallback[T] | None = None) -> BoundedBuffer[T]:
        """A new bounded buffer with this boundary's settings (buffers are typed, so built on demand)."""
        if self.policy.buffer is None:
            raise LookupError(f"boundary {self.name!r} declares no buffer")
        settings = self.policy.buffer
        return BoundedBuffer(
            settings.capacity, settings.strategy, on_drop=on_drop, clock=self.clock, observer=self.observer
        )

    def admission(self, signal: Signal) -> AdmissionController:
        """An admission controller scaling this boundary's quota and throttle by `signal`."""
        settings = self.policy.admission or AdmissionSettings()
        targets = [target for target in (self.quota, self.throttle) if target is not None]
        if not targets:
            raise LookupError(f"boundary {self.name!r} has no quota or throttle to scale")
        return AdmissionController(
            targets,
            signal,
            min_scale=settings.min_scale,
            recovery_per_second=settings.recovery_per_second,
            interval=settings.interval,
            clock=self.clock,
        )


def _algorithm(settings: LimiterSettings) -> LimitAlgorithm:
    bounds = {"min_limit": settings.min_limit, "max_limit": settings.max_limit}
    if settings.algorithm == "aimd":
        return AIMDLimit(
            settings.initial_limit,
            backoff_ratio=settings.backoff_ratio,
            latency_threshold=settings.latency_threshold,
            **bounds,
        )
    return GradientLimit(
        settings.initial_limit,
        smoothing=settings.smoothing,
        rtt_tolerance=settings.rtt_tolerance,
        long_window=settings.long_window,
        queue_size=settings.queue_size,
        **bounds,
    )


def build_boundary(
    name: str,
    policy: BoundaryPolicy,
    *,
    clock: Clock | None = None,
    metrics: FlowMetrics | None = None,
    record_exceptions: tuple[type[BaseException], ...] = (),
    ignore_exceptions: tuple[type[BaseException], ...] = (),
) -> Boundary:
    """Build the policy objects `policy` declares, sharing `clock` and the `name` metrics."""
    clock = clock or MonotonicClock()

    def observer_of(kind: str) -> Observer:
        return NULL_OBSERVER if metrics is None else metrics.boundary(name, kind)

    observer = observer_of("buffer")  # the boundary's own: its buffer and admission controller report here
    boundary = Boundary(name, policy, clock, observer)
    if (quota := policy.quota) is not None:
        overrides = {key: Rate(spec.rate, spec.burst) for key, spec in quota.overrides.items()}
        boundary.quota = Quota(
            quota.rate,
            quota.burst,
            overrides=overrides,
            idle_ttl=quota.idle_ttl,
            max_keys=quota.max_keys,
            clock=clock,
            observer=observer_of("quota"),
        )
    if (throttle := policy.throttle) is not None:
        boundary.throttle = Throttle(
            throttle.rate, throttle.burst, max_wait=throttle.max_wait, clock=clock, observer=observer_of("throttle")
        )
    if (bulkhead := policy.bulkhead) is not None:
        boundary.bulkhead = Bulkhead(
            bulkhead.max_concurrent,
            max_wait=bulkhead.max_wait,
            max_waiting=bulkhead.max_waiting,
            retry_after=bulkhead.retry_after,
            clock=clock,
            observer=observer_of("bulkhead"),
        )
    if (per_client := policy.per_client) is not None:
        boundary.per_client = PerClientLimit(
            per_client.max_per_client,
            max_clients=per_client.max_clients,
            retry_after=per_client.retry_after,
            observer=observer_of("per_client"),
        )
    if (limiter := policy.limiter) is not None:
        boundary.limiter = AdaptiveLimiter(
            _algorithm(limiter),
            max_wait=limiter.max_wait,
            retry_after=limiter.retry_after,
            clock=clock,
            observer=observer_of("limiter"),
        )
    if (breaker := policy.breaker) is not None:
        boundary.breaker = CircuitBreaker(
            name,
            failure_rate_threshold=breaker.failure_rate_threshold,
            slow_call_rate_threshold=breaker.slow_call_rate_threshold,
            slow_call_duration_threshold=breaker.slow_call_duration_threshold,
            window_type=breaker.window_type,
            window_size=breaker.window_size,
            minimum_calls=breaker.minimum_calls,
            wait_in_open=breaker.wait_in_open,
            permitted_calls_in_half_open=breaker.permitted_calls_in_half_open,
            max_wait_in_half_open=breaker.max_wait_in_half_open,
            record_exceptions=record_exceptions,
            ignore_exceptions=ignore_exceptions,
            clock=clock,
            observer=observer_of("breaker"),
        )
    if (delivery := policy.delivery) is not None:
        boundary.delivery = DeliveryPolicy(**delivery.model_dump())
    return boundary


def build_boundaries(
    policies: Mapping[str, BoundaryPolicy],
    *,
    clock: Clock | None = None,
    metrics: FlowMetrics | None = None,
) -> dict[str, Boundary]:
    """Build every boundary of a service on one clock and one metrics registry."""
    clock = clock or MonotonicClock()
    return {name: build_boundary(name, policy, clock=clock, metrics=metrics) for name, policy in policies.items()}
