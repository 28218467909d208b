"""Errors raised by flow-control policies.

Every refusal of admission is a `Refused` with a stable `reason` (the metrics label) and, where it
is known, `retry_after` in seconds, so an adapter maps any of them the same way: 429 or 503 with
`Retry-After` over HTTP, a SOAP fault, a paused consumer.
"""

from __future__ import annotations

__all__ = [
    "BufferClosed",
    "BufferFull",
    "BufferOverflow",
    "BulkheadFull",
    "CallNotPermitted",
    "ClientBusy",
    "FlowControlError",
    "LimitExceeded",
    "QuotaExceeded",
    "Refused",
    "Throttled",
]


class FlowControlError(Exception):
    """Base class of all flow-control errors."""


class Refused(FlowControlError):
    """Admission was refused at once; try again after `retry_after` seconds (None: unknown)."""

    reason: str = "refused"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(Refused):
    """A key spent its token-bucket quota."""

    reason = "quota"


class Throttled(Refused):
    """A throttle's wait would pass the caller's deadline or the throttle's max wait."""

    reason = "throttle"


class BulkheadFull(Refused):
    """No bulkhead permit became free within the max wait."""

    reason = "bulkhead_full"


class ClientBusy(Refused):
    """One client already has as many calls in flight as it may (`PerClientLimit`)."""

    reason = "client_busy"


class LimitExceeded(Refused):
    """An adaptive concurrency limiter had no free permit within the max wait."""

    reason = "limit"


class CallNotPermitted(Refused):
    """A circuit breaker is open, or half-open with all its trial calls taken."""

    reason = "breaker_open"


class BufferFull(Refused):
    """A non-waiting put found a `backpressure` buffer full."""

    reason = "buffer_full"


class BufferOverflow(FlowControlError):
    """A buffer with the `fail` strategy overflowed; the buffer is failed from then on (Akka)."""


class BufferClosed(FlowControlError):
    """The buffer was closed: no more puts; gets fail once the remaining items are taken."""
