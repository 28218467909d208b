"""A database outage pauses the meter events consumer: the record is neither committed nor dead-lettered."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiokafka import TopicPartition

from libs.events import MeterAlarm, MeterAlarmRaised, make_event, to_record, with_check_digit
from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.consumer import KafkaDelivery, Paused
from libs.flowcontrol.delivery import DeliveryPolicy
from services.workorders.adapters.database import Database
from services.workorders.adapters.postgres import PostgresWorkOrderStore
from services.workorders.domain import Rules
from services.workorders.entrypoints.consumers import meter_event_handler
from services.workorders.handlers import Context
from services.workorders.settings import WorkordersSettings

TOPIC = "meter.events.v1"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class FakeConsumer:
    commits: list[Mapping[Any, int]] = field(default_factory=list)
    paused: set[Any] = field(default_factory=set)
    seeks: list[tuple[Any, int]] = field(default_factory=list)

    def assignment(self) -> Set[Any]:
        return {TopicPartition(TOPIC, 0)}

    def seek(self, partition: Any, offset: int) -> None:
        self.seeks.append((partition, offset))

    def pause(self, *partitions: Any) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: Any) -> None:
        self.paused.difference_update(partitions)

    async def commit(self, offsets: Mapping[Any, int] | None = None) -> None:
        self.commits.append(offsets or {})


@dataclass
class FakeProducer:
    sent: list[str] = field(default_factory=list)

    async def send_and_wait(self, topic: str, value: bytes | None = None, **kwargs: Any) -> None:
        self.sent.append(topic)


class DownPool:
    """A pool whose database refuses connections."""

    def __init__(self) -> None:
        self.attempts = 0

    def acquire(self, timeout: float | None = None) -> DownPool:
        return self

    async def __aenter__(self) -> None:
        self.attempts += 1
        raise ConnectionRefusedError("connection refused")

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class NoCustomers:
    async def customer_at(self, meterpoint_id: str, on: Any) -> None:
        return None


async def test_a_database_outage_pauses_the_partition_and_skips_nothing() -> None:
    breaker = CircuitBreaker("workorders_postgres", window_size=2, minimum_calls=2, wait_in_open=60)
    pool = DownPool()
    store = PostgresWorkOrderStore(pool, Database(breaker), topic="workorders.v1", source="/test")  # type: ignore[arg-type]
    now = datetime.now(UTC)
    ctx = Context(store, NoCustomers(), Rules(), ZoneInfo("Europe/Copenhagen"), lambda: now)
    handler = meter_event_handler(ctx, WorkordersSettings())
    alarm = MeterAlarmRaised.create(
        meterpoint_id=with_check_digit("57131318040000002"),
        alarm=MeterAlarm.TAMPER,
        raised_at=now - timedelta(minutes=1),
        source="hes-north",
    )
    kafka_record = to_record(make_event(alarm, source="/gridhub/collection"))
    record = Record(TOPIC, 0, 41, kafka_record.key, kafka_record.value, kafka_record.headers)
    consumer, producer = FakeConsumer(), FakeProducer()
    delivery = KafkaDelivery(producer, policy=DeliveryPolicy(max_attempts=5, base_backoff=0.0, jitter=0.0), pause=0.5)

    async def attempt() -> None:
        await handler(record)

    try:
        outcomes = [await delivery.handle(consumer, record, attempt) for _ in range(3)]
    finally:
        await delivery.aclose()

    assert all(isinstance(outcome, Paused) for outcome in outcomes)
    assert [outcome.reason for outcome in outcomes if isinstance(outcome, Paused)] == [
        "database_unavailable",
        "database_unavailable",
        "breaker_open",
    ]
    assert pool.attempts == 2, "once the breaker is open the database is not even tried"
    assert breaker.state is BreakerState.OPEN
    assert consumer.commits == [], "nothing committed"
    assert producer.sent == [], "nothing dead-lettered"
    assert consumer.paused == {TopicPartition(TOPIC, 0)}
    assert consumer.seeks == [(TopicPartition(TOPIC, 0), 41)] * 3, "rewound to the record each time"
