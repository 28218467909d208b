"""Events to Kafka records and back, and the InvalidEvent reasons a dead-letter queue records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.events import (
    CONTENT_TYPE,
    CloudEvent,
    CustomerRegistered,
    InvalidEvent,
    InvalidReason,
    KafkaRecord,
    MeterAlarmRaised,
    MeterReadingReceived,
    Quality,
    Register,
    Resolution,
    Unit,
    decode,
    encode,
    from_record,
    make_event,
    to_record,
    topics,
    with_check_digit,
)
from libs.events.examples import example_events

EXAMPLES = example_events()
READING = EXAMPLES[0]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: event.type)
def test_every_event_survives_a_round_trip_through_a_record(event: CloudEvent[Any]) -> None:
    record = to_record(event)
    parsed = from_record(record.value, record.headers, record.key)
    assert parsed == event
    assert type(parsed.data) is type(event.data)


def test_a_record_carries_topic_key_value_and_headers() -> None:
    record = to_record(READING)
    assert isinstance(record, KafkaRecord)
    assert record.topic == topics.READINGS
    assert record.key == b"571313180400000025"
    assert record.headers == [
        ("content-type", b"application/cloudevents+json"),
        ("ce_type", b"gridhub.meter.reading.received"),
    ]
    value = orjson.loads(record.value)
    assert value["specversion"] == "1.0"
    assert value["subject"] == "571313180400000025"
    assert value["datacontenttype"] == "application/json"
    assert value["schemaversion"] == 1
    assert value["time"] == "2025-03-01T10:16:00Z"
    assert value["data"]["value"] == 0.412
    assert value["data"]["interval_end"] == "2025-03-01T10:15:00Z"


def test_each_record_gets_its_own_header_list() -> None:
    first, second = to_record(READING), to_record(READING)
    first.headers.append(("traceparent", b"00-x"))
    assert len(second.headers) == 2


@pytest.mark.parametrize(
    ("event_index", "topic"),
    [(0, topics.READINGS), (1, topics.METER_EVENTS), (2, topics.CUSTOMERS), (6, topics.WORKORDERS)],
)
def test_events_go_to_their_topic_keyed_by_their_subject(event_index: int, topic: str) -> None:
    event = EXAMPLES[event_index]
    record = to_record(event)
    assert record.topic == topic
    assert record.key == event.subject.encode()


def test_records_without_headers_or_key_are_accepted() -> None:
    assert from_record(to_record(READING).value) == READING


def test_a_content_type_with_parameters_is_accepted() -> None:
    record = to_record(READING)
    assert from_record(record.value, [("content-type", f"{CONTENT_TYPE}; charset=utf-8".encode())]) == READING


def test_typed_decoding_returns_the_expected_payload_type() -> None:
    event = decode(to_record(READING).value, MeterReadingReceived)
    assert event.data.value == 0.412
    assert from_record(to_record(READING).value, (), None, MeterReadingReceived) == READING


def reason_of(value: bytes | None, **kwargs: Any) -> InvalidReason:
    with pytest.raises(InvalidEvent) as caught:
        from_record(value, **kwargs)
    return caught.value.reason


def with_envelope(**changes: Any) -> bytes:
    document = orjson.loads(encode(READING))
    document.update(changes)
    return orjson.dumps(document)


@pytest.mark.parametrize("value", [None, b""])
def test_an_empty_value_is_refused(value: bytes | None) -> None:
    assert reason_of(value) is InvalidReason.EMPTY


@pytest.mark.parametrize("value", [b"\x00\x01garbage", b"{", b"not json", b'{"id": 1,}', "é".encode("latin-1")])
def test_garbage_bytes_are_invalid_json(value: bytes) -> None:
    assert reason_of(value) is InvalidReason.INVALID_JSON


@pytest.mark.parametrize("event_type", ["gridhub.meter.reading.deleted", "", 7])
def test_an_unknown_type_is_named_as_such(event_type: object) -> None:
    assert reason_of(with_envelope(type=event_type)) is InvalidReason.UNKNOWN_TYPE


@pytest.mark.parametrize("value", [b"[]", b"42", b'"x"', b"{}", b'{"id": "x"}'])
def test_json_that_is_no_event_is_a_schema_violation(value: bytes) -> None:
    assert reason_of(value) is InvalidReason.SCHEMA_VIOLATION


def test_a_newer_schema_version_is_unsupported_not_garbage() -> None:
    assert reason_of(with_envelope(schemaversion=2)) is InvalidReason.UNSUPPORTED_VERSION


def test_a_schema_violation_names_the_fields_and_the_event_type() -> None:
    document = orjson.loads(encode(READING))
    document["data"]["value"] = -1e12
    document["data"]["unit"] = "litre"
    with pytest.raises(InvalidEvent) as caught:
        decode(orjson.dumps(document))
    error = caught.value
    assert error.reason is InvalidReason.SCHEMA_VIOLATION
    assert error.event_type == "gridhub.meter.reading.received"
    assert "data.value" in error.detail
    assert "data.unit" in error.detail
    assert str(error).startswith("schema_violation: ")


def test_the_detail_never_echoes_input_values() -> None:
    # Customer events carry personal data; a DLQ header must not copy it.
    customer = next(event for event in EXAMPLES if isinstance(event.data, CustomerRegistered))
    document = orjson.loads(encode(customer))
    document["data"]["contact"]["email"] = "mette.hansen-at-example.dk"
    document["data"]["name"] = ""
    with pytest.raises(InvalidEvent) as caught:
        decode(orjson.dumps(document))
    assert "mette" not in caught.value.detail
    assert "data.contact.email" in caught.value.detail
    assert len(caught.value.detail) <= 500


def test_a_foreign_content_type_is_refused() -> None:
    headers = [("content-type", b"application/json")]
    assert reason_of(to_record(READING).value, headers=headers) is InvalidReason.UNSUPPORTED_CONTENT_TYPE


def test_a_ce_type_header_that_disagrees_with_the_value_is_refused() -> None:
    headers = [("ce_type", b"gridhub.meter.alarm.raised")]
    assert reason_of(to_record(READING).value, headers=headers) is InvalidReason.HEADER_MISMATCH


def test_a_key_that_disagrees_with_the_subject_is_refused() -> None:
    key = with_check_digit("57131318040000917").encode()
    assert reason_of(to_record(READING).value, key=key) is InvalidReason.KEY_MISMATCH


def test_another_event_type_than_expected_is_refused() -> None:
    alarm = to_record(EXAMPLES[1]).value
    assert reason_of(alarm, expect=MeterReadingReceived) is InvalidReason.UNEXPECTED_TYPE
    with pytest.raises(InvalidEvent) as caught:
        decode(alarm, MeterReadingReceived)
    assert caught.value.event_type == "gridhub.meter.reading.received"


def test_an_expected_type_with_bad_data_is_a_schema_violation() -> None:
    document = orjson.loads(encode(EXAMPLES[1]))
    document["data"]["alarm"] = "smoke"
    with pytest.raises(InvalidEvent) as caught:
        decode(orjson.dumps(document), MeterAlarmRaised)
    assert caught.value.reason is InvalidReason.SCHEMA_VIOLATION
    assert "data.alarm" in caught.value.detail


def test_a_timestamp_written_with_an_offset_decodes_to_the_same_event() -> None:
    document = orjson.loads(encode(READING))
    document["time"] = "2025-03-01T11:16:00+01:00"
    document["data"]["interval_end"] = "2025-03-01T11:15:00+01:00"
    assert decode(orjson.dumps(document)) == READING


readings = st.builds(
    MeterReadingReceived.create,
    meterpoint_id=st.from_regex(r"\A57[0-9]{15}\Z").map(with_check_digit),
    register=st.sampled_from([Register.REACTIVE_IMPORT, Register.REACTIVE_EXPORT]),
    interval_end=st.datetimes(
        min_value=datetime(2020, 1, 1),
        max_value=datetime(2040, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-3, minutes=-30))]),
    ),
    resolution=st.sampled_from(list(Resolution)),
    value=st.decimals(min_value=0, max_value="999999999.999", places=3).map(float),
    unit=st.sampled_from([Unit.VARH, Unit.KVARH, Unit.MVARH]),
    quality=st.sampled_from([Quality.MEASURED, Quality.ESTIMATED]),
    source=st.from_regex(r"\A[a-z0-9][a-z0-9.:-]{0,30}\Z"),
)


@given(readings)
def test_any_reading_survives_a_round_trip_exactly(reading: MeterReadingReceived) -> None:
    event = make_event(reading, source="/gridhub/collection")
    record = to_record(event)
    parsed = from_record(record.value, record.headers, record.key, MeterReadingReceived)
    assert parsed == event
    assert parsed.data.value == reading.value  # 3-decimal values cross JSON exactly
    assert parsed.data.interval_end.utcoffset() == timedelta(0)
    assert parsed.id == reading.reading_id
