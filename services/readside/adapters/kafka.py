"""Kafka side of the read side: the group consumer, a manually assigned replay consumer, dead-letter sinks (the
library's Kafka one, and a logging one for replays)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from libs.flowcontrol.delivery import DeadLetter
from services.readside.settings import ReadsideSettings

logger = logging.getLogger(__name__)


class LoggedDeadLetters:
    """For replays: the live consumer already dead-lettered these records, so they are only logged and counted."""

    def __init__(self) -> None:
        self.count = 0

    async def publish(self, dead_letters: Sequence[DeadLetter]) -> None:
        """Log each dead letter once."""
        for dead in dead_letters:
            self.count += 1
            logger.warning("replay skipped poison record %s (%s)", dead.record_id, dead.reason)


def group_consumer(settings: ReadsideSettings) -> AIOKafkaConsumer:
    """The live consumer: group member, manual offsets (they live in PostgreSQL), bounded polls."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_list,
        client_id=f"{settings.service_name}-consumer",
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 5),
        max_poll_interval_ms=settings.max_poll_interval_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


def replay_consumer(settings: ReadsideSettings) -> AIOKafkaConsumer:
    """A consumer outside any group, for replaying whole topics from their beginning."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_list,
        client_id=f"{settings.service_name}-rebuild",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


async def partitions_of(bootstrap_servers: list[str], topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of ``topics`` (a missing topic is an error: the replay would silently lack its events)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    partitions: list[TopicPartition] = []
    for topic in described:
        if topic["error_code"] != 0 or not topic["partitions"]:
            raise LookupError(f"topic {topic['topic']!r} is not available (error {topic['error_code']})")
        partitions += [TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]]
    return sorted(partitions)
