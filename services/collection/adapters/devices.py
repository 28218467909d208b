"""MQTT device accounts as principals, in the service's own database (table ``device_accounts``).

A device logs in to the broker with its meterpoint id (GSRN-18) and a password the broker alone keeps (its password
file here, dynamic security in production); this table says whose the device is (``tenant``, role ``source``),
since when its password holds and when the account ends. The operator command (``gridhub device``) writes it
together with the broker's credentials and an audit event; collection may read it to know a device's tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from libs.platform.db import Connection
from libs.platform.tenancy import Principal, PrincipalKind, Role

MAX_LISTED_DEVICES = 100_000
_SELECT_ONE = (
    "SELECT meterpoint_id, tenant, created_at, password_set_at, expires_at, removed_at "
    "FROM device_accounts WHERE meterpoint_id = $1"
)
_SELECT_MANY = (
    "SELECT meterpoint_id, tenant, created_at, password_set_at, expires_at, removed_at FROM device_accounts "
    "WHERE ($1::text IS NULL OR tenant = $1) ORDER BY meterpoint_id LIMIT $2"
)
_SELECT_EXPIRED = (
    "SELECT meterpoint_id, tenant, created_at, password_set_at, expires_at, removed_at FROM device_accounts "
    "WHERE removed_at IS NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
)


class DeviceState(StrEnum):
    """Where a device account is in its life at a given moment."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class DeviceAccount:
    """One meter's account: a source of grid company ``tenant``."""

    meterpoint_id: str
    tenant: str
    created_at: datetime
    password_set_at: datetime
    expires_at: datetime | None = None
    removed_at: datetime | None = None

    def state(self, now: datetime) -> DeviceState:
        """Removed, expired (its end is not after ``now``; the broker still knows it until pruned) or active."""
        if self.removed_at is not None:
            return DeviceState.REMOVED
        if self.expires_at is not None and self.expires_at <= now:
            return DeviceState.EXPIRED
        return DeviceState.ACTIVE

    @property
    def principal(self) -> Principal:
        """The device as a principal: its GSRN, kind ``device``, role ``source``, its tenant."""
        return Principal(self.meterpoint_id, PrincipalKind.DEVICE, Role.SOURCE, self.tenant)


def _account(row: asyncpg.Record) -> DeviceAccount:
    return DeviceAccount(
        row["meterpoint_id"],
        row["tenant"],
        row["created_at"],
        row["password_set_at"],
        row["expires_at"],
        row["removed_at"],
    )


class PostgresDeviceStore:
    """Device accounts over ``device_accounts`` (migrations: ``FTP_USERS_MIGRATIONS``, the collection component)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    def _on(self, connection: Connection | None) -> Connection | asyncpg.Pool[Any]:
        return self._pool if connection is None else connection

    async def get(self, meterpoint_id: str, *, connection: Connection | None = None) -> DeviceAccount | None:
        """The account of ``meterpoint_id`` (removed ones too), or None."""
        row = await self._on(connection).fetchrow(_SELECT_ONE, meterpoint_id)
        return None if row is None else _account(row)

    async def put(self, account: DeviceAccount, *, connection: Connection | None = None) -> None:
        """Create or replace the account (a device added again, e.g. after its removal, starts afresh)."""
        await self._on(connection).execute(
            "INSERT INTO device_accounts (meterpoint_id, tenant, created_at, password_set_at, expires_at, removed_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (meterpoint_id) DO UPDATE SET tenant = EXCLUDED.tenant, "
            "created_at = EXCLUDED.created_at, password_set_at = EXCLUDED.password_set_at, "
            "expires_at = EXCLUDED.expires_at, removed_at = EXCLUDED.removed_at",
            account.meterpoint_id,
            account.tenant,
            account.created_at,
            account.password_set_at,
            account.expires_at,
            account.removed_at,
        )

    async def password_set(
        self,
        meterpoint_id: str,
        at: datetime,
        *,
        expires_at: datetime | None = None,
        connection: Connection | None = None,
    ) -> bool:
        """Record a new password (and, if given, a new end); False when there is no active account."""
        status = await self._on(connection).execute(
            "UPDATE device_accounts SET password_set_at = $2, expires_at = coalesce($3, expires_at) "
            "WHERE meterpoint_id = $1 AND removed_at IS NULL",
            meterpoint_id,
            at,
            expires_at,
        )
        return bool(status == "UPDATE 1")

    async def remove(self, meterpoint_id: str, at: datetime, *, connection: Connection | None = None) -> bool:
        """Mark the account removed; False when there is no such account."""
        status = await self._on(connection).execute(
            "UPDATE device_accounts SET removed_at = coalesce(removed_at, $2) WHERE meterpoint_id = $1",
            meterpoint_id,
            at,
        )
        return bool(status == "UPDATE 1")

    async def accounts(self, *, tenant: str | None = None, connection: Connection | None = None) -> list[DeviceAccount]:
        """Accounts (of ``tenant`` if given) by meterpoint, removed ones too; at most `MAX_LISTED_DEVICES`."""
        rows = await self._on(connection).fetch(_SELECT_MANY, tenant, MAX_LISTED_DEVICES)
        return [_account(row) for row in rows]

    async def expired(
        self, now: datetime, *, limit: int = 1_000, connection: Connection | None = None
    ) -> list[DeviceAccount]:
        """Accounts past their end and not yet removed, soonest first (at most ``limit``)."""
        rows = await self._on(connection).fetch(_SELECT_EXPIRED, now, limit)
        return [_account(row) for row in rows]
