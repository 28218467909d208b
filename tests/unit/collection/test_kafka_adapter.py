"""Records equal the libs encoding byte for byte; the publisher batches per partition, waits for every ack and
stops calling Kafka once its breaker opens."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from libs.events import from_record, make_event, to_record
from libs.events.records import KafkaRecord
from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.testing import FakeClock
from services.collection.adapters.kafka import (
    KafkaPublisher,
    PublishFailed,
    alarm_record,
    dead_letter_record,
    reading_record,
)
from services.collection.domain import (
    Accepted,
    ValidationRules,
    check_alarms,
    check_readings,
    parse_alarms,
    parse_readings,
)

METERPOINT = "571313180400000025"
RECEIVED = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SOURCE = "/gridhub/collection"


def readings(count: int = 3, meterpoint: str = METERPOINT) -> list[Any]:
    items = [
        {
            "meterpoint_id": meterpoint,
            "register": "active_export" if n % 2 else "active_import",
            "interval_end": f"2025-03-01T{n // 4:02d}:{n % 4 * 15:02d}:00+00:00",
            "resolution": "PT15M",
            "value": n + 0.125,
            "unit": "Wh" if n % 3 else "kWh",
            "quality": "estimated" if n % 5 else "measured",
            "source": "hes-north-01" if n % 2 else "meter",
        }
        for n in range(count)
    ]
    now = datetime(2025, 3, 2, tzinfo=UTC)
    outcomes = check_readings(parse_readings(orjson.dumps(items), max_items=1000), now=now, rules=ValidationRules())
    assert all(isinstance(o, Accepted) for o in outcomes)
    return [o.event for o in outcomes if isinstance(o, Accepted)]


def test_reading_record_is_what_libs_events_would_write() -> None:
    for reading in readings(20):
        fast = reading_record(reading, time=RECEIVED, event_source=SOURCE)
        reference = to_record(make_event(reading.to_event_data(), source=SOURCE, time=RECEIVED))
        assert fast == reference
        event = from_record(fast.value, fast.headers, fast.key)
        assert event.id == reading.reading_id
        assert fast.key == METERPOINT.encode()


def test_alarm_record_is_what_libs_events_would_write() -> None:
    items = [
        {"meterpoint_id": METERPOINT, "alarm": "tamper", "raised_at": "2025-03-01T11:00:00.250+01:00"},
        {"meterpoint_id": METERPOINT, "alarm": "long_outage", "raised_at": "2025-03-01T09:00:00Z", "details": "3 h"},
    ]
    outcomes = check_alarms(parse_alarms(orjson.dumps(items), max_items=5), now=RECEIVED, rules=ValidationRules())
    for outcome in outcomes:
        assert isinstance(outcome, Accepted)
        fast = alarm_record(outcome.event, time=RECEIVED, event_source=SOURCE)
        assert fast == to_record(make_event(outcome.event.to_event_data(), source=SOURCE, time=RECEIVED))


def test_dead_letter_keeps_the_original_and_says_why() -> None:
    record = dead_letter_record(
        topic="meter.readings.v1.dlq",
        origin="mqtt:gridhub/meters/571313180400000025/readings",
        record_id="collection-0/1/7",
        key=METERPOINT.encode(),
        value=b"{not json",
        reason="invalid_json",
        detail="the payload is not valid JSON",
        failed_at=RECEIVED,
        headers=[("gridhub.ingress", b"mqtt"), ("dlq.reason", b"stale")],
    )
    headers = dict(record.headers)
    assert record.topic == "meter.readings.v1.dlq"
    assert (record.key, record.value) == (METERPOINT.encode(), b"{not json")
    assert headers["gridhub.ingress"] == b"mqtt"
    assert headers["dlq.reason"] == b"invalid_json"  # an earlier dlq.* header is replaced
    assert headers["dlq.detail"] == b"the payload is not valid JSON"
    assert headers["dlq.source.topic"] == b"mqtt:gridhub/meters/571313180400000025/readings"
    assert headers["dlq.record_id"] == b"collection-0/1/7"
    assert headers["dlq.failed_at"] == RECEIVED.isoformat().encode()
    assert "dlq.source.offset" not in headers


# --- the publisher ---------------------------------------------------------------------------------------------


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes]] = []
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: None, headers: Any) -> object | None:
        if self.closed or len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """create_batch / send_batch / partitions_for like aiokafka's; acks resolve as told."""

    def __init__(self, *, capacity: int = 2, fail: Exception | None = None, hang: bool = False) -> None:
        self.capacity = capacity
        self.fail = fail
        self.hang = hang
        self.sent: list[tuple[str, int, FakeBatch]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(6))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[object]:
        assert batch.closed, "a batch is closed before it is handed over"
        self.sent.append((topic, partition, batch))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.fail is not None:
            future.set_exception(self.fail)
        elif not self.hang:
            future.set_result(object())
        return future


