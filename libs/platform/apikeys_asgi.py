"""Authenticate API keys before anything else runs, so the flow-control middleware can key quotas by client.

Route dependencies run after every middleware; a quota keyed by the caller's client system therefore needs the
key checked earlier. :class:`ApiKeyMiddleware` does only that: a valid key's record goes to
``scope["state"]["api_key"]``; a missing or invalid key passes through untouched and ``require_role`` answers 401
(or 403) at the route, as before. :class:`CachedKeyStore` keeps hot ingest paths from asking the database for
every request.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from starlette.types import ASGIApp, Receive, Scope, Send

from libs.platform.apikeys import ApiKeyRecord, KeyStore, authenticate

logger = logging.getLogger(__name__)


KEY_CACHE_SECONDS = 5.0
"""How long a service may answer from a cached key record: a revocation, or the end a rotation gives the old key,
reaches every service within this time. Expiry needs no wait: it is checked against the clock on each request."""


class CachedKeyStore:
    """A bounded, short-lived cache in front of a KeyStore; a revocation takes effect within ``ttl`` seconds.

    The cache holds records, not verdicts: `authenticate` checks the cached record's expiry on every request, so
    an expired key is refused at its expiry, and a new end written by a rotation is seen within ``ttl``.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl: float = KEY_CACHE_SECONDS,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        now = self._clock()
        hit = self._entries.get(key_id)
        if hit is not None and now - hit[0] < self._ttl:
            self._entries.move_to_end(key_id)
            return hit[1]
        record = await self._store.get(key_id)
        self._entries[key_id] = (now, record)
        self._entries.move_to_end(key_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return record

    async def add(self, record: ApiKeyRecord) -> None:
        await self._store.add(record)
        self._entries.pop(record.key_id, None)

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> bool:
        self._entries.pop(key_id, None)
        return await self._store.revoke(key_id, at=at)


def _presented_key(scope: Scope) -> str | None:
    name: bytes
    value: bytes
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials:
                return credentials.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


class ApiKeyMiddleware:
    """Put the caller's valid API key record into ``scope["state"]["api_key"]``; never answers by itself.

    ``lenient``: a failing lookup (the database is down) is no identity here rather than a bare 500 from outside
    the app's exception handlers; the route's own ``require_role`` lookup then answers it the app's way.
    """

    def __init__(self, app: ASGIApp, *, store: KeyStore, lenient: bool = False) -> None:
        self.app = app
        self.store = store
        self.lenient = lenient

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            plain_key = _presented_key(scope)
            if plain_key:
                try:
                    record = await authenticate(self.store, plain_key)
                except Exception:
                    if not self.lenient:
                        raise
                    logger.debug("API key lookup failed in the middleware", exc_info=True)
                    record = None
                if record is not None:
                    scope.setdefault("state", {})["api_key"] = record
        await self.app(scope, receive, send)
