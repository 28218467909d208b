"""Helpers of the read side's integration tests: fresh topics, generated streams, an independent reference."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from libs.events import (
    Address,
    CloudEvent,
    Contact,
    CustomerKind,
    CustomerRegistered,
    CustomerUpdated,
    KafkaRecord,
    MeterAlarm,
    MeterAlarmRaised,
    MeterpointLinked,
    MeterpointUnlinked,
    MeterReadingReceived,
    Quality,
    Register,
    Resolution,
    TimeWindow,
    Unit,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderResult,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderType,
    make_event,
    to_record,
    with_check_digit,
)
from libs.events.meterpoints import (
    Connection,
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    MeterpointUpdated,
    SettlementMethod,
    SourceKind,
)
from libs.platform.kafka import start_producer
from services.readside.adapters.kafka import partitions_of
from services.readside.settings import ReadsideSettings
from tests.tenants import TENANT_A
from tests.unit.readside.builders import estimated, missing, validated_day

TIMEZONE = "Europe/Copenhagen"
# Independent of the service's own table on purpose: the reference must not share code with what it checks.
_FACTOR = {"Wh": Decimal("0.001"), "kWh": Decimal(1), "MWh": Decimal(1000)}


@dataclass(frozen=True)
class Topics:
    """The six event topics of one test (each with its .dlq)."""

    readings: str
    meter_events: str
    customers: str
    workorders: str
    meterpoints: str
    # A default, so that a test that never consumes can still name five topics.
    series: str = ""

    @property
    def all(self) -> tuple[str, ...]:
        named = (self.readings, self.meter_events, self.customers, self.workorders, self.meterpoints, self.series)
        return tuple(name for name in named if name)

    def route(self, record: KafkaRecord) -> KafkaRecord:
        """The record sent to this test's topic instead of the shared one."""
        by_role = {
            "meter.readings.v1": self.readings,
            "meter.events.v1": self.meter_events,
            "customers.v1": self.customers,
            "workorders.v1": self.workorders,
            "meterpoints.v1": self.meterpoints,
            "meter.series.v1": self.series,
        }
        return record._replace(topic=by_role[record.topic])


async def create_topics(bootstrap: str, partitions: int = 6) -> Topics:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tag = uuid.uuid4().hex[:10]
        topics = Topics(
            *(
                f"rs-{role}.{tag}"
                for role in ("readings", "meterevents", "customers", "workorders", "meterpoints", "series")
            )
        )
        names = [*topics.all, *(f"{name}.dlq" for name in topics.all)]
        await admin.create_topics([NewTopic(name=n, num_partitions=partitions, replication_factor=1) for n in names])
    finally:
        await admin.close()
    return topics


