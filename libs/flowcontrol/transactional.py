"""The transactional consumer: offsets kept in the service's own PostgreSQL transaction with its state (ADR 0004).

The read side's batch loop made generic, for a service whose state and offsets must move together (exactly once):

- Assignment: new partitions are paused until their stored offsets are read (``TransactionalStore.positions``)
  and sought to; a partition without a stored offset starts at its beginning (a compacted topic is read whole).
- Each poll takes at most ``max_records``; records below a partition's stored position (a redelivery) are left
  out; poison records (``InvalidEvent`` from ``decode``) are dead-lettered (``<topic>.dlq``) *before* the
  transaction that stores their offsets as done, so they are never lost and never block their partition.
- ``TransactionalStore.apply`` gets the decoded events and the offset advances and must store both in one
  transaction (``advance_offsets`` below does the offset half, fenced: a consumer that lost its partitions in a
  rebalance and still writes is refused with ``Fenced``).
- Kafka's committed offsets are written too, after the database commit and at most every few seconds, for
  monitoring only (``gridhub lag``, lag-based autoscaling): PostgreSQL's decide where consumption resumes.
- When the store fails or is slow the breaker opens: every partition is paused and, once the breaker lets a
  probe through, re-positioned from the stored offsets. Nothing is skipped: the offsets in PostgreSQL decide.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from libs.events import CloudEvent, InvalidEvent
from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.delivery import DeadLetter, DeliveryPolicy, Reject, SourceRecord, deliver
from libs.flowcontrol.errors import CallNotPermitted
from libs.platform.db import Connection

logger = logging.getLogger(__name__)

_KAFKA_COMMIT_INTERVAL = 5.0

OFFSETS_TABLE = """
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer    text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
)
"""
"""The table ``read_offsets`` and ``advance_offsets`` use; a service creates it in one of its migrations."""


class Fenced(Exception):
    """The stored offsets are not where this consumer left them: another consumer owns the partition now."""


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    """Move one partition's stored offset from ``expected`` (None: nothing applied yet) to ``next_offset``."""

    topic: str
    partition: int
    expected: int | None
    next_offset: int


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """One polled batch, decoded: its events in partition order, its offset advances, its poison records."""

    events: Sequence[tuple[ConsumerRecord[bytes, bytes], CloudEvent[Any]]]
    advances: Sequence[OffsetAdvance]
    dead: Sequence[DeadLetter]


class TransactionalStore(Protocol):
    """The service's side: stored offsets, and a batch applied with its offsets in one transaction."""

    async def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The stored next offset of each partition (None: nothing applied yet)."""
        ...

    async def apply(self, batch: DecodedBatch) -> None:
        """Apply ``batch.events`` and ``advance_offsets(batch.advances)`` in one transaction (raise to refuse)."""
        ...


class DeadLetterSink(Protocol):
    """Where poison records go before their offsets are stored as done."""

    async def publish(self, dead_letters: Sequence[DeadLetter]) -> None:
        """Hand every dead letter over; return only when all are durable (raise otherwise)."""
        ...


class KafkaDeadLetters:
    """Publishes the original record with ``dlq.*`` headers to ``<topic>.dlq`` and waits for every ack."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def publish(self, dead_letters: Sequence[DeadLetter]) -> None:
        """Send all, then wait for all acks (the no-loss producer: acks=all, idempotent)."""
        pending = []
        for dead in dead_letters:
            source, topic = dead.source, dead.topic
            if source is None or topic is None:
                raise ValueError("a consumer's dead letter always has its source record")
            pending.append(await self._producer.send(topic, value=source.value, key=source.key, headers=dead.headers()))
        await asyncio.gather(*pending)


Decoder = Callable[[ConsumerRecord[bytes, bytes]], CloudEvent[Any]]
"""A record's typed event, or ``InvalidEvent`` when it is none (or not one its topic carries)."""


