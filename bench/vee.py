"""VEE: readings validated per second as a ratio to the read side's projection of the same readings in the same run,
and the latency from a reading to its validated interval at a steady rate below the sustainable one.

    uv run python -m bench.vee            # 5-8 minutes on 2 shared cores; writes bench/results/vee.md
    uv run python -m bench.vee --scale 2  # 2x the meterpoints and readings, 2x the latency phase
    uv run python -m bench.vee --quick    # well under a minute, a smoke test; writes nothing unless --out

All in one run, on the same machine, over the same private topics (deleted afterwards), in rounds (2 at scale 1)
that take turns, each into fresh schemas, medians shown:

0. master data: every meterpoint registered on the run's meterpoints topic (consumption, PT15M, Europe/Copenhagen);
   each round's VEE reads it whole before any reading is on the readings topic, then stops (its offsets stay), so
   no reading waits for its meterpoint and the throughput is that of validation alone;
1. read side: its consumer (as in bench/readside.py: timed from the moment it has positioned its partitions) over
   the N quarter-hour readings into a fresh schema; its total checked against a sum computed here;
2. VEE: the service's transactional consumer (``start_parts``, as its integration tests run it; the scheduler off,
   the outbox relay on) resumed over the same N readings into its own schema, timed from positioned to the last
   offset stored: rules on arrival, every interval version stored, profiles updated, each touched day re-assembled
   and published through the outbox once complete. Its wall clock stands at the data's first day, as if the readings
   arrived live: a day goes out once, when complete, never at a deadline. The stored intervals are counted
   afterwards (every reading must be one, none held);
3. latency (last round): the same running VEE, caught up, fed the next intervals at a fixed rate (half of what it
   just sustained at most), each reading's CloudEvent time set at its send(); per reading, the time from send() to
   the commit of the batch that stored its interval (VEE's stored offsets polled every 5 ms), and the service's own
   histogram (``gridhub_vee_reading_stored_latency_seconds``, CloudEvent time to stored) over the same readings.
   Small live batches cost VEE more per reading than a backlog's large ones, so "half the backlog rate" may still
   be too fast: while VEE falls behind (its last reading stored well after the last send) the rate halves and the
   phase runs again, up to three times; the report shows every phase and which one the figures come from.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from prometheus_client import CollectorRegistry

from bench.common import (
    BENCH_TENANT,
    add_scale_option,
    emit,
    machine_line,
    percentile,
    private_topics,
    scale_line,
    scale_of,
    scaled_count,
)
from bench.readside import produce, readside_consume
from libs.events import KafkaRecord, MeterReadingReceived, Quality, Register, Resolution, Unit, make_event, to_record
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
from libs.platform.kafka import start_producer
from libs.platform.serve import tune_garbage_collector
from services.readside.adapters.schema import prepare_database
from services.readside.app import start_parts as start_readside
from services.readside.settings import ReadsideSettings
from services.vee.app import Parts as VeeParts
from services.vee.app import start_parts as start_vee
from services.vee.settings import VeeSettings
from stack.config import StackConfig

RESULTS = Path(__file__).parent / "results" / "vee.md"
START = datetime(2025, 3, 2, 23, tzinfo=UTC)  # local midnight of Monday 3 March 2025 in Copenhagen (UTC+1)
FIRST_DAY = date(2025, 3, 3)
TIME_ZONE = "Europe/Copenhagen"
QUARTER_HOURS_PER_DAY = 96
_HISTOGRAM = "gridhub_vee_reading_stored_latency_seconds"


@dataclass(frozen=True)
class Params:
    meterpoints: int
    days: int  # local days of quarter hours per meterpoint
    latency_rate: int  # readings/s at most (half the measured VEE rate when that is lower)
    latency_seconds: float
    max_records: int
    rounds: int = 1  # read side and VEE take turns, each round into fresh schemas; medians shown
    scale: float = 1.0

    @property
    def readings(self) -> int:
        return self.meterpoints * self.days * QUARTER_HOURS_PER_DAY

    def scaled(self, factor: float) -> Params:
        """``factor`` times the meterpoints (so the readings) over the same days, and a latency phase ``factor`` times
        as long; its rate, the days, the batch size and the rounds stay."""
        return replace(
            self,
            meterpoints=scaled_count(self.meterpoints, factor),
            latency_seconds=self.latency_seconds * factor,
            scale=factor,
        )


SCALES = "meterpoints (so readings) and the latency phase's seconds"
# 521 meterpoints x 4 days x 96 quarter hours = 200,064 readings.
FULL = Params(meterpoints=521, days=4, latency_rate=1_000, latency_seconds=20.0, max_records=2_000, rounds=2)
QUICK = Params(meterpoints=50, days=2, latency_rate=200, latency_seconds=3.0, max_records=2_000)


@dataclass(frozen=True)
class Names:
    tag: str

    def topic(self, role: str) -> str:
        return f"bench-vee-{role}.{self.tag}"

    @property
    def readings(self) -> str:
        return self.topic("readings")

    @property
    def meterpoints(self) -> str:
        return self.topic("meterpoints")

    @property
    def all(self) -> list[str]:
        roles = ("readings", "meterpoints", "meterevents", "customers", "workorders", "series", "commands")
        consumed = ("readings", "meterpoints", "meterevents", "customers", "workorders")
        return [self.topic(role) for role in roles] + [f"{self.topic(role)}.dlq" for role in consumed]

    @property
    def readside_schemas(self) -> str:
        return f"bench_vee_rs_{self.tag}"

    @property
    def vee_schemas(self) -> str:
        return f"bench_vee_{self.tag}"


def gsrns(count: int) -> list[str]:
    return [with_check_digit(f"5713131806{n:07d}") for n in range(count)]


def master_data(params: Params) -> list[KafkaRecord]:
    """A consumption meterpoint per GSRN, connected since the day before the data, read by a head-end system."""
    records = []
    for gsrn in gsrns(params.meterpoints):
        data = MeterpointRegistered(
            meterpoint_id=gsrn,
            grid_company=BENCH_TENANT,
            grid_area="804",
            time_zone=TIME_ZONE,
            type=MeterpointType.CONSUMPTION,
            resolution=Resolution.PT15M,
            settlement_method=SettlementMethod.FLEX,
            connection=Connection(state=ConnectionState.CONNECTED, since=START.date() - timedelta(days=1)),
            data_source=DataSource(kind=SourceKind.HEAD_END, id="bench-hes"),
            version=1,
        )
        records.append(to_record(make_event(data, source="/gridhub/registry", time=START)))
    return records


def value_of(gsrn_index: int, step: int) -> float:
    """A plausible household quarter hour in kWh (0.05..1.3): a daily shape, a little noise, never a spike or zero."""
    hour = (step // 4) % 24
    shape = 0.15 + (0.35 if 6 <= hour < 9 or 17 <= hour < 22 else 0.0)
    noise = ((gsrn_index * 7919 + step * 104_729) % 100) / 1000
    return round(shape + noise + (gsrn_index % 10) / 100, 3)


def reading_data(gsrn: str, gsrn_index: int, step: int) -> MeterReadingReceived:
    return MeterReadingReceived.create(
        meterpoint_id=gsrn,
        register=Register.ACTIVE_IMPORT,
        interval_end=START + timedelta(minutes=15 * (step + 1)),
        resolution=Resolution.PT15M,
        value=value_of(gsrn_index, step),
        unit=Unit.KWH,
        quality=Quality.MEASURED,
        source="bench-hes",
    )


def readings(params: Params, first_step: int = 0, steps: int | None = None) -> list[KafkaRecord]:
    """Quarter-hour readings of every meterpoint, interval after interval (all meterpoints per interval)."""
    count = params.days * QUARTER_HOURS_PER_DAY if steps is None else steps
    records = []
    ids = gsrns(params.meterpoints)
    for step in range(first_step, first_step + count):
        end = START + timedelta(minutes=15 * (step + 1))
        for index, gsrn in enumerate(ids):
            records.append(
                to_record(make_event(reading_data(gsrn, index, step), source="/gridhub/collection", time=end))
            )
    return records


async def stored_offsets(conn: asyncpg.Connection[Any], schema: str, topic: str) -> dict[int, int]:
    rows = await conn.fetch(f'SELECT partition, next_offset FROM "{schema}".consumer_offsets WHERE topic = $1', topic)
    return {row["partition"]: row["next_offset"] for row in rows}


async def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` (an async callable) every 5 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.005)


async def _count(conn: asyncpg.Connection[Any], sql: str) -> int:
    return int(await conn.fetchval(sql) or 0)


def vee_settings(dsn: str, bootstrap: str, names: Names, params: Params, round_: int) -> VeeSettings:
    return VeeSettings(
        postgres_dsn=dsn,
        postgres_schema=f"{names.vee_schemas}_{round_}",
        kafka_bootstrap_servers=bootstrap,
        readings_topic=names.readings,
        meterpoints_topic=names.meterpoints,
        series_topic=names.topic("series"),
        commands_topic=names.topic("commands"),
        group_id=f"bench-vee-{names.tag}-{round_}",
        max_records=params.max_records,
        poll_timeout_ms=20,
        session_timeout_ms=6_000,
        outbox_poll_interval=0.2,
    )


def readside_settings(dsn: str, bootstrap: str, names: Names, round_: int) -> ReadsideSettings:
    return ReadsideSettings(
        postgres_dsn=dsn,
        kafka_bootstrap_servers=bootstrap,
        postgres_schema=f"{names.readside_schemas}_{round_}",
        readings_topic=names.readings,
        meter_events_topic=names.topic("meterevents"),
        customers_topic=names.topic("customers"),
        workorders_topic=names.topic("workorders"),
        meterpoints_topic=names.meterpoints,
        group_id=f"bench-vee-readside-{names.tag}-{round_}",
        max_records=5_000,
        poll_timeout_ms=20,
        require_api_key=False,
    )


class FixedClock:
    """VEE's wall clock held at the data's first day: the days go out when complete, as in a live stream."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def vee_master_data(settings: VeeSettings, conn: asyncpg.Connection[Any], count: int) -> None:
    """Phase 0: VEE reads the master data whole (the readings topic still empty), then stops."""
    vee = await start_vee(settings, registry=CollectorRegistry(), clock=FixedClock(START), scheduler_task=False)
    try:
        sql = f'SELECT count(*) FROM "{settings.postgres_schema}".meterpoints'
        await wait_until(lambda: _eq(_count(conn, sql), count), 120, f"VEE has the {count} meterpoints")
    finally:
        await vee.stop()


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


