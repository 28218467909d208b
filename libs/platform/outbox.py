"""Transactional outbox: events written with the state change, relayed to Kafka after commit, never lost.

Writers call :func:`add_to_outbox` inside their own transaction, so an event exists exactly when its state change
was committed (a rolled-back change never reaches Kafka). The :class:`OutboxRelay` claims unpublished rows with
``FOR UPDATE SKIP LOCKED`` in id order, publishes them with the no-loss producer, waits for every ack, and only
then marks them published in the same transaction. A relay killed mid-batch leaves its rows unmarked, so the
next relay publishes them again: delivery is at least once, and consumers deduplicate by event id.

Key order: one relay is active per outbox table at a time (a PostgreSQL advisory lock held by its listening
connection; standbys take over when its connection dies), rows go out in id order on an idempotent producer,
and a batch is fully acknowledged before the next is claimed. Writers of one key serialise on that key's
aggregate row, so ids of one key follow commit order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from libs.platform.db import Connection
from libs.platform.kafka import start_producer_retrying

OUTBOX_MIGRATIONS = Path(__file__).parent / "sql" / "outbox"
OUTBOX_COMPONENT = "platform.outbox"
_RELAY_LOCK_CLASS = 0x6F75_7462  # "outb": with the schema's hash, one active relay per outbox table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxRecord:
    """A Kafka record waiting in the outbox."""

    topic: str
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


async def add_to_outbox(conn: Connection, records: Sequence[OutboxRecord]) -> None:
    """Write ``records`` to the outbox within the caller's open transaction."""
    if not conn.is_in_transaction():
        raise RuntimeError("add_to_outbox must run inside the transaction of the state change")
    await conn.executemany(
        "INSERT INTO outbox (topic, key, value, header_names, header_values) VALUES ($1, $2, $3, $4, $5)",
        [
            (r.topic, r.key, r.value, [name for name, _ in r.headers], [value for _, value in r.headers])
            for r in records
        ],
    )


class OutboxRelay:
    """Publishes committed outbox rows to Kafka in key order and marks them after the broker acks."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 500,
        poll_interval: float = 5.0,
        publish_timeout: float = 30.0,
        retention_seconds: float = 86_400.0,
        max_backoff: float = 10.0,
        drain_timeout: float = 10.0,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._publish_timeout = publish_timeout
        self._retention_seconds = retention_seconds
        self._max_backoff = max_backoff
        self._drain_timeout = drain_timeout
        # Bounded by construction: set or not set, never a queue of notifications.
        self._wake = asyncio.Event()
        self._last_purge = 0.0
        self.published_total = 0
        self.is_leader = False

    async def relay_once(self) -> int:
        """Claim, publish and mark one batch; return how many records went out."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, topic, key, value, header_names, header_values FROM outbox "
                "WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch_size,
            )
            if not rows:
                return 0
            # send() in id order queues each record behind the earlier ones of its partition; the idempotent
            # producer keeps that order through retries. Waiting on all acks is bounded by batch_size.
            acks = []
            for row in rows:
                headers = list(zip(row["header_names"], row["header_values"], strict=True))
                acks.append(await self._producer.send(row["topic"], row["value"], key=row["key"], headers=headers))
            async with asyncio.timeout(self._publish_timeout):
                await asyncio.gather(*acks)
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        self.published_total += len(rows)
        return len(rows)

    async def drain(self) -> int:
        """Publish what is committed now, batch by batch, within the drain timeout; return how many went out.

        A stopping leader calls it so that a graceful shutdown leaves nothing waiting for the next start; if Kafka
        is down the rows stay (nothing is lost) and the next leader publishes them.
        """
        drained = 0
        try:
            async with asyncio.timeout(self._drain_timeout):
                while (count := await self.relay_once()) > 0:
                    drained += count
        except Exception as error:  # Kafka or the database down: the rest waits for the next leader
            log.warning("outbox relay: draining stopped after %d events: %s", drained, type(error).__name__)
        return drained

    async def backlog(self) -> tuple[int, float]:
        """(unpublished rows, age in seconds of the oldest one) — the relay's lag."""
        return await outbox_backlog(self._pool)

    async def _purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        await self._pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
            self._retention_seconds,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set: standby until leader, then drain on every NOTIFY (or poll)."""
        backoff = 0.1
        while not stop.is_set():
            try:
                async with self._pool.acquire() as listener:
                    await self._lead(listener, stop)
                backoff = 0.1
            except (TimeoutError, OSError, asyncpg.PostgresError, ConnectionError) as exc:
                self.is_leader = False
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
            except Exception:
                self.is_leader = False
                log.exception("outbox relay: publishing failed; retrying in %.1fs", backoff)
            # Capped exponential backoff with jitter: Kafka or PostgreSQL down never turns into a busy loop.
            await _wait(stop, backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self._max_backoff)

    async def _lead(self, listener: Connection, stop: asyncio.Event) -> None:
        # One lock per outbox table (database + schema): services sharing a database never block each other.
        while not await listener.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))", _RELAY_LOCK_CLASS
        ):
            if await _wait(stop, self._poll_interval):
                return
        self.is_leader = True
        channel = f"outbox_{await listener.fetchval('SELECT current_schema()')}"
        await listener.add_listener(channel, self._on_notify)
        try:
            while not stop.is_set():
                self._wake.clear()
                while await self.relay_once() == self._batch_size and not stop.is_set():
                    pass
                await self._purge()
                await _wait(stop, self._poll_interval, self._wake)
            drained = await self.drain()  # stopping: what was committed until now goes out before we let go
            if drained:
                log.info("outbox relay: drained %d events on stop", drained)
        finally:
            self.is_leader = False
            await listener.remove_listener(channel, self._on_notify)
            await listener.execute("SELECT pg_advisory_unlock($1, hashtext(current_schema()))", _RELAY_LOCK_CLASS)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()


async def outbox_backlog(pool: asyncpg.Pool[Any]) -> tuple[int, float]:
    """(unpublished rows, age in seconds of the oldest one; 0 when none) of the pool's outbox."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age "
        "FROM outbox WHERE published_at IS NULL"
    )
    assert row is not None
    return int(row["n"]), float(row["age"])


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, OutboxMetrics] = weakref.WeakKeyDictionary()


