"""PostgreSQL connection pools (asyncpg) with bounded size and timeouts, and their readiness check."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from libs.platform.health import ProbeCheck, probe_check

# A plain connection or one borrowed from a pool: everything GridHub does with a connection works on both.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    schema: str | None = None,
    application_name: str = "gridhub",
) -> asyncpg.Pool[Any]:
    """A pool whose size bounds the database work a service can have in flight.

    ``command_timeout`` bounds every statement, so a slow database slows callers down instead of piling them
    up; ``schema`` sets ``search_path`` (tests use it to isolate themselves inside one database).
    """
    server_settings = {"application_name": application_name}
    if schema is not None:
        server_settings["search_path"] = schema
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,
        server_settings=server_settings,
    )
    assert pool is not None  # create_pool returns None only when used without await
    return pool


async def check_postgres(pool: asyncpg.Pool[Any], timeout: float = 2.0) -> None:
    """Readiness: a round trip to the database within ``timeout`` seconds (raises otherwise)."""
    async with asyncio.timeout(timeout):
        value = await pool.fetchval("SELECT 1")
    if value != 1:
        raise RuntimeError(f"unexpected answer from PostgreSQL: {value!r}")


def postgres_readiness(pool: asyncpg.Pool[Any], *, timeout: float = 2.0) -> ProbeCheck:
    """The ``/readyz`` check of a service's database."""
    return probe_check("postgres", lambda: check_postgres(pool, timeout), timeout=timeout)
