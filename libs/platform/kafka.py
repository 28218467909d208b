"""Kafka producers with no-loss settings, and Kafka's readiness check.

Every producer in GridHub is built here, so that none can be told "written" before the broker has the record
on all in-sync replicas (``acks=all``), and retries never duplicate or reorder a partition (idempotence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from libs.platform.health import ProbeCheck, probe_check

logger = logging.getLogger(__name__)

MAX_START_BACKOFF = 10.0
"""The longest wait between two attempts of `start_producer_retrying`."""

NO_LOSS_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
}


def producer_settings(
    bootstrap_servers: str,
    client_id: str,
    *,
    linger_ms: int = 5,
    max_batch_size: int = 256 * 1024,
    request_timeout_ms: int = 15_000,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``; the no-loss settings cannot be overridden."""
    clash = set(overrides) & set(NO_LOSS_SETTINGS)
    if clash:
        raise ValueError(f"{sorted(clash)} are fixed for every GridHub producer (no-loss settings)")
    # A few ms of linger lets aiokafka fill batches; one future per record is its known bottleneck.
    return {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "linger_ms": linger_ms,
        "max_batch_size": max_batch_size,
        "request_timeout_ms": request_timeout_ms,
        **overrides,
        **NO_LOSS_SETTINGS,
    }


async def start_producer(bootstrap_servers: str, client_id: str, **options: Any) -> AIOKafkaProducer:
    """Build and start a producer with the no-loss settings (see :func:`producer_settings`)."""
    producer = AIOKafkaProducer(**producer_settings(bootstrap_servers, client_id, **options))
    await producer.start()
    return producer


async def start_producer_retrying(
    bootstrap_servers: str, client_id: str, stop: asyncio.Event, **options: Any
) -> AIOKafkaProducer | None:
    """A started no-loss producer, retrying with capped backoff while Kafka is unreachable; None if ``stop`` came first.

    For the parts that must outlive a broker that is down at start-up (an outbox relay, a consumer's dead letters):
    their service keeps serving, and the part starts as soon as Kafka answers.
    """
    backoff = 0.5
    while not stop.is_set():
        # Built per attempt rather than with start_producer, so that a failed start is closed, not leaked.
        producer = AIOKafkaProducer(**producer_settings(bootstrap_servers, client_id, **options))
        try:
            await producer.start()
        except (KafkaError, OSError) as error:
            await producer.stop()
            logger.warning("%s: Kafka unreachable (%s); retrying in %.1fs", client_id, type(error).__name__, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, MAX_START_BACKOFF)
            continue
        return producer
    return None


async def check_kafka(producer: AIOKafkaProducer, timeout: float = 3.0) -> None:
    """Readiness: the broker answers a metadata request within ``timeout`` seconds (raises otherwise)."""
    async with asyncio.timeout(timeout):
        ok = await producer.client.fetch_all_metadata()
    if ok is None:
        raise RuntimeError("Kafka returned no cluster metadata")


def kafka_readiness(producer: AIOKafkaProducer, *, timeout: float = 3.0, critical: bool = True) -> ProbeCheck:
    """The ``/readyz`` check of a service's Kafka connection (``critical=False``: degraded, still ready)."""
    return probe_check("kafka", lambda: check_kafka(producer, timeout), timeout=timeout, critical=critical)
