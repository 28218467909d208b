"""The composition root: builds every part of the collection service from its settings, nothing else.

``create_app(settings)`` returns the ASGI app. Its lifespan starts the real parts (the no-loss Kafka producer
and its publisher, the PostgreSQL pool with the API-key and FTP-user tables, the scope view's feed from
``meterpoints.v1``, the MQTT ingress task, the FTP server with its file processor, and lag-aware admission when
configured) unless a test passed replacements.
Tests run it in-process: ``async with app.router.lifespan_context(app)`` plus
``httpx.ASGITransport(app=app)``.

Middleware, outermost first: correlation id, request metrics, API-key identity (so the quota keys on the client
system), flow control (quota -> 429, body size -> 413, bulkhead -> 503), then the routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.middleware import Middleware

from libs.events import topics
from libs.flowcontrol.admission import AdmissionController, Signal, lag_signal
from libs.flowcontrol.asgi import FlowControlMiddleware, client_key_resolver
from libs.flowcontrol.clock import Clock
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.policy import Boundary, build_boundaries
from libs.flowcontrol.quota import Quota
from libs.platform.apikeys import KeyStore, KeyStoreSlot, set_key_store
from libs.platform.apikeys_asgi import ApiKeyMiddleware, CachedKeyStore
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.database import open_database
from libs.platform.db import check_postgres
from libs.platform.health import ReadinessCheck, ReadinessRegistry, health_router, probe_check
from libs.platform.kafka import check_kafka, start_producer
from libs.platform.logging import CorrelationIdMiddleware
from libs.platform.metrics import RequestMetricsMiddleware, mount_metrics
from libs.platform.problems import install_problem_handlers
from libs.platform.tasks import run_in_background
from services.collection.adapters.devicecommands import DeviceCommands
from services.collection.adapters.ftpusers import (
    FTP_USERS_COMPONENT,
    FTP_USERS_MIGRATIONS,
    FtpUserStore,
    PostgresFtpUserStore,
)
from services.collection.adapters.kafka import KafkaPublisher, Publisher
from services.collection.adapters.lag import ConsumerLagProbe
from services.collection.adapters.meterpoints import MeterpointFeed
from services.collection.adapters.rereads import OutboxWriter, PostgresRereadStore, RereadStore
from services.collection.domain import ValidationRules
from services.collection.entrypoints import api, rereads
from services.collection.entrypoints.ftp import FtpIngress, PartnerFtpServer, PartnerUsers
from services.collection.entrypoints.gapfill import GapFillRoutes, run_gapfill_consumer
from services.collection.entrypoints.mqtt import MqttIngress
from services.collection.filedrop import FileProcessor, Spool
from services.collection.handlers import Pipeline
from services.collection.metrics import CollectionMetrics
from services.collection.openapi import install_openapi
from services.collection.scope import ScopeView
from services.collection.settings import CollectionSettings

logger = logging.getLogger(__name__)

WallClock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Parts:
    """What the bootstrap built for one app: shared by the REST routes, the MQTT ingress and readiness."""

    settings: CollectionSettings
    registry: CollectorRegistry
    boundaries: dict[str, Boundary]
    metrics: CollectionMetrics
    pipeline: Pipeline
    producer: AIOKafkaProducer | None = None
    pool: asyncpg.Pool[Any] | None = None
    mqtt: MqttIngress | None = None
    ftp: FtpIngress | None = None
    admission: list[AdmissionController] | None = None
    lag_probe: ConsumerLagProbe | None = None
    meterpoints: MeterpointFeed | None = None
    gapfill: GapFillRoutes | None = None

    @property
    def scope_view(self) -> ScopeView | None:
        """The view the scope check runs against (None when ``scope.enforce`` is off)."""
        return self.pipeline.scope


def build_parts(
    settings: CollectionSettings,
    *,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    scope_view: ScopeView | None = None,
) -> Parts:
    """The policy objects, metrics and validation settings (no I/O)."""
    registry = REGISTRY if registry is None else registry
    boundaries = build_boundaries(dict(settings.boundaries), clock=clock, metrics=FlowMetrics.for_registry(registry))
    if not settings.scope.enforce:
        logger.warning("scope check off (COLLECTION_SCOPE__ENFORCE=false): any source may deliver any meterpoint")
        scope_view = None
    elif scope_view is None:
        scope_view = ScopeView(settings.scope.capacity)
    pipeline = Pipeline(
        rules=ValidationRules(future_tolerance=timedelta(seconds=settings.future_tolerance_seconds)),
        event_source=settings.event_source,
        max_batch_items=settings.max_batch_items,
        dead_letter_rejections=settings.dead_letter_rest_rejections,
        scope=scope_view,
    )
    return Parts(settings, registry, boundaries, CollectionMetrics(registry), pipeline)


def create_publisher(parts: Parts, producer: AIOKafkaProducer) -> KafkaPublisher:
    """The Kafka publisher behind the ``kafka_producer`` boundary's breaker and timeout."""
    policy = parts.boundaries["kafka_producer"]
    return KafkaPublisher(
        producer,
        breaker=policy.breaker,
        timeout=policy.policy.timeout or 10.0,
        topic_prefix=parts.settings.kafka_topic_prefix,
    )


