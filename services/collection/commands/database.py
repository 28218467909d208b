"""The collection database as the operator commands open it: partner, device and audit tables migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from libs.platform.audit import AUDIT_COMPONENT, AUDIT_MIGRATIONS
from libs.platform.database import open_database
from services.collection.adapters.ftpusers import FTP_USERS_COMPONENT, FTP_USERS_MIGRATIONS
from services.collection.settings import CollectionSettings


@asynccontextmanager
async def collection_database(settings: CollectionSettings) -> AsyncIterator[asyncpg.Pool[Any]]:
    """The collection database with the partner, device and audit tables migrated (one connection: a tool's)."""
    migrations = [(FTP_USERS_COMPONENT, FTP_USERS_MIGRATIONS), (AUDIT_COMPONENT, AUDIT_MIGRATIONS)]
    pool = await open_database(settings, migrations, max_size=1, application_name="gridhub-ops")
    try:
        yield pool
    finally:
        await pool.close()
