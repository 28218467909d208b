"""The VEE state in PostgreSQL: plain SQL on a connection inside the caller's transaction.

Nothing here decides anything: handlers.py calls these with the domain's results. Every write of a batch runs in
the one transaction that also moves the consumer's offsets (exactly once).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from libs.events.meter import Register, Resolution
from libs.events.meterpoints import ConnectionState, DataSource, MeterpointType, SourceKind
from libs.events.series import RuleCode, SeriesPoint
from libs.platform.db import Connection
from libs.platform.outbox import OUTBOX_COMPONENT, OUTBOX_MIGRATIONS
from services.vee.domain import Measured, Meterpoint, Profile

_POINTS = TypeAdapter(tuple[SeriesPoint, ...])
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
VEE_COMPONENT = "vee"
ALL_MIGRATIONS = ((VEE_COMPONENT, MIGRATIONS), (OUTBOX_COMPONENT, OUTBOX_MIGRATIONS))


async def upsert_meterpoint(conn: Connection, meterpoint: Meterpoint) -> bool:
    """Store ``meterpoint`` unless a newer (or the same) version is stored; True when it changed."""
    source = meterpoint.data_source
    status = await conn.execute(
        """
        INSERT INTO meterpoints AS m (meterpoint_id, version, grid_company, grid_area, time_zone, type, resolution,
            connection_state, connected_since, source_kind, source_id, registers, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now())
        ON CONFLICT (meterpoint_id) DO UPDATE SET version = excluded.version, grid_company = excluded.grid_company,
            grid_area = excluded.grid_area, time_zone = excluded.time_zone, type = excluded.type,
            resolution = excluded.resolution, connection_state = excluded.connection_state,
            connected_since = excluded.connected_since, source_kind = excluded.source_kind,
            source_id = excluded.source_id, registers = excluded.registers, updated_at = now()
        WHERE excluded.version > m.version
        """,
        meterpoint.meterpoint_id,
        meterpoint.version,
        meterpoint.grid_company,
        meterpoint.grid_area,
        meterpoint.time_zone,
        str(meterpoint.type),
        str(meterpoint.resolution),
        str(meterpoint.connection_state),
        meterpoint.connected_since,
        None if source is None else str(source.kind),
        None if source is None else source.id,
        [str(register) for register in meterpoint.registers],
    )
    return bool(status.endswith(" 1"))


def _meterpoint(row: Any) -> Meterpoint:
    source = None
    if row["source_kind"] is not None:
        source = DataSource(kind=SourceKind(row["source_kind"]), id=row["source_id"])
    return Meterpoint(
        meterpoint_id=row["meterpoint_id"],
        grid_company=row["grid_company"],
        grid_area=row["grid_area"],
        time_zone=row["time_zone"],
        type=MeterpointType(row["type"]),
        resolution=Resolution(row["resolution"]),
        connection_state=ConnectionState(row["connection_state"]),
        connected_since=row["connected_since"],
        data_source=source,
        version=row["version"],
    )


async def load_meterpoints(conn: Connection, ids: Iterable[str]) -> dict[str, Meterpoint]:
    rows = await conn.fetch("SELECT * FROM meterpoints WHERE meterpoint_id = ANY($1::text[])", list(ids))
    return {row["meterpoint_id"]: _meterpoint(row) for row in rows}


async def connected_meterpoints(conn: Connection, after: str, limit: int) -> list[Meterpoint]:
    """The next ``limit`` connected meterpoints by id after ``after`` (a sweep's cursor)."""
    rows = await conn.fetch(
        "SELECT * FROM meterpoints WHERE meterpoint_id > $1 AND connection_state = 'connected' "
        "ORDER BY meterpoint_id LIMIT $2",
        after,
        limit,
    )
    return [_meterpoint(row) for row in rows]


async def hold_readings(conn: Connection, held: Sequence[tuple[str, str, datetime]]) -> None:
    """Keep readings (meterpoint, reading JSON, received at) until their meterpoint's master data arrives."""
    if held:
        await conn.executemany(
            "INSERT INTO pending_readings (meterpoint_id, reading, received_at) VALUES ($1, $2::jsonb, $3)", held
        )


async def take_held_readings(conn: Connection, meterpoint_ids: Sequence[str]) -> list[tuple[str, datetime]]:
    """Remove and return the held readings (JSON, received at) of ``meterpoint_ids``, oldest first."""
    if not meterpoint_ids:
        return []
    rows = await conn.fetch(
        "DELETE FROM pending_readings WHERE meterpoint_id = ANY($1::text[]) RETURNING id, reading::text, received_at",
        list(meterpoint_ids),
    )
    return [(row["reading"], row["received_at"]) for row in sorted(rows, key=lambda row: row["id"])]


async def count_unvalidated(conn: Connection, counts: dict[tuple[str, str], int]) -> None:
    if counts:
        await conn.executemany(
            "INSERT INTO unvalidated_counts AS u (meterpoint_id, register, readings) VALUES ($1, $2, $3) "
            "ON CONFLICT (meterpoint_id, register) DO UPDATE SET readings = u.readings + excluded.readings",
            [(mp, register, n) for (mp, register), n in counts.items()],
        )


async def load_measured(
    conn: Connection, meterpoint_id: str, register: Register, start: datetime, end: datetime
) -> dict[datetime, Measured]:
    """The current version of each measured interval with ``interval_end`` in (start, end]."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (interval_end) interval_end, version, value, rules, meter_index FROM intervals
        WHERE meterpoint_id = $1 AND register = $2 AND interval_end > $3 AND interval_end <= $4
        ORDER BY interval_end, version DESC
        """,
        meterpoint_id,
        str(register),
        start,
        end,
    )
    return {
        row["interval_end"]: Measured(
            interval_end=row["interval_end"],
            value=row["value"],
            version=row["version"],
            rules=tuple(RuleCode(rule) for rule in row["rules"]),
            meter_index=row["meter_index"],
        )
        for row in rows
    }


