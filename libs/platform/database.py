"""A service's database: its pool from the ``postgres_*`` settings every service names alike, migrations applied."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg

from libs.platform.db import create_pool
from libs.platform.migrations import migrate
from libs.platform.settings import ServiceSettings

Migrations: TypeAlias = Sequence[tuple[str, Path]]
"""(component, folder of ``NNN_title.sql`` files) pairs, applied in order."""


async def open_database(
    settings: ServiceSettings,
    migrations: Migrations = (),
    *,
    application_name: str | None = None,
    max_size: int | None = None,
) -> asyncpg.Pool[Any]:
    """The service's pool with its schema (if it names one) and ``migrations`` applied; closed again on failure.

    ``max_size`` overrides ``postgres_pool_max_size`` for a tool that needs one connection.
    """
    if settings.postgres_dsn is None:
        raise ValueError(f"{settings.service_name} has no postgres_dsn")
    pool_max = settings.postgres_pool_max_size if max_size is None else max_size
    pool = await create_pool(
        settings.postgres_dsn.get_secret_value(),
        min_size=min(settings.postgres_pool_min_size, pool_max),
        max_size=pool_max,
        command_timeout=settings.postgres_command_timeout,
        schema=settings.postgres_schema,
        application_name=application_name or settings.service_name,
    )
    try:
        async with pool.acquire() as connection:
            if settings.postgres_schema is not None:
                # A tool may run before the service first did; the name is checked by the settings' pattern.
                await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.postgres_schema}"')
            for component, folder in migrations:
                await migrate(connection, component, folder)
    except BaseException:
        await pool.close()
        raise
    return pool


__all__ = ["Migrations", "open_database"]
