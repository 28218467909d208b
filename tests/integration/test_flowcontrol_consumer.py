"""The consumer delivery policy against the real broker: dead letters, no loss on SIGKILL, pause on Refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from libs.events.records import InvalidEvent, InvalidReason
from libs.flowcontrol.consumer import ConsumedRecord, KafkaDelivery
from libs.flowcontrol.delivery import DeliveryPolicy, Nack
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.testing import RecordingObserver
from libs.platform.kafka import start_producer

pytestmark = pytest.mark.kafka

PROCESS = Path(__file__).with_name("flowcontrol_consumer_process.py")
Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def record(n: int, **extra_headers: bytes) -> Record:
    headers = [("ce_type", b"test.reading"), ("trace", f"t-{n}".encode()), *extra_headers.items()]
    return f"meterpoint-{n}".encode(), json.dumps({"n": n}).encode(), headers


async def produce(bootstrap: str, topic: str, records: list[Record], partition: int | None = 0) -> None:
    producer = await start_producer(bootstrap, "test-flowcontrol-consumer")
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers, partition=partition)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[ConsumerRecord]:
    """Everything in the first `partitions` partitions of `topic` now, read without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


@pytest.fixture
async def dlq_producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = await start_producer(kafka_bootstrap, "test-flowcontrol-dlq")
    yield producer
    await producer.stop()


