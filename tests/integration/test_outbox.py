"""The transactional outbox against the real PostgreSQL and Kafka, with its relay killed mid-stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from libs.platform.db import create_pool
from libs.platform.migrations import migrate
from libs.platform.outbox import (
    OUTBOX_COMPONENT,
    OUTBOX_MIGRATIONS,
    OutboxMetrics,
    OutboxRecord,
    add_to_outbox,
    watch_outbox_backlog,
)
from stack.config import REPO

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CHANGES = 1000
METERPOINTS = [f"5713131804000{n:05d}" for n in range(20)]
WRITERS = 4
KILL_AT_PUBLISHED = (150, 400, 700)


class RolledBack(Exception):
    pass


def start_relay(dsn: str, bootstrap: str, schema: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "libs.platform.outbox_relay",
                "--dsn",
                dsn,
                "--bootstrap",
                bootstrap,
                "--schema",
                schema,
                "--batch-size",
                "25",
                "--poll-interval",
                "1",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_every_committed_change_reaches_kafka_in_key_order_despite_relay_kills(
    pg_dsn: str, pg_schema: str, kafka_bootstrap: str, new_topic, tmp_path: Path
) -> None:
    topic = await new_topic("outbox")
    pool = await create_pool(pg_dsn, schema=pg_schema, max_size=WRITERS + 2)
    async with pool.acquire() as conn:
        await migrate(conn, OUTBOX_COMPONENT, OUTBOX_MIGRATIONS)
        await conn.execute("CREATE TABLE meterpoint_state (meterpoint_id text PRIMARY KEY, seq integer NOT NULL)")

    async def change(meterpoint_id: str, *, roll_back: bool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            # The state change first: it serialises writers of one key, so outbox ids follow commit order.
            seq = await conn.fetchval(
                "INSERT INTO meterpoint_state VALUES ($1, 1) ON CONFLICT (meterpoint_id) "
                "DO UPDATE SET seq = meterpoint_state.seq + 1 RETURNING seq",
                meterpoint_id,
            )
            value = orjson.dumps({"meterpoint_id": meterpoint_id, "seq": seq, "rolled_back": roll_back})
            await add_to_outbox(conn, [OutboxRecord(topic, meterpoint_id.encode(), value, [("ce_type", b"t")])])
            if roll_back:
                raise RolledBack

    async def writer(index: int) -> None:
        mine = METERPOINTS[index::WRITERS]
        for n in range(CHANGES // WRITERS):
            if n % 10 == 3:
                with pytest.raises(RolledBack):
                    await change(mine[n % len(mine)], roll_back=True)
            await change(mine[n % len(mine)], roll_back=False)
            await asyncio.sleep(0.01)  # pacing, so the relay kills land while changes still stream in

    async def published() -> int:
        return await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")

    relay = start_relay(pg_dsn, kafka_bootstrap, pg_schema, tmp_path / "relay.log")
    writers = asyncio.gather(*(writer(i) for i in range(WRITERS)))
    kills_mid_stream = 0
    try:
        for threshold in KILL_AT_PUBLISHED:
            await wait_for(lambda t=threshold: _at_least(published, t), 60, f"{threshold} published rows")
            if not writers.done():
                kills_mid_stream += 1
            os.kill(relay.pid, signal.SIGKILL)
            relay.wait(timeout=10)
            relay = start_relay(pg_dsn, kafka_bootstrap, pg_schema, tmp_path / "relay.log")
        await writers

        async def drained() -> bool:
            return await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0

        await wait_for(drained, 60, "the outbox to drain")
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=30)
        await pool.close()
    assert relay.returncode == 0, (tmp_path / "relay.log").read_text()[-2000:]
    assert kills_mid_stream == len(KILL_AT_PUBLISHED)

    per_key = await _consume_all(kafka_bootstrap, topic, expected_distinct=CHANGES)
    rolled_back = [v for values in per_key.values() for v in values if v["rolled_back"]]
    assert rolled_back == []
    for meterpoint_id, values in per_key.items():
        first_seen: list[int] = []
        for value in values:
            if value["seq"] not in first_seen:
                first_seen.append(value["seq"])
        # Every committed change, once or more (a killed relay republishes its unmarked batch), in commit order.
        assert first_seen == list(range(1, len(first_seen) + 1)), meterpoint_id
    assert sum(len(set(v["seq"] for v in values)) for values in per_key.values()) == CHANGES


async def _at_least(count, threshold: int) -> bool:
    return await count() >= threshold


async def _consume_all(bootstrap: str, topic: str, expected_distinct: int) -> dict[str, list[dict]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    per_key: dict[str, list[dict]] = defaultdict(list)
    distinct: set[tuple[str, int]] = set()
    try:
        async with asyncio.timeout(60):
            while len(distinct) < expected_distinct:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        value = orjson.loads(record.value)
                        assert record.key.decode() == value["meterpoint_id"]
                        per_key[value["meterpoint_id"]].append(value)
                        distinct.add((value["meterpoint_id"], value["seq"]))
    finally:
        await consumer.stop()
    return per_key


async def test_add_to_outbox_refuses_to_write_outside_a_transaction(pg_dsn: str, pg_schema: str) -> None:
    pool = await create_pool(pg_dsn, schema=pg_schema)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, OUTBOX_COMPONENT, OUTBOX_MIGRATIONS)
            with pytest.raises(RuntimeError, match="inside the transaction"):
                await add_to_outbox(conn, [OutboxRecord("customers.v1", b"k", b"v")])
            assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await pool.close()


async def test_one_leader_per_outbox_table(pg_dsn: str, kafka_bootstrap: str) -> None:
    """Two relays of one outbox: one leads, one stands by; a relay of another schema leads its own."""
    from libs.platform.kafka import start_producer
    from libs.platform.outbox import OutboxRelay

    schemas = [f"t_lead_{n}_{os.getpid()}" for n in range(2)]
    admin = await create_pool(pg_dsn, max_size=1)
    pools = []
    producer = await start_producer(kafka_bootstrap, "test-relay-leaders")
    stop = asyncio.Event()
    try:
        for schema in schemas:
            await admin.execute(f"CREATE SCHEMA {schema}")
            pool = await create_pool(pg_dsn, schema=schema, max_size=3)
            async with pool.acquire() as conn:
                await migrate(conn, OUTBOX_COMPONENT, OUTBOX_MIGRATIONS)
            pools.append(pool)
        first, standby, other = (
            OutboxRelay(pools[0], producer, poll_interval=0.2),
            OutboxRelay(pools[0], producer, poll_interval=0.2),
            OutboxRelay(pools[1], producer, poll_interval=0.2),
        )
        tasks = [asyncio.create_task(relay.run(stop)) for relay in (first, standby, other)]

        async def settled() -> bool:
            return other.is_leader and (first.is_leader != standby.is_leader)

        await wait_for(settled, 10, "one leader per outbox table")
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await producer.stop()
        for pool in pools:
            await pool.close()
        for schema in schemas:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def test_the_backlog_gauges_follow_unpublished_events_without_kafka(pg_dsn: str, pg_schema: str) -> None:
    """No relay and no Kafka: the gauges show the committed events waiting, then nothing once they went out."""
    registry = CollectorRegistry()
    metrics = OutboxMetrics.for_registry(registry)
    assert OutboxMetrics.for_registry(registry) is metrics
    pool = await create_pool(pg_dsn, schema=pg_schema, max_size=2)
    stop = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        async with pool.acquire() as conn:
            await migrate(conn, OUTBOX_COMPONENT, OUTBOX_MIGRATIONS)
            async with conn.transaction():
                await add_to_outbox(conn, [OutboxRecord("customers.v1", b"k", b"v%d" % n) for n in range(3)])
            await conn.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")
        watcher = asyncio.create_task(watch_outbox_backlog(pool, metrics, stop, interval=0.1))

        def sample(name: str) -> float | None:
            return registry.get_sample_value(name)

        async def waiting() -> bool:
            age = sample("gridhub_outbox_oldest_unpublished_age_seconds") or 0.0
            return sample("gridhub_outbox_unpublished_events") == 3 and 90 <= age < 120

        await wait_for(waiting, 10, "three events of 90 s in the gauges")
        assert (sample("gridhub_outbox_backlog_read_timestamp_seconds") or 0) > 0

        await pool.execute("UPDATE outbox SET published_at = now()")

        async def drained() -> bool:
            unpublished = sample("gridhub_outbox_unpublished_events")
            return unpublished == 0 and sample("gridhub_outbox_oldest_unpublished_age_seconds") == 0

        await wait_for(drained, 10, "an empty backlog in the gauges")
    finally:
        stop.set()
        if watcher is not None:
            await asyncio.wait_for(watcher, 5)
        await pool.close()


async def test_a_stopping_leader_drains_what_was_committed_before_it_lets_go(
    pg_dsn: str, pg_schema: str, kafka_bootstrap: str, new_topic
) -> None:
    """Rows committed while the leader sleeps (no notification, a long poll) go out when it is stopped."""
    from libs.platform.kafka import start_producer
    from libs.platform.outbox import OutboxRelay

    topic = await new_topic("outbox-drain", partitions=1)
    pool = await create_pool(pg_dsn, schema=pg_schema, max_size=3)
    producer = await start_producer(kafka_bootstrap, "test-relay-drain")
    stop = asyncio.Event()
    try:
        async with pool.acquire() as conn:
            await migrate(conn, OUTBOX_COMPONENT, OUTBOX_MIGRATIONS)
        relay = OutboxRelay(pool, producer, poll_interval=3600)
        relay._on_notify = lambda *_: None  # deaf to NOTIFY: only the stop can make it look again
        task = asyncio.create_task(relay.run(stop))

        async def leading() -> bool:
            return relay.is_leader

        await wait_for(leading, 10, "the relay to lead")
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, [OutboxRecord(topic, b"k", b"v%d" % n) for n in range(5)])
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 5

        stop.set()
        await asyncio.wait_for(task, 30)

        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
        assert relay.published_total == 5
    finally:
        stop.set()
        await producer.stop()
        await pool.close()
