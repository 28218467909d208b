"""Where re-read requests wait for head-end systems (PostgreSQL) and FTP partners (a file in their outbox).

Both are bounded per source: past ``max_open`` the oldest open requests are dropped (and counted), so a source that
never acknowledges cannot grow them without end. A request stored twice (the same id) is stored once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson

from libs.events.series import GapFillRequested
from services.collection.gapfill import StoredRequest, outbox_name, reread_payload

_OUTBOX_PREFIX = "reread-"


class RereadStore(Protocol):
    """Open re-read requests of head-end systems, per tenant and client."""

    async def add(self, request: GapFillRequested, *, max_open: int) -> int:
        """Store ``request`` for its client (once per id); return how many of the oldest were dropped."""
        ...

    async def open_requests(self, tenant: str, client: str, *, limit: int) -> list[StoredRequest]:
        """The client's open requests, oldest first."""
        ...

    async def acknowledge(self, tenant: str, client: str, request_id: str) -> bool:
        """Remove one of the client's requests; False when it has no such request."""
        ...


class PostgresRereadStore:
    """`RereadStore` in collection's database (table ``reread_requests``, migration 004)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def add(self, request: GapFillRequested, *, max_open: int) -> int:
        tenant, client = request.grid_company, request.data_source.id
        async with self._pool.acquire() as connection, connection.transaction():
            # One writer per client at a time, so the count and the trim below see each other's rows.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))", tenant, client)
            await connection.execute(
                """INSERT INTO reread_requests (request_id, tenant, client, meterpoint_id, register, resolution,
                       range_start, range_end, requested_at)
                   VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (request_id) DO NOTHING""",
                request.request_id,
                tenant,
                client,
                request.meterpoint_id,
                request.register.value,
                request.resolution.value,
                request.start,
                request.end,
                request.requested_at,
            )
            dropped = await connection.fetchval(
                """WITH oldest AS (
                       SELECT request_id FROM reread_requests WHERE tenant = $1 AND client = $2
                       ORDER BY stored_at DESC, request_id DESC OFFSET $3)
                   , gone AS (DELETE FROM reread_requests WHERE request_id IN (SELECT request_id FROM oldest)
                       RETURNING 1)
                   SELECT count(*) FROM gone""",
                tenant,
                client,
                max_open,
            )
        return int(dropped or 0)

    async def open_requests(self, tenant: str, client: str, *, limit: int) -> list[StoredRequest]:
        rows = await self._pool.fetch(
            """SELECT request_id::text, meterpoint_id, register, resolution, range_start, range_end, requested_at
               FROM reread_requests WHERE tenant = $1 AND client = $2
               ORDER BY stored_at, request_id LIMIT $3""",
            tenant,
            client,
            limit,
        )
        return [StoredRequest(*row) for row in rows]

    async def acknowledge(self, tenant: str, client: str, request_id: str) -> bool:
        status = await self._pool.execute(
            "DELETE FROM reread_requests WHERE request_id = $1::uuid AND tenant = $2 AND client = $3",
            request_id,
            tenant,
            client,
        )
        return bool(status == "DELETE 1")


class OutboxWriter:
    """Writes ``reread-<request_id>.json`` into an FTP partner's ``/outbox`` (atomically: a temporary name, then a
    rename), keeping at most ``max_files`` of them per partner (the oldest are removed and counted)."""

    def __init__(
        self, outbox_of: Callable[[str], Path], *, max_files: int, on_dropped: Callable[[int], object] | None = None
    ) -> None:
        # outbox_of: a partner login to its outbox folder (``Spool.outbox``, which refuses a name that is no login).
        self._outbox_of = outbox_of
        self._max_files = max_files
        self._on_dropped = on_dropped

    def write(self, request: GapFillRequested) -> Path:
        """Write the request's file (once: an existing one is kept) and return its path."""
        login = request.data_source.id
        outbox = self._outbox_of(login)  # ValueError for an id that is no FTP login
        outbox.mkdir(parents=True, exist_ok=True)
        target = outbox / outbox_name(request.request_id)
        if not target.exists():
            temporary = outbox / f".{target.name}.tmp"
            with temporary.open("wb") as file:
                file.write(reread_payload(request))
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(target)
        self._trim(outbox, keep=target)
        return target

    def _trim(self, outbox: Path, *, keep: Path) -> None:
        files = [p for p in outbox.iterdir() if p.name.startswith(_OUTBOX_PREFIX) and p.name.endswith(".json")]
        excess = len(files) - self._max_files
        if excess <= 0:
            return
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        dropped = 0
        for path in files:
            if dropped >= excess:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            dropped += 1
        if dropped and self._on_dropped is not None:
            self._on_dropped(dropped)


def stored_json(requests: list[StoredRequest]) -> bytes:
    """The JSON body of ``GET /v1/reread-requests``."""
    return orjson.dumps({"requests": [r.document() for r in requests]}, option=orjson.OPT_UTC_Z)


__all__ = ["OutboxWriter", "PostgresRereadStore", "RereadStore", "stored_json"]
