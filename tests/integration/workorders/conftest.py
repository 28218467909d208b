"""Fixtures for the work orders service against the real PostgreSQL and Kafka: settings on a fresh schema, the app
running in process (lifespan + httpx ASGITransport), API keys, and the customers service as a process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from services.workorders import handlers
from services.workorders.app import Parts, create_app
from services.workorders.handlers import Context, CustomerDirectory
from services.workorders.settings import WorkordersSettings
from tests.integration.workorders.support import CustomersProcess, FakeDirectory, master_data
from tests.tenants import TENANT_A, TENANT_B

KEYS = {role: generate_api_key(f"{role}-client", role, tenant=TENANT_A) for role in (Role.READER, Role.OPERATOR)}
OTHER_WRITER = generate_api_key("planning-2", Role.OPERATOR, tenant=TENANT_A)
# Grid company B's operator and reader, with the client names A's keys have: scoping is by tenant, not by name.
B_KEYS = {role: generate_api_key(f"{role}-client", role, tenant=TENANT_B) for role in (Role.READER, Role.OPERATOR)}
PLATFORM = generate_api_key("hub-ops", Role.PLATFORM)


def auth(role: Role = Role.OPERATOR) -> dict[str, str]:
    """Headers carrying the test key of ``role``."""
    return {"Authorization": f"Bearer {KEYS[role].plain_key}"}


@dataclass
class Running:
    """An app with its lifespan running, and a client calling it in process."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: WorkordersSettings

    @property
    def parts(self) -> Parts:
        parts: Parts = self.app.state.parts
        return parts

    async def register(self, meterpoint_id: str, grid_company: str = TENANT_A, *, version: int = 1) -> str:
        """Make ``grid_company`` the owner of ``meterpoint_id``, by the handler the meterpoints consumer calls
        (for tests that run without Kafka); returns the meterpoint id."""
        ctx: Context = self.app.state.context
        await handlers.on_meterpoint_event(ctx, master_data(meterpoint_id, grid_company, version=version))
        return meterpoint_id


@pytest.fixture
def settings_for(pg_dsn: str, pg_schema: str, kafka_bootstrap: str) -> Callable[..., WorkordersSettings]:
    """Settings on this test's schema; consumers, relay and enricher off unless the test turns them on."""

    def make(**overrides: Any) -> WorkordersSettings:
        values: dict[str, Any] = {
            "postgres_dsn": pg_dsn,
            "postgres_schema": pg_schema,
            "kafka_bootstrap_servers": kafka_bootstrap,
            "consumers_enabled": False,
            "relay_enabled": False,
            "enrichment_enabled": False,
            "consumer_group_prefix": f"wo-test-{uuid.uuid4().hex[:8]}",
        }
        return WorkordersSettings(**{**values, **overrides})

    return make


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Factory: run the app with the given settings (and replacements) until the test ends."""
    async with AsyncExitStack() as stack:

        async def start(
            settings: WorkordersSettings, *, customers: CustomerDirectory | None = None, **options: Any
        ) -> Running:
            keys = (*KEYS.values(), OTHER_WRITER, *B_KEYS.values(), PLATFORM)
            key_store = InMemoryKeyStore([key.record for key in keys])
            app = create_app(
                settings, registry=CollectorRegistry(), customers=customers, key_store=key_store, **options
            )
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://workorders.test")
            stack.push_async_callback(client.aclose)
            return Running(app, client, settings)

        yield start


@pytest.fixture
async def api(settings_for: Callable[..., WorkordersSettings], start_app: Callable[..., Awaitable[Running]]) -> Running:
    """The REST API alone (no Kafka tasks) with a customers directory that knows nobody."""
    return await start_app(settings_for(), customers=FakeDirectory())


@pytest.fixture
async def db(pg_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to the test's schema, to look behind the API (outbox rows, idempotency keys)."""
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": pg_schema})
    yield conn
    await conn.close()


@pytest.fixture
async def customers_service(pg_dsn: str, tmp_path: Path) -> AsyncIterator[CustomersProcess]:
    """The real customers service in its own schema (relay off: its events are not needed here)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    env = {"CUSTOMERS_POSTGRES_DSN": pg_dsn, "CUSTOMERS_POSTGRES_SCHEMA": schema, "CUSTOMERS_RELAY_ENABLED": "false"}
    process = CustomersProcess(env, tmp_path / "customers.log")
    await process.start()
    try:
        yield process
    finally:
        process.stop()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
