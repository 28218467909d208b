"""Replaying a dead-letter topic: ``<topic>.dlq`` back into ``<topic>``, after the cause was fixed.

- The original key, value and headers are republished, minus the ``dlq.*`` headers the dead-lettering added
  (docs/flow-control.md), with the no-loss producer (``acks=all``, idempotent), so the record lands on the same
  partition as the original (same key, same partitioner) and consumers deduplicate it by its event id.
- Only records whose ``dlq.source.topic`` is ``<topic>`` are replayed: those a consumer of ``<topic>`` gave up on.
  Refusals at the entry points (``rest:/v1/readings``, ``mqtt:...``, ``ftp:...``) never were events; their
  senders must send them again, so they are skipped (and counted).
- Bounded: the replay stops at the end offsets it saw when it started (a record that fails again and comes back
  waits for the next replay) and after ``limit`` records.
- Progress is the replay's own consumer group (``gridhub.dlq-replay.<topic>``), committed only after every
  republished record of a batch was acknowledged: a replay that dies is resumed by the next one, and a finished
  replay replays nothing the second time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from libs.events import topics
from libs.platform.kafka import start_producer
from ops.lag import topic_partitions

DLQ_HEADER_PREFIX = "dlq."
SOURCE_TOPIC_HEADER = "dlq.source.topic"
REASON_HEADER = "dlq.reason"
Headers = Sequence[tuple[str, bytes]]
Progress = Callable[[int, int], None]


def replay_group(topic: str) -> str:
    """The consumer group that remembers how far the replay of ``topic``'s DLQ got."""
    return f"gridhub.dlq-replay.{topic}"


def original_headers(headers: Headers) -> list[tuple[str, bytes]]:
    """The record's headers without the ones dead-lettering added."""
    return [(key, value) for key, value in headers if not key.startswith(DLQ_HEADER_PREFIX)]


def header(headers: Headers, name: str) -> str | None:
    """The last value of header ``name`` as text, or None."""
    values = [value for key, value in headers if key == name]
    return values[-1].decode(errors="replace") if values else None


def from_topic(headers: Headers, topic: str) -> bool:
    """True when a consumer of ``topic`` dead-lettered the record (or it does not say where it came from)."""
    source = header(headers, SOURCE_TOPIC_HEADER)
    return source is None or source == topic


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    topic: str
    planned: int = 0
    replayed: int = 0
    skipped: int = 0
    dry_run: bool = False
    reasons: Counter[str] = field(default_factory=Counter)
    skipped_sources: Counter[str] = field(default_factory=Counter)


async def replay_dlq(
    bootstrap: str,
    topic: str,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    stall_timeout: float = 30.0,
    progress: Progress | None = None,
) -> ReplayReport:
    """Republish ``<topic>.dlq`` into ``topic`` from where the last replay stopped (see the module docstring)."""
    if topics.is_dlq(topic):
        topic = topic.removesuffix(topics.DLQ_SUFFIX)
    dlq = topics.dlq(topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="gridhub-dlq-replay")
    await admin.start()
    try:
        partitions = await topic_partitions(admin, [topic, dlq])
    finally:
        await admin.close()
    dlq_partitions = [tp for tp in partitions if tp.topic == dlq]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=replay_group(topic),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="gridhub-dlq-replay",
    )
    await consumer.start()
    producer: AIOKafkaProducer | None = None
    try:
        consumer.assign(dlq_partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(dlq_partitions)
        starts = {tp: await _start_position(consumer, tp) for tp in dlq_partitions}
        available = sum(max(0, ends[tp] - starts[tp]) for tp in dlq_partitions)
        report = ReplayReport(topic, min(available, limit) if limit is not None else available, dry_run=dry_run)
        if not dry_run and report.planned:
            producer = await start_producer(bootstrap, "gridhub-dlq-replay")
        await _replay(consumer, producer, report, ends, batch_size, stall_timeout, progress)
        return report
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()


async def _start_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    committed = await consumer.committed(tp)
    if committed is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, committed)
    position: int = await consumer.position(tp)
    return position


async def _replay(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer | None,
    report: ReplayReport,
    ends: dict[TopicPartition, int],
    batch_size: int,
    stall_timeout: float,
    progress: Progress | None,
) -> None:
    done = 0
    last_progress = time.monotonic()
    while done < report.planned:
        active = [tp for tp in ends if await consumer.position(tp) < ends[tp]]
        if not active:
            break
        batches = await consumer.getmany(*active, timeout_ms=500, max_records=min(batch_size, report.planned - done))
        if not any(batches.values()):
            if time.monotonic() - last_progress > stall_timeout:
                raise TimeoutError(f"no records from {topics.dlq(report.topic)} for {stall_timeout:.0f}s")
            continue
        last_progress = time.monotonic()
        acks: list[asyncio.Future[object]] = []
        commits: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            for record in records:
                if record.offset >= ends[tp] or done >= report.planned:
                    break  # past the snapshot or the limit: left for the next replay, not committed
                done += 1
                commits[tp] = record.offset + 1
                headers = list(record.headers)
                if not from_topic(headers, report.topic):
                    report.skipped += 1
                    report.skipped_sources[header(headers, SOURCE_TOPIC_HEADER) or "?"] += 1
                    continue
                report.replayed += 1
                report.reasons[header(headers, REASON_HEADER) or "?"] += 1
                if producer is not None:
                    acks.append(
                        await producer.send(
                            report.topic, record.value, key=record.key, headers=original_headers(headers)
                        )
                    )
        # Every republished record acknowledged before the replay's own position moves past it.
        await asyncio.gather(*acks)
        if not report.dry_run and commits:
            await consumer.commit(commits)
        if progress is not None:
            progress(done, report.planned)