@dataclass(frozen=True)
class Batches:
    """VEE's consumed batches over a phase: how many, their records, and the seconds spent applying them."""

    batches: int
    records: int
    seconds: float

    @staticmethod
    def of(vee: VeeParts) -> Batches:
        consumer = vee.consumer
        assert consumer is not None
        return Batches(consumer.batches, consumer.records, _sample(vee.registry, "gridhub_vee_batch_seconds_sum"))

    def since(self, before: Batches) -> Batches:
        return Batches(self.batches - before.batches, self.records - before.records, self.seconds - before.seconds)

    def line(self) -> str:
        if not self.batches:
            return "no batch"
        return (
            f"{self.batches:,} batches of {self.records / self.batches:,.0f} records on average, "
            f"{1000 * self.seconds / self.batches:,.0f} ms each to apply"
        )


async def vee_consume(vee: VeeParts, conn: asyncpg.Connection[Any], total: int) -> tuple[float, Batches]:
    """Seconds from VEE positioned to every reading's offset stored (with its state, in one transaction), and the
    batches that took."""
    consumer = vee.consumer
    assert consumer is not None
    settings = vee.settings
    deadline = time.monotonic() + 60
    while not consumer.positioned:  # joining the group is not part of the measurement
        if time.monotonic() > deadline:
            raise RuntimeError("VEE did not take its partitions within 60 s")
        await asyncio.sleep(0.002)
    started, before = time.perf_counter(), Batches.of(vee)

    async def done() -> bool:
        offsets = await stored_offsets(conn, settings.postgres_schema or "vee", settings.readings_topic)
        return sum(offsets.values()) >= total

    await wait_until(done, 3600, f"VEE validated {total:,} readings")
    return time.perf_counter() - started, Batches.of(vee).since(before)


