"""API keys in the service's database, with a database outage answered as 503 rather than 500.

The key store is asked twice per request: by `ApiKeyMiddleware` (so the quota keys on the client system) and by
``require_role`` in the route. A middleware sits outside the app's exception handlers, so an outage there would
be a bare 500. Hence the middleware gets a `LenientKeyStore` (a failed lookup is "no identity yet"; the quota then
keys on the address) and the route the `GuardedKeyStore`, whose `Refused` the app answers with 503 + Retry-After.
The lifespan puts the guarded store into the app's `libs.platform.apikeys.KeyStoreSlot` once the pool exists; the
middleware's lenient store wraps that slot.
"""

from __future__ import annotations

import logging
from datetime import datetime

from libs.flowcontrol.errors import Refused
from libs.platform.apikeys import ApiKeyRecord, KeyStore
from services.workorders.adapters.database import Database

logger = logging.getLogger(__name__)


class GuardedKeyStore:
    """A key store whose lookups run under the database guard (an outage is a `Refused`)."""

    def __init__(self, store: KeyStore, database: Database) -> None:
        self._store = store
        self._database = database

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return await self._database.run(lambda: self._store.get(key_id))

    async def add(self, record: ApiKeyRecord) -> None:
        await self._database.run(lambda: self._store.add(record))

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> bool:
        return await self._database.run(lambda: self._store.revoke(key_id, at=at))


class LenientKeyStore:
    """For the middleware: a refused lookup is no identity (the route's own lookup answers 503)."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        try:
            return await self._store.get(key_id)
        except Refused as error:
            logger.debug("API key lookup refused in the middleware: %s", error)
            return None

    async def add(self, record: ApiKeyRecord) -> None:
        await self._store.add(record)

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> bool:
        return await self._store.revoke(key_id, at=at)
