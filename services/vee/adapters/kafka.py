"""Kafka side of the VEE service: the group consumer (offsets in PostgreSQL) and the dead-letter sink."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from libs.flowcontrol.delivery import DeadLetter
from services.vee.settings import VeeSettings


class KafkaDeadLetters:
    """Publishes the original record with ``dlq.*`` headers to ``<topic>.dlq`` and waits for every ack."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def publish(self, dead_letters: Sequence[DeadLetter]) -> None:
        pending = []
        for dead in dead_letters:
            source, topic = dead.source, dead.topic
            if source is None or topic is None:
                raise ValueError("a consumer's dead letter always has its source record")
            pending.append(await self._producer.send(topic, value=source.value, key=source.key, headers=dead.headers()))
        await asyncio.gather(*pending)


def group_consumer(settings: VeeSettings) -> AIOKafkaConsumer:
    """Group member, manual offsets (they live in PostgreSQL), earliest (meterpoints.v1 is read whole)."""
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
