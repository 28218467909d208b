"""Outbox backlog: events committed by customers and workorders but not yet published to Kafka.

The relays publish within milliseconds while Kafka is up; a backlog that grows (and an oldest row that ages) means
Kafka is down or the relay is not running. Nothing is lost meanwhile: the rows are published when it returns.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class OutboxBacklog:
    """Unpublished outbox rows of one service."""

    service: str
    unpublished: int | None
    oldest: datetime | None
    error: str = ""


async def _backlog(service: str, dsn: str, schema: str | None) -> OutboxBacklog:
    settings = {"application_name": "gridhub-ops", **({"search_path": schema} if schema else {})}
    try:
        conn = await asyncpg.connect(dsn, timeout=5, server_settings=settings)
    except (OSError, asyncpg.PostgresError) as error:
        return OutboxBacklog(service, None, None, f"database unavailable: {type(error).__name__}")
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS unpublished, min(created_at) AS oldest FROM outbox WHERE published_at IS NULL"
        )
    except asyncpg.UndefinedTableError:
        return OutboxBacklog(service, None, None, "no outbox yet (the service never started)")
    finally:
        await conn.close()
    assert row is not None
    return OutboxBacklog(service, row["unpublished"], row["oldest"])


async def outbox_backlog() -> list[OutboxBacklog]:
    """The backlog of both outboxes, read with the services' own settings."""
    from services.customers.settings import CustomersSettings
    from services.workorders.settings import WorkordersSettings

    customers, workorders = CustomersSettings(), WorkordersSettings()
    return list(
        await asyncio.gather(
            _backlog("customers", customers.postgres_dsn.get_secret_value(), customers.postgres_schema),
            _backlog("workorders", workorders.postgres_dsn.get_secret_value(), workorders.postgres_schema),
        )
    )