async def load_measured_many(
    conn: Connection, windows: dict[tuple[str, Register], tuple[datetime, datetime]]
) -> dict[tuple[str, Register], dict[datetime, Measured]]:
    """``load_measured`` for many series at once: each key's window (start, end]."""
    keys = list(windows)
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (i.meterpoint_id, i.register, i.interval_end)
               i.meterpoint_id, i.register, i.interval_end, i.version, i.value, i.rules, i.meter_index
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS w(meterpoint_id, register, s, e)
        JOIN intervals i ON i.meterpoint_id = w.meterpoint_id AND i.register = w.register
                        AND i.interval_end > w.s AND i.interval_end <= w.e
        ORDER BY i.meterpoint_id, i.register, i.interval_end, i.version DESC
        """,
        [key[0] for key in keys],
        [str(key[1]) for key in keys],
        [windows[key][0] for key in keys],
        [windows[key][1] for key in keys],
    )
    found: dict[tuple[str, Register], dict[datetime, Measured]] = {key: {} for key in keys}
    for row in rows:
        found[(row["meterpoint_id"], Register(row["register"]))][row["interval_end"]] = Measured(
            interval_end=row["interval_end"],
            value=row["value"],
            version=row["version"],
            rules=tuple(RuleCode(rule) for rule in row["rules"]),
            meter_index=row["meter_index"],
        )
    return found


async def load_profiles(
    conn: Connection, keys: Sequence[tuple[str, Register]], max_samples: int
) -> dict[tuple[str, Register], Profile]:
    rows = await conn.fetch(
        "SELECT p.meterpoint_id, p.register, p.hour_of_week, p.samples "
        "FROM unnest($1::text[], $2::text[]) AS k(meterpoint_id, register) "
        "JOIN profiles p ON p.meterpoint_id = k.meterpoint_id AND p.register = k.register",
        [key[0] for key in keys],
        [str(key[1]) for key in keys],
    )
    profiles = {key: Profile({}, max_samples=max_samples) for key in keys}
    for row in rows:
        profiles[(row["meterpoint_id"], Register(row["register"]))].samples[row["hour_of_week"]] = list(row["samples"])
    return profiles


async def save_profiles(conn: Connection, changed: dict[tuple[str, Register], tuple[Profile, set[int]]]) -> None:
    """Write back the hours-of-week that changed, of every series."""
    values = [
        (key[0], str(key[1]), hour, profile.samples[hour])
        for key, (profile, hours) in changed.items()
        for hour in sorted(hours)
        if hour in profile.samples
    ]
    if values:
        await conn.executemany(
            "INSERT INTO profiles (meterpoint_id, register, hour_of_week, samples) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (meterpoint_id, register, hour_of_week) DO UPDATE SET samples = excluded.samples",
            values,
        )


async def published_days(
    conn: Connection, candidates: dict[tuple[str, Register], set[date]]
) -> dict[tuple[str, Register], set[date]]:
    """Which of the candidate days were published already and are not complete: a complete day (every interval
    measured, none rejected) cannot change by a reading outside it, so it is not assembled again for one."""
    flat = [(key, day) for key, days in candidates.items() for day in days]
    if not flat:
        return {}
    rows = await conn.fetch(
        "SELECT d.meterpoint_id, d.register, d.day FROM unnest($1::text[], $2::text[], $3::date[]) "
        "AS c(meterpoint_id, register, day) JOIN days d USING (meterpoint_id, register, day) "
        "WHERE d.published_version IS NOT NULL AND NOT d.complete",
        [key[0] for key, _ in flat],
        [str(key[1]) for key, _ in flat],
        [day for _, day in flat],
    )
    found: dict[tuple[str, Register], set[date]] = defaultdict(set)
    for row in rows:
        found[(row["meterpoint_id"], Register(row["register"]))].add(row["day"])
    return found


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """A new version of a measured interval (kWh)."""

    meterpoint_id: str
    register: Register
    resolution: Resolution
    reading_id: str
    received_at: datetime
    measured: Measured


async def insert_intervals(conn: Connection, rows: Sequence[IntervalRow]) -> None:
    if rows:
        await conn.executemany(
            "INSERT INTO intervals (meterpoint_id, register, interval_end, version, value, meter_index, rules, "
            "resolution, reading_id, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [
                (
                    row.meterpoint_id,
                    str(row.register),
                    row.measured.interval_end,
                    row.measured.version,
                    row.measured.value,
                    row.measured.meter_index,
                    [str(rule) for rule in row.measured.rules],
                    str(row.resolution),
                    row.reading_id,
                    row.received_at,
                )
                for row in rows
            ],
        )


async def load_profile(conn: Connection, meterpoint_id: str, register: Register, max_samples: int) -> Profile:
    rows = await conn.fetch(
        "SELECT hour_of_week, samples FROM profiles WHERE meterpoint_id = $1 AND register = $2",
        meterpoint_id,
        str(register),
    )
    return Profile({row["hour_of_week"]: list(row["samples"]) for row in rows}, max_samples=max_samples)


async def save_profile(
    conn: Connection, meterpoint_id: str, register: Register, profile: Profile, hours: Iterable[int]
) -> None:
    """Write back the hours-of-week that changed."""
    values = [(meterpoint_id, str(register), hour, profile.samples[hour]) for hour in hours if hour in profile.samples]
    if values:
        await conn.executemany(
            "INSERT INTO profiles (meterpoint_id, register, hour_of_week, samples) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (meterpoint_id, register, hour_of_week) DO UPDATE SET samples = excluded.samples",
            values,
        )


@dataclass(frozen=True, slots=True)
class DayState:
    published_version: int | None
    final: bool
    deadline: datetime
    billing_deadline: datetime


async def lock_day(
    conn: Connection,
    meterpoint_id: str,
    register: Register,
    day: date,
    *,
    deadline: datetime,
    billing_deadline: datetime,
    day_end: datetime,
) -> DayState:
    """The day's state, its row created if new and locked for this transaction (the scheduler waits for it)."""
    row = await conn.fetchrow(
        """
        INSERT INTO days AS d (meterpoint_id, register, day, deadline, billing_deadline, day_end)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (meterpoint_id, register, day) DO UPDATE SET deadline = d.deadline
        RETURNING published_version, final, deadline, billing_deadline
        """,
        meterpoint_id,
        str(register),
        day,
        deadline,
        billing_deadline,
        day_end,
    )
    assert row is not None
    return DayState(row["published_version"], row["final"], row["deadline"], row["billing_deadline"])


