"""The composition root: builds every part of the VEE service from its settings, nothing else.

``create_app(settings)`` returns the ASGI app. Its lifespan opens the pool (the service's and the outbox's
migrations applied), starts the dead-letter producer, the transactional consumer (readings and master data, offsets
in the same transaction as the state), the scheduler (deadlines, days without readings, gap fill), the outbox relay
(meter.series.v1, meter.commands.v1) and its backlog watcher. Each part is followed at once by the callback that
stops it, so a failed start stops exactly what had started, in reverse order. Tests run it in process (``await
start_parts(settings, clock=...)``, then ``await parts.scheduler.tick()`` to drive the deadlines).
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

from libs.flowcontrol.delivery import DeliveryPolicy
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.policy import Boundary, build_boundary
from libs.flowcontrol.transactional import KafkaDeadLetters, TransactionalConsumer
from libs.platform.database import open_database
from libs.platform.db import postgres_readiness
from libs.platform.health import ReadinessRegistry, health_router, probe_check
from libs.platform.kafka import kafka_readiness, start_producer
from libs.platform.logging import CorrelationIdMiddleware
from libs.platform.metrics import RequestMetricsMiddleware, mount_metrics
from libs.platform.outbox import OutboxMetrics, run_outbox_relay, watch_outbox_backlog
from libs.platform.tasks import OnFatal, run_in_background
from services.vee.adapters.kafka import group_consumer
from services.vee.adapters.postgres import ALL_MIGRATIONS
from services.vee.entrypoints.api import api_router
from services.vee.entrypoints.consumers import VeeStore, decoder
from services.vee.entrypoints.scheduler import Scheduler
from services.vee.handlers import Context, GapSettings, WallClock, system_clock
from services.vee.metrics import VeeMetrics, vee_metrics
from services.vee.settings import VeeSettings

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    """What the bootstrap built and, once started, what runs; tests reach it through ``app.state.parts``."""

    settings: VeeSettings
    registry: CollectorRegistry
    postgres: Boundary
    metrics: VeeMetrics
    outbox_metrics: OutboxMetrics
    ctx: Context
    clock: WallClock
    readiness: ReadinessRegistry = field(default_factory=ReadinessRegistry)
    pool: asyncpg.Pool[Any] | None = None
    producer: AIOKafkaProducer | None = None
    kafka: AIOKafkaConsumer | None = None
    consumer: TransactionalConsumer | None = None
    scheduler: Scheduler | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def stop(self) -> None:
        await self.exits.aclose()


def build_parts(
    settings: VeeSettings, *, registry: CollectorRegistry | None = None, clock: WallClock | None = None
) -> Parts:
    """The PostgreSQL boundary, the metrics and the use cases' context (no I/O)."""
    registry = REGISTRY if registry is None else registry
    postgres = build_boundary(
        "vee_postgres", settings.boundaries.vee_postgres, metrics=FlowMetrics.for_registry(registry)
    )
    metrics = vee_metrics(registry)
    ctx = Context(
        rules=settings.rules.to_domain(),
        series_topic=settings.series_topic,
        commands_topic=settings.commands_topic,
        deadline_days_after=settings.deadline_days_after,
        deadline_local_time=settings.deadline_local_time,
        billing_days_after=settings.billing_days_after,
        metrics=metrics,
    )
    return Parts(
        settings, registry, postgres, metrics, OutboxMetrics.for_registry(registry), ctx, clock or system_clock
    )


