"""The library's transactional consumer (libs/flowcontrol/transactional.py) on the real Kafka, with a store that
fails: every partition pauses while the breaker is open, resumes from the stored offsets, poison records go to the
DLQ first, and each record is applied exactly once, in partition order."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.flowcontrol.breaker import CircuitBreaker
from libs.flowcontrol.transactional import DecodedBatch, Fenced, KafkaDeadLetters, TransactionalConsumer
from libs.platform.kafka import start_producer
from services.vee.entrypoints.consumers import decoder
from tests.integration.vee.support import Topics, consume_until, gsrn, meterpoint, produce, reading, wait_for

pytestmark = [pytest.mark.kafka]


class FlakyStore:
    """Offsets and "state" in memory, applied atomically; the first ``failures`` applies raise."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.offsets: dict[TopicPartition, int] = {}
        self.applied: list[tuple[str, int, int]] = []
        self.refused = 0

    async def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: self.offsets.get(tp) for tp in partitions}

    async def apply(self, batch: DecodedBatch) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.refused += 1
            raise ConnectionError("database away")
        for advance in batch.advances:
            if self.offsets.get(TopicPartition(advance.topic, advance.partition)) != advance.expected:
                raise Fenced("moved")
        for record, _event in batch.events:
            self.applied.append((record.topic, record.partition, record.offset))
        for advance in batch.advances:
            self.offsets[TopicPartition(advance.topic, advance.partition)] = advance.next_offset


async def test_a_failing_store_pauses_then_everything_is_applied_once(kafka_bootstrap: str, topics: Topics) -> None:
    mp = gsrn(70)
    events = [meterpoint(mp), *(reading(mp, datetime(2025, 3, 3, h, tzinfo=UTC), 1.0) for h in range(1, 20))]
    await produce(kafka_bootstrap, topics, events)
    producer = await start_producer(kafka_bootstrap, "vee-test-poison")
    try:
        await producer.send_and_wait(topics.readings, b"not an event", key=mp.encode())
        dlq = KafkaDeadLetters(producer)
        store = FlakyStore(failures=3)
        breaker = CircuitBreaker(
            "test", window_size=1, minimum_calls=1, wait_in_open=0.2, permitted_calls_in_half_open=1
        )
        paused: list[bool] = []
        kafka = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=f"vee-tx-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
        )
        await kafka.start()
        consumer = TransactionalConsumer(
            kafka,
            [topics.readings, topics.meterpoints],
            store,
            decoder(topics.readings),
            dlq,
            breaker,
            max_records=5,
            poll_timeout_ms=50,
            on_paused=paused.append,
        )
        task = asyncio.create_task(consumer.run())
        try:
            total = len(events) + 1

            async def all_stored() -> bool:
                return sum(store.offsets.values()) == total

            await wait_for(all_stored, 60, "every record's offset stored")
            # Kafka's committed offsets follow, for monitoring (the first at once, then every few seconds).
            committed = [await kafka.committed(tp) for tp in store.offsets]
            assert any(offset is not None for offset in committed)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await kafka.stop()
    finally:
        await producer.stop()
    assert store.refused == 3
    assert True in paused  # the failures paused every partition ...
    assert paused[-1] is False  # ... and the stored offsets resumed them
    # Each good record once, in offset order per partition; the poison one is in the DLQ, not in the state.
    assert len(store.applied) == len(set(store.applied)) == len(events)
    for topic_partition in {(t, p) for t, p, _ in store.applied}:
        offsets = [o for t, p, o in store.applied if (t, p) == topic_partition]
        assert offsets == sorted(offsets)
    dead = await consume_until(kafka_bootstrap, f"{topics.readings}.dlq", lambda out: len(out) >= 1, 30, raw=True)
    assert dead == [b"not an event"]
