"""Composition root of the customers service: builds the pool, store, SOAP endpoint, relay and HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry

from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.policy import build_boundary
from libs.flowcontrol.quota import Quota
from libs.platform.db import create_pool, postgres_readiness
from libs.platform.health import ReadinessRegistry, health_router
from libs.platform.logging import CorrelationIdMiddleware
from libs.platform.metrics import RequestMetricsMiddleware, mount_metrics
from libs.platform.migrations import migrate
from libs.platform.outbox import OUTBOX_COMPONENT, OUTBOX_MIGRATIONS, OutboxMetrics, watch_outbox_backlog
from services.customers.adapters.postgres import COMPONENT, MIGRATIONS, PostgresCustomerStore
from services.customers.adapters.relay import run_outbox_relay
from services.customers.auth import ClientAuthenticator
from services.customers.settings import CustomersSettings
from services.customers.soap import SoapEndpoint, soap_router

SOAP_BOUNDARY = "soap_ingress"


async def open_database(settings: CustomersSettings) -> asyncpg.Pool[Any]:
    """The service's pool, with the outbox's and the service's migrations applied."""
    pool = await create_pool(
        settings.postgres_dsn.get_secret_value(),
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        command_timeout=settings.db_command_timeout,
        schema=settings.postgres_schema,
        application_name=settings.service_name,
    )
    try:
        async with pool.acquire() as conn:
            await migrate(conn, OUTBOX_COMPONENT, OUTBOX_MIGRATIONS)
            await migrate(conn, COMPONENT, MIGRATIONS)
    except BaseException:
        await pool.close()
        raise
    return pool


def build_app(settings: CustomersSettings, *, registry: CollectorRegistry = REGISTRY) -> FastAPI:
    """The ASGI app; the pool, the SOAP endpoint and the relay start in its lifespan."""
    readiness = ReadinessRegistry()
    boundary = build_boundary(SOAP_BOUNDARY, settings.soap_ingress, metrics=FlowMetrics.for_registry(registry))
    attempts = settings.auth_attempts
    authenticator = ClientAuthenticator(
        settings.clients,
        Quota(attempts.rate, attempts.burst, idle_ttl=attempts.idle_ttl, max_keys=attempts.max_keys),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await open_database(settings)
        app.state.pool = pool
        readiness.add(postgres_readiness(pool))
        store = PostgresCustomerStore(
            pool,
            topic=settings.events_topic,
            source=settings.event_source,
            acquire_timeout=settings.db_acquire_timeout,
        )
        app.state.soap_endpoint = SoapEndpoint(
            store=store,
            authenticator=authenticator,
            boundary=boundary,
            max_body_bytes=settings.max_body_bytes,
            max_depth=settings.max_xml_depth,
        )
        stop = asyncio.Event()
        backlog = asyncio.create_task(
            watch_outbox_backlog(pool, OutboxMetrics.for_registry(registry), stop), name="outbox-backlog"
        )
        relay: asyncio.Task[None] | None = None
        if settings.relay_enabled:
            relay = asyncio.create_task(
                run_outbox_relay(
                    pool,
                    settings.kafka_bootstrap_servers,
                    client_id=f"{settings.service_name}-outbox",
                    stop=stop,
                    poll_interval=settings.relay_poll_interval,
                    batch_size=settings.relay_batch_size,
                ),
                name="outbox-relay",
            )
        try:
            yield
        finally:
            stop.set()
            await backlog
            if relay is not None:
                await relay
            await pool.close()

    app = FastAPI(title="GridHub customers", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(health_router(readiness))
    app.include_router(soap_router(settings.soap_path))
    if settings.metrics_enabled:
        mount_metrics(app, registry=registry)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    app.add_middleware(CorrelationIdMiddleware)
    return app