async def delete_topics(bootstrap: str, topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([*topics.all, *(f"{name}.dlq" for name in topics.all)])
    finally:
        await admin.close()


def settings_for(dsn: str, bootstrap: str, schema: str, topics: Topics, **overrides: Any) -> ReadsideSettings:
    values: dict[str, Any] = {
        "postgres_dsn": dsn,
        "kafka_bootstrap_servers": bootstrap,
        "postgres_schema": schema,
        "timezone": TIMEZONE,
        "readings_topic": topics.readings,
        "meter_events_topic": topics.meter_events,
        "customers_topic": topics.customers,
        "workorders_topic": topics.workorders,
        "meterpoints_topic": topics.meterpoints,
        "series_topic": topics.series or f"{topics.meterpoints}-series",
        "group_id": f"readside-test-{uuid.uuid4().hex[:8]}",
        "require_api_key": False,
        "poll_timeout_ms": 50,
        "session_timeout_ms": 6000,
    }
    values.update(overrides)
    return ReadsideSettings(**values)


def settings_env(settings: ReadsideSettings) -> dict[str, str]:
    """The environment that gives a subprocess these settings."""
    env = {
        "READSIDE_POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
        "READSIDE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "READSIDE_POSTGRES_SCHEMA": settings.postgres_schema,
        "READSIDE_TIMEZONE": settings.timezone,
        "READSIDE_READINGS_TOPIC": settings.readings_topic,
        "READSIDE_METER_EVENTS_TOPIC": settings.meter_events_topic,
        "READSIDE_CUSTOMERS_TOPIC": settings.customers_topic,
        "READSIDE_WORKORDERS_TOPIC": settings.workorders_topic,
        "READSIDE_METERPOINTS_TOPIC": settings.meterpoints_topic,
        "READSIDE_SERIES_TOPIC": settings.series_topic,
        "READSIDE_GROUP_ID": settings.group_id,
        "READSIDE_MAX_RECORDS": str(settings.max_records),
        "READSIDE_POLL_TIMEOUT_MS": str(settings.poll_timeout_ms),
        "READSIDE_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "READSIDE_REQUIRE_API_KEY": "false",
        "READSIDE_HTTP_PORT": str(settings.http_port),
        "READSIDE_LOG_LEVEL": "WARNING",
    }
    if settings.group_instance_id:
        env["READSIDE_GROUP_INSTANCE_ID"] = settings.group_instance_id
    return env


async def produce(bootstrap: str, records: Sequence[KafkaRecord]) -> None:
    """Send in order (one producer, idempotent: per-partition order is the order given) and wait for every ack."""
    producer = await start_producer(bootstrap, "readside-test", linger_ms=5)
    try:
        futures = [await producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers)) for r in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    partitions = await partitions_of([bootstrap], topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def current_version(conn: asyncpg.Connection[Any], schema: str) -> int:
    version: int = await conn.fetchval(f'SELECT version FROM "{schema}".view_version')
    return version


async def stored_offsets(conn: asyncpg.Connection[Any], schema: str) -> dict[tuple[str, int], int | None]:
    version = await current_version(conn, schema)
    rows = await conn.fetch(f'SELECT topic, partition, next_offset FROM "{schema}_v{version}".consumer_offsets')
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def applied_through(conn: asyncpg.Connection[Any], schema: str, ends: dict[tuple[str, int], int]) -> bool:
    """True once the stored offsets have reached ``ends`` on every partition with records."""
    try:
        stored = await stored_offsets(conn, schema)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return False
    return all(end == 0 or (stored.get(key) or 0) >= end for key, end in ends.items())


def meterpoint(n: int) -> str:
    return with_check_digit(f"5713131804{n:07d}")


@dataclass
class ReadingStream:
    """Readings in produce order and the totals they must give."""

    events: list[CloudEvent[Any]]
    hourly: dict[tuple[str, str, datetime], Decimal] = field(default_factory=dict)
    hourly_counts: dict[tuple[str, str, datetime], int] = field(default_factory=dict)
    daily: dict[tuple[str, str, date], Decimal] = field(default_factory=dict)
    finals: int = 0
    duplicates: int = 0
    corrections: int = 0


def reading_stream(
    seed: int,
    *,
    meterpoints: int = 12,
    start: datetime = datetime(2025, 3, 29, 18, tzinfo=UTC),
    hours: int = 72,
    duplicate_ratio: float = 0.15,
    correction_ratio: float = 0.1,
    first_meterpoint: int = 0,
) -> ReadingStream:
    """Quarter-hour and hourly readings of several meterpoints, shuffled, with resends and corrections.

    The default window crosses a month end (two partitions of the readings table) and the spring DST change in
    Copenhagen (a 23-hour local day).
    """
    rng = random.Random(seed)
    originals: list[MeterReadingReceived] = []
    for index in range(first_meterpoint, first_meterpoint + meterpoints):
        gsrn = meterpoint(index)
        hourly = index % 4 == 1
        unit = Unit.WH if index % 3 == 0 else Unit.KWH
        step = timedelta(hours=1) if hourly else timedelta(minutes=15)
        registers = [Register.ACTIVE_IMPORT] + ([Register.ACTIVE_EXPORT] if index % 5 == 2 else [])
        end = start + step
        while end <= start + timedelta(hours=hours):
            for register in registers:
                originals.append(_reading(rng, gsrn, register, end, hourly, unit))
            end += step
    rng.shuffle(originals)  # out of order
    # Each event gets a place in the produce order; resends and corrections land somewhere after their original.
    count = len(originals)
    placed: list[tuple[float, MeterReadingReceived]] = [(float(i), r) for i, r in enumerate(originals)]
    duplicates = corrections = 0
    for position in rng.sample(range(count), int(count * duplicate_ratio)):
        placed.append((rng.uniform(position, count), originals[position]))
        duplicates += 1
    for position in rng.sample(range(count), int(count * correction_ratio)):
        reading = originals[position]
        hourly = reading.resolution is Resolution.PT1H
        corrected = _reading(rng, reading.meterpoint_id, reading.register, reading.interval_end, hourly, reading.unit)
        # Mostly the same source (same reading id), sometimes another channel for the same interval.
        if rng.random() < 0.3:
            corrected = MeterReadingReceived.create(**{**_fields(corrected), "source": "collection.ftp"})
        placed.append((rng.uniform(position + 0.5, count), corrected))
        corrections += 1
    placed.sort(key=lambda item: item[0])
    sequence = [reading for _, reading in placed]
    events = [
        make_event(r, source="/gridhub/collection", time=r.interval_end + timedelta(minutes=rng.randint(1, 90)))
        for r in sequence
    ]
    stream = ReadingStream(events=events, duplicates=duplicates, corrections=corrections)
    fill_reference(stream)
    return stream


def _fields(reading: MeterReadingReceived) -> dict[str, Any]:
    return {
        "meterpoint_id": reading.meterpoint_id,
        "register": reading.register,
        "interval_end": reading.interval_end,
        "resolution": reading.resolution,
        "value": reading.value,
        "unit": reading.unit,
        "quality": reading.quality,
        "source": reading.source,
    }


def _reading(
    rng: random.Random, gsrn: str, register: Register, end: datetime, hourly: bool, unit: Unit
) -> MeterReadingReceived:
    roll = rng.random()
    quality = Quality.MISSING if roll < 0.03 else Quality.ESTIMATED if roll < 0.1 else Quality.MEASURED
    scale = 4 if hourly else 1
    if quality is Quality.MISSING:
        value = 0.0
    elif unit is Unit.WH:
        value = rng.randint(0, 900 * scale) + rng.randint(0, 999) / 1000
    else:
        value = rng.randint(0, 2500 * scale) / 1000
    return MeterReadingReceived.create(
        meterpoint_id=gsrn,
        register=register,
        interval_end=end,
        resolution=Resolution.PT1H if hourly else Resolution.PT15M,
        value=round(value, 3),
        unit=unit,
        quality=quality,
        source="collection.mqtt",
    )


def fill_reference(stream: ReadingStream) -> None:
    """Totals computed from scratch: the last value per (meterpoint, register, interval end) in produce order."""
    final: dict[tuple[str, str, datetime], Decimal] = {}
    for event in stream.events:
        reading = event.data
        key = (reading.meterpoint_id, str(reading.register), reading.interval_end)
        final[key] = Decimal(repr(reading.value)) * _FACTOR[str(reading.unit)]
    zone = ZoneInfo(TIMEZONE)
    hourly: dict[tuple[str, str, datetime], Decimal] = defaultdict(Decimal)
    counts: dict[tuple[str, str, datetime], int] = defaultdict(int)
    daily: dict[tuple[str, str, date], Decimal] = defaultdict(Decimal)
    for (gsrn, register, interval_end), energy in final.items():
        interval_start = interval_end.astimezone(UTC) - timedelta(minutes=1)
        hour = interval_start.replace(minute=0, second=0, microsecond=0)
        hourly[(gsrn, register, hour)] += energy
        counts[(gsrn, register, hour)] += 1
        daily[(gsrn, register, hour.astimezone(zone).date())] += energy
    stream.hourly = dict(hourly)
    stream.hourly_counts = dict(counts)
    stream.daily = dict(daily)
    stream.finals = len(final)


def records_of(events: Sequence[CloudEvent[Any]], topics: Topics) -> list[KafkaRecord]:
    return [topics.route(to_record(event)) for event in events]


async def consumption_tables(
    conn: asyncpg.Connection[Any], schema: str
) -> tuple[
    dict[tuple[str, str, datetime], Decimal], dict[tuple[str, str, datetime], int], dict[tuple[str, str, date], Decimal]
]:
    version = await current_version(conn, schema)
    views = f'"{schema}_v{version}"'
    hourly_rows = await conn.fetch(
        f"SELECT meterpoint_id, register, hour, energy, readings FROM {views}.consumption_hourly"
    )
    daily_rows = await conn.fetch(f"SELECT meterpoint_id, register, day, energy FROM {views}.consumption_daily")
    hourly = {(r["meterpoint_id"], r["register"], r["hour"]): r["energy"] for r in hourly_rows}
    counts = {(r["meterpoint_id"], r["register"], r["hour"]): r["readings"] for r in hourly_rows}
    daily = {(r["meterpoint_id"], r["register"], r["day"]): r["energy"] for r in daily_rows}
    return hourly, counts, daily


async def assert_totals_match(conn: asyncpg.Connection[Any], schema: str, stream: ReadingStream) -> None:
    hourly, counts, daily = await consumption_tables(conn, schema)
    assert hourly == stream.hourly, _diff(hourly, stream.hourly)
    assert counts == stream.hourly_counts, _diff(counts, stream.hourly_counts)
    assert daily == stream.daily, _diff(daily, stream.daily)
    version = await current_version(conn, schema)
    readings = await conn.fetchval(f'SELECT count(*) FROM "{schema}_v{version}".readings')
    assert readings == stream.finals


def _diff(actual: dict[Any, Any], expected: dict[Any, Any]) -> str:
    keys = sorted(set(actual) | set(expected), key=str)
    wrong = [(k, actual.get(k), expected.get(k)) for k in keys if actual.get(k) != expected.get(k)]
    return f"{len(wrong)} of {len(keys)} differ, e.g. {wrong[:3]}; actual has {len(actual)}: {list(actual.items())[:3]}"


# Bookkeeping columns that depend on batching or wall-clock time, not on the log.
_NOT_COMPARED = {"replaced_energy", "applied_at", "high_watermark", "created_at"}
VIEW_TABLES = (
    "readings",
    "consumption_hourly",
    "consumption_daily",
    "meterpoints",
    "latest_readings",
    "alarms",
    "customers",
    "meterpoint_links",
    "work_orders",
    "series_days",
    "series_points",
    "series_current",
)


async def dump_views(conn: asyncpg.Connection[Any], views_schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every view table's rows (sorted), without the bookkeeping columns."""
    dump: dict[str, list[tuple[Any, ...]]] = {}
    for table in VIEW_TABLES:
        columns = [
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum",
                f'"{views_schema}".{table}',
            )
            if r["attname"] not in _NOT_COMPARED or table == "work_orders"
        ]
        rows = await conn.fetch(f'SELECT {", ".join(columns)} FROM "{views_schema}".{table}')
        dump[table] = sorted(tuple(r) for r in rows)
    return dump


class TcpProxy:
    """A TCP forwarder the test can cut: ``stop()`` refuses new connections and breaks the open ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def master_data(
    gsrn: str, grid_company: str, *, version: int = 1, grid_area: str = "804"
) -> MeterpointRegistered | MeterpointUpdated:
    """Master data of a consumption meterpoint owned by ``grid_company`` (version 1 registers, later ones update)."""
    kind = MeterpointRegistered if version == 1 else MeterpointUpdated
    return kind(
        meterpoint_id=gsrn,
        grid_company=grid_company,
        grid_area=grid_area,
        type=MeterpointType.CONSUMPTION,
        resolution=Resolution.PT15M,
        settlement_method=SettlementMethod.FLEX,
        connection=Connection(state=ConnectionState.CONNECTED, since=date(2025, 1, 1)),
        data_source=DataSource(kind=SourceKind.HEAD_END, id="hes-1"),
        version=version,
    )


def entity_events(
    seed: int, meterpoints: Sequence[str], *, now: datetime | None = None, grid_company: str = TENANT_A
) -> list[CloudEvent[Any]]:
    """Master data, customers, meterpoint links, work orders and alarms for ``meterpoints`` of ``grid_company``,
    with resends, in produce order."""
    now = now or datetime(2025, 4, 1, 12, tzinfo=UTC)
    address = Address(street="Vestergade 12", postcode="8000", city="Aarhus C", country="DK")
    events: list[CloudEvent[Any]] = []

    def emit(data: Any, at: datetime) -> None:
        events.append(make_event(data, source="/gridhub/test", time=at))

    for index, gsrn in enumerate(meterpoints):
        customer = f"C-{seed}-{index}"
        base = now - timedelta(days=40 - index)
        emit(master_data(gsrn, grid_company), base - timedelta(days=1))
        registered = CustomerRegistered(
            customer_id=customer,
            kind=CustomerKind.PERSON,
            name=f"Customer {index}",
            contact=Contact(email=f"c{index}@example.dk", address=address),
            version=1,
            grid_company=grid_company,
        )
        emit(registered, base)
        updated = CustomerUpdated(**{**registered.model_dump(), "name": f"Customer {index} (moved)", "version": 2})
        emit(updated, base + timedelta(hours=1))
        if index % 2 == 0:
            emit(registered, base + timedelta(hours=2))  # an outbox resend of version 1 after version 2
        emit(MeterpointLinked(customer_id=customer, meterpoint_id=gsrn, move_in=date(2025, 1, 1)), base)
        if index % 3 == 0:
            emit(MeterpointUnlinked(customer_id=customer, meterpoint_id=gsrn, move_out=date(2025, 2, 28)), base)
            emit(MeterpointLinked(customer_id=customer, meterpoint_id=gsrn, move_in=date(2025, 3, 15)), base)

        work_order = f"WO-{seed}-{index}"
        kind = WorkOrderType.REPLACE_METER if index % 2 else WorkOrderType.INSPECT_METER
        created = WorkOrderCreated(work_order_id=work_order, meterpoint_id=gsrn, type=kind, description="check")
        emit(created, base + timedelta(days=1))
        window = TimeWindow(start=base + timedelta(days=3), end=base + timedelta(days=3, hours=4))
        scheduled = WorkOrderScheduled(
            work_order_id=work_order, meterpoint_id=gsrn, type=kind, crew="crew-1", window=window
        )
        emit(scheduled, base + timedelta(days=2))
        emit(created, base + timedelta(days=2, hours=1))  # a resend of an older event: must not move status back
        if index % 3 != 2:
            started = WorkOrderStarted(
                work_order_id=work_order, meterpoint_id=gsrn, type=kind, crew="crew-1", started_at=window.start
            )
            emit(started, window.start)
        if index % 3 == 0:
            completed = WorkOrderCompleted(
                work_order_id=work_order,
                meterpoint_id=gsrn,
                type=kind,
                crew="crew-1",
                completed_at=window.start + timedelta(hours=1),
                result=WorkOrderResult.SUCCEEDED,
                new_meter_serial="KAM-1" if kind is WorkOrderType.REPLACE_METER else None,
            )
            emit(completed, window.start + timedelta(hours=1))
        elif index % 3 == 1 and index % 2 == 1:
            emit(WorkOrderCancelled(work_order_id=work_order, meterpoint_id=gsrn, type=kind, reason="no access"), now)

        failure = MeterAlarmRaised.create(
            meterpoint_id=gsrn, alarm=MeterAlarm.POWER_FAILURE, raised_at=now - timedelta(days=2), source="hes-1"
        )
        emit(failure, failure.raised_at)
        emit(failure, failure.raised_at + timedelta(minutes=5))  # resent
        if index % 2 == 1:
            restored = MeterAlarmRaised.create(
                meterpoint_id=gsrn, alarm=MeterAlarm.POWER_RESTORED, raised_at=now - timedelta(days=1), source="hes-1"
            )
            emit(restored, restored.raised_at)
        tamper = MeterAlarmRaised.create(
            meterpoint_id=gsrn,
            alarm=MeterAlarm.TAMPER,
            raised_at=now - timedelta(hours=3),
            source="hes-1",
            details="lid",
        )
        emit(tamper, tamper.raised_at)
    return events


def series_events(meterpoints: Sequence[str], day: date = date(2025, 3, 30)) -> list[CloudEvent[Any]]:
    """Validated days (meter.series.v1) of ``meterpoints``: versions 1 and 2 of a day, every third one out of order."""
    events: list[CloudEvent[Any]] = []
    published = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1, hours=6)
    for index, gsrn in enumerate(meterpoints):
        first = validated_day(gsrn, day, version=1, points={n: missing() for n in range(1, 5)})
        second = validated_day(gsrn, day, version=2, points={n: estimated(0.1, version=2) for n in range(1, 5)})
        order = (second, first) if index % 3 == 0 else (first, second)
        events.extend(
            make_event(s, source="/gridhub/vee", time=published + timedelta(minutes=i)) for i, s in enumerate(order)
        )
    return events


async def assert_series_match(conn: asyncpg.Connection[Any], schema: str, events: Sequence[CloudEvent[Any]]) -> None:
    """Every version of every day once, each with all its points, and the greatest version of each day current."""
    versions: dict[tuple[str, str, date, int], int] = {}
    newest: dict[tuple[str, str, date], int] = {}
    for event in events:
        series = event.data
        key = (series.meterpoint_id, str(series.register), series.day)
        versions.setdefault((*key, series.version), len(series.points))
        newest[key] = max(newest.get(key, 0), series.version)
    views = f'"{schema}_v{await current_version(conn, schema)}"'
    days = await conn.fetch(f"SELECT meterpoint_id, register, day, version FROM {views}.series_days")
    assert sorted(tuple(r) for r in days) == sorted(versions)
    points = await conn.fetch(
        f"SELECT meterpoint_id, register, day, version, count(*) AS n FROM {views}.series_points GROUP BY 1, 2, 3, 4"
    )
    assert {(r["meterpoint_id"], r["register"], r["day"], r["version"]): r["n"] for r in points} == versions
    current = await conn.fetch(f"SELECT meterpoint_id, register, day, version FROM {views}.series_current")
    assert {(r["meterpoint_id"], r["register"], r["day"]): r["version"] for r in current} == newest
