"""Held readings and alarms: redrive them once their meterpoints are registered (``gridhub holds redrive``).

``python -m services.collection.commands.holds redrive [--batch 500] [--group collection-holds]``

A reading for a meterpoint the scope view does not know is *held*: its validated event (the exact record it would
have been) waits in ``meter.readings.v1.dlq`` with reason ``unknown_meterpoint``, with who delivered it (see
``adapters/kafka.py`` `held_record`). A redrive:

1. reads ``meterpoints.v1`` to its end into a fresh scope view (the registry as of now);
2. reads each DLQ (readings, then alarms) from the group's committed offsets up to the end offsets it found at
   start, in batches of ``--batch`` records; for each held record it checks the scope again:
   in scope -> the event goes to its topic (same key, value and id: consumers deduplicate, so a redrive that is
   interrupted and run again changes nothing); still unknown -> held again (the same record at the DLQ's end,
   ``dlq.attempts`` + 1, so the next redrive sees it); now assigned to another source or grid company -> recorded
   as ``not_in_scope`` (no longer held); any other dead letter is not ours and is passed over;
3. commits the batch's DLQ offsets only after Kafka acknowledged everything the batch published.

It prints the counts. Run it after registering meterpoints; it is safe to run at any time and more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from libs.events import topics
from libs.events.records import KafkaRecord
from libs.platform.kafka import start_producer
from services.collection.adapters.kafka import (
    DELIVERER_HEADERS,
    HELD_ERROR,
    HELD_TOPIC_HEADER,
    REJECTION_ERROR,
    KafkaPublisher,
    Publisher,
)
from services.collection.adapters.meterpoints import MeterpointFeed
from services.collection.domain import RejectReason
from services.collection.scope import NOT_IN_SCOPE_DETAIL, Deliverer, ScopeView
from services.collection.settings import CollectionSettings

DEFAULT_GROUP = "collection-holds"
HELD_TOPICS = (topics.READINGS, topics.METER_EVENTS)
"""The topics whose DLQs hold items (their held records name one of these as their target)."""
_UNKNOWN = RejectReason.UNKNOWN_METERPOINT.value.encode()


@dataclass
class RedriveCounts:
    """What one redrive did."""

    read: int = 0
    redriven: int = 0
    still_unknown: int = 0
    not_in_scope: int = 0
    passed_over: int = 0  # dead letters that are not held items


def _replace(headers: Sequence[tuple[str, bytes]], changes: dict[str, bytes], drop: frozenset[str]) -> list[Any]:
    kept = [(name, changes.get(name, value)) for name, value in headers if name not in drop]
    return kept


def _deliverer(headers: dict[str, bytes]) -> Deliverer | None:
    kind, source_id = headers.get(DELIVERER_HEADERS[0]), headers.get(DELIVERER_HEADERS[1])
    if not kind or not source_id:
        return None
    tenant = headers.get(DELIVERER_HEADERS[2])
    return Deliverer(kind.decode(), source_id.decode(), tenant.decode() if tenant else None)


def decide(record: Any, view: ScopeView, dlq: str, counts: RedriveCounts) -> KafkaRecord | None:
    """What to publish for one DLQ record (None: nothing, it is not a held item)."""
    headers = dict(record.headers)
    target = headers.get(HELD_TOPIC_HEADER, b"").decode()
    deliverer = _deliverer(headers)
    if (
        headers.get("dlq.reason") != _UNKNOWN
        or headers.get("dlq.error") != HELD_ERROR.encode()
        or target not in HELD_TOPICS
        or deliverer is None
        or record.key is None
        or record.value is None
    ):
        counts.passed_over += 1
        return None
    try:
        in_scope = view.in_scope(record.key.decode(), deliverer)
    except ValueError:  # a key that is no meterpoint id: not a record we wrote
        counts.passed_over += 1
        return None
    if in_scope is None:
        counts.still_unknown += 1
        earlier = headers.get("dlq.attempts", b"1")
        attempts = (int(earlier) if earlier.isdigit() else 1) + 1
        return KafkaRecord(
            dlq,
            record.key,
            record.value,
            _replace(record.headers, {"dlq.attempts": str(attempts).encode()}, frozenset()),
        )
    if not in_scope:
        counts.not_in_scope += 1
        changes = {
            "dlq.reason": RejectReason.NOT_IN_SCOPE.value.encode(),
            "dlq.error": REJECTION_ERROR.encode(),
            "dlq.detail": NOT_IN_SCOPE_DETAIL.encode(),
        }
        return KafkaRecord(
            dlq, record.key, record.value, _replace(record.headers, changes, frozenset({HELD_TOPIC_HEADER}))
        )
    counts.redriven += 1
    # The event's own headers (content-type, ce_type), as it would have been published at the edge.
    event_headers = [(n, v) for n, v in record.headers if not n.startswith(("dlq.", "gridhub."))]
    return KafkaRecord(target, record.key, record.value, event_headers)


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    numbers = sorted(p["partition"] for t in described if t.get("error_code", 0) == 0 for p in t.get("partitions", ()))
    if not numbers:
        raise LookupError(f"topic {topic} does not exist")
    return [TopicPartition(topic, number) for number in numbers]


async def redrive_topic(
    settings: CollectionSettings,
    base: str,
    view: ScopeView,
    publisher: Publisher,
    *,
    group_id: str,
    batch: int,
    counts: RedriveCounts,
) -> None:
    """Redrive the held items of ``base``'s DLQ up to its end offsets as of now (see the module doc)."""
    dlq_name = topics.dlq(base)
    topic = settings.kafka_topic_prefix + dlq_name
    partitions = await _partitions(settings.kafka_bootstrap_servers, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        # The end as of now: what this run holds again lands after it and waits for the next run.
        ends = await consumer.end_offsets(partitions)
        open_partitions = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        while open_partitions:
            fetched = await consumer.getmany(*open_partitions, timeout_ms=1000, max_records=batch)
            out: list[KafkaRecord] = []
            commits: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, records in fetched.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    counts.read += 1
                    decided = decide(record, view, dlq_name, counts)
                    if decided is not None:
                        out.append(decided)
                    commits[tp] = OffsetAndMetadata(record.offset + 1, "")
            await publisher.publish(out)  # every ack before the commit: an interrupted run publishes again
            if commits:
                await consumer.commit(commits)
            for tp in list(open_partitions):
                position = commits[tp].offset if tp in commits else await consumer.position(tp)
                if position >= ends[tp]:
                    open_partitions.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()


async def redrive(settings: CollectionSettings, *, group_id: str = DEFAULT_GROUP, batch: int = 500) -> RedriveCounts:
    """Redrive every held item whose meterpoint is now registered; the counts of what happened."""
    if not 1 <= batch <= 10_000:
        raise ValueError("--batch is between 1 and 10000 records")
    view = ScopeView(settings.scope.capacity)
    feed = MeterpointFeed(
        settings.kafka_bootstrap_servers,
        settings.kafka_topic_prefix + topics.METERPOINTS,
        view,
        catch_up_timeout=settings.scope.catch_up_timeout_seconds,
    )
    await feed.run(stop_when_caught_up=True)
    producer = await start_producer(settings.kafka_bootstrap_servers, f"{settings.kafka_client_id}-holds")
    counts = RedriveCounts()
    try:
        publisher = KafkaPublisher(producer, timeout=30.0, topic_prefix=settings.kafka_topic_prefix)
        for base in HELD_TOPICS:
            await redrive_topic(settings, base, view, publisher, group_id=group_id, batch=batch, counts=counts)
    finally:
        await producer.stop()
    return counts


def main(argv: list[str] | None = None, settings: CollectionSettings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.collection.commands.holds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("redrive", help="publish held items whose meterpoints are registered now")
    run.add_argument("--batch", type=int, default=500, help="DLQ records per publish and commit (1-10000)")
    run.add_argument(
        "--group",
        default=DEFAULT_GROUP,
        help="consumer group whose committed DLQ offsets are the redrive's progress",
    )
    args = parser.parse_args(argv)
    try:
        counts = asyncio.run(redrive(settings or CollectionSettings(), group_id=args.group, batch=args.batch))
    except (ValueError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(" ".join(f"{name}={value}" for name, value in asdict(counts).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
