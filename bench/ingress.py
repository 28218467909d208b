"""The collection service's REST ingress as the benchmarks run it: the real app, publishing to a topic of the run's own.

`running_ingress(...)` builds the app (API key, quota, bulkhead, validation, the service's `KafkaPublisher` with its
breaker and acks=all) with a `TopicRedirect` publisher, so the load of a benchmark never reaches
``meter.readings.v1``, and serves it with uvicorn on an ephemeral port of the current event loop. With a
``lag_group`` the ingress's lag-aware admission follows that consumer group's lag (through `LagProbe`). With
``chunks`` every batch Kafka acknowledged is noted as ``(partition, last offset, records, arrival)``, arrival being
the wall-clock time the request reached the ingress (the events' ``time``), so a benchmark can tell when each
reading became queryable downstream.

The scope check: with ``meterpoints`` the app checks every reading against an in-process view in which they are
assigned to the benchmark's key (like the in-memory key store, no meterpoints.v1 behind it); without, the check is
off (``scope.enforce``): these benchmarks measure back pressure, and ``bench.collection`` measures the check's cost
against the real feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from bench.common import BENCH_TENANT, serve
from libs.events import KafkaRecord, topics
from libs.flowcontrol.admission import lag_signal
from libs.flowcontrol.policy import BoundaryPolicy
from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from libs.platform.kafka import start_producer
from services.collection.adapters.kafka import Publisher
from services.collection.adapters.lag import ConsumerLagProbe, total_lag
from services.collection.app import create_app, create_publisher
from services.collection.scope import ScopeView
from services.collection.settings import Boundaries, CollectionSettings, FtpSettings, MqttSettings, ScopeSettings
from stack.config import StackConfig

PARTITIONS = 6
Chunk = tuple[int, int, int, float]  # partition, last offset, records, arrival (epoch seconds)
_ARRIVAL: ContextVar[float] = ContextVar("arrival", default=0.0)


class TopicRedirect:
    """A `Publisher` sending the records to the run's own topic through the service's own `KafkaPublisher`."""

    def __init__(self, mapping: dict[str, str], *, note_arrival: bool = False) -> None:
        self.mapping = mapping
        self.inner: Publisher | None = None
        self.note_arrival = note_arrival

    async def publish(self, records: Any) -> None:
        assert self.inner is not None, "the publisher is set before the first request"
        if self.note_arrival and records:
            # Every event of a request carries the moment it arrived (``received_at``) as its CloudEvent time.
            _ARRIVAL.set(datetime.fromisoformat(orjson.loads(records[0].value)["time"]).timestamp())
        mapping = self.mapping
        await self.inner.publish(
            [KafkaRecord(mapping.get(r.topic, r.topic), r.key, r.value, r.headers) for r in records]
        )


class RecordingProducer:
    """The service's aiokafka producer, noting every acknowledged batch as a `Chunk`."""

    def __init__(self, producer: AIOKafkaProducer, chunks: list[Chunk]) -> None:
        self._producer = producer
        self._chunks = chunks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send_batch(batch, topic, partition=partition)
        count, arrival = batch.record_count(), _ARRIVAL.get()

        def done(acked: asyncio.Future[Any]) -> None:
            if not acked.cancelled() and acked.exception() is None:
                self._chunks.append((partition, acked.result().offset + count - 1, count, arrival))

        future.add_done_callback(done)
        return future


class LagProbe(ConsumerLagProbe):
    """The service's lag probe (what ``COLLECTION_LAG_SIGNAL`` starts) on a topic whose partitions are known.

    The service's own ``read_once`` looks the partitions up with ``consumer.partitions_for_topic``, which stays
    None for a topic its group-less consumer is not subscribed to (aiokafka's ``consumer.topics()`` returns a fresh
    metadata object without updating the consumer's), so its lag reads 0 and admission never engages; here the
    partitions are given, and the rest (group offsets, end offsets, `total_lag`) is the service's.
    """

    async def read_once(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> float:
        partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(self.group_id)
        committed = {tp: meta.offset for tp, meta in offsets.items() if tp.topic == self.topic and meta.offset >= 0}
        ends = await consumer.end_offsets(partitions)
        return total_lag(committed, ends, await consumer.beginning_offsets(partitions))


@dataclass(frozen=True)
class LagAdmission:
    """Lag-aware admission on ``group``'s lag: no pressure up to ``low`` records, full pressure from ``high``."""

    group: str
    low: float
    high: float
    interval: float = 0.5


@dataclass
class Ingress:
    app: FastAPI
    base_url: str
    api_key: str
    probe: LagProbe | None

    def quota_scale(self) -> float:
        quota = self.app.state.parts.boundaries["rest_ingress"].quota
        return float(quota.scale) if quota is not None else 1.0


@contextlib.asynccontextmanager
async def running_ingress(
    topic: str,
    rest: BoundaryPolicy,
    *,
    admission: LagAdmission | None = None,
    chunks: list[Chunk] | None = None,
    client: str = "head-end-1",
    wrap: Callable[[FastAPI], ASGIApp] | None = None,
    meterpoints: Sequence[str] | None = None,
) -> AsyncIterator[Ingress]:
    """The collection app, REST only, publishing to ``topic`` (see the module docstring); ``wrap`` puts an ASGI
    layer of the benchmark's around it."""
    stack = StackConfig()
    writer = generate_api_key(client, Role.SOURCE, tenant=BENCH_TENANT)
    probe = None
    signal: Callable[[], float] | None = None
    if admission is not None:
        probe = LagProbe(stack.kafka_bootstrap, group_id=admission.group, topic=topic, interval=admission.interval)
        signal = lag_signal(lambda: probe.lag, low=admission.low, high=admission.high)
    settings = CollectionSettings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
        boundaries=Boundaries(rest_ingress=rest),
        scope=ScopeSettings(enforce=meterpoints is not None),
    )
    view = None
    if meterpoints is not None:
        view = ScopeView(max(1, len(meterpoints)))
        for meterpoint in meterpoints:
            view.apply(meterpoint, grid_company=BENCH_TENANT, source=("head_end", client), version=1)
        view.ready = True
    redirect = TopicRedirect(
        {topics.READINGS: topic, topics.dlq(topics.READINGS): f"{topic}.dlq"}, note_arrival=chunks is not None
    )
    app = create_app(
        settings,
        publisher=redirect,
        key_store=InMemoryKeyStore([writer.record]),
        readiness_checks=[],
        registry=CollectorRegistry(),
        admission_signal=signal,
        scope_view=view,
    )
    producer = await start_producer(stack.kafka_bootstrap, "bench-ingress", linger_ms=settings.kafka_linger_ms)
    probing = None if probe is None else asyncio.create_task(probe.run(), name="lag-probe")
    try:
        sender: Any = producer if chunks is None else RecordingProducer(producer, chunks)
        redirect.inner = create_publisher(app.state.parts, sender)
        async with serve(app if wrap is None else wrap(app)) as base_url:
            yield Ingress(app, base_url, writer.plain_key, probe)
    finally:
        if probing is not None:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
        await producer.stop()
