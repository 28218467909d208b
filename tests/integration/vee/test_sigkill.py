"""The VEE service killed with SIGKILL mid-batch again and again: no interval and no published version lost or
doubled (offsets, state and outbox rows commit together)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.events.series import MeterSeriesValidated
from stack.config import REPO
from tests.integration.vee.support import (
    Topics,
    consume_until,
    count,
    gsrn,
    hourly,
    meterpoint,
    produce,
    reading,
    settings_env,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

START = datetime(2025, 3, 2, 23, tzinfo=UTC)  # local midnight of 2025-03-03 in Copenhagen
KILL_AT = (0.2, 0.45, 0.7)
DAYS = 7


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "services.vee"],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def test_nothing_is_lost_or_doubled_after_repeated_sigkills(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, pg_schema: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    meterpoints = [gsrn(100 + n) for n in range(90)]
    readings: list[Any] = []
    for n, mp in enumerate(meterpoints):
        readings += hourly(mp, START, [round(1 + 0.1 * ((n + i) % 7), 3) for i in range(DAYS * 24)])
    corrections = [reading(mp, START + timedelta(hours=5 + n), 99.0) for n, mp in enumerate(meterpoints)]
    resends = [reading(mp, START + timedelta(hours=1), round(1 + 0.1 * (n % 7), 3)) for n, mp in enumerate(meterpoints)]
    master = [meterpoint(mp, since=date(2025, 3, 1)) for mp in meterpoints]
    sent = [*master, *readings, *corrections, *resends]
    expected_intervals = len(readings) + len(corrections)  # resends are identical: duplicates, not versions
    await produce(kafka_bootstrap, topics, sent)

    settings = settings_for(
        pg_dsn, kafka_bootstrap, pg_schema, topics, max_records=10, group_instance_id="vee-kill-test"
    )
    env = settings_env(settings, free_port())
    log = tmp_path / "vee.log"

    async def intervals() -> int:
        try:
            return await count(pg, pg_schema, "SELECT count(*) FROM {s}.intervals")
        except asyncpg.UndefinedTableError:
            return 0

    at_kill: list[int] = []
    for fraction in KILL_AT:
        process = start(env, log)
        try:

            async def progressed(running: subprocess.Popen[bytes] = process, share: float = fraction) -> bool:
                if running.poll() is not None:
                    raise AssertionError(f"vee exited with {running.returncode}: {log.read_text()[-3000:]}")
                return await intervals() >= int(expected_intervals * share)

            await wait_for(progressed, 90, f"{fraction:.0%} of the intervals stored")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        at_kill.append(await intervals())
    assert len(at_kill) == 3
    assert at_kill[-1] < expected_intervals, at_kill  # every kill came before the end

    process = start(env, log)
    try:
        total = len(sent)

        async def done() -> bool:
            applied = await count(pg, pg_schema, "SELECT sum(next_offset) FROM {s}.consumer_offsets")
            unpublished = await count(pg, pg_schema, "SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL")
            return applied == total and unpublished == 0

        await wait_for(done, 120, "every record applied and every event relayed")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    # A clean stop relays what the consumer and the scheduler committed last.
    assert await count(pg, pg_schema, "SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL") == 0

    assert await intervals() == expected_intervals
    rows = await pg.fetch(
        f'SELECT meterpoint_id, interval_end, array_agg(version ORDER BY version) AS versions FROM "{pg_schema}".'
        "intervals GROUP BY 1, 2"
    )
    assert len(rows) == len(readings)
    assert Counter(tuple(row["versions"]) for row in rows) == {
        (1,): len(readings) - len(corrections),
        (1, 2): len(corrections),
    }
    stored_versions = {
        (row["meterpoint_id"], row["day"], row["version"])
        for row in await pg.fetch(f'SELECT meterpoint_id, day, version FROM "{pg_schema}".day_versions')
    }
    outbox_rows = await count(pg, pg_schema, "SELECT count(*) FROM {s}.outbox WHERE topic = $1", settings.series_topic)
    assert outbox_rows == len(stored_versions)  # one event per stored version, none twice

    def keys(events: list[Any]) -> set[tuple[str, date, int]]:
        return {(e.meterpoint_id, e.day, e.version) for e in events if isinstance(e, MeterSeriesValidated)}

    published = await consume_until(kafka_bootstrap, topics.series, lambda out: keys(out) >= stored_versions, 60)
    # The relay delivers at least once (a kill between Kafka's ack and the mark resends the same event id).
    assert keys(published) == stored_versions
    by_day: dict[tuple[str, date], list[int]] = {}
    for mp, day, version in sorted(stored_versions):
        by_day.setdefault((mp, day), []).append(version)
    assert all(versions == list(range(1, len(versions) + 1)) for versions in by_day.values())
    # Each measured day ends with every measured value and correction in it.
    for mp in meterpoints:
        for offset in range(DAYS):
            day = date(2025, 3, 3) + timedelta(days=offset)
            latest = max(by_day[(mp, day)])
            points = await pg.fetchval(
                f'SELECT points FROM "{pg_schema}".day_versions WHERE meterpoint_id = $1 AND day = $2 AND version = $3',
                mp,
                day,
                latest,
            )
            assert '"A04"' in points
            assert '"A03"' not in points
            assert '"A02"' not in points
