"""Kafka topic names and their settings: the one place that knows them (the local stack creates topics from here).

A breaking change of an event is a new version and a new topic (``meter.readings.v2``), never an edit here.
"""

from __future__ import annotations

from dataclasses import dataclass

READINGS = "meter.readings.v1"
"""Interval readings (MeterReadingReceived), keyed by meterpoint id."""
METER_EVENTS = "meter.events.v1"
"""Meter alarms (MeterAlarmRaised), keyed by meterpoint id."""
CUSTOMERS = "customers.v1"
"""Customer and meterpoint-link events, keyed by customer id."""
WORKORDERS = "workorders.v1"
"""Work order lifecycle events, keyed by work order id."""
METERPOINTS = "meterpoints.v1"
"""Meterpoint master data (MeterpointRegistered, MeterpointUpdated), keyed by meterpoint id; compacted."""
SERIES = "meter.series.v1"
"""Validated daily series (MeterSeriesValidated), keyed by meterpoint id; every version of every day."""
COMMANDS = "meter.commands.v1"
"""Requests to the sources of meter data (GapFillRequested), keyed by meterpoint id."""

DLQ_SUFFIX = ".dlq"
PARTITIONS = 6

_DAY_MS = 24 * 60 * 60 * 1000
# Readings are the bulk of the volume and the read side keeps them in PostgreSQL, so a week in Kafka is enough
# for replays after an incident; the low-volume entity topics and every DLQ keep a month for investigation.
READINGS_RETENTION_MS = 7 * _DAY_MS
DEFAULT_RETENTION_MS = 30 * _DAY_MS
DLQ_RETENTION_MS = 30 * _DAY_MS


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic`` (``<topic>.dlq``); a DLQ has no DLQ of its own."""
    if topic.endswith(DLQ_SUFFIX):
        raise ValueError(f"{topic!r} is already a dead-letter topic")
    return topic + DLQ_SUFFIX


def is_dlq(topic: str) -> bool:
    """True for a dead-letter topic."""
    return topic.endswith(DLQ_SUFFIX)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partition count, retention (``retention.ms``, -1 = forever) and whether it is
    compacted (the newest record per key is kept for good: master data a consumer rebuilds its view from)."""

    name: str
    partitions: int
    retention_ms: int
    compacted: bool = False

    def config(self) -> dict[str, str]:
        """Topic-level configs as Kafka admin clients take them."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": "compact" if self.compacted else "delete"}


EVENT_TOPICS: tuple[str, ...] = (READINGS, METER_EVENTS, CUSTOMERS, WORKORDERS, METERPOINTS, SERIES, COMMANDS)
"""The topics that carry events (without their DLQs)."""

# A gap-fill request is worth nothing after a week: the sources hold weeks of history, and the validation stage
# asks again while the gap is open.
_RETENTION_MS = {READINGS: READINGS_RETENTION_MS, METERPOINTS: -1, COMMANDS: READINGS_RETENTION_MS}
COMPACTED: frozenset[str] = frozenset({METERPOINTS})
"""Topics whose consumers rebuild state from the newest record per key (read them from the beginning)."""

TOPICS: tuple[TopicSpec, ...] = tuple(
    spec
    for name in EVENT_TOPICS
    for spec in (
        TopicSpec(name, PARTITIONS, _RETENTION_MS.get(name, DEFAULT_RETENTION_MS), compacted=name in COMPACTED),
        TopicSpec(dlq(name), PARTITIONS, DLQ_RETENTION_MS),
    )
)
"""Every topic GridHub needs, each event topic followed by its DLQ."""


def topic_spec(name: str) -> TopicSpec:
    """The spec of a known topic (KeyError for an unknown one)."""
    for spec in TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(name)
