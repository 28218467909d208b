"""A rebuild replays the log into a new version while events keep arriving, switches, and equals the live views."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.readside.app import start_parts
from stack.config import REPO
from tests.integration.readside.support import (
    Topics,
    applied_through,
    assert_totals_match,
    current_version,
    dump_views,
    end_offsets,
    entity_events,
    fill_reference,
    meterpoint,
    produce,
    reading_stream,
    records_of,
    series_events,
    settings_env,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_rebuild_under_live_traffic_switches_to_identical_views(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    readings = reading_stream(seed=31, meterpoints=16)
    entities = [
        *entity_events(31, [meterpoint(n) for n in range(16)]),
        *series_events([meterpoint(n) for n in range(16)]),
    ]
    reading_records = records_of(readings.events, topics)
    entity_records = records_of(entities, topics)
    first = [*reading_records[: len(reading_records) // 2], *entity_records[: len(entity_records) // 2]]
    later = [*reading_records[len(reading_records) // 2 :], *entity_records[len(entity_records) // 2 :]]

    live_settings = settings_for(pg_dsn, kafka_bootstrap, control_schema, topics, max_records=500)
    # A second read side that is never rebuilt: what the live views must equal after the switch.
    reference_schema = f"{control_schema}_ref"
    reference_settings = settings_for(pg_dsn, kafka_bootstrap, reference_schema, topics, max_records=500)
    live = await start_parts(live_settings, registry=CollectorRegistry())
    reference = await start_parts(reference_settings, registry=CollectorRegistry())
    try:
        await produce(kafka_bootstrap, first)
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "the first part applied live")

        log = tmp_path / "rebuild.log"
        with log.open("wb") as output:
            rebuild = subprocess.Popen(
                [sys.executable, "-m", "services.readside.commands.rebuild", "--rate", "6000"],
                cwd=REPO,
                env={**os.environ, **settings_env(live_settings)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        # New events keep arriving while the rebuild replays and switches, and after it switched.
        slices = [later[i : i + 150] for i in range(0, len(later), 150)]
        produced = 0
        while rebuild.poll() is None and produced < len(slices) - 3:
            await produce(kafka_bootstrap, slices[produced])
            produced += 1

        async def rebuilt() -> bool:
            return rebuild.poll() is not None

        await wait_for(rebuilt, 90, "the rebuild to finish")
        for chunk in slices[produced:]:
            await produce(kafka_bootstrap, chunk)
        output_text = log.read_text()
        assert rebuild.returncode == 0, output_text[-3000:]
        assert produced >= 2, "events arrived while the rebuild ran"
        assert "100.0%" in output_text
        assert "switched from v1" in output_text

        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "everything applied to version 2")
        await wait_for(lambda: applied_through(pg, reference_schema, ends), 60, "everything applied to the reference")
        assert await current_version(pg, control_schema) == 2

        async def live_on_version_2() -> bool:
            return live.lag.version == 2

        await wait_for(live_on_version_2, 10, "the live consumer on version 2")
        assert await pg.fetchval("SELECT to_regnamespace($1)", f"{control_schema}_v1") is None

        rebuilt_views = await dump_views(pg, f"{control_schema}_v2")
        reference_views = await dump_views(pg, f"{reference_schema}_v1")
        for table, rows in reference_views.items():
            assert rows, f"the stream fills {table}"
            assert rebuilt_views[table] == rows, table
        fill_reference(readings)
        await assert_totals_match(pg, control_schema, readings)
    finally:
        await asyncio.gather(live.stop(), reference.stop())
        await _drop(pg, reference_schema)


async def _drop(pg: asyncpg.Connection, schema: str) -> None:
    for row in await pg.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 || '%'", schema):
        await pg.execute(f'DROP SCHEMA "{row["nspname"]}" CASCADE')
