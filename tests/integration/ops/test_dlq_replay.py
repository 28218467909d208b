"""`gridhub dlq replay` against the real Kafka: originals back on the source topic, bounded, never twice."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from libs.platform.kafka import start_producer
from ops.dlq import replay_dlq
from stack.config import REPO

pytestmark = pytest.mark.kafka

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]
ORIGINAL_HEADERS = [("content-type", b"application/cloudevents+json"), ("ce_type", b"MeterAlarmRaised")]


def originals(count: int) -> list[Record]:
    return [(f"57131318000000{i:04d}".encode(), f'{{"n":{i}}}'.encode(), list(ORIGINAL_HEADERS)) for i in range(count)]


def dead_letter(record: Record, topic: str, offset: int, source: str | None = None) -> Record:
    key, value, headers = record
    return (
        key,
        value,
        [
            *headers,
            ("dlq.reason", b"handler_failed"),
            ("dlq.attempts", b"4"),
            ("dlq.error", b"asyncpg.exceptions.InternalServerError"),
            ("dlq.source.topic", (source or topic).encode()),
            ("dlq.source.partition", b"0"),
            ("dlq.source.offset", str(offset).encode()),
        ],
    )


async def produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = await start_producer(bootstrap, "test-ops-dlq")
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, partitions: int = 3) -> list[ConsumerRecord[bytes, bytes]]:
    """Everything on ``topic`` now (acknowledged records are all there)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(20):
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                batches = await consumer.getmany(timeout_ms=200)
                found += [record for records in batches.values() for record in records]
        return found
    finally:
        await consumer.stop()


def as_records(found: list[ConsumerRecord[bytes, bytes]]) -> list[Record]:
    return sorted((r.key or b"", r.value or b"", list(r.headers)) for r in found)


async def test_a_replay_republishes_the_originals_once_and_skips_ingress_refusals(
    kafka_bootstrap: str, new_topic
) -> None:
    topic = await new_topic("ops-dlq", partitions=3, with_dlq=True)
    records = originals(5)
    refusal: Record = (b"571313180000009999", b"not a reading", [("dlq.reason", b"malformed")])
    await produce(
        kafka_bootstrap,
        f"{topic}.dlq",
        [
            *(dead_letter(r, topic, n) for n, r in enumerate(records)),
            dead_letter(refusal, topic, 0, "rest:/v1/readings"),
        ],
    )

    dry = await replay_dlq(kafka_bootstrap, topic, dry_run=True)
    assert (dry.planned, dry.replayed, dry.skipped) == (6, 5, 1)
    assert dry.reasons == {"handler_failed": 5}
    assert await read_all(kafka_bootstrap, topic) == [], "a dry run published"

    progress: list[tuple[int, int]] = []
    report = await replay_dlq(kafka_bootstrap, topic, progress=lambda done, total: progress.append((done, total)))
    assert (report.planned, report.replayed, report.skipped) == (6, 5, 1)
    assert dict(report.skipped_sources) == {"rest:/v1/readings": 1}
    assert progress[-1] == (6, 6)
    replayed = await read_all(kafka_bootstrap, topic)
    assert as_records(replayed) == sorted(records), "not the original key, value and headers (without dlq.*)"
    dead = {r.key: r.partition for r in await read_all(kafka_bootstrap, f"{topic}.dlq")}
    assert all(r.partition == dead[r.key] for r in replayed), "same key, same partitioner, same partition"

    again = await replay_dlq(kafka_bootstrap, topic)
    assert (again.planned, again.replayed, again.skipped) == (0, 0, 0)
    assert len(await read_all(kafka_bootstrap, topic)) == 5, "the second replay replayed something"


async def test_a_limited_replay_commits_only_what_it_replayed(kafka_bootstrap: str, new_topic) -> None:
    topic = await new_topic("ops-dlq", partitions=3, with_dlq=True)
    records = originals(7)
    await produce(kafka_bootstrap, f"{topic}.dlq", [dead_letter(r, topic, n) for n, r in enumerate(records)])

    first = await replay_dlq(kafka_bootstrap, topic, limit=3, batch_size=2)
    assert (first.planned, first.replayed) == (3, 3)
    assert len(await read_all(kafka_bootstrap, topic)) == 3
    rest = await replay_dlq(kafka_bootstrap, topic)
    assert (rest.planned, rest.replayed) == (4, 4)
    assert as_records(await read_all(kafka_bootstrap, topic)) == sorted(records), "lost or doubled by the limit"
    assert (await replay_dlq(kafka_bootstrap, topic)).planned == 0


async def test_the_command_replays_with_a_progress_bar(kafka_bootstrap: str, new_topic) -> None:
    topic = await new_topic("ops-dlq", partitions=3, with_dlq=True)
    await produce(kafka_bootstrap, f"{topic}.dlq", [dead_letter(r, topic, n) for n, r in enumerate(originals(2))])
    env = {"GRIDHUB_KAFKA_BOOTSTRAP": kafka_bootstrap, "PATH": "/usr/bin:/bin", "COLUMNS": "120"}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        "dlq",
        "replay",
        topic,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert f"replayed 2 record(s) to {topic}" in out.decode()
    assert "2/2" in err.decode(), err.decode()  # the progress bar, on stderr
    assert time.monotonic() - started < 60
    assert len(await read_all(kafka_bootstrap, topic)) == 2
