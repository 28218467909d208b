"""Kafka side of the VEE service: the group consumer (offsets in PostgreSQL); dead letters go through the
library's ``KafkaDeadLetters``."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from services.vee.settings import VeeSettings


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