def create_mqtt_ingress(
    parts: Parts, publisher: Publisher, *, clock: Clock | None = None, wall_clock: WallClock = _utcnow
) -> MqttIngress:
    """The MQTT ingress with the ``mqtt_ingress`` boundary's device quota and buffer."""
    boundary = parts.boundaries["mqtt_ingress"]
    if boundary.quota is None:
        raise LookupError("boundaries.mqtt_ingress declares no quota")
    quota = boundary.quota

    def buffer() -> Any:
        return boundary.buffer(on_drop=None)

    return MqttIngress(
        parts.settings.mqtt,
        publisher=publisher,
        pipeline=parts.pipeline,
        quota=quota,
        buffer_factory=buffer,
        metrics=parts.metrics,
        clock=clock or boundary.clock,
        wall_clock=wall_clock,
    )


def create_ftp_ingress(
    parts: Parts,
    publisher: Publisher,
    users: FtpUserStore,
    *,
    clock: Clock | None = None,
    wall_clock: WallClock = _utcnow,
) -> FtpIngress:
    """The FTP server and its file processor with the ``ftp_ingress`` boundary's quota, bulkhead and size limit."""
    settings = parts.settings.ftp
    boundary = parts.boundaries["ftp_ingress"]
    if boundary.quota is None or boundary.bulkhead is None or boundary.policy.max_body_bytes is None:
        raise LookupError("boundaries.ftp_ingress needs a quota, a bulkhead and max_body_bytes")
    spool = Spool(settings.root)

    async def tenant_of(login: str) -> str | None:
        account = await users.get(login)
        return account.tenant if account is not None else None

    processor = FileProcessor(
        settings,
        spool=spool,
        publisher=publisher,
        pipeline=parts.pipeline,
        quota=boundary.quota,
        metrics=parts.metrics,
        clock=clock or boundary.clock,
        wall_clock=wall_clock,
        tenant_of=tenant_of,
    )
    checks = Quota(settings.login_checks_per_second, settings.login_checks_burst, clock=clock or boundary.clock)
    partners = PartnerUsers(
        users, spool, max_connections_per_user=settings.max_connections_per_user, checks=checks, metrics=parts.metrics
    )
    server = PartnerFtpServer(
        settings,
        users=partners,
        spool=spool,
        processor=processor,
        uploads=boundary.bulkhead,
        max_file_bytes=boundary.policy.max_body_bytes,
        metrics=parts.metrics,
        wall_clock=wall_clock,
        clock=clock or boundary.clock,
    )
    return FtpIngress(server, processor, settings)


def create_device_commands(parts: Parts, mqtt: MqttIngress) -> DeviceCommands:
    """The re-read sender over the MQTT ingress's session, with the ``device_commands`` boundary's policies."""
    boundary = parts.boundaries["device_commands"]
    if boundary.throttle is None or boundary.breaker is None or boundary.policy.timeout is None:
        raise LookupError("boundaries.device_commands needs a buffer, a throttle, a breaker and a timeout")
    return DeviceCommands(
        mqtt,
        buffer=boundary.buffer(on_drop=None),
        throttle=boundary.throttle,
        breaker=boundary.breaker,
        timeout=boundary.policy.timeout,
        topic_prefix=parts.settings.mqtt.topic_prefix,
    )


def create_gapfill_routes(
    parts: Parts, *, devices: DeviceCommands | None, head_ends: RereadStore | None
) -> GapFillRoutes:
    """Where gap-fill requests go: devices over MQTT, head-ends in the database, partners into their outbox."""
    settings = parts.settings
    metrics = parts.metrics
    partners = None
    if settings.ftp.enabled:
        partners = OutboxWriter(
            Spool(settings.ftp.root).outbox,
            max_files=settings.gapfill.max_outbox_files_per_partner,
            on_dropped=metrics.gapfill_requests.labels("ftp_partner", "dropped").inc,
        )
    return GapFillRoutes(
        scope=parts.scope_view,
        metrics=metrics,
        devices=devices,
        head_ends=head_ends,
        partners=partners,
        max_open_per_client=settings.gapfill.max_open_per_client,
    )


