"""Helpers of the VEE integration tests: private topics, a driven wall clock, master data and readings."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from libs.events import MeterReadingReceived, Quality, Register, Resolution, Unit, make_event, to_record
from libs.events.gsrn import with_check_digit
from libs.events.meterpoints import (
    Connection,
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    SettlementMethod,
    SourceKind,
)
from libs.events.records import KafkaRecord, decode
from libs.platform.kafka import start_producer
from services.vee.settings import VeeSettings
from tests.tenants import TENANT_A


@dataclass(frozen=True)
class Topics:
    readings: str
    meterpoints: str
    series: str
    commands: str

    @property
    def all(self) -> list[str]:
        names = [self.readings, self.meterpoints, self.series, self.commands]
        return [*names, f"{self.readings}.dlq", f"{self.meterpoints}.dlq"]

    def route(self, record: KafkaRecord) -> KafkaRecord:
        by_role = {"meter.readings.v1": self.readings, "meterpoints.v1": self.meterpoints}
        return record._replace(topic=by_role[record.topic])


async def create_topics(bootstrap: str, partitions: int = 3) -> Topics:
    tag = uuid.uuid4().hex[:10]
    topics = Topics(*(f"vee-{role}.{tag}" for role in ("readings", "meterpoints", "series", "commands")))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1) for name in topics.all]
        )
    finally:
        await admin.close()
    return topics


async def delete_topics(bootstrap: str, topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics.all)
    finally:
        await admin.close()


class DrivenClock:
    """The wall clock the test moves: ``clock()`` is its now."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings_for(dsn: str, bootstrap: str, schema: str, topics: Topics, **overrides: Any) -> VeeSettings:
    values: dict[str, Any] = {
        "postgres_dsn": dsn,
        "postgres_schema": schema,
        "kafka_bootstrap_servers": bootstrap,
        "readings_topic": topics.readings,
        "meterpoints_topic": topics.meterpoints,
        "series_topic": topics.series,
        "commands_topic": topics.commands,
        "group_id": f"vee-test-{uuid.uuid4().hex[:8]}",
        "poll_timeout_ms": 50,
        "session_timeout_ms": 6000,
        "outbox_poll_interval": 0.2,
        "scheduler_interval_seconds": 3600.0,
    }
    values.update(overrides)
    return VeeSettings(**values)


def settings_env(settings: VeeSettings, http_port: int) -> dict[str, str]:
    """The environment that gives a subprocess these settings."""
    return {
        "VEE_POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
        "VEE_POSTGRES_SCHEMA": settings.postgres_schema or "vee",
        "VEE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "VEE_READINGS_TOPIC": settings.readings_topic,
        "VEE_METERPOINTS_TOPIC": settings.meterpoints_topic,
        "VEE_SERIES_TOPIC": settings.series_topic,
        "VEE_COMMANDS_TOPIC": settings.commands_topic,
        "VEE_GROUP_ID": settings.group_id,
        "VEE_MAX_RECORDS": str(settings.max_records),
        "VEE_POLL_TIMEOUT_MS": str(settings.poll_timeout_ms),
        "VEE_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "VEE_OUTBOX_POLL_INTERVAL": str(settings.outbox_poll_interval),
        "VEE_SCHEDULER_INTERVAL_SECONDS": str(settings.scheduler_interval_seconds),
        "VEE_HTTP_PORT": str(http_port),
        "VEE_LOG_LEVEL": "WARNING",
        **({"VEE_GROUP_INSTANCE_ID": settings.group_instance_id} if settings.group_instance_id else {}),
    }


def gsrn(n: int) -> str:
    return with_check_digit(f"57131313{n:09d}")


def meterpoint(
    meterpoint_id: str,
    *,
    resolution: Resolution = Resolution.PT1H,
    time_zone: str = "Europe/Copenhagen",
    since: date = date(2025, 1, 1),
    version: int = 1,
) -> MeterpointRegistered:
    return MeterpointRegistered(
        meterpoint_id=meterpoint_id,
        grid_company=TENANT_A,
        grid_area="804",
        time_zone=time_zone,
        type=MeterpointType.CONSUMPTION,
        resolution=resolution,
        settlement_method=SettlementMethod.FLEX,
        connection=Connection(state=ConnectionState.CONNECTED, since=since),
        data_source=DataSource(kind=SourceKind.HEAD_END, id="hes-1"),
        version=version,
    )


def reading(
    meterpoint_id: str,
    interval_end: datetime,
    value: float,
    *,
    resolution: Resolution = Resolution.PT1H,
    unit: Unit = Unit.KWH,
    register: Register = Register.ACTIVE_IMPORT,
    source: str = "hes-1",
) -> MeterReadingReceived:
    return MeterReadingReceived.create(
        meterpoint_id=meterpoint_id,
        register=register,
        interval_end=interval_end,
        resolution=resolution,
        value=value,
        unit=unit,
        quality=Quality.MEASURED,
        source=source,
    )


def hourly(meterpoint_id: str, start: datetime, values: Sequence[float | None]) -> list[MeterReadingReceived]:
    """One PT1H reading per value (None: a gap), the first interval ending at ``start`` + 1 h."""
    return [
        reading(meterpoint_id, start + timedelta(hours=i + 1), value)
        for i, value in enumerate(values)
        if value is not None
    ]


async def produce(bootstrap: str, topics: Topics, events: Sequence[Any]) -> None:
    """Send in order (one idempotent producer) to the test's topics and wait for every ack."""
    producer = await start_producer(bootstrap, "vee-test", linger_ms=5)
    try:
        futures = []
        for data in events:
            record = topics.route(to_record(make_event(data, source="/gridhub/test", time=datetime.now(UTC))))
            futures.append(
                await producer.send(record.topic, value=record.value, key=record.key, headers=record.headers)
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """The payloads on ``topic`` from its beginning, once at least ``expected`` arrived (or the deadline)."""
    return await consume_until(bootstrap, topic, lambda out: len(out) >= expected, timeout)


async def consume_until(
    bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float = 30.0, *, raw: bool = False
) -> list[Any]:
    """The payloads (``raw``: the record values) on ``topic`` from its beginning, once ``done`` holds for them (or
    the deadline)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(out) and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(record.value if raw else decode(record.value).data for record in records)
    finally:
        await consumer.stop()
    return out


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def count(conn: asyncpg.Connection[Any], schema: str, sql: str, *args: Any) -> int:
    value = await conn.fetchval(sql.replace("{s}", f'"{schema}"'), *args)
    return int(value or 0)
