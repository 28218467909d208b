"""The read side killed with SIGKILL again and again while it applies a stream: nothing counted twice, nothing lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import date
from pathlib import Path

import asyncpg
import pytest

from stack.config import REPO
from tests.integration.readside.support import (
    Topics,
    applied_through,
    assert_series_match,
    assert_totals_match,
    end_offsets,
    meterpoint,
    produce,
    reading_stream,
    records_of,
    series_events,
    settings_env,
    settings_for,
    stored_offsets,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

KILL_AT = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "services.readside"],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def applied_records(conn: asyncpg.Connection, schema: str) -> int:
    try:
        return sum(offset or 0 for offset in (await stored_offsets(conn, schema)).values())
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0


async def test_views_are_exact_after_repeated_sigkills(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    stream = reading_stream(seed=11, meterpoints=40)
    # Validated days too (every version of a day kept, the greatest current): two days, two versions each.
    series = [
        *series_events([meterpoint(n) for n in range(40)]),
        *series_events([meterpoint(n) for n in range(40)], date(2025, 3, 31)),
    ]
    records = records_of(stream.events, topics)
    # Interleaved: the series land in the kills' batches as the readings do.
    series_records = records_of(series, topics)
    step = len(records) // len(series_records)
    for index, record in enumerate(series_records):
        records.insert(index * (step + 1), record)
    await produce(kafka_bootstrap, records)
    ends = await end_offsets(kafka_bootstrap, topics.all)
    total = sum(ends.values())
    assert total == len(records)
    settings = settings_for(
        pg_dsn,
        kafka_bootstrap,
        control_schema,
        topics,
        max_records=100,
        http_port=free_port(),
        # Static membership: the restarted process gets its partitions back without waiting out the session.
        group_instance_id="readside-kill-test",
    )
    env = settings_env(settings)
    log = tmp_path / "readside.log"
    kills = []
    process = start(env, log)
    try:
        for fraction in KILL_AT:
            threshold = int(total * fraction)

            async def reached(threshold: int = threshold, process: subprocess.Popen[bytes] = process) -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"the read side exited by itself:\n{log.read_text()[-3000:]}")
                return await applied_records(pg, control_schema) >= threshold

            await wait_for(reached, 60, f"{fraction:.0%} of the stream applied")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            kills.append(await applied_records(pg, control_schema))
            process = start(env, log)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "the whole stream applied")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert len(kills) >= 5
    assert all(applied < total for applied in kills), f"every kill hit a stream in progress: {kills} of {total}"
    await assert_totals_match(pg, control_schema, stream)
    await assert_series_match(pg, control_schema, series)
