"""Fixtures of the read side's integration tests: its own topics and schemas, removed afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.integration.readside.support import Topics, create_topics, delete_topics


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    """Fresh readings, meter events, customers and work order topics (6 partitions, each with a .dlq)."""
    created = await create_topics(kafka_bootstrap)
    try:
        yield created
    finally:
        await delete_topics(kafka_bootstrap, created)


@pytest.fixture
async def control_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A unique control schema name; it and every <name>_v<n> are dropped afterwards."""
    name = f"rs_{uuid.uuid4().hex[:10]}"
    yield name
    conn = await asyncpg.connect(pg_dsn)
    try:
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $1 || '\\_v%'", name
        )
        for row in schemas:
            await conn.execute(f'DROP SCHEMA "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()