def records_for(meterpoints: list[str]) -> list[KafkaRecord]:
    return [reading_record(r, time=RECEIVED, event_source=SOURCE) for mp in meterpoints for r in readings(3, mp)]


async def test_records_go_in_batches_to_the_java_partition_of_their_key() -> None:
    producer = FakeProducer(capacity=2)
    publisher = KafkaPublisher(producer, timeout=5)
    meterpoints = ["571313180400000025", "571313180400009172", "735999100000000010", "571313174001234569"]
    records = records_for(meterpoints)
    await publisher.publish(records)
    partitioner = DefaultPartitioner()
    sent = [(topic, partition, key, value) for topic, partition, batch in producer.sent for key, value in batch.records]
    assert sorted(value for *_, value in sent) == sorted(r.value for r in records)
    for topic, partition, key, _ in sent:
        assert topic == "meter.readings.v1"
        assert partition == partitioner(key, list(range(6)), list(range(6)))
    assert all(len(batch.records) <= 2 for *_, batch in producer.sent)
    assert len(producer.sent) >= len(records) // 2


async def test_nothing_to_publish_touches_nothing() -> None:
    producer = FakeProducer()
    await KafkaPublisher(producer).publish([])
    assert producer.sent == []


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("kafka_producer", window_size=4, minimum_calls=2, wait_in_open=5.0, clock=clock)


async def test_a_failed_ack_is_a_publish_failure_and_opens_the_breaker() -> None:
    clock = FakeClock()
    guard = breaker(clock)
    failing = FakeProducer(fail=ConnectionError("broker gone"))
    publisher = KafkaPublisher(failing, breaker=guard, timeout=5)
    for _ in range(2):
        with pytest.raises(PublishFailed, match="broker gone"):
            await publisher.publish(records_for([METERPOINT]))
    assert guard.state is BreakerState.OPEN
    calls = len(failing.sent)
    with pytest.raises(CallNotPermitted) as refused:
        await publisher.publish(records_for([METERPOINT]))
    assert refused.value.retry_after == pytest.approx(5.0)
    assert len(failing.sent) == calls, "an open breaker answers without calling Kafka"


async def test_an_ack_that_never_comes_times_out() -> None:
    clock = FakeClock()
    guard = breaker(clock)
    publisher = KafkaPublisher(FakeProducer(hang=True), breaker=guard, timeout=0.05)
    with pytest.raises(PublishFailed, match="timed out"):
        await publisher.publish(records_for([METERPOINT]))
    assert guard.snapshot().failed == 1


async def test_a_cancelled_publish_does_not_count_against_kafka() -> None:
    clock = FakeClock()
    guard = breaker(clock)
    publisher = KafkaPublisher(FakeProducer(hang=True), breaker=guard, timeout=5)
    task = asyncio.create_task(publisher.publish(records_for([METERPOINT])))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.snapshot().calls == 0
    assert guard.state is BreakerState.CLOSED
