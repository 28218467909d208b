"""MQTT messages without a broker: what each message turns into, and when the ingress acknowledges it.

The ingress's asyncio half is driven directly (a fake paho client records acks; a fake clock stands in for
time), so the rules are exact: ack only after the publisher returned, never on a lost connection, park a
device over its quota in its own small lane and record what does not fit in the DLQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from libs.events.records import KafkaRecord
from libs.flowcontrol.buffer import BoundedBuffer
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock
from services.collection.adapters.kafka import PublishFailed
from services.collection.domain import Accepted, ValidationRules
from services.collection.entrypoints.mqtt import Delivery, MqttIngress
from services.collection.handlers import MqttMessage, Pipeline, prepare_message
from services.collection.metrics import CollectionMetrics
from services.collection.settings import MqttSettings
from tests.unit.collection.scoping import assigned_view

METERPOINT = "571313180400000025"
OTHER = "571313180400009172"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PIPELINE = Pipeline(rules=ValidationRules(), event_source="/gridhub/collection", max_batch_items=100)
TOPIC = f"gridhub/meters/{METERPOINT}/readings"


def reading(**changes: Any) -> dict[str, Any]:
    item = {
        "meterpoint_id": METERPOINT,
        "register": "active_import",
        "interval_end": "2025-03-01T10:15:00Z",
        "resolution": "PT15M",
        "value": 0.412,
        "unit": "kWh",
        "quality": "measured",
    }
    return {**item, **changes}


def prepare(payload: bytes, topic: str = TOPIC, **limits: int) -> Any:
    return prepare_message(
        MqttMessage(topic, payload, NOW, "collection-0/1/7"),
        pipeline=PIPELINE,
        topic_prefix="gridhub/meters",
        max_items=limits.get("max_items", 3),
        max_payload_bytes=limits.get("max_payload_bytes", 4096),
    )


def letter_of(prepared: Any) -> KafkaRecord:
    [letter] = [r for r in prepared.records if r.topic.endswith(".dlq")]
    return letter  # type: ignore[no-any-return]


def test_one_reading_or_a_small_batch_becomes_events() -> None:
    single = prepare(orjson.dumps(reading()))
    assert [r.topic for r in single.records] == ["meter.readings.v1"]
    assert (single.device, single.cost, single.dead_lettered) == (METERPOINT, 1, False)
    batch = prepare(orjson.dumps([reading(), reading(interval_end="2025-03-01T10:30:00Z")]))
    assert [r.topic for r in batch.records] == ["meter.readings.v1"] * 2
    assert batch.cost == 2


def test_alarms_come_on_the_events_topic() -> None:
    alarm = {"meterpoint_id": METERPOINT, "alarm": "tamper", "raised_at": "2025-03-01T11:00:00Z"}
    prepared = prepare(orjson.dumps(alarm), topic=f"gridhub/meters/{METERPOINT}/events")
    assert [r.topic for r in prepared.records] == ["meter.events.v1"]
    garbage = prepare(b"nope", topic=f"gridhub/meters/{METERPOINT}/events")
    assert letter_of(garbage).topic == "meter.events.v1.dlq"


@pytest.mark.parametrize(
    ("payload", "topic", "reason"),
    [
        (b"{not json", TOPIC, b"invalid_json"),
        (b'"hello"', TOPIC, b"not_a_batch"),
        (b"[]", TOPIC, b"empty_batch"),
        (orjson.dumps([reading()] * 4), TOPIC, b"too_many_items"),
        (orjson.dumps(reading(meterpoint_id=OTHER)), TOPIC, b"meterpoint_mismatch"),
        (orjson.dumps([reading(), reading(meterpoint_id=OTHER)]), TOPIC, b"meterpoint_mismatch"),
        (orjson.dumps(reading()), "gridhub/meters/571313180400000024/readings", b"invalid_meterpoint"),
        (orjson.dumps(reading()), f"gridhub/meters/{METERPOINT}/status", b"unknown_topic"),
    ],
)
def test_a_refused_message_goes_whole_to_the_dlq_with_its_reason(payload: bytes, topic: str, reason: bytes) -> None:
    prepared = prepare(payload, topic=topic)
    assert prepared.dead_lettered
    assert [r.topic for r in prepared.records] == ["meter.readings.v1.dlq"]
    letter = letter_of(prepared)
    headers = dict(letter.headers)
    assert letter.value == payload
    assert headers["dlq.reason"] == reason
    assert headers["dlq.source.topic"] == f"mqtt:{topic}".encode()
    assert headers["gridhub.ingress"] == b"mqtt"
    assert headers["dlq.detail"]


def test_partly_invalid_batch_publishes_the_good_and_records_the_bad() -> None:
    payload = orjson.dumps([reading(), reading(interval_end="2025-03-01T10:20:00Z"), reading(value=-1_000_000_000)])
    prepared = prepare(payload)
    assert [r.topic for r in prepared.records] == ["meter.readings.v1", "meter.readings.v1.dlq"]
    headers = dict(letter_of(prepared).headers)
    assert headers["dlq.reason"] == b"misaligned_interval"
    assert headers["dlq.rejected_items"] == b"1,2"
    assert b"item 2: value_out_of_range" in headers["dlq.detail"]
    assert isinstance(prepared.outcomes[0], Accepted)


def test_an_oversized_payload_is_refused_and_truncated_in_the_dlq() -> None:
    payload = orjson.dumps([reading()] * 3)
    prepared = prepare(payload, max_payload_bytes=100)
    letter = letter_of(prepared)
    assert dict(letter.headers)["dlq.reason"] == b"too_large"
    assert letter.value == payload[:100]
    assert dict(letter.headers)["dlq.truncated_from"] == str(len(payload)).encode()


# --- the ingress's asyncio half --------------------------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


class ScriptedPublisher:
    """Raises the scripted errors one call at a time, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.published: list[KafkaRecord] = []
        self.calls = 0

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.published.extend(records)


