"""Fixtures of the VEE integration tests: their own topics and schemas, removed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.integration.vee.support import Topics, create_topics, delete_topics


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    created = await create_topics(kafka_bootstrap)
    try:
        yield created
    finally:
        await delete_topics(kafka_bootstrap, created)


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()
