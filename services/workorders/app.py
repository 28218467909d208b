"""The composition root: builds every part of the work orders service from its settings, nothing else.

``create_app(settings)`` returns the ASGI app. Its lifespan opens the pool (and migrates), builds the store, the
customers SOAP client, the handlers' context, and starts the background tasks: the outbox relay, the Kafka
consumers and the enricher, each switchable in settings. Tests run it in process
(``async with app.router.lifespan_context(app)`` plus ``httpx.ASGITransport(app=app)``) and may pass their own
customer directory, key store or clock.

A background task that dies (raises, or ends while the service is not stopping) is logged and reported to
``on_fatal``, so ``serve`` stops the server and exits 1 and the orchestrator restarts the replica.

Middleware, outermost first: correlation id, request metrics, API-key identity (so the quota keys on the client
system), flow control (quota -> 429, body size -> 413, bulkhead -> 503), then the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.middleware import Middleware

from libs.flowcontrol.asgi import FlowControlMiddleware, client_key_resolver
from libs.flowcontrol.clock import Clock
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.observer import Observer
from libs.flowcontrol.policy import Boundary, build_boundaries
from libs.platform.apikeys import KeyStore, KeyStoreSlot, set_key_store
from libs.platform.apikeys_asgi import ApiKeyMiddleware, CachedKeyStore
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.database import Migrations, open_database
from libs.platform.db import check_postgres
from libs.platform.health import ReadinessRegistry, health_router, probe_check
from libs.platform.logging import CorrelationIdMiddleware
from libs.platform.metrics import RequestMetricsMiddleware, mount_metrics
from libs.platform.outbox import (
    OUTBOX_COMPONENT,
    OUTBOX_MIGRATIONS,
    OutboxMetrics,
    run_outbox_relay,
    watch_outbox_backlog,
)
from libs.platform.problems import install_problem_handlers
from libs.platform.tasks import stop_task, supervise
from services.workorders.adapters.apikeys import GuardedKeyStore, LenientKeyStore
from services.workorders.adapters.customers_soap import SoapCustomerDirectory
from services.workorders.adapters.database import Database
from services.workorders.adapters.postgres import COMPONENT, MIGRATIONS, PostgresWorkOrderStore
from services.workorders.domain import Rules
from services.workorders.entrypoints import api
from services.workorders.entrypoints.consumers import run_consumers, subscriptions
from services.workorders.handlers import Context, CustomerDirectory, Now
from services.workorders.jobs import Enricher
from services.workorders.metrics import WorkordersMetrics
from services.workorders.openapi import install_openapi
from services.workorders.settings import WorkordersSettings

logger = logging.getLogger(__name__)
_STOP_TIMEOUT = 15.0

OnFatal = Callable[[BaseException], object]

# In this order at start-up: the outbox's and the API keys' tables, then the service's own.
DATABASE_MIGRATIONS: Migrations = (
    (OUTBOX_COMPONENT, OUTBOX_MIGRATIONS),
    (APIKEY_COMPONENT, APIKEY_MIGRATIONS),
    (COMPONENT, MIGRATIONS),
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Parts:
    """What the bootstrap built; tests reach the running parts through ``app.state.parts``."""

    settings: WorkordersSettings
    registry: CollectorRegistry
    flow_metrics: FlowMetrics
    boundaries: dict[str, Boundary]
    metrics: WorkordersMetrics
    pool: asyncpg.Pool[Any] | None = None
    context: Context | None = None
    enricher: Enricher | None = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def observer_of(self, boundary: str) -> Observer:
        """The delivery observer of a consumer boundary (labelled apart from its bulkhead)."""
        return self.flow_metrics.boundary(boundary, "delivery")


def build_parts(
    settings: WorkordersSettings, *, registry: CollectorRegistry | None = None, clock: Clock | None = None
) -> Parts:
    """The policy objects and metrics (no I/O)."""
    registry = REGISTRY if registry is None else registry
    flow_metrics = FlowMetrics.for_registry(registry)
    boundaries = build_boundaries(dict(settings.boundaries), clock=clock, metrics=flow_metrics)
    return Parts(settings, registry, flow_metrics, boundaries, WorkordersMetrics(registry))


def create_app(
    settings: WorkordersSettings,
    *,
    on_fatal: OnFatal | None = None,
    registry: CollectorRegistry | None = None,
    customers: CustomerDirectory | None = None,
    soap_transport: httpx.AsyncBaseTransport | None = None,
    key_store: KeyStore | None = None,
    clock: Clock | None = None,
    now: Now = _utcnow,
) -> FastAPI:
    """The work orders service's ASGI app (see the module docstring).

    ``on_fatal`` is called with the error when a background task dies. ``customers`` replaces the SOAP client;
    ``soap_transport`` replaces only the network under it (the breaker, bulkhead and timeout stay); ``key_store``
    replaces the PostgreSQL API keys.
    """
    parts = build_parts(settings, registry=registry, clock=clock)
    keys = KeyStoreSlot()

    async def postgres() -> None:
        if parts.pool is None:
            raise RuntimeError("no database pool")
        await check_postgres(parts.pool, 2.0)

    # Readiness is the database only: with Kafka down orders are still taken (events wait in the outbox), and
    # with the customers service down orders are created with the customer pending.
    readiness = ReadinessRegistry([probe_check("postgres", postgres, timeout=2.0)])

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            parts.pool = pool = await open_database(settings, DATABASE_MIGRATIONS)
            stack.push_async_callback(pool.close)
            database = _database(settings, parts)
            keys.store = key_store or CachedKeyStore(
                GuardedKeyStore(PostgresKeyStore(pool), database), ttl=settings.api_key_cache_seconds
            )
            directory = customers
            if directory is None:
                soap = SoapCustomerDirectory(
                    settings.customers_soap_url,
                    client=settings.customers_client,
                    password=settings.customers_password.get_secret_value(),
                    boundary=parts.boundaries["customers_soap"],
                    inner=soap_transport,
                )
                stack.push_async_callback(soap.aclose)
                directory = soap
            ctx = _context(settings, parts, pool, database, directory, now)
            stop = asyncio.Event()
            _start_tasks(settings, parts, pool, ctx, stop, on_fatal)
            stack.push_async_callback(_stop_tasks, parts, stop)
            app.state.context = ctx
            try:
                yield
            finally:
                app.state.context = None
                keys.store = None

    app = FastAPI(
        title="GridHub work orders",
        version="1.0.0",
        summary="Work orders for field crews at meterpoints; inspections opened by meter alarms.",
        lifespan=lifespan,
        middleware=[
            Middleware(CorrelationIdMiddleware),
            Middleware(RequestMetricsMiddleware, registry=parts.registry),
            Middleware(ApiKeyMiddleware, store=LenientKeyStore(keys)),
            Middleware(
                FlowControlMiddleware,
                boundary=parts.boundaries["rest_ingress"],
                client_key=client_key_resolver(header=None),
            ),
        ],
    )
    app.state.parts = parts
    app.state.context = None
    app.state.default_page_size = settings.default_page_size
    set_key_store(app, keys)
    install_problem_handlers(app)
    api.install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(health_router(readiness))
    if settings.metrics_enabled:
        mount_metrics(app, registry=parts.registry)
    install_openapi(app)
    return app


def _database(settings: WorkordersSettings, parts: Parts) -> Database:
    breaker = parts.boundaries["workorders_postgres"].breaker
    breaker_settings = settings.boundaries.workorders_postgres.breaker
    assert breaker is not None
    assert breaker_settings is not None
    return Database(breaker, retry_after=breaker_settings.wait_in_open)


def _context(
    settings: WorkordersSettings,
    parts: Parts,
    pool: asyncpg.Pool[Any],
    database: Database,
    directory: CustomerDirectory,
    now: Now,
) -> Context:
    store = PostgresWorkOrderStore(
        pool,
        database,
        topic=settings.events_topic,
        source=settings.event_source,
        acquire_timeout=settings.postgres_acquire_timeout,
    )
    rules = Rules(
        clock_tolerance=timedelta(seconds=settings.clock_tolerance_seconds),
        max_window=timedelta(hours=settings.max_window_hours),
    )
    ctx = Context(store, directory, rules, ZoneInfo(settings.timezone), now, metrics=parts.metrics)
    parts.context = ctx
    if settings.enrichment_enabled:
        parts.enricher = Enricher(
            ctx,
            interval=settings.enrichment_interval,
            batch_size=settings.enrichment_batch_size,
            max_backoff=timedelta(seconds=settings.enrichment_max_backoff),
            idempotency_retention=timedelta(hours=settings.idempotency_retention_hours),
            metrics=parts.metrics,
        )
        ctx.on_pending = parts.enricher.wake
    return ctx


def _start_tasks(
    settings: WorkordersSettings,
    parts: Parts,
    pool: asyncpg.Pool[Any],
    ctx: Context,
    stop: asyncio.Event,
    on_fatal: OnFatal | None,
) -> None:
    def start(name: str, work: Callable[[], Any]) -> None:
        # All share one stop event, so `_stop_tasks` stops them together (a failed or early end is fatal).
        parts.tasks[name] = supervise(asyncio.create_task(work(), name=name), on_fatal, stopping=stop)

    if settings.relay_enabled:
        start(
            "outbox-relay",
            lambda: run_outbox_relay(
                pool,
                settings.kafka_bootstrap_servers,
                client_id=f"{settings.service_name}-outbox",
                stop=stop,
                poll_interval=settings.relay_poll_interval,
                batch_size=settings.relay_batch_size,
            ),
        )
    outbox_metrics = OutboxMetrics.for_registry(parts.registry)
    start("outbox-backlog", lambda: watch_outbox_backlog(pool, outbox_metrics, stop))
    if settings.consumers_enabled:
        start(
            "consumers",
            lambda: run_consumers(
                subscriptions(settings, ctx, parts.boundaries),
                bootstrap_servers=settings.kafka_bootstrap_servers,
                client_id=settings.service_name,
                stop=stop,
                max_records=settings.consumer_max_records,
                observer_of=parts.observer_of,
            ),
        )
    if parts.enricher is not None:
        enricher = parts.enricher
        start("enricher", lambda: enricher.run(stop))


async def _stop_tasks(parts: Parts, stop: asyncio.Event) -> None:
    # Together: each drains on the shared event, at most _STOP_TIMEOUT, then is cancelled (a fixed few tasks).
    await asyncio.gather(*(stop_task(task, stop, timeout=_STOP_TIMEOUT) for task in parts.tasks.values()))
    parts.tasks.clear()


__all__ = ["DATABASE_MIGRATIONS", "Parts", "build_parts", "create_app"]