async def ensure_days(conn: Connection, rows: Sequence[tuple[str, str, date, datetime, datetime, datetime]]) -> None:
    """Create day rows (meterpoint, register, day, deadline, billing deadline, day end) that do not exist yet."""
    if rows:
        await conn.executemany(
            "INSERT INTO days (meterpoint_id, register, day, deadline, billing_deadline, day_end) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            rows,
        )


async def published_points(
    conn: Connection, meterpoint_id: str, register: Register, day: date, version: int
) -> tuple[SeriesPoint, ...]:
    text = await conn.fetchval(
        "SELECT points::text FROM day_versions "
        "WHERE meterpoint_id = $1 AND register = $2 AND day = $3 AND version = $4",
        meterpoint_id,
        str(register),
        day,
        version,
    )
    return _POINTS.validate_json(text)


async def record_day(
    conn: Connection,
    meterpoint_id: str,
    register: Register,
    day: date,
    *,
    complete: bool,
    published: tuple[int, str, bool, Sequence[SeriesPoint], datetime] | None,
    corrected_points: int | None,
) -> None:
    """The day's new state and, when it was published, its version (version, reason, final, points, at)."""
    if published is None:
        await conn.execute(
            "UPDATE days SET complete = $4 WHERE meterpoint_id = $1 AND register = $2 AND day = $3",
            meterpoint_id,
            str(register),
            day,
            complete,
        )
        return
    version, reason, final, points, at = published
    await conn.execute(
        "INSERT INTO day_versions (meterpoint_id, register, day, version, reason, final, points, published_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
        meterpoint_id,
        str(register),
        day,
        version,
        reason,
        final,
        json.dumps([point.model_dump(mode="json") for point in points]),
        at,
    )
    await conn.execute(
        "UPDATE days SET complete = $4, published_version = $5, final = $6 "
        "WHERE meterpoint_id = $1 AND register = $2 AND day = $3",
        meterpoint_id,
        str(register),
        day,
        complete,
        version,
        final,
    )
    if corrected_points is not None:
        await conn.execute(
            "INSERT INTO final_corrections (meterpoint_id, register, day, version, changed, corrected_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            meterpoint_id,
            str(register),
            day,
            version,
            corrected_points,
            at,
        )


