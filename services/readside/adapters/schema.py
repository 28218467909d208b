"""PostgreSQL schemas of the read side: the control schema with the version pointer, one schema per view version.

The control schema (``<schema>``) holds the pointer row and the API keys; each version of the views lives in
``<schema>_v<n>`` together with the consumer offsets that describe it, so a rebuilt version is switched in with
its own offsets and the old one dropped as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS
from libs.platform.db import Connection
from libs.platform.migrations import migrate

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
VIEW_MIGRATIONS = MIGRATIONS / "views"
CONTROL_COMPONENT = "readside.control"
VIEWS_COMPONENT = "readside.views"

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StoredOffset:
    """What one partition's offsets row says: the next offset to apply, and the log end when it was written."""

    topic: str
    partition: int
    next_offset: int | None
    high_watermark: int | None
    applied_at: datetime | None

    @property
    def lag(self) -> int:
        """Records the log had beyond the applied ones when this row was written."""
        if self.high_watermark is None:
            return 0
        return max(0, self.high_watermark - (self.next_offset or 0))


def search_path(control_schema: str, version: int) -> str:
    """The search_path of a transaction working on view ``version`` (views first, then the control schema)."""
    return f'"{control_schema}_v{version}", "{control_schema}"'


async def prepare_database(conn: Connection, control_schema: str, timezone: str) -> int:
    """Create or migrate the control schema and the current views version; return that version.

    Safe to run from several replicas at once (the migrations' advisory lock, an upsert of the pointer).
    """
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{control_schema}"')
    await _with_search_path(conn, f'"{control_schema}"')
    await migrate(conn, CONTROL_COMPONENT, MIGRATIONS)
    await migrate(conn, APIKEY_COMPONENT, APIKEY_MIGRATIONS)
    version: int | None = await conn.fetchval("SELECT version FROM view_version")
    if version is None:
        await create_views(conn, control_schema, 1, timezone)
        await conn.execute("INSERT INTO view_version (version) VALUES (1) ON CONFLICT (singleton) DO NOTHING")
        version = await conn.fetchval("SELECT version FROM view_version")
        assert version is not None
    else:
        await create_views(conn, control_schema, version, timezone)
    return version


async def create_views(conn: Connection, control_schema: str, version: int, timezone: str) -> None:
    """Create (or bring up to date) the schema of view ``version``; a new one records ``timezone``."""
    schema = f"{control_schema}_v{version}"
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await _with_search_path(conn, f'"{schema}"')
    try:
        await migrate(conn, VIEWS_COMPONENT, VIEW_MIGRATIONS)
        await conn.execute(
            "INSERT INTO view_meta (version, timezone) VALUES ($1, $2) ON CONFLICT (singleton) DO NOTHING",
            version,
            timezone,
        )
    finally:
        await _with_search_path(conn, f'"{control_schema}"')


async def drop_views(conn: Connection, control_schema: str, version: int) -> None:
    """Drop the schema of view ``version`` (never the current one)."""
    current = await conn.fetchval(f'SELECT version FROM "{control_schema}".view_version')  # noqa: S608 - validated name
    if current == version:
        raise ValueError(f"version {version} is the current version of the views")
    await conn.execute(f'DROP SCHEMA IF EXISTS "{control_schema}_v{version}" CASCADE')


async def views_exist(conn: Connection, control_schema: str, version: int) -> bool:
    """True when the schema of view ``version`` exists."""
    found = await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", f"{control_schema}_v{version}")
    return bool(found)


async def _with_search_path(conn: Connection, path: str) -> None:
    await conn.execute("SELECT set_config('search_path', $1, false)", path)


async def current_version(conn: Connection) -> int:
    """The version the pointer names (search_path must include the control schema)."""
    version: int | None = await conn.fetchval("SELECT version FROM view_version")
    if version is None:
        raise RuntimeError("the read side's database is not prepared (no view_version row)")
    return version


async def read_offsets(conn: Connection, topics: Sequence[str]) -> list[StoredOffset]:
    """The offsets rows of ``topics`` in the views the search_path points at."""
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset, high_watermark, applied_at FROM consumer_offsets "
        "WHERE topic = ANY($1::text[]) ORDER BY topic, partition",
        list(topics),
    )
    return [StoredOffset(**dict(row)) for row in rows]


async def switch_version(conn: Connection, from_version: int, to_version: int) -> None:
    """Point the read side at ``to_version`` (in the caller's transaction, after it locked the pointer)."""
    status = await conn.execute(
        "UPDATE view_version SET version = $2, switched_at = now() WHERE version = $1", from_version, to_version
    )
    if status != "UPDATE 1":
        raise RuntimeError(f"the views are no longer version {from_version}; nothing switched")
