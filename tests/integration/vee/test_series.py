"""The VEE service in process against the real Kafka and PostgreSQL, its wall clock driven by the test.

Each test produces master data and readings to its own topics, waits for the state, moves the clock past a deadline
or a grace period, runs one scheduler tick and checks the stored versions and what went out on Kafka.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from libs.events import MeterReadingReceived, Quality, Register, Resolution, Unit
from libs.events.series import GapFillRequested, MeterSeriesValidated
from services.vee.app import Parts, start_parts
from tests.integration.vee.support import (
    DrivenClock,
    Topics,
    consume_all,
    count,
    gsrn,
    hourly,
    meterpoint,
    produce,
    reading,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

DAY = date(2025, 3, 3)  # a Monday; Copenhagen is UTC+1 in March before the DST change
MIDNIGHT = datetime(2025, 3, 2, 23, tzinfo=UTC)  # local midnight of DAY, in UTC


@pytest.fixture
def clock() -> DrivenClock:
    # The day is over, its D+1 07:00 deadline (06:00 UTC) has not come yet.
    return DrivenClock(MIDNIGHT + timedelta(days=1, hours=2))


@pytest.fixture
async def vee(
    pg_dsn: str, kafka_bootstrap: str, pg_schema: str, topics: Topics, clock: DrivenClock
) -> AsyncIterator[Parts]:
    settings = settings_for(pg_dsn, kafka_bootstrap, pg_schema, topics, lookback_days=14, gap_grace_seconds=3600)
    parts = await start_parts(settings, registry=CollectorRegistry(), clock=clock, scheduler_task=False)
    try:
        yield parts
    finally:
        await parts.stop()


async def versions(pg: asyncpg.Connection, schema: str, meterpoint_id: str, day: date) -> list[dict[str, Any]]:
    rows = await pg.fetch(
        f'SELECT version, reason, final, points::text FROM "{schema}".day_versions '
        "WHERE meterpoint_id = $1 AND day = $2 ORDER BY version",
        meterpoint_id,
        day,
    )
    return [{**dict(row), "points": json.loads(row["points"])} for row in rows]


async def stored(pg: asyncpg.Connection, schema: str, meterpoint_id: str) -> int:
    return await count(pg, schema, "SELECT count(*) FROM {s}.intervals WHERE meterpoint_id = $1", meterpoint_id)


def ramp(n: int = 24) -> list[float | None]:
    return [round(0.5 * (i + 1), 3) for i in range(n)]


async def test_a_two_hour_gap_is_estimated_linearly_at_the_deadline(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(1)
    values = ramp()
    values[9] = values[10] = None  # positions 10 and 11 never arrive ...
    said_missing = MeterReadingReceived.create(  # ... 10's source even says it has no value
        meterpoint_id=mp,
        register=Register.ACTIVE_IMPORT,
        interval_end=MIDNIGHT + timedelta(hours=10),
        resolution=Resolution.PT1H,
        value=0,
        unit=Unit.KWH,
        quality=Quality.MISSING,
        source="hes-1",
    )
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY), *hourly(mp, MIDNIGHT, values), said_missing])
    await wait_for(lambda: _eq(stored(pg, pg_schema, mp), 22), 60, "22 intervals stored")
    assert await versions(pg, pg_schema, mp, DAY) == []  # incomplete and before its deadline: nothing out yet
    assert vee.scheduler is not None
    clock.now = MIDNIGHT + timedelta(days=1, hours=7)  # 07:00 local the next day
    outcome = await vee.scheduler.tick()
    assert outcome.published == 1
    [first] = await versions(pg, pg_schema, mp, DAY)
    assert (first["version"], first["reason"], first["final"]) == (1, "deadline", False)
    points = first["points"]
    assert len(points) == 24
    assert [(p["quantity"], p["quality"], p["status"], p["method"]) for p in points[9:11]] == [
        (5.0, "A03", "estimated", "linear"),
        (5.5, "A03", "estimated", "linear"),
    ]
    assert all(p["quality"] == "A04" for i, p in enumerate(points) if i not in (9, 10))
    published = [e for e in await consume_all(kafka_bootstrap, topics.series, 1) if isinstance(e, MeterSeriesValidated)]
    assert [(e.meterpoint_id, e.day, e.version, str(e.reason)) for e in published] == [(mp, DAY, 1, "deadline")]


async def test_a_two_day_gap_is_estimated_from_the_profile(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(2)
    start = MIDNIGHT - timedelta(days=7)  # the Monday a week before: the profile of Monday and Tuesday
    week_before = hourly(mp, start, [1.0] * 48)
    sunday = hourly(mp, MIDNIGHT - timedelta(days=1), [2.0] * 24)
    wednesday = hourly(mp, MIDNIGHT + timedelta(days=2), [2.0] * 24)
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY - timedelta(days=7)), *week_before, *sunday])
    await wait_for(lambda: _eq(stored(pg, pg_schema, mp), 72), 60, "history stored")
    await produce(kafka_bootstrap, topics, wednesday)
    await wait_for(lambda: _eq(stored(pg, pg_schema, mp), 96), 60, "wednesday stored")
    assert vee.scheduler is not None
    clock.now = MIDNIGHT + timedelta(days=3, hours=7)
    await vee.scheduler.tick()
    for day in (DAY, DAY + timedelta(days=1)):
        [first] = await versions(pg, pg_schema, mp, day)
        assert first["reason"] == "deadline"
        assert {(p["quality"], p["method"]) for p in first["points"]} == {("A03", "profile")}
        assert all(p["quantity"] > 0 for p in first["points"])


async def test_a_day_without_readings_or_history_is_published_missing(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(3)
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY)])
    await wait_for(lambda: _eq(count(pg, pg_schema, "SELECT count(*) FROM {s}.meterpoints"), 1), 60, "master data")
    assert vee.scheduler is not None
    clock.now = MIDNIGHT + timedelta(days=1, hours=7)
    await vee.scheduler.tick()  # the sweep creates the day, the deadline publishes it
    [first] = await versions(pg, pg_schema, mp, DAY)
    assert first["reason"] == "deadline"
    assert {(p["quantity"], p["quality"], p["status"]) for p in first["points"]} == {(0, "A02", "missing")}


async def test_a_negative_value_and_a_spike_are_flagged_and_kept(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(4)
    history = [reading(mp, MIDNIGHT - timedelta(weeks=w) + timedelta(hours=13), 1.0) for w in (4, 3, 2, 1)]
    values: list[float | None] = [1.0] * 24
    values[2] = -1.0
    values[12] = 50.0  # the same hour-of-week as the history: 50 x its 95th percentile
    await produce(
        kafka_bootstrap,
        topics,
        [meterpoint(mp, since=DAY - timedelta(weeks=5)), *history, *hourly(mp, MIDNIGHT, values)],
    )
    await wait_for(lambda: _eq(stored(pg, pg_schema, mp), 28), 60, "28 intervals stored")
    rows = await pg.fetch(
        f'SELECT value, rules FROM "{pg_schema}".intervals WHERE meterpoint_id = $1 AND interval_end = ANY($2)',
        mp,
        [MIDNIGHT + timedelta(hours=3), MIDNIGHT + timedelta(hours=13)],
    )
    assert sorted((row["value"], tuple(row["rules"])) for row in rows) == [(-1.0, ("sign",)), (50.0, ("spike",))]
    # Every interval arrived, yet one is rejected: the day is not complete and waits for its deadline.
    assert await versions(pg, pg_schema, mp, DAY) == []
    assert vee.scheduler is not None
    clock.now = MIDNIGHT + timedelta(days=1, hours=7)
    await vee.scheduler.tick()
    [first] = await versions(pg, pg_schema, mp, DAY)
    points = first["points"]
    negative, spike = points[2], points[12]
    assert (negative["status"], negative["measured"], negative["quality"]) == ("rejected", -1.0, "A03")
    assert (spike["status"], spike["quantity"], "spike" in spike["rules"]) == ("measured", 50.0, True)


async def test_a_correction_is_a_new_version_of_the_interval_and_the_day(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str
) -> None:
    mp = gsrn(5)
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY), *hourly(mp, MIDNIGHT, ramp())])
    await wait_for(lambda: _eq(_len(versions(pg, pg_schema, mp, DAY)), 1), 60, "the complete day published")
    corrected = reading(mp, MIDNIGHT + timedelta(hours=5), 9.0)
    duplicate = reading(mp, MIDNIGHT + timedelta(hours=6), 3.0)  # identical to what is stored: ignored
    await produce(kafka_bootstrap, topics, [corrected, duplicate])
    await wait_for(lambda: _eq(_len(versions(pg, pg_schema, mp, DAY)), 2), 60, "the corrected day published")
    first, second = await versions(pg, pg_schema, mp, DAY)
    assert (first["reason"], second["reason"]) == ("complete", "correction")
    assert (first["points"][4]["quantity"], first["points"][4]["version"]) == (2.5, 1)
    assert (second["points"][4]["quantity"], second["points"][4]["version"]) == (9.0, 2)
    assert second["points"][5] == first["points"][5]
    rows = await pg.fetch(
        f'SELECT version, value FROM "{pg_schema}".intervals WHERE meterpoint_id = $1 AND interval_end = $2 '
        "ORDER BY version",
        mp,
        MIDNIGHT + timedelta(hours=5),
    )
    assert [(row["version"], row["value"]) for row in rows] == [(1, 2.5), (2, 9.0)]
    assert await stored(pg, pg_schema, mp) == 25
    out = await consume_all(kafka_bootstrap, topics.series, 2)
    assert sorted((e.version, str(e.reason)) for e in out) == [(1, "complete"), (2, "correction")]


async def test_a_late_measured_value_after_the_deadline_is_the_next_version(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(6)
    values = ramp()
    values[20] = None
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY), *hourly(mp, MIDNIGHT, values)])
    await wait_for(lambda: _eq(stored(pg, pg_schema, mp), 23), 60, "23 intervals stored")
    assert vee.scheduler is not None
    clock.now = MIDNIGHT + timedelta(days=1, hours=8)
    await vee.scheduler.tick()
    await produce(kafka_bootstrap, topics, [reading(mp, MIDNIGHT + timedelta(hours=21), 10.5)])
    await wait_for(lambda: _eq(_len(versions(pg, pg_schema, mp, DAY)), 2), 60, "the second version")
    first, second = await versions(pg, pg_schema, mp, DAY)
    assert (first["reason"], second["reason"], second["final"]) == ("deadline", "correction", False)
    assert first["points"][20]["quality"] == "A03"
    assert (second["points"][20]["quality"], second["points"][20]["quantity"]) == ("A04", 10.5)
    assert second["points"][20]["version"] == first["points"][20]["version"] + 1


@pytest.mark.parametrize(("day", "intervals"), [(date(2025, 3, 30), 92), (date(2025, 10, 26), 100)])
async def test_a_dst_day_in_oslo_has_its_own_number_of_quarter_hours(
    vee: Parts,
    kafka_bootstrap: str,
    topics: Topics,
    pg: asyncpg.Connection,
    pg_schema: str,
    day: date,
    intervals: int,
) -> None:
    mp = gsrn(7)
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=1 if day.month == 3 else 2)
    readings = [
        reading(mp, midnight + timedelta(minutes=15 * (i + 1)), 0.25, resolution=Resolution.PT15M)
        for i in range(intervals)
    ]
    await produce(
        kafka_bootstrap,
        topics,
        [meterpoint(mp, resolution=Resolution.PT15M, time_zone="Europe/Oslo", since=day), *readings],
    )
    await wait_for(lambda: _eq(_len(versions(pg, pg_schema, mp, day)), 1), 60, "the complete day")
    [first] = await versions(pg, pg_schema, mp, day)
    assert first["reason"] == "complete"
    assert [p["position"] for p in first["points"]] == list(range(1, intervals + 1))
    [event] = await consume_all(kafka_bootstrap, topics.series, 1)
    assert (event.day, len(event.points), event.end - event.start) == (
        day,
        intervals,
        timedelta(minutes=15 * intervals),
    )


async def test_a_gap_is_asked_for_again_with_a_gap_fill_request(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(8)
    values = ramp()
    values[9] = values[10] = None
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY), *hourly(mp, MIDNIGHT, values)])
    await wait_for(lambda: _eq(stored(pg, pg_schema, mp), 22), 60, "22 intervals stored")
    assert vee.scheduler is not None
    first = await vee.scheduler.tick()
    again = await vee.scheduler.tick()  # within the cool-down: not asked again
    # The day's gap, and the next day's first hour (over for longer than the grace period too).
    assert (first.gap_requests, again.gap_requests) == (2, 0)
    requests = await consume_all(kafka_bootstrap, topics.commands, 2)
    [request] = [r for r in requests if r.end <= MIDNIGHT + timedelta(days=1)]
    assert isinstance(request, GapFillRequested)
    assert (request.meterpoint_id, request.start, request.end, request.attempt) == (
        mp,
        MIDNIGHT + timedelta(hours=9),
        MIDNIGHT + timedelta(hours=11),
        1,
    )
    assert request.data_source.id == "hes-1"


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _len(value: Any) -> int:
    return len(await value)


async def test_readings_before_their_master_data_are_held_then_validated(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str
) -> None:
    mp = gsrn(9)
    reactive = reading(mp, MIDNIGHT + timedelta(hours=1), 4.0, register=Register.REACTIVE_IMPORT, unit=Unit.KVARH)
    in_wh = [reading(mp, MIDNIGHT + timedelta(hours=i + 1), 1500.0, unit=Unit.WH) for i in range(24)]
    await produce(kafka_bootstrap, topics, [*in_wh, reactive])
    held = "SELECT count(*) FROM {s}.pending_readings"
    await wait_for(lambda: _eq(count(pg, pg_schema, held), 25), 60, "25 readings held")
    assert await stored(pg, pg_schema, mp) == 0
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY)])
    await wait_for(lambda: _eq(_len(versions(pg, pg_schema, mp, DAY)), 1), 60, "the day validated")
    assert await count(pg, pg_schema, held) == 0
    [first] = await versions(pg, pg_schema, mp, DAY)
    assert {(p["quantity"], p["quality"]) for p in first["points"]} == {(1.5, "A04")}  # Wh converted to kWh
    unvalidated = await pg.fetch(f'SELECT register, readings FROM "{pg_schema}".unvalidated_counts')
    assert [(row["register"], row["readings"]) for row in unvalidated] == [("reactive_import", 1)]


async def test_a_correction_after_the_billing_deadline_is_final_and_audited(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(10)
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY), *hourly(mp, MIDNIGHT, ramp())])
    await wait_for(lambda: _eq(_len(versions(pg, pg_schema, mp, DAY)), 1), 60, "the complete day")
    clock.now = MIDNIGHT + timedelta(days=6)  # past D+5 07:00
    await produce(kafka_bootstrap, topics, [reading(mp, MIDNIGHT + timedelta(hours=3), 7.0)])
    await wait_for(lambda: _eq(_len(versions(pg, pg_schema, mp, DAY)), 2), 60, "the final correction")
    _, second = await versions(pg, pg_schema, mp, DAY)
    assert (second["reason"], second["final"]) == ("correction", True)
    audit = await pg.fetch(f'SELECT version, changed FROM "{pg_schema}".final_corrections WHERE meterpoint_id = $1', mp)
    assert [(row["version"], row["changed"]) for row in audit] == [(2, 1)]


async def test_a_gap_between_two_meter_indexes_sums_to_their_difference(
    vee: Parts, kafka_bootstrap: str, topics: Topics, pg: asyncpg.Connection, pg_schema: str, clock: DrivenClock
) -> None:
    mp = gsrn(11)
    readings = []
    index = 0.0
    for position in range(1, 25):
        index += 1000.0
        if position in (10, 11):
            index += 1000.0  # the meter counted 2 kWh in each of the hours that never arrived
            continue
        readings.append(
            MeterReadingReceived.create(
                meterpoint_id=mp,
                register=Register.ACTIVE_IMPORT,
                interval_end=MIDNIGHT + timedelta(hours=position),
                resolution=Resolution.PT1H,
                value=1000.0,
                unit=Unit.WH,
                quality=Quality.MEASURED,
                source="hes-1",
                meter_index=index,
            )
        )
    await produce(kafka_bootstrap, topics, [meterpoint(mp, since=DAY), *readings])
    await wait_for(lambda: _eq(stored(pg, pg_schema, mp), 22), 60, "22 intervals stored")
    assert vee.scheduler is not None
    clock.now = MIDNIGHT + timedelta(days=1, hours=7)
    await vee.scheduler.tick()
    [first] = await versions(pg, pg_schema, mp, DAY)
    estimates = first["points"][9:11]
    # The index in Wh is converted with the value: 4 kWh between the indexes around the gap, not the linear 2.
    assert sum(p["quantity"] for p in estimates) == 4.0
    assert all("register_sum" in p["rules"] and p["quality"] == "A03" for p in estimates)
