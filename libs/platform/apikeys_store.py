"""API keys in the service's own PostgreSQL database (the production :class:`KeyStore`).

Every change can run on a caller's connection (``connection=``), so the operator commands write the change and its
audit event (`libs.platform.audit.record_audit`) in one transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from libs.platform.apikeys import ApiKeyRecord
from libs.platform.db import Connection
from libs.platform.tenancy import Role

APIKEY_MIGRATIONS = Path(__file__).parent / "sql" / "apikeys"
APIKEY_COMPONENT = "platform.apikeys"
MAX_LISTED_KEYS = 10_000
"""The most keys `PostgresKeyStore.list` returns at once."""

_SELECT_ONE = (
    "SELECT key_id, key_hash, role, client, created_at, revoked_at, tenant, expires_at, rotated_from "
    "FROM api_keys WHERE key_id = $1"
)
_INSERT = (
    "INSERT INTO api_keys (key_id, key_hash, role, client, created_at, revoked_at, tenant, expires_at, rotated_from) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_SELECT_NEWEST = (
    "SELECT * FROM (SELECT key_id, key_hash, role, client, created_at, revoked_at, tenant, expires_at, rotated_from "
    "FROM api_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at DESC LIMIT $2) newest "
    "ORDER BY created_at"
)


def _record(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        key_hash=row["key_hash"],
        role=Role(row["role"]),
        client=row["client"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        tenant=row["tenant"],
        expires_at=row["expires_at"],
        rotated_from=row["rotated_from"],
    )


class PostgresKeyStore:
    """A :class:`~libs.platform.apikeys.KeyStore` over the ``api_keys`` table (see ``APIKEY_MIGRATIONS``)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    def _on(self, connection: Connection | None) -> Connection | asyncpg.Pool[Any]:
        return self._pool if connection is None else connection

    async def get(self, key_id: str, *, connection: Connection | None = None) -> ApiKeyRecord | None:
        row = await self._on(connection).fetchrow(_SELECT_ONE, key_id)
        return None if row is None else _record(row)

    async def add(self, record: ApiKeyRecord, *, connection: Connection | None = None) -> None:
        try:
            await self._on(connection).execute(
                _INSERT,
                record.key_id,
                record.key_hash,
                record.role.value,
                record.client,
                record.created_at,
                record.revoked_at,
                record.tenant,
                record.expires_at,
                record.rotated_from,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(f"API key id {record.key_id} already exists") from None

    async def revoke(self, key_id: str, *, at: datetime | None = None, connection: Connection | None = None) -> bool:
        status = await self._on(connection).execute(
            # Revoking twice keeps the first revocation time; False only for an unknown key.
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE key_id = $1",
            key_id,
            at or datetime.now(UTC),
        )
        return bool(status == "UPDATE 1")

    async def set_expiry(self, key_id: str, expires_at: datetime, *, connection: Connection | None = None) -> bool:
        """Move a key's end to ``expires_at`` unless it ends sooner already; False when there is no such key."""
        status = await self._on(connection).execute(
            "UPDATE api_keys SET expires_at = CASE WHEN expires_at IS NULL OR expires_at > $2 THEN $2 "
            "ELSE expires_at END WHERE key_id = $1",
            key_id,
            expires_at,
        )
        return bool(status == "UPDATE 1")

    async def list(
        self, *, tenant: str | None = None, limit: int = 1_000, connection: Connection | None = None
    ) -> list[ApiKeyRecord]:
        """The newest ``limit`` keys (of ``tenant`` if given), oldest first; revoked and expired ones too."""
        if not 1 <= limit <= MAX_LISTED_KEYS:
            raise ValueError(f"limit is 1-{MAX_LISTED_KEYS}")
        rows = await self._on(connection).fetch(
            _SELECT_NEWEST,
            tenant,
            limit,
        )
        return [_record(row) for row in rows]

    async def tenants(self, *, connection: Connection | None = None) -> dict[str, int]:
        """Each tenant with a key that is neither revoked nor expired, and how many it has."""
        rows = await self._on(connection).fetch(
            "SELECT tenant, count(*) AS keys FROM api_keys WHERE tenant IS NOT NULL AND revoked_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > now()) GROUP BY tenant"
        )
        return {row["tenant"]: row["keys"] for row in rows}
