"""Ack/nack delivery for consumers: retry what may succeed, dead-letter what never will, move on.

A handler signals with exceptions: return normally to ack, `raise Nack(reason)`
when a retry may help, `raise Reject(reason)` when it never will. `deliver()` retries `Nack` with
exponential backoff and jitter up to `max_attempts`, then returns a `DeadLetter`; `Reject` is
dead-lettered at once. Either way the caller publishes the dead letter, commits, and moves on, so
one poison record never blocks its partition. Exceptions in `halt_on` (by default `Refused`: a
dependency's breaker or bulkhead said no, i.e. the *dependency* is down, not the record) propagate:
the caller must pause and redeliver, never skip.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from libs.flowcontrol.clock import Clock, MonotonicClock
from libs.flowcontrol.errors import Refused
from libs.flowcontrol.observer import NULL_OBSERVER, Observer

__all__ = [
    "Acked",
    "DeadLetter",
    "DeliveryPolicy",
    "Nack",
    "Reject",
    "SourceRecord",
    "deliver",
    "dlq_headers",
    "dlq_topic",
]

logger = logging.getLogger(__name__)
Headers = tuple[tuple[str, bytes], ...]


class Nack(Exception):
    """The record could not be handled now; a retry may help (a lock timeout, a flaky peer)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reject(Exception):
    """The record can never be handled (invalid, unknown schema); dead-letter it at once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """Where a record came from and its original bytes, kept verbatim for the dead-letter topic.

    `partition` and `offset` are None for sources without them (an MQTT message, an FTP line).
    """

    topic: str
    partition: int | None
    offset: int | None
    value: bytes | None
    key: bytes | None = None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How often and how patiently to retry a nacked record.

    The wait after failed attempt `n` is `min(max_backoff, base_backoff * multiplier**(n-1))`,
    shortened by a random fraction up to `jitter` (so it lies in `[(1 - jitter) * d, d]`).
    Unexpected exceptions are retried like `Nack` unless `retry_unexpected` is False.
    """

    max_attempts: int = 5
    base_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_unexpected: bool = True
    halt_on: tuple[type[BaseException], ...] = field(default=(Refused,))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_backoff < 0 or self.max_backoff < self.base_backoff or self.multiplier < 1:
            raise ValueError("need 0 <= base_backoff <= max_backoff and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_backoff, self.base_backoff * self.multiplier ** (attempt - 1))
        draw = rng.random() if rng is not None else random.random()
        return ceiling * (1.0 - self.jitter * draw)

    def max_total_backoff(self) -> float:
        """The longest a record can spend in backoff; keep it well under `max.poll.interval.ms`."""
        return sum(
            min(self.max_backoff, self.base_backoff * self.multiplier ** (n - 1)) for n in range(1, self.max_attempts)
        )


@dataclass(frozen=True, slots=True)
class Acked:
    """The handler succeeded; commit the record."""

    record_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The record goes to the dead-letter topic; commit it and move on.

    `error` is the qualified class of the underlying error: the `__cause__` of a `Nack`/`Reject`
    raised `from` another exception, else the exception itself.
    """

    record_id: str
    reason: str
    attempts: int
    error: str
    source: SourceRecord | None
    failed_at: datetime

    @property
    def topic(self) -> str | None:
        """The dead-letter topic: `<source topic>.dlq`."""
        return None if self.source is None else dlq_topic(self.source.topic)

    def headers(self) -> list[tuple[str, bytes]]:
        """The dead-letter record's headers; see `dlq_headers`."""
        return dlq_headers(self)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic for `topic`."""
    return f"{topic}.dlq"


def dlq_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers (minus any earlier `dlq.*`) followed by the `dlq.*` headers."""
    original = dead.source.headers if dead.source is not None else ()
    headers = [(name, value) for name, value in original if not name.startswith("dlq.")]
    fields: list[tuple[str, object]] = [
        ("dlq.reason", dead.reason),
        ("dlq.attempts", dead.attempts),
        ("dlq.error", dead.error),
        ("dlq.record_id", dead.record_id),
        ("dlq.failed_at", dead.failed_at.isoformat()),
    ]
    if dead.source is not None:
        fields += [
            ("dlq.source.topic", dead.source.topic),
            ("dlq.source.partition", dead.source.partition),
            ("dlq.source.offset", dead.source.offset),
        ]
    headers += [(name, str(value).encode()) for name, value in fields if value is not None]
    return headers


def _error_class(error: BaseException) -> str:
    if isinstance(error, Nack | Reject) and error.__cause__ is not None:
        error = error.__cause__
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def deliver(
    record_id: str,
    handler: Callable[[], Awaitable[object]],
    *,
    policy: DeliveryPolicy,
    source: SourceRecord | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    observer: Observer | None = None,
    wall_clock: Callable[[], datetime] = _utcnow,
) -> Acked | DeadLetter:
    """Run `handler` for one record under `policy`; return `Acked` or a `DeadLetter`.

    Exceptions in `policy.halt_on` and `CancelledError` propagate: nothing is decided, the
    caller must not commit the record.
    """
    clock = clock or MonotonicClock()
    observer = observer or NULL_OBSERVER
    attempt = 0
    while True:
        attempt += 1
        try:
            await handler()
        except policy.halt_on:
            raise
        except Reject as error:
            return _dead(record_id, error.reason, attempt, error, source, observer, wall_clock)
        except Exception as error:
            retryable = isinstance(error, Nack) or policy.retry_unexpected
            reason = error.reason if isinstance(error, Nack) else f"{type(error).__name__}: {error}"
            if not retryable or attempt >= policy.max_attempts:
                return _dead(record_id, reason, attempt, error, source, observer, wall_clock)
            delay = policy.backoff(attempt, rng)
            observer.rejected("nack")
            logger.warning("record %s attempt %d failed (%s); retry in %.3fs", record_id, attempt, reason, delay)
            await clock.sleep(delay)
        else:
            observer.admitted()
            return Acked(record_id, attempt)


def _dead(
    record_id: str,
    reason: str,
    attempts: int,
    error: BaseException,
    source: SourceRecord | None,
    observer: Observer,
    wall_clock: Callable[[], datetime],
) -> DeadLetter:
    observer.dropped("dead_letter")
    logger.error("record %s dead-lettered after %d attempt(s): %s", record_id, attempts, reason)
    return DeadLetter(record_id, reason, attempts, _error_class(error), source, wall_clock())