@contextlib.asynccontextmanager
async def consuming(
    bootstrap: str,
    topic: str,
    group: str,
    delivery: KafkaDelivery,
    handler: Callable[[ConsumedRecord], Awaitable[None]],
) -> AsyncIterator[None]:
    """`delivery.run` over an aiokafka group consumer, as the services run it, until the block ends."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=int(delivery.max_poll_interval * 1000),
    )
    await consumer.start()
    task = asyncio.create_task(delivery.run(consumer, handler, max_records=20, poll_timeout=0.1))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


async def committed(admin: AIOKafkaAdminClient, group: str) -> dict[int, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def headers_of(consumed: ConsumerRecord) -> dict[str, bytes]:
    return dict(consumed.headers)


async def test_poison_and_invalid_records_are_dead_lettered_while_the_partition_moves_on(
    kafka_bootstrap: str, new_topic, admin: AIOKafkaAdminClient, dlq_producer: AIOKafkaProducer
) -> None:
    topic = await new_topic("fc.deliver", partitions=1, with_dlq=True)
    group = f"g-{topic}"
    poison, invalid, count = 3, 6, 14
    sent = [record(n) for n in range(count)]
    await produce(kafka_bootstrap, topic, sent)

    observer = RecordingObserver()
    policy = DeliveryPolicy(max_attempts=3, base_backoff=0.05, max_backoff=0.1, jitter=0.0)
    delivery = KafkaDelivery(dlq_producer, policy=policy, observer=observer)
    attempts: Counter[int] = Counter()
    processed: list[int] = []

    async def on_reading(message: ConsumedRecord) -> None:
        n = json.loads(message.value or b"{}")["n"]
        attempts[n] += 1
        if n == poison:
            raise Nack("meterpoint row locked")
        if n == invalid:
            raise InvalidEvent(InvalidReason.SCHEMA_VIOLATION, "data.reading: field required")
        processed.append(n)

    async with consuming(kafka_bootstrap, topic, group, delivery, on_reading):

        async def all_done() -> bool:
            return (await committed(admin, group)).get(0) == count

        await wait_for(all_done, 20, "the group's commit to reach the end of the partition")

    dead = {json.loads(r.value)["n"]: r for r in await read_topic(kafka_bootstrap, f"{topic}.dlq", 1)}
    assert sorted(dead) == [poison, invalid]
    assert processed == [n for n in range(count) if n not in dead], "every record behind them, in order"
    assert attempts[poison] == 3
    assert attempts[invalid] == 1

    for n, consumed in dead.items():
        key, value, headers = sent[n]
        assert (consumed.key, consumed.value) == (key, value)
        assert list(consumed.headers)[: len(headers)] == headers, "original headers first, unchanged"
        dlq = headers_of(consumed)
        assert dlq["dlq.source.topic"] == topic.encode()
        assert dlq["dlq.source.partition"] == b"0"
        assert dlq["dlq.source.offset"] == str(n).encode()
        assert dlq["dlq.record_id"] == f"{topic}:0:{n}".encode()
    assert headers_of(dead[poison])["dlq.reason"] == b"meterpoint row locked"
    assert headers_of(dead[poison])["dlq.attempts"] == b"3"
    assert headers_of(dead[poison])["dlq.error"] == b"libs.flowcontrol.delivery.Nack"
    assert headers_of(dead[invalid])["dlq.reason"] == b"schema_violation: data.reading: field required"
    assert headers_of(dead[invalid])["dlq.attempts"] == b"1"
    assert headers_of(dead[invalid])["dlq.error"] == b"libs.events.records.InvalidEvent"

    assert observer.admitted_count == count - 2
    assert observer.dropped_strategies == Counter(dead_letter=2)
    assert observer.rejected_reasons == Counter(nack=2)


async def test_refused_pauses_and_redelivers_without_committing_until_the_dependency_is_back(
    kafka_bootstrap: str, new_topic, admin: AIOKafkaAdminClient, dlq_producer: AIOKafkaProducer
) -> None:
    topic = await new_topic("fc.refused", partitions=1, with_dlq=True)
    group = f"g-{topic}"
    count = 6
    await produce(kafka_bootstrap, topic, [record(n) for n in range(count)])

    observer = RecordingObserver()
    delivery = KafkaDelivery(dlq_producer, observer=observer, pause=0.1, max_pause=1.0)
    database_up = False
    tries: dict[int, list[float]] = {n: [] for n in range(count)}
    written: list[int] = []

    async def on_reading(message: ConsumedRecord) -> None:
        n = json.loads(message.value or b"{}")["n"]
        tries[n].append(time.monotonic())
        if not database_up:
            raise CallNotPermitted("database breaker open", retry_after=0.25)
        written.append(n)

    try:
        async with consuming(kafka_bootstrap, topic, group, delivery, on_reading):

            async def redelivered_three_times() -> bool:
                return len(tries[0]) >= 3

            await wait_for(redelivered_three_times, 10, "record 0 to be redelivered while the database is down")
            assert await committed(admin, group) == {}, "nothing committed while the dependency is down"
            assert all(not tries[n] for n in range(1, count)), "nothing behind the refused record was handled"
            gaps = [later - earlier for earlier, later in zip(tries[0], tries[0][1:], strict=False)]
            assert min(gaps) >= 0.2, "the partition stays paused for the Refused's retry_after"
            assert observer.rejected_reasons["paused"] >= 3
            assert await read_topic(kafka_bootstrap, f"{topic}.dlq", 1) == [], "a refusal is never dead-lettered"

            database_up = True

            async def caught_up() -> bool:
                return (await committed(admin, group)).get(0) == count

            await wait_for(caught_up, 10, "the consumer to resume and commit everything")
    finally:
        await delivery.aclose()
    assert written == list(range(count))
    assert await read_topic(kafka_bootstrap, f"{topic}.dlq", 1) == []
    assert observer.dropped_strategies == Counter()


@pytest.mark.postgres
async def test_a_consumer_process_killed_mid_batch_loses_nothing(
    kafka_bootstrap: str, new_topic, admin: AIOKafkaAdminClient, pg_dsn: str, pg_schema: str
) -> None:
    topic = await new_topic("fc.sigkill", partitions=3, with_dlq=True)
    group = f"g-{topic}"
    count, hold_at = 120, 50
    await produce(kafka_bootstrap, topic, [record(n) for n in range(count)], partition=None)
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(
        f"CREATE TABLE {pg_schema}.processed (n int, partition int, record_offset bigint, pid int);"
        f"CREATE TABLE {pg_schema}.holding (n int, pid int)"
    )

    def start(hold: int) -> subprocess.Popen[bytes]:
        argv = [kafka_bootstrap, topic, group, pg_dsn, pg_schema, str(hold)]
        return subprocess.Popen([sys.executable, str(PROCESS), *argv], cwd=PROCESS.parents[2])

    first = start(hold_at)
    second = None
    try:

        async def holding() -> bool:
            assert first.poll() is None, "the first consumer process died on its own"
            return bool(await conn.fetchval(f"SELECT count(*) FROM {pg_schema}.holding"))

        await wait_for(holding, 20, "the first process to hold a record it has written but not committed")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        done_before = await conn.fetchval(f"SELECT count(DISTINCT n) FROM {pg_schema}.processed")
        assert 0 < done_before < count, "killed mid-stream"

        second = start(-1)

        async def finished() -> bool:
            assert second is not None
            assert second.poll() is None, "the second consumer process died"
            return sum((await committed(admin, group)).values()) == count

        await wait_for(finished, 30, "the second process to finish the topic")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    rows = await conn.fetch(f"SELECT n, pid FROM {pg_schema}.processed")
    await conn.close()
    handled = Counter(row["n"] for row in rows)
    assert set(handled) == set(range(count)), "every produced record was handled"
    assert handled[hold_at] == 2, "the record written but not committed was redelivered to the new process"
    assert {row["pid"] for row in rows if row["n"] == hold_at} == {first.pid, second.pid}
    assert await read_topic(kafka_bootstrap, f"{topic}.dlq", 3) == []