class OutboxMetrics:
    """The outbox backlog as gauges: the alert for "committed but not in Kafka" (Kafka down, or no relay runs)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.unpublished = Gauge(
            "gridhub_outbox_unpublished_events",
            "Events committed to the outbox and not yet acknowledged by Kafka.",
            registry=registry,
        )
        self.oldest_age = Gauge(
            "gridhub_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox event (0 when none): how late the newest consumers are.",
            registry=registry,
        )
        self.last_read = Gauge(
            "gridhub_outbox_backlog_read_timestamp_seconds",
            "When the backlog was last read from the database (unix time); stale while the database is unreachable.",
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> OutboxMetrics:
        """The one `OutboxMetrics` of ``registry`` (default: the global one), created on first use."""
        registry = REGISTRY if registry is None else registry
        metrics = _METRICS.get(registry)
        if metrics is None:
            metrics = _METRICS[registry] = cls(registry)
        return metrics


async def watch_outbox_backlog(
    pool: asyncpg.Pool[Any], metrics: OutboxMetrics, stop: asyncio.Event, *, interval: float = 5.0
) -> None:
    """Read the backlog every ``interval`` seconds into ``metrics`` until ``stop`` is set.

    Independent of the relay and of Kafka, so the gauges keep rising exactly while Kafka is down; a failed read
    (the database down) keeps the last values, and the read timestamp shows their age.
    """
    while not stop.is_set():
        try:
            async with asyncio.timeout(max(interval, 5.0)):
                unpublished, age = await outbox_backlog(pool)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("outbox backlog: reading it failed: %s", type(error).__name__)
        else:
            metrics.unpublished.set(unpublished)
            metrics.oldest_age.set(age)
            metrics.last_read.set(time.time())
        await _wait(stop, interval)


async def run_outbox_relay(
    pool: asyncpg.Pool[Any],
    bootstrap_servers: str,
    *,
    client_id: str,
    stop: asyncio.Event,
    poll_interval: float,
    batch_size: int,
) -> None:
    """Relay the outbox to Kafka inside a service until ``stop`` is set.

    Kafka being down must not stop the service (changes wait in the outbox), so the producer is started with
    retries here rather than at start-up; the relay itself retries failed batches.
    """
    producer = await start_producer_retrying(bootstrap_servers, client_id, stop)
    if producer is None:
        return
    try:
        await OutboxRelay(pool, producer, poll_interval=poll_interval, batch_size=batch_size).run(stop)
    finally:
        await producer.stop()


async def _wait(stop: asyncio.Event, timeout: float, wake: asyncio.Event | None = None) -> bool:
    """Wait up to ``timeout`` for ``stop`` (or ``wake``); return whether ``stop`` is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return stop.is_set()