def ingress(
    publisher: ScriptedPublisher,
    clock: FakeClock,
    quota: Quota | None = None,
    *,
    registry: CollectorRegistry | None = None,
    **mqtt: Any,
) -> tuple[MqttIngress, Any]:
    buffer: BoundedBuffer[Delivery] = BoundedBuffer(10)
    subject = MqttIngress(
        MqttSettings(max_readings_per_message=3, **mqtt),
        publisher=publisher,
        pipeline=PIPELINE,
        quota=quota if quota is not None else Quota(100, 100, clock=clock),
        buffer_factory=lambda: buffer,
        metrics=CollectionMetrics(registry or CollectorRegistry()),
        clock=clock,
        wall_clock=lambda: NOW,
    )
    client = FakeClient()
    subject._client = client  # type: ignore[assignment]
    subject._buffer = buffer
    subject._generation = 1
    return subject, client


def delivery(mid: int, payload: bytes | None = None, generation: int = 1) -> Delivery:
    return Delivery(TOPIC, payload or orjson.dumps(reading()), mid, 1, generation)


async def test_acks_only_after_kafka_took_the_batch_and_retries_while_it_does_not() -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher(CallNotPermitted("open", retry_after=5.0), PublishFailed("timed out"))
    subject, client = ingress(publisher, clock)
    await clock.run(subject._process([delivery(1), delivery(2, b"garbage")]))
    assert publisher.calls == 3
    assert client.acks == [(1, 1), (2, 1)]
    assert [r.topic for r in publisher.published] == ["meter.readings.v1", "meter.readings.v1.dlq"]


async def test_nothing_is_acked_while_kafka_refuses() -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher(*[CallNotPermitted("open", retry_after=1.0)] * 100)
    subject, client = ingress(publisher, clock)
    with pytest.raises(RuntimeError, match="past max_elapsed"):
        await clock.run(subject._process([delivery(1)]), max_elapsed=30.0)
    assert publisher.calls > 10
    assert client.acks == []


async def test_a_message_of_a_lost_connection_is_not_acked_on_the_new_one() -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher(PublishFailed("down"))
    subject, client = ingress(publisher, clock)
    task = asyncio.create_task(subject._process([delivery(1)]))
    await clock.settle()
    assert publisher.calls == 1
    subject._generation = 2  # reconnected while the publish was failing: the broker redelivers message 1
    await clock.advance(10.0)
    await task
    assert publisher.calls == 1, "no retry for a message the broker will redeliver anyway"
    assert client.acks == []
    await subject._process([delivery(3, generation=1)])  # arriving stale: not even published
    assert publisher.calls == 1


async def test_a_device_over_its_quota_parks_a_few_messages_in_its_lane_released_at_its_rate() -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher()
    quota = Quota(1.0, 2, clock=clock)  # 1 reading per second, burst 2
    subject, client = ingress(publisher, clock, quota)
    releases = asyncio.create_task(subject._lanes.run(subject._release))
    await subject._process([delivery(1, orjson.dumps([reading(), reading(interval_end="2025-03-01T10:30:00Z")]))])
    await subject._process([delivery(2, orjson.dumps(reading(interval_end="2025-03-01T10:45:00Z")))])
    assert client.acks == [(1, 1)]  # message 2 waits in the device's lane, its PUBACK with it
    assert len(subject._lanes) == 1
    assert subject._buffer is not None
    await clock.settle()
    assert len(subject._buffer) == 0
    await clock.advance(1.0)
    [released] = subject._buffer.drain()
    assert released.mid == 2
    assert released.quota_paid
    await subject._process([released])
    assert client.acks == [(1, 1), (2, 1)]
    assert [r.topic for r in publisher.published] == ["meter.readings.v1"] * 3
    assert len(subject._lanes) == 0
    releases.cancel()
    await asyncio.gather(releases, return_exceptions=True)