ADMITTED_BOUNDARIES = ("rest_ingress", "mqtt_ingress", "ftp_ingress")
"""The boundaries whose quotas lag-aware admission scales."""


def create_admission(parts: Parts, signal: Signal) -> list[AdmissionController]:
    """One admission controller per ingress quota, each scaling it by ``signal`` (its boundary's settings)."""
    return [
        parts.boundaries[name].admission(signal)
        for name in ADMITTED_BOUNDARIES
        if parts.boundaries[name].quota is not None
    ]


def _default_checks(parts: Parts) -> list[ReadinessCheck]:
    # Late-bound: the producer and pool exist only while the app runs.
    async def kafka() -> None:
        if parts.producer is None:
            raise RuntimeError("no Kafka producer")
        await check_kafka(parts.producer, 3.0)

    async def postgres() -> None:
        if parts.pool is None:
            raise RuntimeError("no database pool")
        await check_postgres(parts.pool, 2.0)

    async def meterpoint_view() -> None:
        view = parts.scope_view
        if view is not None and not view.ready:
            raise RuntimeError(f"the meterpoint view is catching up ({len(view)} meterpoints read)")

    return [
        probe_check("kafka", kafka, timeout=3.0),
        probe_check("postgres", postgres, timeout=2.0),
        probe_check("meterpoint_view", meterpoint_view, timeout=1.0),
    ]


def create_meterpoint_feed(parts: Parts) -> MeterpointFeed | None:
    """The consumer that keeps the scope view up to date (None when the check is off)."""
    view, settings = parts.scope_view, parts.settings
    if view is None:
        return None
    return MeterpointFeed(
        settings.kafka_bootstrap_servers,
        settings.kafka_topic_prefix + topics.METERPOINTS,
        view,
        metrics=parts.metrics,
        catch_up_timeout=settings.scope.catch_up_timeout_seconds,
    )


