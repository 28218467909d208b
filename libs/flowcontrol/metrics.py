"""The same Prometheus series for every boundary, whatever policies it uses.

`FlowMetrics(registry)` creates the series once per registry (tests pass their own
`CollectorRegistry`); `FlowMetrics.boundary(name)` returns an `Observer` whose label children are
created once, so reporting costs one method call on the hot path.
"""

from __future__ import annotations

import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WAIT_BUCKETS", "BoundaryMetrics", "FlowMetrics"]

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, FlowMetrics] = weakref.WeakKeyDictionary()


class FlowMetrics:
    """The `gridhub_flow_*` series in one registry; use `FlowMetrics.for_registry()` to share them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        # Labelled by policy too: a request passing a boundary's quota and its bulkhead is admitted twice, once
        # by each, and a sum over policies would count it twice.
        self.admitted = Counter(
            "gridhub_flow_admitted",
            "Units admitted by a flow-control policy.",
            ["boundary", "policy"],
            registry=registry,
        )
        self.rejected = Counter(
            "gridhub_flow_rejected",
            "Units refused at once, by reason.",
            ["boundary", "reason"],
            registry=registry,
        )
        self.dropped = Counter(
            "gridhub_flow_dropped",
            "Accepted items dropped, by overflow strategy or dead_letter.",
            ["boundary", "strategy"],
            registry=registry,
        )
        self.buffer_depth = Gauge(
            "gridhub_flow_buffer_depth", "Items held by a bounded buffer.", ["boundary"], registry=registry
        )
        self.in_flight = Gauge(
            "gridhub_flow_in_flight", "Calls holding a concurrency permit.", ["boundary"], registry=registry
        )
        self.breaker_state = Gauge(
            "gridhub_flow_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["boundary"],
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "gridhub_flow_wait_seconds",
            "Time callers waited for admission.",
            ["boundary"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.limit = Gauge(
            "gridhub_flow_limit", "Current concurrency limit (bulkhead or adaptive).", ["boundary"], registry=registry
        )
        self._boundaries: dict[tuple[str, str], BoundaryMetrics] = {}

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> FlowMetrics:
        """The one `FlowMetrics` of `registry` (default: the global one), created on first use."""
        registry = REGISTRY if registry is None else registry
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = cls(registry)
        return metrics

    def boundary(self, name: str, policy: str = "unspecified") -> BoundaryMetrics:
        """The observer for `policy` (quota, bulkhead, ...) of boundary `name` (one per pair)."""
        observer = self._boundaries.get((name, policy))
        if observer is None:
            observer = self._boundaries[(name, policy)] = BoundaryMetrics(self, name, policy)
        return observer


class BoundaryMetrics:
    """An `Observer` writing one boundary's label set."""

    def __init__(self, metrics: FlowMetrics, boundary: str, policy: str = "unspecified") -> None:
        self.boundary = boundary
        self.policy = policy
        self._metrics = metrics
        self._admitted = metrics.admitted.labels(boundary, policy)
        self._depth = metrics.buffer_depth.labels(boundary)
        self._in_flight = metrics.in_flight.labels(boundary)
        self._breaker = metrics.breaker_state.labels(boundary)
        self._wait = metrics.wait_seconds.labels(boundary)
        self._limit = metrics.limit.labels(boundary)
        self._rejected: dict[str, Counter] = {}
        self._dropped: dict[str, Counter] = {}

    def admitted(self, count: int = 1) -> None:
        """Count admitted units."""
        self._admitted.inc(count)

    def rejected(self, reason: str, count: int = 1) -> None:
        """Count refusals by reason."""
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._metrics.rejected.labels(self.boundary, reason)
        child.inc(count)

    def dropped(self, strategy: str, count: int = 1) -> None:
        """Count drops by strategy."""
        child = self._dropped.get(strategy)
        if child is None:
            child = self._dropped[strategy] = self._metrics.dropped.labels(self.boundary, strategy)
        child.inc(count)

    def buffer_depth(self, depth: int) -> None:
        """Set the buffer depth."""
        self._depth.set(depth)

    def in_flight(self, count: int) -> None:
        """Set the in-flight count."""
        self._in_flight.set(count)

    def breaker_state(self, state: int) -> None:
        """Set the breaker state code."""
        self._breaker.set(int(state))

    def waited(self, seconds: float) -> None:
        """Observe a wait."""
        self._wait.observe(seconds)

    def limit(self, value: float) -> None:
        """Set the current limit."""
        self._limit.set(value)