async def due_days(conn: Connection, now: datetime, limit: int) -> list[tuple[str, Register, date]]:
    """Days past their deadline and not yet published, oldest deadline first, locked (others' skipped)."""
    rows = await conn.fetch(
        "SELECT meterpoint_id, register, day FROM days WHERE published_version IS NULL AND deadline <= $1 "
        "ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    return [(row["meterpoint_id"], Register(row["register"]), row["day"]) for row in rows]


DayKey = tuple[str, Register, date]


async def incomplete_days(
    conn: Connection, ended_before: datetime, since: datetime, limit: int, after: DayKey | None = None
) -> list[DayKey]:
    """Incomplete days that ended before ``ended_before`` and after ``since``, in key order after ``after`` (a
    scan's cursor, so that days cooling down never hide the ones behind them)."""
    mp, register, day = after if after is not None else ("", Register.ACTIVE_EXPORT, date.min)
    rows = await conn.fetch(
        "SELECT meterpoint_id, register, day FROM days WHERE NOT complete AND day_end <= $1 AND day_end > $2 "
        "AND (meterpoint_id, register, day) > ($4, $5, $6) ORDER BY meterpoint_id, register, day LIMIT $3",
        ended_before,
        since,
        limit,
        mp,
        "" if after is None else str(register),
        day,
    )
    return [(row["meterpoint_id"], Register(row["register"]), row["day"]) for row in rows]


async def present_interval_ends(
    conn: Connection, meterpoint_id: str, register: Register, start: datetime, end: datetime
) -> frozenset[datetime]:
    rows = await conn.fetch(
        "SELECT DISTINCT interval_end FROM intervals WHERE meterpoint_id = $1 AND register = $2 "
        "AND interval_end > $3 AND interval_end <= $4",
        meterpoint_id,
        str(register),
        start,
        end,
    )
    return frozenset(row["interval_end"] for row in rows)


async def claim_gap_request(
    conn: Connection,
    meterpoint_id: str,
    register: Register,
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    cooldown_seconds: float,
    max_attempts: int,
) -> int | None:
    """The attempt number of a new request for this gap, or None (cooling down, or attempts used up)."""
    attempt: int | None = await conn.fetchval(
        """
        INSERT INTO gap_requests AS g (meterpoint_id, register, gap_start, gap_end, attempts, last_requested)
        VALUES ($1, $2, $3, $4, 1, $5)
        ON CONFLICT (meterpoint_id, register, gap_start, gap_end) DO UPDATE
        SET attempts = g.attempts + 1, last_requested = excluded.last_requested
        WHERE g.attempts < $7 AND g.last_requested <= $5 - make_interval(secs => $6)
        RETURNING attempts
        """,
        meterpoint_id,
        str(register),
        start,
        end,
        now,
        cooldown_seconds,
        max_attempts,
    )
    return attempt