@dataclass(frozen=True)
class Latency:
    rate: int
    delays: list[float]  # sorted seconds, send() -> commit
    histogram: dict[float, float]  # upper bound -> readings of the phase at or below it (cumulative)
    drain: float  # seconds from the last send() to the commit of the last reading
    kept_up: bool  # drained within a batch or two: the rate was sustainable
    batches: Batches


def _sample(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples if s.name == name)


def histogram_buckets(registry: CollectorRegistry) -> dict[float, float]:
    """Cumulative bucket counts of VEE's stored-latency histogram."""
    buckets: dict[float, float] = {}
    for metric in registry.collect():
        if metric.name == _HISTOGRAM:
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] = sample.value
    return buckets


def histogram_percentile(buckets: dict[float, float], fraction: float) -> float:
    """The upper bound of the bucket holding the ``fraction`` quantile (inf when beyond the last finite bound)."""
    total = buckets.get(float("inf"), 0.0)
    for bound in sorted(buckets):
        if total and buckets[bound] >= fraction * total:
            return bound
    return float("nan")


ATTEMPTS = 3  # latency phases at most: the rate halves after each one VEE did not keep up with


def drain_limit(params: Params) -> float:
    """How long after the last send() the last reading may take to be stored for the rate to count as kept up."""
    return max(2.0, 0.1 * params.latency_seconds)