def create_app(
    settings: CollectionSettings,
    *,
    publisher: Publisher | None = None,
    key_store: KeyStore | None = None,
    readiness_checks: Sequence[ReadinessCheck] | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    wall_clock: WallClock = _utcnow,
    on_fatal: Callable[[BaseException], object] | None = None,
    ftp_users: FtpUserStore | None = None,
    admission_signal: Signal | None = None,
    scope_view: ScopeView | None = None,
) -> FastAPI:
    """The collection service's ASGI app; real Kafka, PostgreSQL, MQTT and FTP unless replacements are given.

    ``publisher`` replaces the Kafka producer, ``key_store`` the PostgreSQL key store and ``ftp_users`` the
    PostgreSQL FTP accounts (each then drops its readiness check unless ``readiness_checks`` says otherwise).
    ``admission_signal`` replaces the consumer-lag signal of ``settings.lag_signal``. ``scope_view`` replaces the
    view fed from ``meterpoints.v1`` (a test fills it and sets ``ready``; no feed runs then). ``on_fatal`` is called
    if the meterpoint feed, the MQTT or the FTP ingress dies (``__main__`` stops the server: a replica that no
    longer consumes must be restarted).
    """
    parts = build_parts(settings, registry=registry, clock=clock, scope_view=scope_view)
    keys = KeyStoreSlot()
    readiness = ReadinessRegistry(_default_checks(parts) if readiness_checks is None else readiness_checks)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            active = publisher
            if active is None:
                parts.producer = await start_producer(
                    settings.kafka_bootstrap_servers, settings.kafka_client_id, linger_ms=settings.kafka_linger_ms
                )
                stack.push_async_callback(parts.producer.stop)
                active = create_publisher(parts, parts.producer)
            store = key_store
            accounts = ftp_users
            if store is None or (settings.ftp.enabled and accounts is None) or settings.gapfill.enabled:
                parts.pool = await open_database(
                    settings, [(APIKEY_COMPONENT, APIKEY_MIGRATIONS), (FTP_USERS_COMPONENT, FTP_USERS_MIGRATIONS)]
                )
                stack.push_async_callback(parts.pool.close)
            if store is None:
                assert parts.pool is not None
                store = CachedKeyStore(PostgresKeyStore(parts.pool), ttl=settings.api_key_cache_seconds)
            keys.store = store
            if scope_view is None:
                parts.meterpoints = create_meterpoint_feed(parts)
                if parts.meterpoints is not None:
                    # Fatal: a replica whose view stopped (or never caught up) must not go on checking against it.
                    run_in_background(stack, parts.meterpoints.run(), name="meterpoint-view", on_fatal=on_fatal)
            rest_policy = settings.boundaries.rest_ingress
            app.state.rest = api.RestDependencies(
                publisher=active,
                pipeline=parts.pipeline,
                metrics=parts.metrics,
                max_body_bytes=rest_policy.max_body_bytes or 4 * 1024 * 1024,
                wall_clock=wall_clock,
            )
            if settings.mqtt.enabled:
                parts.mqtt = create_mqtt_ingress(parts, active, clock=clock, wall_clock=wall_clock)
                run_in_background(stack, parts.mqtt.run(), name="mqtt-ingress", on_fatal=on_fatal)
            if settings.ftp.enabled:
                if accounts is None:
                    assert parts.pool is not None
                    accounts = PostgresFtpUserStore(parts.pool)
                parts.ftp = create_ftp_ingress(parts, active, accounts, clock=clock, wall_clock=wall_clock)
                run_in_background(stack, parts.ftp.run(), name="ftp-ingress", on_fatal=on_fatal)
                await parts.ftp.wait_started(10.0)
            head_ends = None if parts.pool is None else PostgresRereadStore(parts.pool)
            if head_ends is not None:
                # Served whenever the database is: with gap fill off the lists are just empty.
                app.state.rereads = rereads.RereadDependencies(head_ends, settings.gapfill.list_limit)
            if settings.gapfill.enabled:
                devices = None
                if parts.mqtt is not None:
                    devices = create_device_commands(parts, parts.mqtt)
                    run_in_background(stack, devices.run(), name="device-commands", on_fatal=on_fatal)
                parts.gapfill = create_gapfill_routes(parts, devices=devices, head_ends=head_ends)
                gapfill_stop = asyncio.Event()
                consumer = run_gapfill_consumer(
                    parts.gapfill,
                    parts.boundaries["gapfill_consumer"],
                    bootstrap_servers=settings.kafka_bootstrap_servers,
                    topic=settings.kafka_topic_prefix + settings.gapfill.topic,
                    group_id=settings.gapfill.group_id,
                    client_id=settings.kafka_client_id,
                    stop=gapfill_stop,
                )
                run_in_background(stack, consumer, name="gapfill-consumer", on_fatal=on_fatal, stopping=gapfill_stop)
            signal = admission_signal
            if signal is None and settings.lag_signal is not None:
                lag = settings.lag_signal
                parts.lag_probe = ConsumerLagProbe(
                    settings.kafka_bootstrap_servers,
                    group_id=lag.group_id,
                    topic=lag.topic,
                    interval=lag.poll_interval_seconds,
                )
                # Not fatal: without its probe admission keeps the last signal (logged when it dies).
                run_in_background(stack, parts.lag_probe.run(), name="lag-probe", on_fatal=None)
                probe = parts.lag_probe
                signal = lag_signal(lambda: probe.lag, low=lag.low, high=lag.high)
            if signal is not None:
                parts.admission = create_admission(parts, signal)
                for controller in parts.admission:
                    run_in_background(stack, controller.run(), name="admission", on_fatal=None)
            try:
                yield
            finally:
                app.state.rest = None
                app.state.rereads = None
                keys.store = None

    app = FastAPI(
        title="GridHub collection",
        version="1.0.0",
        summary="Meter readings and meter events from client systems into Kafka.",
        lifespan=lifespan,
        middleware=[
            Middleware(CorrelationIdMiddleware),
            Middleware(RequestMetricsMiddleware, registry=parts.registry),
            Middleware(ApiKeyMiddleware, store=keys),
            # Per-client quota (429 + Retry-After + RateLimit), body size (413), requests in flight (503).
            Middleware(
                FlowControlMiddleware,
                boundary=parts.boundaries["rest_ingress"],
                client_key=client_key_resolver(header=None),
            ),
        ],
    )
    app.state.parts = parts
    app.state.rest = None
    app.state.rereads = None
    set_key_store(app, keys)
    install_problem_handlers(app)
    app.include_router(api.router)
    app.include_router(rereads.router)
    app.include_router(health_router(readiness))
    mount_metrics(app, registry=parts.registry)
    install_openapi(app, settings)
    return app


__all__ = [
    "ADMITTED_BOUNDARIES",
    "Parts",
    "build_parts",
    "create_admission",
    "create_app",
    "create_device_commands",
    "create_ftp_ingress",
    "create_gapfill_routes",
    "create_meterpoint_feed",
    "create_mqtt_ingress",
    "create_publisher",
]
