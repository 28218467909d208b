"""Kafka clients that must survive a broker that is down at start-up: producers started with retries.

Kafka being down must not stop the REST API (changes wait in the outbox, consumers simply have nothing to read),
so the producer of the outbox relay and of the consumers' dead letters is started here, in background tasks,
retrying with capped backoff until it connects or the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from libs.platform.kafka import producer_settings
from libs.platform.outbox import OutboxRelay

log = logging.getLogger(__name__)

_MAX_BACKOFF = 10.0


async def start_producer_retrying(
    bootstrap_servers: str, client_id: str, stop: asyncio.Event
) -> AIOKafkaProducer | None:
    """A started no-loss producer, retrying while Kafka is unreachable; None when ``stop`` was set first."""
    backoff = 0.5
    while not stop.is_set():
        # Built here rather than with start_producer so that a failed start is closed, not leaked.
        producer = AIOKafkaProducer(**producer_settings(bootstrap_servers, client_id))
        try:
            await producer.start()
        except (KafkaError, OSError) as error:
            await producer.stop()
            log.warning("%s: Kafka unreachable (%s); retrying in %.1fs", client_id, type(error).__name__, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
            continue
        return producer
    return None


async def run_outbox_relay(
    pool: asyncpg.Pool[Any],
    bootstrap_servers: str,
    *,
    client_id: str,
    stop: asyncio.Event,
    poll_interval: float,
    batch_size: int,
) -> None:
    """Relay the outbox to Kafka until ``stop`` is set (the relay itself retries failed batches)."""
    producer = await start_producer_retrying(bootstrap_servers, client_id, stop)
    if producer is None:
        return
    try:
        await OutboxRelay(pool, producer, poll_interval=poll_interval, batch_size=batch_size).run(stop)
    finally:
        await producer.stop()
