"""Read side: readings materialized per second against a hand-written aiokafka -> COPY loop, and produce -> queryable
latency at a stated load.

    uv run python -m bench.readside            # a minute or two; writes bench/results/readside.md
    uv run python -m bench.readside --scale 5  # 5x the readings and meterpoints, 5x the latency phase
    uv run python -m bench.readside --quick    # a few seconds, a smoke test; writes nothing unless --out

All in one run, on the same machine, the same topic and the same table definition:

1. baseline: a hand-written aiokafka consumer (manually assigned, from the beginning) that parses each record with
   orjson and COPYs the readings into the readings table (monthly partitions, primary key): no validation, no
   upsert, no offsets, no aggregates;
2. read side: the service's consumer (as `python -m services.readside` runs it; timed from the moment it has
   positioned its partitions, so joining the group is left out) over the same records into a fresh view version:
   validation against the contract, projection, COPY into staging, upsert of readings with the difference handed
   to the hourly and daily aggregates, latest reading per register, meterpoints, offsets in the same transaction;
3. latency: the same running read side, caught up, fed at a fixed rate;
   for each reading, the time from the producer's send() to the commit that makes it queryable (seen by polling
   the stored offsets every few ms; the poll interval bounds the error).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from bench.common import add_scale_option, scale_line, scale_of, scaled_count
from libs.events import KafkaRecord, MeterReadingReceived, Quality, Register, Resolution, Unit, make_event, to_record
from libs.events.gsrn import with_check_digit
from libs.platform.kafka import start_producer
from libs.platform.serve import tune_garbage_collector
from services.readside.adapters.kafka import partitions_of
from services.readside.adapters.schema import prepare_database
from services.readside.app import Parts, start_parts
from services.readside.settings import ReadsideSettings
from stack.config import StackConfig

RESULTS = Path(__file__).parent / "results" / "readside.md"
START = datetime(2025, 3, 1, tzinfo=UTC)
_FACTOR = {"Wh": Decimal("0.001"), "kWh": Decimal(1), "MWh": Decimal(1000)}


@dataclass(frozen=True)
class Params:
    readings: int
    meterpoints: int
    latency_rate: int
    latency_seconds: float
    max_records: int
    rounds: int = 1
    scale: float = 1.0

    def scaled(self, factor: float) -> Params:
        """A grid ``factor`` times as large over the same day (readings and meterpoints, 100 quarter hours each) and
        a latency phase ``factor`` times as long; its rate, the batch size and the rounds stay."""
        meterpoints = scaled_count(self.meterpoints, factor)
        per_meterpoint = self.readings // self.meterpoints
        return replace(
            self,
            readings=meterpoints * per_meterpoint,
            meterpoints=meterpoints,
            latency_seconds=self.latency_seconds * factor,
            scale=factor,
        )


SCALES = "readings, meterpoints and the latency phase's seconds"
FULL = Params(
    readings=200_000, meterpoints=2_000, latency_rate=2_000, latency_seconds=20.0, max_records=5_000, rounds=3
)
QUICK = Params(readings=10_000, meterpoints=200, latency_rate=500, latency_seconds=3.0, max_records=2_000)


@dataclass(frozen=True)
class Names:
    tag: str

    @property
    def topics(self) -> tuple[str, str, str, str, str, str]:
        kinds = ("readings", "meterevents", "customers", "workorders", "meterpoints", "series")
        return tuple(f"bench-rs-{kind}.{self.tag}" for kind in kinds)  # type: ignore[return-value]

    @property
    def schema(self) -> str:
        return f"bench_rs_{self.tag}"


def readings(params: Params, first_interval: int = 0) -> list[KafkaRecord]:
    """Quarter-hour readings of ``meterpoints`` meterpoints, interval after interval, all distinct."""
    rng = random.Random(first_interval)
    records: list[KafkaRecord] = []
    per_meterpoint = params.readings // params.meterpoints
    gsrns = [with_check_digit(f"5713131805{n:07d}") for n in range(params.meterpoints)]
    for step in range(first_interval, first_interval + per_meterpoint):
        end = START + timedelta(minutes=15 * (step + 1))
        for gsrn in gsrns:
            data = MeterReadingReceived.create(
                meterpoint_id=gsrn,
                register=Register.ACTIVE_IMPORT,
                interval_end=end,
                resolution=Resolution.PT15M,
                value=rng.randint(0, 2500) / 1000,
                unit=Unit.KWH,
                quality=Quality.MEASURED,
                source="collection.mqtt",
            )
            records.append(to_record(make_event(data, source="/gridhub/collection", time=end)))
    return records


async def produce(bootstrap: str, topic: str, records: list[KafkaRecord], client_id: str = "bench-readside") -> None:
    """``records`` into ``topic``, 20,000 in flight at a time, every one acknowledged."""
    producer = await start_producer(bootstrap, client_id, linger_ms=10)
    try:
        for start in range(0, len(records), 20_000):
            futures = [
                await producer.send(topic, value=r.value, key=r.key, headers=r.headers)
                for r in records[start : start + 20_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def baseline(bootstrap: str, dsn: str, schema: str, topic: str, total: int, max_records: int) -> float:
    """The hand-written loop: seconds to COPY every reading into the readings table."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}_v1"'})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await conn.fetchval("SELECT ensure_readings_partitions($1::date[])", _months(total))
        partitions = await partitions_of([bootstrap], [topic])
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        done = 0
        started = time.perf_counter()
        while done < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
            rows = []
            for records in batch.values():
                for record in records:
                    data = orjson.loads(record.value)["data"]
                    value = data["value"]
                    rows.append(
                        (
                            data["meterpoint_id"],
                            data["register"],
                            datetime.fromisoformat(data["interval_end"]),
                            data["resolution"],
                            value,
                            data["unit"],
                            data["quality"],
                            data["source"],
                            data["reading_id"],
                            value,
                        )
                    )
            if rows:
                await conn.copy_records_to_table("readings", records=rows, columns=_BASELINE_COLUMNS)
                done += len(rows)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await conn.close()