async def read_offsets(
    conn: Connection, consumer: str, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The stored next offsets of ``partitions`` for ``consumer`` (None where nothing was applied)."""
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = $1",
        consumer,
    )
    stored = {(row["topic"], row["partition"]): int(row["next_offset"]) for row in rows}
    return {tp: stored.get((tp.topic, tp.partition)) for tp in partitions}


async def advance_offsets(conn: Connection, consumer: str, advances: Sequence[OffsetAdvance]) -> None:
    """Move the stored offsets inside the caller's transaction, fenced: raise ``Fenced`` unless each partition is
    still where this consumer left it (``expected``)."""
    if not conn.is_in_transaction():
        raise RuntimeError("advance_offsets must run inside the transaction of the state change")
    for advance in advances:
        if advance.expected is None:
            status = await conn.execute(
                "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT DO NOTHING",
                consumer,
                advance.topic,
                advance.partition,
                advance.next_offset,
            )
        else:
            status = await conn.execute(
                "UPDATE consumer_offsets SET next_offset = $4, applied_at = now() "
                "WHERE consumer = $1 AND topic = $2 AND partition = $3 AND next_offset = $5",
                consumer,
                advance.topic,
                advance.partition,
                advance.next_offset,
                advance.expected,
            )
        if not status.endswith(" 1"):
            raise Fenced(f"{advance.topic}/{advance.partition} is not at {advance.expected} any more")


class _Positioning(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: TransactionalConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._owner.assign(list(assigned))


class TransactionalConsumer:
    """The poll loop (``await run()``; cancel to stop): one batch at a time, applied with its offsets."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Sequence[str],
        store: TransactionalStore,
        decode: Decoder,
        dead_letters: DeadLetterSink,
        breaker: CircuitBreaker,
        *,
        max_records: int,
        poll_timeout_ms: int,
        delivery: DeliveryPolicy | None = None,
        on_paused: Callable[[bool], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._topics = list(topics)
        self._store = store
        self._decode = decode
        self._dead_letters = dead_letters
        self._breaker = breaker
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._delivery = delivery or DeliveryPolicy(max_attempts=1)
        self._on_paused = on_paused or (lambda _paused: None)
        self._positions: dict[TopicPartition, int | None] = {}
        self._unpositioned: set[TopicPartition] = set()
        self._lock = asyncio.Lock()
        self._last_kafka_commit = 0.0
        self.batches = 0
        self.records = 0

    @property
    def positioned(self) -> bool:
        """Every assigned partition sought to its stored offset (and the group joined)."""
        return bool(self._positions) and not self._unpositioned

    def assign(self, partitions: list[TopicPartition]) -> None:
        """New partitions: hold them until their stored offsets are known."""
        if partitions:
            self._consumer.pause(*partitions)
            self._unpositioned.update(partitions)

    async def revoke(self, partitions: list[TopicPartition]) -> None:
        """Partitions leave: the batch in flight finishes first (the lock), then they are forgotten."""
        async with self._lock:
            for tp in partitions:
                self._positions.pop(tp, None)
                self._unpositioned.discard(tp)

    async def run(self) -> None:
        """Consume until cancelled."""
        self._consumer.subscribe(self._topics, listener=_Positioning(self))
        while True:
            if self._unpositioned:
                await self._position()
            polled = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._max_records)
            async with self._lock:
                batch = {tp: records for tp, records in polled.items() if tp in self._positions and records}
                if batch:
                    await self._apply(batch)

    async def _apply(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]) -> None:
        events: list[tuple[ConsumerRecord[bytes, bytes], CloudEvent[Any]]] = []
        dead: list[DeadLetter] = []
        advances: list[OffsetAdvance] = []
        moved: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            expected = self._positions[tp]
            fresh = records if expected is None else [r for r in records if r.offset >= expected]
            if not fresh:
                continue
            for record in fresh:
                try:
                    events.append((record, self._decode(record)))
                except InvalidEvent as error:
                    dead.append(await self._dead_letter(record, error))
            advances.append(OffsetAdvance(tp.topic, tp.partition, expected, fresh[-1].offset + 1))
            moved[tp] = fresh[-1].offset + 1
        if not advances:
            return
        try:
            permit = self._breaker.acquire()
        except CallNotPermitted:
            self._hold_all()
            return
        try:
            if dead:
                # Durable in the DLQ before the offsets say "done"; a crash in between re-sends them (at least once).
                await self._dead_letters.publish(dead)
            await self._store.apply(DecodedBatch(events, advances, dead))
        except Fenced as error:
            self._breaker.release(permit)
            logger.info("re-reading stored offsets: %s", error)
            self._hold_all()
            return
        except Exception as error:
            self._breaker.record_exception(permit, error)
            logger.warning("batch not applied, pausing consumption: %s: %s", type(error).__name__, error)
            self._hold_all()
            return
        self._breaker.record_success(permit)
        self._positions.update(moved)
        self.batches += 1
        self.records += sum(len(records) for records in batch.values())
        if self._breaker.state is not BreakerState.CLOSED:
            self._hold_all()  # it went through, but slowly enough to open the breaker: give the database a pause
        await self._commit_to_kafka()

    async def _commit_to_kafka(self) -> None:
        """Best effort, for monitoring only: PostgreSQL holds the offsets that count."""
        now = time.monotonic()
        if now - self._last_kafka_commit < _KAFKA_COMMIT_INTERVAL:
            return
        self._last_kafka_commit = now
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in self._positions.items() if offset is not None}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (KafkaError, AssertionError) as error:
            logger.debug("monitoring commit to Kafka skipped: %s", error)

    def _hold_all(self) -> None:
        """Pause every assigned partition; each re-reads its stored offset before it resumes."""
        held = list(self._positions)
        if held:
            self._consumer.pause(*held)
        self._unpositioned.update(held)
        self._positions.clear()
        self._on_paused(True)

    async def _position(self) -> None:
        async with self._lock:
            assigned = self._consumer.assignment()
            self._unpositioned.intersection_update(assigned)
            partitions = sorted(self._unpositioned)
            if not partitions:
                return
            try:
                permit = self._breaker.acquire()
            except CallNotPermitted as refused:
                wait = refused.retry_after if refused.retry_after is not None else 0.2
                # Briefly only: the loop must keep polling to stay in the group.
                await asyncio.sleep(min(wait, self._poll_timeout_ms / 1000))
                return
            try:
                stored = await self._store.positions(partitions)
            except Exception as error:
                self._breaker.record_exception(permit, error)
                logger.warning("stored offsets not readable, staying paused: %s: %s", type(error).__name__, error)
                return
            self._breaker.record_success(permit)
            for tp in partitions:
                offset = stored.get(tp)
                if offset is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, offset)
                self._positions[tp] = offset
            self._unpositioned.difference_update(partitions)
            self._consumer.resume(*partitions)
            self._on_paused(False)
            logger.info("positioned %d partitions from stored offsets", len(partitions))

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], error: InvalidEvent) -> DeadLetter:
        source = SourceRecord(
            record.topic, record.partition, record.offset, record.value, record.key, tuple(record.headers or ())
        )

        async def refuse() -> None:
            raise Reject(str(error.reason)) from error

        outcome = await deliver(
            f"{record.topic}/{record.partition}/{record.offset}", refuse, policy=self._delivery, source=source
        )
        assert isinstance(outcome, DeadLetter)  # a Reject is never acked
        return outcome


__all__ = [
    "OFFSETS_TABLE",
    "DeadLetterSink",
    "DecodedBatch",
    "Decoder",
    "Fenced",
    "KafkaDeadLetters",
    "OffsetAdvance",
    "TransactionalConsumer",
    "TransactionalStore",
    "advance_offsets",
    "read_offsets",
]
