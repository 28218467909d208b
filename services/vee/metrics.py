"""The VEE service's own Prometheus series (the boundaries' series come from libs/flowcontrol)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

# From the reading's CloudEvent `time` (when the edge accepted it) to its interval stored: seconds to minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class VeeMetrics:
    stored_latency: Histogram
    stored: Counter
    duplicates: Counter
    missing: Counter
    held: Counter
    unvalidated: Counter
    published: Counter
    gap_requests: Counter
    batch_seconds: Histogram


def vee_metrics(registry: CollectorRegistry) -> VeeMetrics:
    return VeeMetrics(
        stored_latency=Histogram(
            "gridhub_vee_reading_stored_latency_seconds",
            "From a reading's CloudEvent time to its interval stored by the validation stage.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        stored=Counter("gridhub_vee_intervals_stored", "Interval versions stored.", registry=registry),
        duplicates=Counter(
            "gridhub_vee_duplicate_readings", "Readings identical to the interval's current version.", registry=registry
        ),
        missing=Counter(
            "gridhub_vee_missing_readings",
            "Readings of quality 'missing' (no value from the source): left a gap, not stored as a measured 0.",
            registry=registry,
        ),
        held=Counter(
            "gridhub_vee_held_readings",
            "Readings kept until their meterpoint's master data arrives.",
            registry=registry,
        ),
        unvalidated=Counter(
            "gridhub_vee_unvalidated_readings",
            "Readings counted but not validated (reactive registers, registers without a series).",
            registry=registry,
        ),
        published=Counter(
            "gridhub_vee_days_published", "Day versions published, by reason.", ["reason"], registry=registry
        ),
        gap_requests=Counter("gridhub_vee_gap_requests", "GapFillRequested events written.", registry=registry),
        batch_seconds=Histogram(
            "gridhub_vee_batch_seconds", "One consumed batch applied (one transaction).", registry=registry
        ),
    )