async def start(parts: Parts, *, on_fatal: OnFatal | None = None, scheduler_task: bool = True) -> None:
    """Start every part, pushing each one's stop callback on ``parts.exits`` right after it started."""
    settings, exits = parts.settings, parts.exits
    parts.stopping = asyncio.Event()
    parts.pool = pool = await open_database(settings, ALL_MIGRATIONS)
    exits.push_async_callback(pool.close)
    parts.readiness.add(postgres_readiness(pool))
    parts.producer = producer = await start_producer(settings.kafka_bootstrap_servers, f"{settings.service_name}-dlq")
    exits.push_async_callback(producer.stop)
    parts.readiness.add(kafka_readiness(producer, critical=False))
    # The relay has its own stop event: it is stopped after the consumer and the scheduler (the exit stack's
    # reverse order), so its drain publishes what they committed last.
    relay_stopping = asyncio.Event()
    run_in_background(
        exits,
        watch_outbox_backlog(pool, parts.outbox_metrics, relay_stopping),
        name="vee-outbox-backlog",
        on_fatal=on_fatal,
        stopping=relay_stopping,
    )
    relay = run_outbox_relay(
        pool,
        settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-outbox",
        stop=relay_stopping,
        poll_interval=settings.outbox_poll_interval,
        batch_size=settings.outbox_batch_size,
    )
    run_in_background(exits, relay, name="vee-outbox-relay", on_fatal=on_fatal, stopping=relay_stopping)

    breaker = parts.postgres.breaker
    assert breaker is not None  # the settings refuse a postgres boundary without one
    parts.kafka = kafka = group_consumer(settings)
    await kafka.start()
    exits.push_async_callback(kafka.stop)
    parts.consumer = consumer = TransactionalConsumer(
        kafka,
        [settings.readings_topic, settings.meterpoints_topic],
        VeeStore(pool, settings.group_id, parts.ctx, parts.clock),
        decoder(settings.readings_topic),
        KafkaDeadLetters(producer),
        breaker,
        max_records=settings.max_records,
        poll_timeout_ms=settings.poll_timeout_ms,
        delivery=parts.postgres.delivery or DeliveryPolicy(max_attempts=1),
    )
    task = run_in_background(exits, consumer.run(), name="vee-consumer", on_fatal=on_fatal)

    async def consumer_running() -> bool:
        return not task.done()

    parts.readiness.add(probe_check("consumer", consumer_running))
    parts.scheduler = scheduler = Scheduler(
        pool,
        parts.ctx,
        GapSettings(
            grace_seconds=settings.gap_grace_seconds,
            cooldown_seconds=settings.gap_cooldown_seconds,
            max_attempts=settings.gap_max_attempts,
            max_per_scan=settings.gap_max_per_scan,
            max_per_meterpoint=settings.gap_max_per_meterpoint,
            lookback_days=settings.lookback_days,
        ),
        parts.clock,
        interval=settings.scheduler_interval_seconds,
        deadline_batch=settings.deadline_batch,
        sweep_batch=settings.sweep_batch,
    )
    if scheduler_task:
        run_in_background(
            exits, scheduler.run(parts.stopping), name="vee-scheduler", on_fatal=on_fatal, stopping=parts.stopping
        )


async def start_parts(
    settings: VeeSettings,
    *,
    registry: CollectorRegistry | None = None,
    clock: WallClock | None = None,
    on_fatal: OnFatal | None = None,
    scheduler_task: bool = True,
) -> Parts:
    """The service without its API (tests, the bench): built and started; ``await parts.stop()`` stops it."""
    parts = build_parts(settings, registry=registry, clock=clock)
    try:
        await start(parts, on_fatal=on_fatal, scheduler_task=scheduler_task)
    except BaseException:
        await parts.stop()
        raise
    return parts


def create_app(
    settings: VeeSettings,
    *,
    on_fatal: OnFatal | None = None,
    registry: CollectorRegistry = REGISTRY,
    clock: WallClock | None = None,
) -> FastAPI:
    """The VEE service as an ASGI app: the lifespan starts every part, the routes serve health and the series."""
    parts = build_parts(settings, registry=registry, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with parts.exits:
            await start(parts, on_fatal=on_fatal)
            yield

    app = FastAPI(title="GridHub VEE", version="1", lifespan=lifespan)
    app.state.parts = parts
    app.include_router(health_router(parts.readiness))
    app.include_router(api_router())
    if settings.metrics_enabled:
        mount_metrics(app, registry=registry)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    app.add_middleware(CorrelationIdMiddleware)
    return app


__all__ = ["Parts", "build_parts", "create_app", "start", "start_parts"]
