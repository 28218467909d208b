"""Consumer-group lag per partition: the group's committed offset against the partition's end offset.

Committed offsets come from the group coordinator (``list_consumer_group_offsets``); the read side commits there
after each database commit for exactly this purpose (its true position lives in PostgreSQL). A partition the group
has never committed counts from the partition's beginning, as a new member would start (``earliest``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from libs.platform.settings import ServiceSettings


def kafka_bootstrap() -> str:
    """``GRIDHUB_KAFKA_BOOTSTRAP`` as the services read it, else the services' default broker."""
    return os.environ.get("GRIDHUB_KAFKA_BOOTSTRAP") or str(
        ServiceSettings.model_fields["kafka_bootstrap_servers"].default
    )


@dataclass(frozen=True)
class PartitionLag:
    """One partition of one group."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


async def topic_partitions(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of ``topics``; LookupError naming a topic the broker does not know."""
    if not topics:
        return []
    found: list[TopicPartition] = []
    for description in await admin.describe_topics(list(topics)):
        if description["error_code"] != 0 or not description["partitions"]:
            raise LookupError(f"no topic {description['topic']!r} on the broker")
        found += [TopicPartition(description["topic"], p["partition"]) for p in description["partitions"]]
    return sorted(found)


async def consumer_lag(bootstrap: str, groups: Sequence[str], *, topics: Sequence[str] = ()) -> list[PartitionLag]:
    """Lag of every partition each group committed; with ``topics``, exactly those topics' partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="gridhub-lag")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await admin.start()
    try:
        await consumer.start()
        try:
            wanted = await topic_partitions(admin, topics)
            rows: list[PartitionLag] = []
            for group in groups:
                listed = await admin.list_consumer_group_offsets(group)
                committed = {tp: meta.offset for tp, meta in listed.items() if meta.offset >= 0}
                partitions = wanted if topics else sorted(committed)
                if not partitions:
                    continue
                ends = await consumer.end_offsets(partitions)
                fresh = [tp for tp in partitions if tp not in committed]
                begins = await consumer.beginning_offsets(fresh) if fresh else {}
                for tp in partitions:
                    position = committed.get(tp, begins.get(tp, 0))
                    rows.append(
                        PartitionLag(
                            group, tp.topic, tp.partition, committed.get(tp), ends[tp], max(0, ends[tp] - position)
                        )
                    )
            return rows
        finally:
            await consumer.stop()
    finally:
        await admin.close()