_BASELINE_COLUMNS = (
    "meterpoint_id",
    "register",
    "interval_end",
    "resolution",
    "value",
    "unit",
    "quality",
    "source",
    "reading_id",
    "energy",
)


def _months(total: int) -> list[Any]:
    months = set()
    for day in range(0, 400):
        moment = START + timedelta(days=day)
        months.add(moment.date().replace(day=1))
    return sorted(months)


async def applied(conn: asyncpg.Connection[Any], schema: str, topic: str) -> int:
    query = f'SELECT coalesce(sum(next_offset), 0) FROM "{schema}_v1".consumer_offsets WHERE topic = $1'
    value: int = await conn.fetchval(query, topic)
    return value


async def readside_consume(readside: Parts, conn: asyncpg.Connection[Any], total: int) -> float:
    """The running read side over the same records: seconds from positioned to all materialized."""
    consumer = readside.consumer
    assert consumer is not None
    settings = readside.settings
    deadline = time.monotonic() + 60
    while consumer.version is None:  # joining the group is not part of the measurement
        if time.monotonic() > deadline:
            raise RuntimeError("the read side did not take its partitions within 60 s")
        await asyncio.sleep(0.002)
    started = time.perf_counter()
    while await applied(conn, settings.postgres_schema, settings.readings_topic) < total:  # noqa: ASYNC110 - polls the DB
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def latency(readside: Parts, conn: asyncpg.Connection[Any], params: Params, bootstrap: str) -> list[float]:
    """Per reading, seconds from send() to the commit that made it queryable, at ``latency_rate`` readings/s."""
    settings = readside.settings
    producer = await start_producer(bootstrap, "bench-readside-latency", linger_ms=5)
    try:
        count = int(params.latency_rate * params.latency_seconds)
        records = readings(
            Params(count, params.meterpoints, 0, 0, 0), first_interval=params.readings // params.meterpoints
        )
        sent: dict[tuple[int, int], float] = {}
        seen: dict[tuple[int, int], float] = {}
        topic = settings.readings_topic
        producing = True

        async def poll() -> None:
            query = (
                f'SELECT partition, next_offset FROM "{settings.postgres_schema}_v1".consumer_offsets WHERE topic = $1'
            )
            applied: dict[int, int] = {}
            while producing or len(seen) < len(sent):
                now = time.perf_counter()
                for row in await conn.fetch(query, topic):
                    partition, next_offset = row["partition"], row["next_offset"] or 0
                    for offset in range(applied.get(partition, next_offset), next_offset):
                        seen.setdefault((partition, offset), now)
                    applied[partition] = next_offset
                await asyncio.sleep(0.005)

        poller = asyncio.create_task(poll())
        pending = []
        interval = 0.01
        per_tick = max(1, int(params.latency_rate * interval))
        started = time.perf_counter()
        for index in range(0, len(records), per_tick):
            delay = started + (index // per_tick) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for record in records[index : index + per_tick]:
                at = time.perf_counter()
                future = await producer.send(topic, value=record.value, key=record.key, headers=record.headers)
                pending.append((future, at))
        for future, at in pending:
            metadata = await future
            sent[(metadata.partition, metadata.offset)] = at
        producing = False
        await asyncio.wait_for(poller, timeout=60)
        return sorted(seen[key] - at for key, at in sent.items())
    finally:
        await producer.stop()


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _settings(dsn: str, bootstrap: str, names: Names, schema: str, params: Params, round_: int) -> ReadsideSettings:
    return ReadsideSettings(
        postgres_dsn=dsn,
        kafka_bootstrap_servers=bootstrap,
        postgres_schema=schema,
        readings_topic=names.topics[0],
        meter_events_topic=names.topics[1],
        customers_topic=names.topics[2],
        workorders_topic=names.topics[3],
        meterpoints_topic=names.topics[4],
        series_topic=names.topics[5],
        group_id=f"bench-readside-{names.tag}-{round_}",
        max_records=params.max_records,
        poll_timeout_ms=20,
        require_api_key=False,
    )


async def run(params: Params, quick: bool) -> str:
    stack = StackConfig()
    bootstrap = stack.kafka_bootstrap
    dsn = stack.postgres_dsn("readside")
    names = Names(uuid.uuid4().hex[:8])
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    all_topics = [*names.topics, *(f"{t}.dlq" for t in names.topics)]
    await admin.create_topics([NewTopic(name=t, num_partitions=6, replication_factor=1) for t in all_topics])
    base_times: list[float] = []
    ours_times: list[float] = []
    try:
        records = readings(params)
        total = len(records)
        produce_started = time.perf_counter()
        await produce(bootstrap, names.topics[0], records)
        produce_seconds = time.perf_counter() - produce_started
        expected = expected_total(records)
        del records  # the service does not hold the log in memory either
        tune_garbage_collector()  # as python -m services.readside does after start-up
        conn = await asyncpg.connect(dsn)
        try:
            # Rounds interleaved, each into fresh tables: other work on the machine hits both paths alike.
            for round_ in range(params.rounds):
                base_schema = f"{names.schema}_base{round_}"
                await prepare_database(conn, base_schema, "UTC")
                base_times.append(
                    await baseline(bootstrap, dsn, base_schema, names.topics[0], total, params.max_records)
                )
                settings = _settings(dsn, bootstrap, names, f"{names.schema}_ours{round_}", params, round_)
                await prepare_database(conn, settings.postgres_schema, settings.timezone)
                readside = await start_parts(settings, registry=CollectorRegistry())
                try:
                    ours_times.append(await readside_consume(readside, conn, total))
                    await _check(dsn, settings.postgres_schema, expected)
                    if round_ == params.rounds - 1:
                        delays = await latency(readside, conn, params, bootstrap)
                finally:
                    await readside.stop()
        finally:
            await conn.close()
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            for row in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 || '%'", names.schema):
                await conn.execute(f'DROP SCHEMA "{row["nspname"]}" CASCADE')
        finally:
            await conn.close()
        await admin.delete_topics(all_topics)
        await admin.close()

    base_seconds, ours_seconds = statistics.median(base_times), statistics.median(ours_times)
    base_rate, ours_rate = total / base_seconds, total / ours_seconds
    ratios = ", ".join(f"{b / o:.2f}" for b, o in zip(base_times, ours_times, strict=True))
    p50, p99 = percentile(delays, 0.5) * 1000, percentile(delays, 0.99) * 1000
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        "# Read side benchmark" + (" (quick smoke run: not a measurement)" if quick else ""),
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, {memory:.0f} GB, "
        f"Python {platform.python_version()}; Kafka, PostgreSQL and this process share the machine.",
        f"Data: {total:,} distinct quarter-hour readings of {params.meterpoints:,} meterpoints on one 6-partition "
        f"topic (produced in {produce_seconds:.1f} s); batches of up to {params.max_records:,} records; "
        f"{params.rounds} interleaved rounds, medians shown.",
        "",
        scale_line(params.scale, quick, SCALES),
        "",
        "## Readings materialized per second",
        "",
        "| path | seconds | readings/s |",
        "|---|---:|---:|",
        f"| baseline: aiokafka -> orjson -> COPY into readings (no validation, upsert, offsets, aggregates) "
        f"| {base_seconds:.2f} | {base_rate:,.0f} |",
        f"| read side: validate, project, COPY staging, upsert readings + hourly + daily + latest, "
        f"offsets in the same transaction | {ours_seconds:.2f} | {ours_rate:,.0f} |",
        "",
        f"**Ratio read side / baseline: {ours_rate / base_rate:.2f}** (goal: at least 0.5; per round: {ratios}).",
        "",
        "## Produce -> queryable latency",
        "",
        f"Load: {params.latency_rate:,} readings/s for {params.latency_seconds:g} s ({len(delays):,} readings) into "
        "the running read side (group consumer, caught up). Latency = from the producer's send() to the commit of "
        "the batch holding the reading (stored offsets polled every 5 ms).",
        "",
        "| p50 | p99 | max |",
        "|---:|---:|---:|",
        f"| {p50:.0f} ms | {p99:.0f} ms | {delays[-1] * 1000:.0f} ms |",
        "",
    ]
    return "\n".join(lines)


def expected_total(records: list[KafkaRecord]) -> Decimal:
    """The exact energy of all readings, summed here independently."""
    expected = Decimal(0)
    for record in records:
        data = orjson.loads(record.value)["data"]
        expected += Decimal(repr(data["value"])) * _FACTOR[data["unit"]]
    return expected


async def _check(dsn: str, schema: str, expected: Decimal) -> None:
    """The read side's totals equal a sum computed here (a benchmark of wrong answers is worthless)."""
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval(f'SELECT sum(energy) FROM "{schema}_v1".consumption_daily')
    finally:
        await conn.close()
    if total != expected:
        raise AssertionError(f"the read side's total {total} differs from {expected}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readside", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds; a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, help=f"where to write the Markdown report (default: {RESULTS})")
    add_scale_option(parser, SCALES)
    args = parser.parse_args(argv)
    scale = scale_of(parser, args)
    params = QUICK if args.quick else FULL.scaled(scale)
    text = asyncio.run(run(params, args.quick))
    print(text)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