async def test_beyond_its_lane_a_device_over_its_quota_goes_to_the_dlq_as_quota_exceeded_and_is_acked() -> None:
    clock = FakeClock()
    publisher = ScriptedPublisher()
    quota = Quota(1.0, 1, clock=clock)
    registry = CollectorRegistry()
    subject, client = ingress(publisher, clock, quota, registry=registry, quota_lanes=1, quota_lane_messages=1)
    quarters = ["2025-03-01T10:15:00Z", "2025-03-01T10:30:00Z", "2025-03-01T10:45:00Z"]
    await subject._process([delivery(n + 1, orjson.dumps(reading(interval_end=end))) for n, end in enumerate(quarters)])
    # 1 passes, 2 parks (the lane's one place), 3 finds no room: its original payload goes to the DLQ.
    assert client.acks == [(1, 1), (3, 1)]
    readings, letter = publisher.published
    assert readings.topic == "meter.readings.v1"
    assert letter.topic == "meter.readings.v1.dlq"
    assert letter.value == orjson.dumps(reading(interval_end=quarters[2]))
    headers = dict(letter.headers)
    assert headers["dlq.reason"] == b"quota_exceeded"
    assert letter.key == METERPOINT.encode()
    # Another device with its own tokens is not behind it, and takes no lane.
    other = Delivery(f"gridhub/meters/{OTHER}/readings", orjson.dumps(reading(meterpoint_id=OTHER)), 4, 1, 1)
    await subject._process([other])
    assert client.acks[-1] == (4, 1)
    outcomes = {
        outcome: registry.get_sample_value("gridhub_collection_mqtt_messages_total", {"outcome": outcome})
        for outcome in ("acked", "parked", "quota_exceeded")
    }
    assert outcomes == {"acked": 2, "parked": 1, "quota_exceeded": 1}
    assert registry.get_sample_value("gridhub_collection_mqtt_parked_messages") == 1
    assert (
        registry.get_sample_value(
            "gridhub_collection_rejections_total", {"channel": "mqtt", "reason": "quota_exceeded"}
        )
        == 1
    )


# --- scope -----------------------------------------------------------------------------------------------------


def scoped_prepare(payload: bytes, view: Any) -> Any:
    pipeline = Pipeline(rules=ValidationRules(), event_source="/gridhub/collection", max_batch_items=100, scope=view)
    return prepare_message(
        MqttMessage(TOPIC, payload, NOW, "collection-0/1/8"),
        pipeline=pipeline,
        topic_prefix="gridhub/meters",
        max_items=3,
        max_payload_bytes=4096,
    )


def test_a_device_delivers_only_for_the_meterpoint_assigned_to_it_and_an_unregistered_one_is_held() -> None:
    own = scoped_prepare(orjson.dumps(reading()), assigned_view(METERPOINT, source=METERPOINT, kind="device"))
    assert [r.topic for r in own.records] == ["meter.readings.v1"]
    assert not own.dead_lettered
    # The meterpoint is a head-end's: the message is dead-lettered with the reason (and then acknowledged).
    head_ends = scoped_prepare(orjson.dumps(reading()), assigned_view(METERPOINT, source="hes-north"))
    assert head_ends.dead_lettered
    letter = letter_of(head_ends)
    assert dict(letter.headers)["dlq.reason"] == b"not_in_scope"
    assert [r.topic for r in head_ends.records] == ["meter.readings.v1.dlq"]
    # Not registered: held, the validated event in the DLQ with who delivered it, for the redrive.
    held = scoped_prepare(orjson.dumps(reading()), assigned_view(OTHER, source=OTHER, kind="device"))
    assert held.dead_lettered
    record = letter_of(held)
    headers = dict(record.headers)
    assert headers["dlq.reason"] == b"unknown_meterpoint"
    assert headers["gridhub.held.topic"] == b"meter.readings.v1"
    assert (headers["gridhub.deliverer.kind"], headers["gridhub.deliverer.id"]) == (b"device", METERPOINT.encode())
    assert orjson.loads(record.value)["type"] == "gridhub.meter.reading.received"
