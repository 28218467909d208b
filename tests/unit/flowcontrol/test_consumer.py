"""KafkaDelivery with a fake consumer and producer: what is committed, dead-lettered, paused and resumed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from pydantic import BaseModel, ValidationError

from libs.events.records import InvalidEvent, InvalidReason
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.consumer import ConsumedRecord, KafkaDelivery, Paused
from libs.flowcontrol.delivery import Acked, DeadLetter, DeliveryPolicy, Nack
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, DeliverySettings, build_boundary
from libs.flowcontrol.testing import FakeClock, RecordingObserver

TOPIC = "meter.readings.v1"
TP0 = TopicPartition(TOPIC, 0)
TP1 = TopicPartition(TOPIC, 1)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None = b"735999999999999993"
    value: bytes | None = b'{"reading": 1.5}'
    headers: Sequence[tuple[str, bytes]] = (("ce_type", b"MeterReadingReceived"),)


def rec(offset: int, partition: int = 0) -> Record:
    return Record(TOPIC, partition, offset, value=f'{{"offset": {offset}}}'.encode())


@dataclass
class Kafka:
    """One log of what the consumer and the producer were asked to do, in order."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    assigned: set[Any] = field(default_factory=lambda: {TP0, TP1})
    paused: set[Any] = field(default_factory=set)
    fail_sends: int = 0

    # consumer
    def assignment(self) -> Set[Any]:
        return set(self.assigned)

    def seek(self, partition: Any, offset: int) -> None:
        self.events.append(("seek", partition.partition, offset))

    def pause(self, *partitions: Any) -> None:
        self.paused.update(partitions)
        self.events.extend(("pause", tp.partition) for tp in partitions)

    def resume(self, *partitions: Any) -> None:
        self.paused.difference_update(partitions)
        self.events.extend(("resume", tp.partition) for tp in partitions)

    async def commit(self, offsets: Mapping[Any, int] | None = None) -> None:
        assert offsets is not None, "never commit the consumer's whole position"
        self.events.extend(("commit", tp.partition, offset) for tp, offset in offsets.items())

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[Any, Sequence[ConsumedRecord]]:
        raise NotImplementedError

    # producer
    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("broker unreachable")
        self.events.append(("dead_letter", topic, key, value, dict(headers or [])))


POLICY = DeliveryPolicy(max_attempts=3, base_backoff=1.0, max_backoff=2.0, jitter=0.0)


def delivery(kafka: Kafka, clock: FakeClock, observer: RecordingObserver, **options: Any) -> KafkaDelivery:
    options.setdefault("policy", POLICY)
    return KafkaDelivery(kafka, clock=clock, observer=observer, **options)


def failing(*errors: BaseException) -> Any:
    queue = list(errors)

    async def handler() -> None:
        if queue:
            raise queue.pop(0)

    return handler


