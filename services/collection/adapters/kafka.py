"""Kafka: readings, alarms and dead letters as records, and the publisher that waits for every ack.

`KafkaPublisher.publish(records)` groups records by partition (the Java client's murmur2 partitioning of the
key, so every producer of a meterpoint lands in the same partition), sends each group as pre-built batches
(`create_batch` / `send_batch`: no future per record, the known bottleneck of aiokafka) through the no-loss
producer of ``libs.platform.kafka`` (acks=all, idempotent), and returns only when the broker acknowledged
every record. A circuit breaker guards it: while Kafka is down, callers are refused at once with
`CallNotPermitted` instead of each waiting for a timeout.

Every entry point (REST, MQTT, FTP) publishes through the same `Publisher`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from libs.events import topics
from libs.events.meter import MeterAlarmRaised, MeterReadingReceived
from libs.events.records import CONTENT_TYPE, HEADER_CE_TYPE, HEADER_CONTENT_TYPE, KafkaRecord
from libs.flowcontrol.breaker import CircuitBreaker
from libs.flowcontrol.delivery import DeadLetter, SourceRecord, dlq_headers
from services.collection.domain import Alarm, Reading

__all__ = [
    "KafkaPublisher",
    "PublishFailed",
    "Publisher",
    "alarm_record",
    "dead_letter_record",
    "held_record",
    "reading_record",
]

_SPECVERSION: Final = "1.0"
_DATACONTENTTYPE: Final = "application/json"
_READING_TYPE: Final = MeterReadingReceived.event_type
_ALARM_TYPE: Final = MeterAlarmRaised.event_type
_READING_HEADERS: Final = (
    (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
    (HEADER_CE_TYPE, _READING_TYPE.encode()),
)
_ALARM_HEADERS: Final = (
    (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
    (HEADER_CE_TYPE, _ALARM_TYPE.encode()),
)
REJECTION_ERROR: Final = "services.collection.domain.Rejected"
"""`dlq.error` of an item the validator refused."""
HELD_ERROR: Final = "services.collection.domain.Held"
"""`dlq.error` of a valid item held back because its meterpoint is not registered (a redrive publishes it)."""
HELD_TOPIC_HEADER: Final = "gridhub.held.topic"
"""On a held record: the topic (without any prefix) its event goes to once redriven."""
DELIVERER_HEADERS: Final = ("gridhub.deliverer.kind", "gridhub.deliverer.id", "gridhub.deliverer.tenant")
"""On a held record: who delivered it (source kind, id and tenant if known), checked again at the redrive."""


class PublishFailed(Exception):
    """Kafka did not acknowledge every record (unreachable, timed out, refused); a retry may succeed.

    Some records may have been written: a retry writes them again with the same ids, and consumers deduplicate.
    """


class Publisher(Protocol):
    """Publishes records and returns once Kafka acknowledged all of them.

    Raises `libs.flowcontrol.CallNotPermitted` (a `Refused`, with `retry_after`) while the breaker is open and
    `PublishFailed` when Kafka did not acknowledge everything.
    """

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        """Publish ``records`` and wait for every acknowledgement."""
        ...


# --- records ---------------------------------------------------------------------------------------------------


def reading_record(reading: Reading, *, time: datetime, event_source: str) -> KafkaRecord:
    """The record of a reading: byte for byte what ``libs.events.to_record(make_event(...))`` gives.

    Built from a dict with orjson instead of through the pydantic models: it costs a fraction per reading, and a
    unit test holds it equal to the libs encoding. ``time`` (when the reading was received) must be in UTC.
    """
    meterpoint_id = reading.meterpoint_id
    value = orjson.dumps(
        {
            "specversion": _SPECVERSION,
            "id": reading.reading_id,
            "type": _READING_TYPE,
            "source": event_source,
            "time": time,
            "subject": meterpoint_id,
            "datacontenttype": _DATACONTENTTYPE,
            "schemaversion": 1,
            "data": {
                "meterpoint_id": meterpoint_id,
                "register": reading.register,
                "interval_end": reading.interval_end,
                "resolution": reading.resolution,
                "value": reading.value,
                "unit": reading.unit,
                "quality": reading.quality,
                "source": reading.source,
                "reading_id": reading.reading_id,
                "meter_index": reading.meter_index,
            },
        },
        option=orjson.OPT_UTC_Z,
    )
    return KafkaRecord(topics.READINGS, meterpoint_id.encode(), value, list(_READING_HEADERS))


def alarm_record(alarm: Alarm, *, time: datetime, event_source: str) -> KafkaRecord:
    """The record of an alarm, equal to the libs encoding (see `reading_record`)."""
    meterpoint_id = alarm.meterpoint_id
    value = orjson.dumps(
        {
            "specversion": _SPECVERSION,
            "id": alarm.alarm_id,
            "type": _ALARM_TYPE,
            "source": event_source,
            "time": time,
            "subject": meterpoint_id,
            "datacontenttype": _DATACONTENTTYPE,
            "schemaversion": 1,
            "data": {
                "meterpoint_id": meterpoint_id,
                "alarm": alarm.alarm,
                "raised_at": alarm.raised_at,
                "source": alarm.source,
                "alarm_id": alarm.alarm_id,
                "details": alarm.details,
            },
        },
        option=orjson.OPT_UTC_Z,
    )
    return KafkaRecord(topics.METER_EVENTS, meterpoint_id.encode(), value, list(_ALARM_HEADERS))


def dead_letter_record(
    *,
    topic: str,
    origin: str,
    record_id: str,
    key: bytes | None,
    value: bytes,
    reason: str,
    detail: str,
    failed_at: datetime,
    headers: Sequence[tuple[str, bytes]] = (),
) -> KafkaRecord:
    """A dead letter for input refused at the edge: the original bytes and headers plus ``dlq.*`` headers.

    Same layout as ``libs.flowcontrol.delivery`` dead letters; ``origin`` (e.g. ``mqtt:gridhub/meters/<id>/
    readings`` or ``rest:/v1/readings``) goes into ``dlq.source.topic``, and ``dlq.detail`` says which field and
    rule failed.
    """
    source = SourceRecord(topic=origin, partition=None, offset=None, value=value, key=key, headers=tuple(headers))
    dead = DeadLetter(record_id, reason, 1, REJECTION_ERROR, source, failed_at)
    all_headers = dlq_headers(dead)
    all_headers.append(("dlq.detail", detail.encode()))
    return KafkaRecord(topic, key or b"", value, all_headers)


def held_record(
    event: KafkaRecord,
    *,
    topic: str,
    origin: str,
    record_id: str,
    reason: str,
    detail: str,
    failed_at: datetime,
    deliverer: tuple[str, str, str | None],
    headers: Sequence[tuple[str, bytes]] = (),
) -> KafkaRecord:
    """A held item: the validated event's record (key and value as they would have been published) on the DLQ.

    Its headers say where the event goes (`HELD_TOPIC_HEADER`) and who delivered it (`DELIVERER_HEADERS`), so the
    redrive (``commands/holds.py``) can check the scope again and publish the same bytes with the same event id.
    """
    kind, source_id, tenant = deliverer
    extra = [
        *headers,
        *event.headers,
        (HELD_TOPIC_HEADER, event.topic.encode()),
        (DELIVERER_HEADERS[0], kind.encode()),
        (DELIVERER_HEADERS[1], source_id.encode()),
    ]
    if tenant is not None:
        extra.append((DELIVERER_HEADERS[2], tenant.encode()))
    source = SourceRecord(
        topic=origin, partition=None, offset=None, value=event.value, key=event.key, headers=tuple(extra)
    )
    dead = DeadLetter(record_id, reason, 1, HELD_ERROR, source, failed_at)
    all_headers = dlq_headers(dead)
    all_headers.append(("dlq.detail", detail.encode()))
    return KafkaRecord(topic, event.key, event.value, all_headers)


# --- publishing ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=262_144)
def _partition_index(key: bytes, partitions: int) -> int:
    # The Java client's default partitioner for keyed records (and aiokafka's): murmur2, positive, modulo.
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


class KafkaPublisher:
    """A `Publisher` over an aiokafka producer built by ``libs.platform.kafka.start_producer``."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        breaker: CircuitBreaker | None = None,
        timeout: float = 10.0,
        topic_prefix: str = "",
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._producer = producer
        self._breaker = breaker
        self._timeout = timeout
        # Every topic (readings, events and their .dlq) gets this prefix: a benchmark's or a tenant's own topics.
        self._topic_prefix = topic_prefix
        # aiokafka's accumulator holds one batch per partition; concurrent send_batch calls for a partition wait
        # for that slot in a loop whose timeout shrinks by the total time waited on every lost race, so under
        # contention they fail with KafkaTimeoutError although Kafka is fine. A lock per partition queues them
        # fairly (first come, first served) instead; it is held until the batch is queued, not until it is acked.
        self._slots: dict[tuple[str, int], asyncio.Lock] = {}

    @property
    def producer(self) -> AIOKafkaProducer:
        """The underlying producer (readiness checks use it)."""
        return self._producer

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        """Send ``records`` and wait until Kafka acknowledged each one (see the module doc)."""
        if not records:
            return
        breaker = self._breaker
        permit = breaker.acquire() if breaker is not None else None  # CallNotPermitted while open
        try:
            async with asyncio.timeout(self._timeout):
                await self._send(records)
        except asyncio.CancelledError:
            if breaker is not None and permit is not None:
                breaker.release(permit)
            raise
        except Exception as error:
            if breaker is not None and permit is not None:
                breaker.record_exception(permit, error)
            kind = "timed out" if isinstance(error, TimeoutError) else f"{type(error).__name__}: {error}"
            raise PublishFailed(f"Kafka did not acknowledge {len(records)} record(s): {kind}") from error
        if breaker is not None and permit is not None:
            breaker.record_success(permit)

    async def _send(self, records: Sequence[KafkaRecord]) -> None:
        producer = self._producer
        partitions: dict[str, list[int]] = {}
        groups: dict[tuple[str, int], list[KafkaRecord]] = {}
        prefix = self._topic_prefix
        for record in records:
            topic = prefix + record.topic
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await producer.partitions_for(topic))
            partition = known[_partition_index(record.key, len(known))]
            groups.setdefault((topic, partition), []).append(record)
        acks: list[asyncio.Future[Any]] = []
        for (topic, partition), group in groups.items():
            slot = self._slots.get((topic, partition))
            if slot is None:
                slot = self._slots[(topic, partition)] = asyncio.Lock()
            batch = producer.create_batch()
            for record in group:
                if batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
                    batch.close()
                    async with slot:
                        acks.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
                        raise ValueError(f"a record of {len(record.value)} bytes does not fit into a batch")
            batch.close()
            async with slot:
                acks.append(await producer.send_batch(batch, topic, partition=partition))
        # return_exceptions: wait for every batch, so none is left with an exception nobody retrieves.
        outcomes = await asyncio.gather(*acks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
