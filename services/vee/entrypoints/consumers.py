"""The consumer of meter.readings.v1 and meterpoints.v1: a batch and its offsets in one transaction (exactly once).

The loop is the library's (``libs.flowcontrol.transactional``); this module decodes the two topics and applies a
batch through handlers.apply_batch inside the transaction that moves the offsets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord, TopicPartition

from libs.events import CloudEvent, InvalidEvent, InvalidReason, MeterReadingReceived, from_record
from libs.events.meterpoints import MeterpointRegistered, MeterpointUpdated
from libs.flowcontrol.transactional import DecodedBatch, Decoder, advance_offsets, read_offsets
from services.vee import handlers
from services.vee.handlers import Context, WallClock


def decoder(readings_topic: str) -> Decoder:
    """Readings on the readings topic; MeterpointRegistered/Updated on the other (anything else is poison)."""

    def decode(record: ConsumerRecord[bytes, bytes]) -> CloudEvent[Any]:
        headers = record.headers or ()
        if record.topic == readings_topic:
            return from_record(record.value, headers, record.key, MeterReadingReceived)
        event = from_record(record.value, headers, record.key)
        if not isinstance(event.data, MeterpointRegistered | MeterpointUpdated):
            raise InvalidEvent(InvalidReason.UNEXPECTED_TYPE, f"{event.type} is not master data", event.type)
        return event

    return decode


class VeeStore:
    """The transactional store of the consumer: offsets and state in the VEE database."""

    def __init__(self, pool: asyncpg.Pool[Any], consumer: str, ctx: Context, clock: WallClock) -> None:
        self._pool = pool
        self._consumer = consumer
        self._ctx = ctx
        self._clock = clock

    async def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        async with self._pool.acquire() as conn:
            return await read_offsets(conn, self._consumer, partitions)

    async def apply(self, batch: DecodedBatch) -> None:
        started = time.perf_counter()
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            outcome = await handlers.apply_batch(conn, [event for _, event in batch.events], ctx=self._ctx, now=now)
            await advance_offsets(conn, self._consumer, batch.advances)
        metrics = self._ctx.metrics
        if metrics is not None:
            stored_at = datetime.now(tz=now.tzinfo)
            for event_time in outcome.stored:
                metrics.stored_latency.observe(max(0.0, (stored_at - event_time).total_seconds()))
            metrics.stored.inc(len(outcome.stored))
            metrics.batch_seconds.observe(time.perf_counter() - started)