async def test_a_handled_record_commits_the_next_offset_of_its_partition_only(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    kafka = Kafka()
    outcome = await delivery(kafka, clock, observer).handle(kafka, rec(41, partition=1), failing())
    assert outcome == Acked(f"{TOPIC}:1:41", 1)
    assert kafka.events == [("commit", 1, 42)]
    assert observer.admitted_count == 1


async def test_a_poison_record_is_dead_lettered_before_it_is_committed(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    kafka = Kafka()
    handler = failing(*(Nack("row locked") for _ in range(5)))
    outcome = await clock.run(delivery(kafka, clock, observer).handle(kafka, rec(7), handler))
    assert isinstance(outcome, DeadLetter)
    assert outcome.attempts == 3
    assert clock.now() == 1_000.0 + 1.0 + 2.0
    (kind, topic, key, value, headers), commit = kafka.events
    assert (kind, topic, key, value) == ("dead_letter", f"{TOPIC}.dlq", b"735999999999999993", b'{"offset": 7}')
    assert headers["ce_type"] == b"MeterReadingReceived"
    assert headers["dlq.reason"] == b"row locked"
    assert headers["dlq.attempts"] == b"3"
    assert (headers["dlq.source.partition"], headers["dlq.source.offset"]) == (b"0", b"7")
    assert commit == ("commit", 0, 8)
    assert observer.dropped_strategies == {"dead_letter": 1}


async def test_invalid_events_and_validation_errors_are_rejected_at_once_without_echoing_input(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    class Reading(BaseModel):
        kwh: float

    try:
        Reading.model_validate({"kwh": "secret customer name"})
    except ValidationError as error:
        invalid_model = error
    kafka = Kafka()
    fc = delivery(kafka, clock, observer)
    invalid = InvalidEvent(InvalidReason.INVALID_JSON, "not JSON: EOF")
    first = await fc.handle(kafka, rec(1), failing(invalid))
    second = await fc.handle(kafka, rec(2), failing(invalid_model))
    assert isinstance(first, DeadLetter)
    assert isinstance(second, DeadLetter)
    assert (first.attempts, first.reason) == (1, "invalid_json: not JSON: EOF")
    assert first.error == "libs.events.records.InvalidEvent"
    assert second.attempts == 1
    assert second.reason == "schema_violation: 1 validation error(s) at kwh"
    assert "secret" not in second.reason
    assert [event[0] for event in kafka.events] == ["dead_letter", "commit", "dead_letter", "commit"]


async def test_a_refused_record_rewinds_and_pauses_its_partition_until_retry_after(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    kafka = Kafka()
    fc = delivery(kafka, clock, observer, pause=1.0, max_pause=10.0)
    outcome = await fc.handle(kafka, rec(5), failing(CallNotPermitted("database breaker open", retry_after=4.0)))
    assert outcome == Paused(f"{TOPIC}:0:5", "breaker_open", 4.0)
    assert kafka.events == [("seek", 0, 5), ("pause", 0)]
    assert observer.rejected_reasons == {"paused": 1}
    assert fc.paused == 1
    await clock.advance(3.9)
    assert kafka.paused == {TP0}
    await clock.advance(0.1)
    assert kafka.paused == set()
    assert kafka.events[-1] == ("resume", 0)
    assert fc.paused == 0


async def test_pauses_are_bounded_by_pause_and_max_pause(clock: FakeClock, observer: RecordingObserver) -> None:
    kafka = Kafka()
    fc = delivery(kafka, clock, observer, pause=0.5, max_pause=2.0)
    short = await fc.handle(kafka, rec(1), failing(CallNotPermitted("open", retry_after=0.01)))
    long = await fc.handle(kafka, rec(1, partition=1), failing(CallNotPermitted("open", retry_after=600)))
    unknown = await fc.handle(kafka, rec(2, partition=1), failing(CallNotPermitted("open")))
    assert [o.pause_for for o in (short, long, unknown) if isinstance(o, Paused)] == [0.5, 2.0, 0.5]
    await fc.aclose()


async def test_a_dead_letter_that_cannot_be_published_is_not_committed(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    kafka = Kafka(fail_sends=1)
    fc = delivery(kafka, clock, observer)
    outcome = await fc.handle(kafka, rec(3), failing(InvalidEvent(InvalidReason.EMPTY, "no value")))
    assert isinstance(outcome, Paused)
    assert kafka.events == [("seek", 0, 3), ("pause", 0)]
    await fc.aclose()


async def test_a_saturated_bulkhead_pauses_without_running_the_handler(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    kafka = Kafka()
    bulkhead = Bulkhead(1, clock=clock)
    assert bulkhead.try_acquire()
    calls: list[int] = []

    async def handler() -> None:
        calls.append(1)

    fc = delivery(kafka, clock, observer, concurrency=bulkhead, permit_wait=0.0, pause=2.0)
    outcome = await fc.handle(kafka, rec(9), handler)
    assert isinstance(outcome, Paused)
    assert (outcome.reason, outcome.pause_for) == ("bulkhead_full", 2.0)
    assert calls == []
    bulkhead.release()
    assert await fc.handle(kafka, rec(9), handler) == Acked(f"{TOPIC}:0:9", 1)
    assert bulkhead.in_flight == 0
    await fc.aclose()


async def test_a_cancelled_handler_rewinds_and_commits_nothing(clock: FakeClock, observer: RecordingObserver) -> None:
    kafka = Kafka()
    started = asyncio.Event()

    async def handler() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(delivery(kafka, clock, observer).handle(kafka, rec(12), handler))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert kafka.events == [("seek", 0, 12)]


async def test_a_revoked_partition_is_neither_rewound_nor_paused(clock: FakeClock, observer: RecordingObserver) -> None:
    kafka = Kafka(assigned={TP1})
    fc = delivery(kafka, clock, observer)
    outcome = await fc.handle(kafka, rec(4), failing(CallNotPermitted("open", retry_after=1)))
    assert isinstance(outcome, Paused)
    assert kafka.events == []
    assert fc.paused == 0


async def test_a_batch_skips_the_rest_of_a_paused_partition_and_handles_the_others(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    kafka = Kafka()
    handled: list[tuple[int, int]] = []

    async def handler(record: ConsumedRecord) -> None:
        if (record.partition, record.offset) == (0, 1):
            raise CallNotPermitted("open", retry_after=1)
        handled.append((record.partition, record.offset))

    fc = delivery(kafka, clock, observer)
    await fc.handle_batch(kafka, {TP0: [rec(0), rec(1), rec(2)], TP1: [rec(0, 1), rec(1, 1)]}, handler)
    assert handled == [(0, 0), (1, 0), (1, 1)]
    assert kafka.events == [("commit", 0, 1), ("seek", 0, 1), ("pause", 0), ("commit", 1, 1), ("commit", 1, 2)]
    await fc.aclose()


async def test_a_batch_past_half_the_poll_interval_rewinds_the_rest_for_the_next_poll(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    kafka = Kafka()
    handled: list[tuple[int, int]] = []

    async def slow(record: ConsumedRecord) -> None:
        clock.tick(40.0)  # each record takes 40 s of the 100 s budget (half of max_poll_interval)
        handled.append((record.partition, record.offset))

    fc = delivery(kafka, clock, observer, attempt_timeout=10.0, max_poll_interval=200.0)
    await fc.handle_batch(kafka, {TP0: [rec(0), rec(1), rec(2), rec(3)], TP1: [rec(0, 1)]}, slow)
    assert handled == [(0, 0), (0, 1), (0, 2)]
    assert kafka.events[-2:] == [("seek", 0, 3), ("seek", 1, 0)]


def test_one_records_worst_case_must_fit_in_half_the_poll_interval() -> None:
    kafka = Kafka()
    policy = DeliveryPolicy(max_attempts=5, base_backoff=0.1, max_backoff=5.0)
    fc = KafkaDelivery(kafka, policy=policy)
    assert fc.worst_case() == pytest.approx(1.0 + 5 * 20.0 + policy.max_total_backoff() + 15.0)
    with pytest.raises(ValueError, match="half of max_poll_interval"):
        KafkaDelivery(kafka, policy=policy, max_poll_interval=200.0)
    KafkaDelivery(kafka, policy=policy, attempt_timeout=10.0, max_poll_interval=200.0)


async def test_a_delivery_from_a_boundary_uses_its_policy_bulkhead_and_clock(clock: FakeClock) -> None:
    boundary = build_boundary(
        "workorders_customers_consumer",
        BoundaryPolicy(delivery=DeliverySettings(max_attempts=2), bulkhead=BulkheadSettings(max_concurrent=1)),
        clock=clock,
    )
    observer = RecordingObserver()
    kafka = Kafka()
    fc = KafkaDelivery.from_boundary(boundary, kafka, observer=observer)
    assert fc.policy.max_attempts == 2
    assert boundary.bulkhead is not None
    assert boundary.bulkhead.try_acquire()
    outcome = await fc.handle(kafka, rec(1), failing())
    assert isinstance(outcome, Paused)
    assert outcome.reason == "bulkhead_full"
    assert observer.rejected_reasons == {"paused": 1}
    await fc.aclose()
