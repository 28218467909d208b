"""One polled batch from records to committed views: decode (poison -> dead letters), project, apply.

Shared by the live consumer and the rebuild. Applying is two halves, `BatchApplier.prepare` (Python only: decode
and project) and `BatchApplier.commit` (dead letters, then one database transaction), so that the live consumer
can prepare batch n+1 while PostgreSQL commits batch n.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from libs.events import CloudEvent, InvalidEvent, InvalidReason, MeterReadingReceived, from_record
from libs.flowcontrol.delivery import DeadLetter, DeliveryPolicy, Reject, SourceRecord, deliver
from libs.flowcontrol.transactional import DeadLetterSink
from services.readside.adapters.writer import OffsetAdvance, ViewWriter
from services.readside.metrics import ReadsideMetrics
from services.readside.projections import TopicRole, ViewChanges, project

Batch = Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]
_YIELD_EVERY = 250


def decode(record: ConsumerRecord[bytes, bytes], role: TopicRole) -> CloudEvent[Any]:
    """The typed event of a record, or `InvalidEvent` when it is none, or not one its topic carries."""
    headers = record.headers or ()
    if role is TopicRole.READINGS:
        return from_record(record.value, headers, record.key, MeterReadingReceived)
    event = from_record(record.value, headers, record.key)
    if type(event.data) not in role.event_classes:
        raise InvalidEvent(InvalidReason.UNEXPECTED_TYPE, f"{event.type} is not carried on {role.value}", event.type)
    return event


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A decoded and projected batch, ready to be committed (the CPU half of applying a batch)."""

    changes: ViewChanges
    advances: list[OffsetAdvance]
    dead: list[DeadLetter]
    moved: dict[TopicPartition, int]
    counts: dict[str, int]
    started: float

    @property
    def records(self) -> int:
        """Records in the batch (applied or dead-lettered)."""
        return sum(self.counts.values())


class BatchApplier:
    """Decode, dead-letter, project and apply one polled batch; shared by the live consumer and the rebuild.

    Applying is two halves: `prepare` (decode and project, Python only) and `commit` (dead letters, then one
    database transaction), so a caller can prepare the next batch while the database commits this one.
    """

    def __init__(
        self,
        writer: ViewWriter,
        roles: Mapping[str, TopicRole],
        dead_letters: DeadLetterSink,
        delivery: DeliveryPolicy,
        metrics: ReadsideMetrics | None = None,
    ) -> None:
        self.writer = writer
        self._roles = roles
        self._dead_letters = dead_letters
        self._delivery = delivery
        self._metrics = metrics

    async def prepare(
        self,
        batch: Batch,
        positions: Mapping[TopicPartition, int | None],
        highwater: Callable[[TopicPartition], int | None],
    ) -> PreparedBatch | None:
        """Decode and project ``batch`` against the stored ``positions``; None when it holds nothing new.

        Records below a partition's stored position were applied before (a redelivery) and are left out.
        """
        started = time.perf_counter()
        events: list[CloudEvent[Any]] = []
        dead: list[DeadLetter] = []
        advances: list[OffsetAdvance] = []
        moved: dict[TopicPartition, int] = {}
        counts: dict[str, int] = {}
        for tp, records in batch.items():
            expected = positions[tp]
            fresh = records if expected is None else [r for r in records if r.offset >= expected]
            if not fresh:
                continue
            role = self._roles[tp.topic]
            for index, record in enumerate(fresh, 1):
                try:
                    events.append(decode(record, role))
                except InvalidEvent as error:
                    dead.append(await self._dead_letter(record, error))
                if index % _YIELD_EVERY == 0:
                    # Let the commit in flight send its next statement: the database works while we decode.
                    await asyncio.sleep(0)
            next_offset = fresh[-1].offset + 1
            advances.append(OffsetAdvance(tp.topic, tp.partition, expected, next_offset, highwater(tp)))
            moved[tp] = next_offset
            counts[tp.topic] = counts.get(tp.topic, 0) + len(fresh)
        if not advances:
            return None
        return PreparedBatch(project(events), advances, dead, moved, counts, started)

    async def commit(self, version: int, prepared: PreparedBatch) -> dict[TopicPartition, int]:
        """Dead-letter the poison records, then apply the changes and offsets in one transaction."""
        if prepared.dead:
            # Durable in the DLQ before the offsets say "done"; a crash in between re-sends them (at least once).
            await self._dead_letters.publish(prepared.dead)
        await self.writer.apply(version, prepared.changes, prepared.advances)
        if self._metrics is not None:
            self._metrics.batch_seconds.observe(time.perf_counter() - prepared.started)
            for topic, count in prepared.counts.items():
                self._metrics.applied.labels(topic).inc(count)
            for letter in prepared.dead:
                topic = letter.source.topic if letter.source is not None else "?"
                self._metrics.dead_letters.labels(topic, letter.reason).inc()
        return prepared.moved

    async def apply(
        self,
        version: int,
        batch: Batch,
        positions: Mapping[TopicPartition, int | None],
        highwater: Callable[[TopicPartition], int | None],
    ) -> dict[TopicPartition, int]:
        """`prepare` and `commit` in one go; return the new next offset of every partition the batch moved."""
        prepared = await self.prepare(batch, positions, highwater)
        if prepared is None:
            return {}
        return await self.commit(version, prepared)

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


def roles_of(
    readings: str, meter_events: str, customers: str, workorders: str, meterpoints: str, series: str
) -> dict[str, TopicRole]:
    """Map the configured topic names to what they carry."""
    roles = {
        readings: TopicRole.READINGS,
        meter_events: TopicRole.METER_EVENTS,
        customers: TopicRole.CUSTOMERS,
        workorders: TopicRole.WORKORDERS,
        meterpoints: TopicRole.METERPOINTS,
        series: TopicRole.SERIES,
    }
    if len(roles) != len(TopicRole):
        raise ValueError("the six event topics must have six different names")
    return roles
