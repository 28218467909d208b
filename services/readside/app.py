"""The composition root: builds every part of the read side from its settings, nothing else.

``create_app(settings)`` returns the ASGI app. Its lifespan opens the API's pool and prepares the database (the
control schema and the current view version), starts the dead-letter producer and then, unless
``consumer_enabled`` is off, the consumer's writer, its Kafka client and the consumer task. Each part is
followed at once by the callback that stops it, so a failed start stops exactly what had started, in reverse
order. Tests run it in process (``async with app.router.lifespan_context(app)``) or, without the API,
``await start_parts(settings)`` and ``await parts.stop()``.

Kafka down: the views still answer, marked stale by their freshness; only the database takes the replica out
of readiness. A consumer task that dies calls ``on_fatal``, so ``serve`` exits and the replica is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry

from libs.flowcontrol.asgi import FlowControlMiddleware, client_key_resolver
from libs.flowcontrol.delivery import DeliveryPolicy
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.policy import Boundary, build_boundary
from libs.flowcontrol.transactional import KafkaDeadLetters
from libs.platform.apikeys import KeyStore, KeyStoreSlot, set_key_store
from libs.platform.apikeys_asgi import ApiKeyMiddleware, CachedKeyStore
from libs.platform.apikeys_store import PostgresKeyStore
from libs.platform.db import create_pool, postgres_readiness
from libs.platform.health import ReadinessRegistry, probe_check
from libs.platform.kafka import kafka_readiness, start_producer
from libs.platform.logging import CorrelationIdMiddleware
from libs.platform.metrics import RequestMetricsMiddleware, mount_metrics
from libs.platform.tasks import OnFatal, run_in_background
from services.readside.adapters.kafka import group_consumer
from services.readside.adapters.schema import prepare_database
from services.readside.adapters.writer import ViewWriter
from services.readside.batches import BatchApplier, roles_of
from services.readside.entrypoints.api import create_api
from services.readside.entrypoints.consumers import ReadsideConsumer
from services.readside.entrypoints.health import health_router
from services.readside.metrics import LagTracker, ReadsideMetrics, readside_metrics
from services.readside.settings import ReadsideSettings
from services.readside.views import ViewQueries

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    """What the bootstrap built and, once started, what runs; tests reach it through ``app.state.parts``."""

    settings: ReadsideSettings
    registry: CollectorRegistry
    postgres: Boundary
    rest_api: Boundary
    metrics: ReadsideMetrics
    lag: LagTracker
    readiness: ReadinessRegistry = field(default_factory=ReadinessRegistry)
    pool: asyncpg.Pool[Any] | None = None
    producer: AIOKafkaProducer | None = None
    queries: ViewQueries | None = None
    writer: ViewWriter | None = None
    kafka: AIOKafkaConsumer | None = None
    consumer: ReadsideConsumer | None = None
    task: asyncio.Task[None] | None = None
    # Every started part's stop callback, in start order; closing it stops them in reverse.
    exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def stop(self) -> None:
        """Stop consuming (the batch in flight rolls back or commits), then close the clients."""
        await self.exits.aclose()


def build_parts(settings: ReadsideSettings, *, registry: CollectorRegistry | None = None) -> Parts:
    """The consumer's PostgreSQL boundary, the metrics and the lag tracker (no I/O)."""
    registry = REGISTRY if registry is None else registry
    flow_metrics = FlowMetrics.for_registry(registry)
    postgres = build_boundary("readside_postgres", settings.boundaries.readside_postgres, metrics=flow_metrics)
    rest_api = build_boundary("rest_api", settings.boundaries.rest_api, metrics=flow_metrics)
    metrics = readside_metrics(registry)
    return Parts(settings, registry, postgres, rest_api, metrics, LagTracker(metrics))


