"""The composition root: builds every part of the customers service from its settings, nothing else.

``create_app(settings)`` returns the ASGI app. Its lifespan opens the pool (the outbox's and the service's
migrations applied), builds the store and the SOAP endpoint, then starts the outbox backlog watcher and, unless
``relay_enabled`` is off, the in-process outbox relay. Each part is followed at once by the callback that stops it,
so a failed start stops exactly what had started, in reverse order. Tests run it in process
(``async with app.router.lifespan_context(app)``) and reach the parts through ``app.state.parts``.

Kafka down: the relay keeps retrying its producer and changes wait in the outbox; only the database takes the
replica out of readiness. A background task that dies (the relay, the backlog watcher) calls ``on_fatal``, so
``serve`` exits and the replica is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry

from libs.flowcontrol.clock import Clock
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.policy import Boundary, build_boundary
from libs.flowcontrol.quota import Quota
from libs.platform.audit import AUDIT_COMPONENT, AUDIT_MIGRATIONS
from libs.platform.database import open_database
from libs.platform.db import postgres_readiness
from libs.platform.health import ReadinessRegistry, health_router
from libs.platform.logging import CorrelationIdMiddleware
from libs.platform.metrics import RequestMetricsMiddleware, mount_metrics
from libs.platform.outbox import (
    OUTBOX_COMPONENT,
    OUTBOX_MIGRATIONS,
    OutboxMetrics,
    run_outbox_relay,
    watch_outbox_backlog,
)
from libs.platform.tasks import OnFatal, run_in_background
from services.customers.adapters.postgres import COMPONENT, MIGRATIONS, PostgresCustomerStore
from services.customers.auth import ClientAuthenticator
from services.customers.entrypoints.soap import SoapEndpoint, soap_router
from services.customers.settings import CustomersSettings

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    """What the bootstrap built and, once started, what runs; tests reach it through ``app.state.parts``."""

    settings: CustomersSettings
    registry: CollectorRegistry
    soap_ingress: Boundary
    authenticator: ClientAuthenticator
    outbox_metrics: OutboxMetrics
    readiness: ReadinessRegistry = field(default_factory=ReadinessRegistry)
    pool: asyncpg.Pool[Any] | None = None
    store: PostgresCustomerStore | None = None
    endpoint: SoapEndpoint | None = None
    backlog: asyncio.Task[None] | None = None
    relay: asyncio.Task[None] | None = None
    # Set when stopping: the backlog watcher and the relay (which drains first) return.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Every started part's stop callback, in start order; closing it stops them in reverse.
    exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def stop(self) -> None:
        """Stop the relay (it drains what is committed first) and the backlog watcher, then close the pool."""
        await self.exits.aclose()


def build_parts(
    settings: CustomersSettings, *, registry: CollectorRegistry | None = None, clock: Clock | None = None
) -> Parts:
    """The SOAP boundary, the authenticator and the metrics (no I/O)."""
    registry = REGISTRY if registry is None else registry
    soap_ingress = build_boundary(
        "soap_ingress", settings.boundaries.soap_ingress, clock=clock, metrics=FlowMetrics.for_registry(registry)
    )
    attempts = settings.auth_attempts
    authenticator = ClientAuthenticator(
        settings.clients,
        Quota(attempts.rate, attempts.burst, idle_ttl=attempts.idle_ttl, max_keys=attempts.max_keys, clock=clock),
    )
    return Parts(settings, registry, soap_ingress, authenticator, OutboxMetrics.for_registry(registry))


async def start(parts: Parts, *, on_fatal: OnFatal | None = None) -> None:
    """Start every part, pushing each one's stop callback on ``parts.exits`` right after it started."""
    settings, exits = parts.settings, parts.exits
    parts.stopping = asyncio.Event()
    components = [(OUTBOX_COMPONENT, OUTBOX_MIGRATIONS), (AUDIT_COMPONENT, AUDIT_MIGRATIONS), (COMPONENT, MIGRATIONS)]
    parts.pool = pool = await open_database(settings, components)
    exits.push_async_callback(pool.close)
    parts.readiness.add(postgres_readiness(pool))
    parts.store = store = PostgresCustomerStore(
        pool,
        topic=settings.events_topic,
        meterpoints_topic=settings.meterpoints_topic,
        source=settings.event_source,
        acquire_timeout=settings.postgres_acquire_timeout,
    )
    parts.endpoint = SoapEndpoint(
        store=store,
        authenticator=parts.authenticator,
        boundary=parts.soap_ingress,
        max_body_bytes=settings.max_body_bytes,
        max_depth=settings.max_xml_depth,
    )
    parts.backlog = run_in_background(
        parts.exits,
        watch_outbox_backlog(pool, parts.outbox_metrics, parts.stopping),
        name="outbox-backlog",
        on_fatal=on_fatal,
        stopping=parts.stopping,
    )
    if settings.relay_enabled:
        relay = run_outbox_relay(
            pool,
            settings.kafka_bootstrap_servers,
            client_id=f"{settings.service_name}-outbox",
            stop=parts.stopping,
            poll_interval=settings.relay_poll_interval,
            batch_size=settings.relay_batch_size,
        )
        parts.relay = run_in_background(
            parts.exits, relay, name="outbox-relay", on_fatal=on_fatal, stopping=parts.stopping
        )


def create_app(
    settings: CustomersSettings,
    *,
    on_fatal: OnFatal | None = None,
    registry: CollectorRegistry = REGISTRY,
    clock: Clock | None = None,
) -> FastAPI:
    """The customers service as an ASGI app: the lifespan starts the pool, the endpoint and the relay."""
    parts = build_parts(settings, registry=registry, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with parts.exits:
            await start(parts, on_fatal=on_fatal)
            app.state.pool = parts.pool
            app.state.soap_endpoint = parts.endpoint
            try:
                yield
            finally:
                app.state.soap_endpoint = None

    app = FastAPI(title="GridHub customers", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.parts = parts
    app.state.readiness = parts.readiness
    app.include_router(health_router(parts.readiness))
    app.include_router(soap_router(settings.soap_path))
    if settings.metrics_enabled:
        mount_metrics(app, registry=registry)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    app.add_middleware(CorrelationIdMiddleware)
    return app


__all__ = ["Parts", "build_parts", "create_app", "start"]
