"""Topic names, dead-letter topics and the settings the local stack creates them with."""

from __future__ import annotations

import pytest

from libs.events import topics

DAY_MS = 86_400_000


def test_the_event_topics_have_their_agreed_names() -> None:
    assert topics.EVENT_TOPICS == (
        "meter.readings.v1",
        "meter.events.v1",
        "customers.v1",
        "workorders.v1",
        "meterpoints.v1",
        "meter.series.v1",
        "meter.commands.v1",
    )


def test_a_dead_letter_topic_is_the_topic_with_dlq_appended() -> None:
    assert topics.dlq(topics.READINGS) == "meter.readings.v1.dlq"
    assert topics.is_dlq("meter.readings.v1.dlq")
    assert not topics.is_dlq(topics.READINGS)


def test_a_dead_letter_topic_has_no_dead_letter_topic() -> None:
    with pytest.raises(ValueError, match="already a dead-letter topic"):
        topics.dlq("customers.v1.dlq")


def test_every_topic_and_its_dlq_is_listed_with_six_partitions() -> None:
    names = [spec.name for spec in topics.TOPICS]
    assert sorted(names) == sorted([*topics.EVENT_TOPICS, *map(topics.dlq, topics.EVENT_TOPICS)])
    assert len(set(names)) == len(names) == 14
    assert all(spec.partitions == 6 for spec in topics.TOPICS)


def test_retention_is_a_week_for_readings_and_a_month_for_the_rest() -> None:
    assert topics.topic_spec(topics.READINGS).retention_ms == 7 * DAY_MS
    for name in (topics.METER_EVENTS, topics.CUSTOMERS, topics.WORKORDERS):
        assert topics.topic_spec(name).retention_ms == 30 * DAY_MS
    for name in map(topics.dlq, topics.EVENT_TOPICS):
        assert topics.topic_spec(name).retention_ms == 30 * DAY_MS
    assert topics.topic_spec(topics.READINGS).config() == {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete"}


def test_meterpoint_master_data_is_compacted_and_kept_for_good() -> None:
    assert topics.topic_spec(topics.METERPOINTS).config() == {"retention.ms": "-1", "cleanup.policy": "compact"}
    assert topics.topic_spec(topics.dlq(topics.METERPOINTS)).config()["cleanup.policy"] == "delete"


def test_an_unknown_topic_has_no_spec() -> None:
    with pytest.raises(KeyError):
        topics.topic_spec("meter.readings.v0")