async def start(parts: Parts, *, on_fatal: OnFatal | None = None) -> None:
    """Start every part, pushing each one's stop callback on ``parts.exits`` right after it started."""
    settings, exits = parts.settings, parts.exits
    dsn = settings.postgres_dsn.get_secret_value()
    timeout = parts.postgres.policy.timeout or 15.0
    parts.pool = pool = await create_pool(
        dsn,
        schema=settings.postgres_schema,
        min_size=settings.postgres_pool_min_size,
        max_size=settings.postgres_pool_max_size,
        command_timeout=timeout,
        application_name=f"{settings.service_name}-api",
    )
    exits.push_async_callback(pool.close)
    async with pool.acquire() as conn:
        version = await prepare_database(conn, settings.postgres_schema, settings.timezone)
    logger.info("read side views at version %d", version)
    parts.producer = producer = await start_producer(settings.kafka_bootstrap_servers, f"{settings.service_name}-dlq")
    exits.push_async_callback(producer.stop)
    parts.queries = ViewQueries(
        pool,
        settings.postgres_schema,
        readings_topic=settings.readings_topic,
        meter_events_topic=settings.meter_events_topic,
        customers_topic=settings.customers_topic,
        workorders_topic=settings.workorders_topic,
        meterpoints_topic=settings.meterpoints_topic,
        series_topic=settings.series_topic,
        live_lag=parts.lag,
        active_alarm_days=settings.active_alarm_days,
        customer_consumption_days=settings.customer_consumption_days,
    )
    # Kafka down: the views still answer, marked stale by their freshness; only the database takes us out.
    parts.readiness.add(postgres_readiness(pool))
    parts.readiness.add(kafka_readiness(producer, critical=False))
    if not settings.consumer_enabled:
        return

    roles = roles_of(*settings.event_topics)
    breaker = parts.postgres.breaker
    assert breaker is not None  # the settings refuse a postgres boundary without one
    parts.writer = writer = ViewWriter(
        dsn, settings.postgres_schema, command_timeout=timeout, application_name=f"{settings.service_name}-consumer"
    )
    exits.push_async_callback(writer.close)
    applier = BatchApplier(
        writer,
        roles,
        KafkaDeadLetters(producer),
        parts.postgres.delivery or DeliveryPolicy(max_attempts=1),
        parts.metrics,
    )
    parts.kafka = kafka = group_consumer(settings)
    await kafka.start()
    exits.push_async_callback(kafka.stop)
    parts.consumer = consumer = ReadsideConsumer(
        kafka,
        applier,
        roles,
        breaker,
        parts.lag,
        max_records=settings.max_records,
        poll_timeout_ms=settings.poll_timeout_ms,
    )
    parts.task = task = run_in_background(exits, consumer.run(), name="readside-consumer", on_fatal=on_fatal)

    async def consumer_running() -> bool:
        return not task.done()

    parts.readiness.add(probe_check("consumer", consumer_running))


async def start_parts(
    settings: ReadsideSettings, *, registry: CollectorRegistry | None = None, on_fatal: OnFatal | None = None
) -> Parts:
    """The read side without its API (tests, the bench): built and started; ``await parts.stop()`` stops it."""
    parts = build_parts(settings, registry=registry)
    try:
        await start(parts, on_fatal=on_fatal)
    except BaseException:
        await parts.stop()
        raise
    return parts


def create_app(
    settings: ReadsideSettings,
    *,
    on_fatal: OnFatal | None = None,
    registry: CollectorRegistry = REGISTRY,
    key_store: KeyStore | None = None,
) -> FastAPI:
    """The read side as an ASGI app: the lifespan starts the consumer and the pools, the routes serve the views."""
    parts = build_parts(settings, registry=registry)
    keys = KeyStoreSlot()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with parts.exits:
            await start(parts, on_fatal=on_fatal)
            assert parts.pool is not None
            # Cached either way (a test's store too), so what runs is what production runs.
            keys.store = CachedKeyStore(
                key_store or PostgresKeyStore(parts.pool),
                ttl=settings.api_key_cache_seconds,
                max_entries=settings.api_key_cache_size,
            )
            app.state.queries = parts.queries
            try:
                yield
            finally:
                app.state.queries = None
                keys.store = None

    app = create_api(settings, lifespan=lifespan)
    app.state.parts = parts
    app.state.readiness = parts.readiness
    app.state.lag = parts.lag
    set_key_store(app, keys)
    app.include_router(health_router())
    if settings.metrics_enabled:
        mount_metrics(app, registry=registry)
    # Added innermost first. Outermost: correlation id, request metrics, API-key identity (so the quota keys on the
    # client system), flow control (quota -> 429, in flight per client -> 429, bulkhead -> 503, body -> 413/408).
    app.add_middleware(FlowControlMiddleware, boundary=parts.rest_api, client_key=client_key_resolver(header=None))
    app.add_middleware(ApiKeyMiddleware, store=keys, lenient=True)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    app.add_middleware(CorrelationIdMiddleware)
    return app


__all__ = ["Parts", "build_parts", "create_app", "start", "start_parts"]
