"""Service metrics beyond the shared ones (HTTP histogram, ``gridhub_flow_*`` of every boundary)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class WorkordersMetrics:
    """Counters of what the service did, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.created = Counter(
            "gridhub_workorders_created_total",
            "Work orders opened, by origin (api, alarm) and customer status at creation.",
            ["origin", "customer"],
            registry=registry,
        )
        self.alarms = Counter(
            "gridhub_workorders_alarms_total",
            "Meter alarms that called for an inspection, by outcome: opened, attached (to the open order of the "
            "meterpoint and alarm type), rate_limited (the meterpoint's limit of alarm orders reached), repeated.",
            ["outcome"],
            registry=registry,
        )
        self.transitions = Counter(
            "gridhub_workorders_transitions_total",
            "Work order transitions performed, by action.",
            ["action"],
            registry=registry,
        )
        self.enriched = Counter(
            "gridhub_workorders_enriched_total",
            "Pending customers filled in from the customers service by the enricher.",
            registry=registry,
        )
        self.enrichment_interrupted = Counter(
            "gridhub_workorders_enrichment_interrupted_total",
            "Enrichment rounds ended early because the customers service was unavailable.",
            registry=registry,
        )
