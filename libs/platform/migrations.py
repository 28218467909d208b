"""Numbered SQL migrations per component, applied once, recorded, safe to run from several processes at once.

Files are ``NNN_title.sql`` in a folder. Each is applied in its own transaction together with its record in
``schema_migrations``; a PostgreSQL advisory lock serialises concurrent runners (replicas starting together),
and a changed checksum of an applied file stops start-up rather than leaving the schema in doubt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from libs.platform.db import Connection

_FILE = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same for every runner (pg_advisory_lock takes a bigint).
_LOCK_ID = 0x6772_6964_6875_62  # "gridhub"

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class MigrationError(RuntimeError):
    """A migration folder or the recorded history is not what the code expects."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(folder: Path) -> list[Migration]:
    """Read ``NNN_title.sql`` files in version order; refuse stray names and duplicate versions."""
    migrations: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNN_title.sql")
        migrations.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a version number")
    return sorted(migrations, key=lambda m: m.version)


async def migrate(conn: Connection, component: str, folder: Path) -> list[str]:
    """Apply the pending migrations of ``component`` from ``folder``; return the names applied."""
    migrations = load_migrations(folder)
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(_LEDGER)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations WHERE component = $1", component)
        done = {row["version"]: row for row in rows}
        for migration in migrations:
            record = done.get(migration.version)
            if record is not None:
                if record["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{component} migration {migration.name} was changed after it was applied; "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                    component,
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied
