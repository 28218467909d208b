"""The SQL migration runner against the real PostgreSQL: once, recorded, safe when replicas start together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from libs.platform.migrations import MigrationError, migrate

pytestmark = pytest.mark.postgres


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(sql)


async def connect(dsn: str, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"search_path": schema})


async def test_concurrent_runners_apply_each_migration_exactly_once(pg_dsn: str, pg_schema: str, tmp_path: Path):
    folder = tmp_path / "migrations"
    write(folder, "001_meterpoints.sql", "CREATE TABLE meterpoint (id text PRIMARY KEY);")
    # Not idempotent on purpose: a second application would fail on the duplicate key.
    write(folder, "002_seed.sql", "INSERT INTO meterpoint VALUES ('571313180400012345');")
    conns = [await connect(pg_dsn, pg_schema) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(conn, "collection", folder) for conn in conns))
        applied = sorted(name for result in results for name in result)
        assert applied == ["001_meterpoints", "002_seed"]
        assert await conns[0].fetchval("SELECT count(*) FROM meterpoint") == 1
        ledger = await conns[0].fetch("SELECT component, version FROM schema_migrations ORDER BY version")
        assert [(r["component"], r["version"]) for r in ledger] == [("collection", 1), ("collection", 2)]

        write(folder, "003_index.sql", "CREATE INDEX meterpoint_prefix ON meterpoint (left(id, 7));")
        assert await migrate(conns[1], "collection", folder) == ["003_index"]
        assert await migrate(conns[2], "collection", folder) == []
    finally:
        for conn in conns:
            await conn.close()


async def test_failed_migration_rolls_back_and_is_not_recorded(pg_dsn: str, pg_schema: str, tmp_path: Path):
    folder = tmp_path / "migrations"
    write(folder, "001_ok.sql", "CREATE TABLE work_order (id uuid PRIMARY KEY);")
    write(folder, "002_broken.sql", "CREATE TABLE half_done (id int); SELECT no_such_function();")
    conn = await connect(pg_dsn, pg_schema)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(conn, "workorders", folder)
        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema)
        }
        assert "work_order" in tables
        assert "half_done" not in tables
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert versions == [1]
    finally:
        await conn.close()


async def test_an_edited_applied_migration_stops_start_up(pg_dsn: str, pg_schema: str, tmp_path: Path):
    folder = tmp_path / "migrations"
    write(folder, "001_customers.sql", "CREATE TABLE customer (id uuid PRIMARY KEY);")
    conn = await connect(pg_dsn, pg_schema)
    try:
        await migrate(conn, "customers", folder)
        write(folder, "001_customers.sql", "CREATE TABLE customer (id uuid PRIMARY KEY, name text);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, "customers", folder)
    finally:
        await conn.close()


def test_stray_file_names_are_refused(tmp_path: Path):
    from libs.platform.migrations import load_migrations

    write(tmp_path, "001_ok.sql", "SELECT 1;")
    write(tmp_path, "add_column.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNN_title\.sql"):
        load_migrations(tmp_path)