async def latency(
    vee: VeeParts, conn: asyncpg.Connection[Any], params: Params, rate: int, first: int, bootstrap: str
) -> tuple[Latency, int]:
    """Per reading, seconds from send() to the commit of the batch that stored it, at ``rate`` readings/s, over the
    quarter hours from step ``first`` on; with the step after the last one sent."""
    settings = vee.settings
    schema, topic = settings.postgres_schema or "vee", settings.readings_topic
    steps = max(1, round(rate * params.latency_seconds / params.meterpoints))
    ids = gsrns(params.meterpoints)
    before, batches = histogram_buckets(vee.registry), Batches.of(vee)
    producer = await start_producer(bootstrap, "bench-vee-latency", linger_ms=5)
    try:
        sent: dict[tuple[int, int], float] = {}
        seen: dict[tuple[int, int], float] = {}
        producing = True

        async def poll() -> None:
            applied: dict[int, int] = await stored_offsets(conn, schema, topic)
            while producing or len(seen) < len(sent):
                now = time.perf_counter()
                for partition, next_offset in (await stored_offsets(conn, schema, topic)).items():
                    for offset in range(applied.get(partition, 0), next_offset):
                        seen.setdefault((partition, offset), now)
                    applied[partition] = next_offset
                await asyncio.sleep(0.005)

        poller = asyncio.create_task(poll())
        pending = []
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        work = [(index, gsrn, step) for step in range(first, first + steps) for index, gsrn in enumerate(ids)]
        started = time.perf_counter()
        for position in range(0, len(work), per_tick):
            delay = started + (position // per_tick) * tick - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for index, gsrn, step in work[position : position + per_tick]:
                # The CloudEvent time is the send: VEE's histogram measures from it.
                event = make_event(
                    reading_data(gsrn, index, step), source="/gridhub/collection", time=datetime.now(UTC)
                )
                record = to_record(event)
                at = time.perf_counter()
                future = await producer.send(topic, value=record.value, key=record.key, headers=record.headers)
                pending.append((future, at))
        last_send = time.perf_counter()
        for future, at in pending:
            metadata = await future
            sent[(metadata.partition, metadata.offset)] = at
        producing = False
        await asyncio.wait_for(poller, timeout=600)
    finally:
        await producer.stop()
    after = histogram_buckets(vee.registry)
    phase = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    drain = max(seen.values()) - last_send
    measured = Latency(
        rate,
        sorted(seen[key] - at for key, at in sent.items()),
        phase,
        drain,
        drain <= drain_limit(params),
        Batches.of(vee).since(batches),
    )
    return measured, first + steps


@dataclass(frozen=True)
class Checked:
    intervals: int
    held: int
    days_published: int
    duplicates: float


async def check_vee(conn: asyncpg.Connection[Any], vee: VeeParts, total: int) -> Checked:
    """Every reading is one stored interval (a benchmark of readings left aside is worthless)."""
    schema = vee.settings.postgres_schema
    intervals = await _count(conn, f'SELECT count(*) FROM "{schema}".intervals')
    held = await _count(conn, f'SELECT count(*) FROM "{schema}".pending_readings')
    published = await _count(conn, f'SELECT count(*) FROM "{schema}".day_versions')
    duplicates = _sample(vee.registry, "gridhub_vee_duplicate_readings_total")
    if intervals != total or held:
        raise AssertionError(f"VEE stored {intervals:,} intervals of {total:,} readings ({held:,} held)")
    return Checked(intervals, held, published, duplicates)


async def check_readside(conn: asyncpg.Connection[Any], schema: str, expected: Decimal) -> None:
    """The read side's total equals a sum computed here."""
    total = await conn.fetchval(f'SELECT sum(energy) FROM "{schema}_v1".consumption_daily')
    if total != expected:
        raise AssertionError(f"the read side's total {total} differs from {expected}")


def expected_energy(records: list[KafkaRecord]) -> Decimal:
    return sum((Decimal(repr(orjson.loads(r.value)["data"]["value"])) for r in records), Decimal(0))


@dataclass(frozen=True)
class Figures:
    total: int
    produce_seconds: float
    readside_seconds: list[float]  # per round
    vee_seconds: list[float]  # per round
    vee_batches: list[Batches]  # per round
    checked: Checked  # the last round
    latencies: list[Latency]  # the attempts, the rate halving after each one VEE fell behind
    days: list[date]

    @property
    def latency(self) -> Latency:
        """The first attempt VEE kept up with, else the last (slowest) one."""
        return next((attempt for attempt in self.latencies if attempt.kept_up), self.latencies[-1])


async def _drop_schemas(conn: asyncpg.Connection[Any], prefix: str) -> None:
    for row in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 || '%'", prefix):
        await conn.execute(f'DROP SCHEMA "{row["nspname"]}" CASCADE')


async def measure(params: Params) -> Figures:
    stack = StackConfig()
    bootstrap = stack.kafka_bootstrap
    names = Names(uuid.uuid4().hex[:8])
    readside_dsn, vee_dsn = stack.postgres_dsn("readside"), stack.postgres_dsn("vee")
    rs_conn = await asyncpg.connect(readside_dsn)
    vee_conn = await asyncpg.connect(vee_dsn)
    readside_seconds: list[float] = []
    vee_seconds: list[float] = []
    vee_batches: list[Batches] = []
    latencies: list[Latency] = []
    try:
        async with private_topics(bootstrap, names.all):
            await produce(bootstrap, names.meterpoints, master_data(params), "bench-vee")
            emit(f"vee bench: {params.meterpoints} meterpoints registered; VEE reads them first, once per round")
            for round_ in range(params.rounds):
                settings = vee_settings(vee_dsn, bootstrap, names, params, round_)
                await vee_master_data(settings, vee_conn, params.meterpoints)
            records = readings(params)
            total = len(records)
            started = time.perf_counter()
            await produce(bootstrap, names.readings, records, "bench-vee")
            produce_seconds = time.perf_counter() - started
            expected = expected_energy(records)
            del records  # neither service holds the log in memory
            tune_garbage_collector()  # as python -m services.* do after start-up
            emit(f"vee bench: {total:,} readings produced in {produce_seconds:.1f} s")
            # Rounds interleaved, each into fresh tables: other work on the machine hits both alike.
            for round_ in range(params.rounds):
                rs_settings = readside_settings(readside_dsn, bootstrap, names, round_)
                await prepare_database(rs_conn, rs_settings.postgres_schema, rs_settings.timezone)
                readside = await start_readside(rs_settings, registry=CollectorRegistry())
                try:
                    readside_seconds.append(await readside_consume(readside, rs_conn, total))
                finally:
                    await readside.stop()
                await check_readside(rs_conn, rs_settings.postgres_schema, expected)
                emit(f"vee bench: round {round_ + 1}: read side {total / readside_seconds[-1]:,.0f} readings/s")

                settings = vee_settings(vee_dsn, bootstrap, names, params, round_)
                vee = await start_vee(
                    settings, registry=CollectorRegistry(), clock=FixedClock(START), scheduler_task=False
                )
                try:
                    seconds, batches = await vee_consume(vee, vee_conn, total)
                    vee_seconds.append(seconds)
                    vee_batches.append(batches)
                    checked = await check_vee(vee_conn, vee, total)
                    emit(f"vee bench: round {round_ + 1}: VEE {total / seconds:,.0f} readings/s ({batches.line()})")
                    if round_ == params.rounds - 1:
                        rate = max(1, min(params.latency_rate, int(0.5 * total / statistics.median(vee_seconds))))
                        step = params.days * QUARTER_HOURS_PER_DAY
                        for _ in range(ATTEMPTS):
                            emit(f"vee bench: latency at {rate:,} readings/s for {params.latency_seconds:g} s")
                            measured, step = await latency(vee, vee_conn, params, rate, step, bootstrap)
                            latencies.append(measured)
                            if measured.kept_up or rate == 1:
                                break
                            emit(f"vee bench: VEE fell behind ({measured.drain:.1f} s to drain); half the rate")
                            rate = max(1, rate // 2)
                        schema = settings.postgres_schema
                        days = [
                            row["day"]
                            for row in await vee_conn.fetch(f'SELECT DISTINCT day FROM "{schema}".day_versions')
                        ]
                finally:
                    await vee.stop()
    finally:
        try:
            await _drop_schemas(rs_conn, names.readside_schemas)
            await _drop_schemas(vee_conn, names.vee_schemas)
        finally:
            await rs_conn.close()
            await vee_conn.close()
    return Figures(total, produce_seconds, readside_seconds, vee_seconds, vee_batches, checked, latencies, sorted(days))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report(params: Params, figures: Figures, quick: bool) -> str:
    total = figures.total
    readside_seconds, vee_seconds = statistics.median(figures.readside_seconds), statistics.median(figures.vee_seconds)
    readside_rate, vee_rate = total / readside_seconds, total / vee_seconds
    ratios = ", ".join(f"{r / v:.2f}" for r, v in zip(figures.readside_seconds, figures.vee_seconds, strict=True))
    chosen = figures.latency
    delays = chosen.delays
    checked = figures.checked
    h50, h99 = histogram_percentile(chosen.histogram, 0.5), histogram_percentile(chosen.histogram, 0.99)
    batches = "; ".join(f"round {n}: {b.line()}" for n, b in enumerate(figures.vee_batches, 1))
    lines = [
        "# VEE benchmark" + (" (quick smoke run: not a measurement)" if quick else ""),
        "",
        machine_line(),
        f"Data: {total:,} distinct quarter-hour readings ({params.meterpoints:,} registered consumption meterpoints x "
        f"{params.days} local days of {TIME_ZONE} from {FIRST_DAY.isoformat()}) on one 6-partition topic, produced "
        f"in {figures.produce_seconds:.1f} s; VEE batches of up to {params.max_records:,} records. "
        f"{params.rounds} interleaved round(s) of the read side then VEE over the same records, medians shown.",
        "",
        scale_line(params.scale, quick, SCALES),
        "",
        "## Readings per second, the same readings",
        "",
        "| path | seconds | readings/s |",
        "|---|---:|---:|",
        f"| read side: validate, project, upsert readings + hourly + daily + latest, offsets in the same "
        f"transaction | {readside_seconds:.2f} | {readside_rate:,.0f} |",
        f"| VEE: rules on arrival, every interval version stored, profile updated, touched days re-assembled and "
        f"published when complete (outbox), offsets in the same transaction | {vee_seconds:.2f} | {vee_rate:,.0f} |",
        "",
        f"**Ratio VEE / read side: {vee_rate / readside_rate:.2f}** (goal: at least 0.5; per round: {ratios}).",
        "",
        f"VEE's batches: {batches}.",
        "",
        f"Checked: {checked.intervals:,} intervals stored for {total:,} readings, {checked.held} held, "
        f"{checked.duplicates:,.0f} counted as duplicates, {checked.days_published:,} day versions published (days "
        f"{', '.join(d.isoformat() for d in figures.days)}); the read side's energy total equals the sum computed "
        "here, every round.",
        "",
        "## Reading -> validated interval latency",
        "",
        f"Load: {chosen.rate:,} readings/s for {params.latency_seconds:g} s ({len(delays):,} readings, the next "
        "quarter hours of every meterpoint) into the running VEE, caught up. Latency = from the producer's send() (the "
        "reading's CloudEvent time) to the commit of the batch that stored its interval (VEE's stored offsets polled "
        f"every 5 ms); beside it the service's own histogram `{_HISTOGRAM}` over the same readings (a bucket's upper "
        f"bound). The first rate is half the VEE rate above (at most {params.latency_rate:,}/s); it halves, up to "
        f"{ATTEMPTS} phases, while VEE falls behind (the last reading stored more than {drain_limit(params):g} s after "
        "the last send).",
        "",
        "| p50 | p99 | max | rate | kept up | histogram p50 at or below | histogram p99 at or below |",
        "|---:|---:|---:|---:|---|---:|---:|",
        f"| {_ms(percentile(delays, 0.5))} | {_ms(percentile(delays, 0.99))} | {_ms(delays[-1])} | "
        f"{chosen.rate:,} readings/s | {'yes' if chosen.kept_up else '**no**'} | {_ms(h50)} | {_ms(h99)} |",
        "",
        "Every phase:",
        "",
        "| rate | readings | p50 | p99 | drain after the last send | kept up | VEE's batches |",
        "|---:|---:|---:|---:|---:|---|---|",
    ]
    for attempt in figures.latencies:
        lines.append(
            f"| {attempt.rate:,} readings/s | {len(attempt.delays):,} | {_ms(percentile(attempt.delays, 0.5))} | "
            f"{_ms(percentile(attempt.delays, 0.99))} | {attempt.drain:.2f} s | {'yes' if attempt.kept_up else 'no'} | "
            f"{attempt.batches.line()} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vee", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, help=f"where to write the Markdown report (default: {RESULTS})")
    add_scale_option(parser, SCALES)
    args = parser.parse_args(argv)
    scale = scale_of(parser, args)
    params = QUICK if args.quick else FULL.scaled(scale)
    text = report(params, asyncio.run(measure(params)), args.quick)
    print(text)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
