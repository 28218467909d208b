"""API keys in the service's own PostgreSQL database (the production :class:`KeyStore`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from libs.platform.apikeys import ApiKeyRecord
from libs.platform.tenancy import Role

APIKEY_MIGRATIONS = Path(__file__).parent / "sql" / "apikeys"
APIKEY_COMPONENT = "platform.apikeys"


class PostgresKeyStore:
    """A :class:`~libs.platform.apikeys.KeyStore` over the ``api_keys`` table (see ``APIKEY_MIGRATIONS``)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(
            "SELECT key_id, key_hash, role, client, created_at, revoked_at, tenant FROM api_keys WHERE key_id = $1",
            key_id,
        )
        if row is None:
            return None
        return ApiKeyRecord(
            key_id=row["key_id"],
            key_hash=row["key_hash"],
            role=Role(row["role"]),
            client=row["client"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            tenant=row["tenant"],
        )

    async def add(self, record: ApiKeyRecord) -> None:
        try:
            await self._pool.execute(
                "INSERT INTO api_keys (key_id, key_hash, role, client, created_at, revoked_at, tenant) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                record.key_id,
                record.key_hash,
                record.role.value,
                record.client,
                record.created_at,
                record.revoked_at,
                record.tenant,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(f"API key id {record.key_id} already exists") from None

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> bool:
        status = await self._pool.execute(
            # Revoking twice keeps the first revocation time; False only for an unknown key.
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE key_id = $1",
            key_id,
            at or datetime.now(UTC),
        )
        return status == "UPDATE 1"
