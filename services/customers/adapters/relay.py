"""The outbox relay inside the service: publishes committed events to Kafka in the background.

Kafka being down must not stop the SOAP service (changes wait in the outbox), so the producer is started here
with retries instead of at start-up, and the relay keeps trying until the service stops.
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


async def run_outbox_relay(
    pool: asyncpg.Pool[Any],
    bootstrap_servers: str,
    *,
    client_id: str,
    stop: asyncio.Event,
    poll_interval: float,
    batch_size: int,
) -> None:
    """Start a no-loss producer (retrying while Kafka is unreachable), then relay until ``stop`` is set."""
    backoff = 0.5
    while not stop.is_set():
        # Built here rather than with start_producer so that a failed start is closed, not leaked.
        producer = AIOKafkaProducer(**producer_settings(bootstrap_servers, client_id))
        try:
            await producer.start()
        except (KafkaError, OSError) as error:
            await producer.stop()
            log.warning("outbox relay: Kafka unreachable (%s); retrying in %.1fs", type(error).__name__, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
            continue
        try:
            await OutboxRelay(pool, producer, poll_interval=poll_interval, batch_size=batch_size).run(stop)
        finally:
            await producer.stop()
