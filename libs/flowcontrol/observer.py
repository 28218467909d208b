"""What a policy reports about its boundary; `metrics.BoundaryMetrics` turns it into Prometheus series.

Policies depend only on this protocol, so they work without Prometheus and tests can pass a
`testing.RecordingObserver`. Counts are per boundary; several policies of one boundary share one
observer (a quota and a bulkhead of the REST ingress both report as `rest_ingress`).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NULL_OBSERVER", "NullObserver", "Observer"]


class Observer(Protocol):
    """Receives the events every policy reports, labelled by the boundary it was built for."""

    def admitted(self, count: int = 1) -> None:
        """`count` units passed the policy (requests, tokens, enqueued items, acked records)."""
        ...

    def rejected(self, reason: str, count: int = 1) -> None:
        """`count` units were refused at once; `reason` is a short stable label (`quota`, ...)."""
        ...

    def dropped(self, strategy: str, count: int = 1) -> None:
        """`count` accepted items were dropped (overflow strategy name or `dead_letter`)."""
        ...

    def buffer_depth(self, depth: int) -> None:
        """Items currently held by a bounded buffer."""
        ...

    def in_flight(self, count: int) -> None:
        """Calls currently holding a permit of a bulkhead or limiter."""
        ...

    def breaker_state(self, state: int) -> None:
        """Circuit breaker state: 0 closed, 1 half-open, 2 open."""
        ...

    def waited(self, seconds: float) -> None:
        """How long a caller waited for admission (throttle, bulkhead, buffer, limiter)."""
        ...

    def limit(self, value: float) -> None:
        """The current limit: an adaptive concurrency limit or a quota's effective rate."""
        ...


class NullObserver:
    """An observer that ignores everything; the default when a policy is built without metrics."""

    def admitted(self, count: int = 1) -> None:
        """Ignore."""

    def rejected(self, reason: str, count: int = 1) -> None:
        """Ignore."""

    def dropped(self, strategy: str, count: int = 1) -> None:
        """Ignore."""

    def buffer_depth(self, depth: int) -> None:
        """Ignore."""

    def in_flight(self, count: int) -> None:
        """Ignore."""

    def breaker_state(self, state: int) -> None:
        """Ignore."""

    def waited(self, seconds: float) -> None:
        """Ignore."""

    def limit(self, value: float) -> None:
        """Ignore."""


NULL_OBSERVER: Observer = NullObserver()
