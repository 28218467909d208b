"""The read side's Prometheus series (one set per registry) and the in-process lag of every assigned partition."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ReadsideMetrics:
    """Lag per partition, applied and dead-lettered records, batch durations, pause state, view version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Gauge(
            "readside_consumer_lag",
            "Records in the log not yet applied to the views, per partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.applied = Counter(
            "readside_records_applied", "Records applied to the views (offsets stored).", ["topic"], registry=registry
        )
        self.dead_letters = Counter(
            "readside_dead_letters",
            "Poison records sent to the dead-letter topic.",
            ["topic", "reason"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "readside_batch_duration_seconds",
            "Time to decode, project and commit one batch.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.paused = Gauge(
            "readside_consumer_paused",
            "1 while consumption is paused (database unavailable or slow).",
            registry=registry,
        )
        self.view_version = Gauge("readside_view_version", "The view version being written.", registry=registry)


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, ReadsideMetrics] = weakref.WeakKeyDictionary()


def readside_metrics(registry: CollectorRegistry = REGISTRY) -> ReadsideMetrics:
    """The read side's metrics in ``registry``, created on first use (several apps may share one registry)."""
    metrics = _by_registry.get(registry)
    if metrics is None:
        metrics = _by_registry[registry] = ReadsideMetrics(registry)
    return metrics


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """How far one partition's views are behind its log."""

    topic: str
    partition: int
    applied_offset: int | None
    high_watermark: int | None

    @property
    def lag(self) -> int:
        """Records in the log beyond the applied ones (0 while the log end is unknown)."""
        if self.high_watermark is None:
            return 0
        return max(0, self.high_watermark - (self.applied_offset or 0))


class LagTracker:
    """The consumer's view of its lag, read by the metrics, ``/readyz`` and the query API's freshness."""

    def __init__(self, metrics: ReadsideMetrics | None = None) -> None:
        self._metrics = metrics
        self._partitions: dict[tuple[str, int], PartitionLag] = {}
        self.paused = False
        self.version: int | None = None

    def update(self, topic: str, partition: int, applied_offset: int | None, high_watermark: int | None) -> None:
        """Record the applied offset (next to apply) and the log end of one partition."""
        entry = PartitionLag(topic, partition, applied_offset, high_watermark)
        self._partitions[(topic, partition)] = entry
        if self._metrics is not None:
            self._metrics.lag.labels(topic, str(partition)).set(entry.lag)

    def forget(self, topic: str, partition: int) -> None:
        """The partition went to another consumer: its lag is no longer ours to report."""
        if self._partitions.pop((topic, partition), None) is not None and self._metrics is not None:
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(topic, str(partition))

    def set_paused(self, paused: bool) -> None:
        """Record whether consumption is paused."""
        self.paused = paused
        if self._metrics is not None:
            self._metrics.paused.set(1 if paused else 0)

    def set_version(self, version: int) -> None:
        """Record the view version the consumer writes."""
        self.version = version
        if self._metrics is not None:
            self._metrics.view_version.set(version)

    def get(self, topic: str, partition: int) -> PartitionLag | None:
        """The lag of one partition, if this process consumes it."""
        return self._partitions.get((topic, partition))

    def partitions(self) -> list[PartitionLag]:
        """Every assigned partition's lag, sorted."""
        return [self._partitions[key] for key in sorted(self._partitions)]

    @property
    def total(self) -> int:
        """The sum of all partitions' lag."""
        return sum(entry.lag for entry in self._partitions.values())
