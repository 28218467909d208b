"""The validation stage's clock arithmetic: local days of 92, 96 and 100 quarter-hours, positions across the
change, hours of the week, deadlines, gaps and the registers of each meterpoint type."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest

from libs.events.meter import Register, Resolution
from libs.events.meterpoints import ConnectionState, MeterpointType
from services.vee.domain import (
    Meterpoint,
    Profile,
    day_bounds,
    day_of,
    deadline_of,
    gaps,
    hour_of_week,
    interval_ends,
    step_of,
    zone_of,
)
from tests.tenants import TENANT_A

OSLO = zone_of("Europe/Oslo")
SPRING = date(2026, 3, 29)  # last Sunday of March 2026: 02:00 CET -> 03:00 CEST
AUTUMN = date(2026, 10, 25)  # last Sunday of October 2026: 03:00 CEST -> 02:00 CET
NORMAL = date(2026, 6, 10)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_steps() -> None:
    assert step_of(Resolution.PT15M) == timedelta(minutes=15)
    assert step_of(Resolution.PT1H) == timedelta(hours=1)


def test_zone_is_built_once_per_name() -> None:
    assert zone_of("Europe/Oslo") is zone_of("Europe/Oslo")


@pytest.mark.parametrize(
    ("day", "start", "end", "hours"),
    [
        (SPRING, utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23),
        (AUTUMN, utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25),
        (NORMAL, utc(2026, 6, 9, 22), utc(2026, 6, 10, 22), 24),
        (date(2026, 1, 15), utc(2026, 1, 14, 23), utc(2026, 1, 15, 23), 24),
    ],
)
def test_day_bounds(day: date, start: datetime, end: datetime, hours: int) -> None:
    assert day_bounds(day, OSLO) == (start, end)
    assert end - start == timedelta(hours=hours)


@pytest.mark.parametrize(("day", "quarter_hours", "hours"), [(SPRING, 92, 23), (AUTUMN, 100, 25), (NORMAL, 96, 24)])
def test_interval_counts(day: date, quarter_hours: int, hours: int) -> None:
    assert len(interval_ends(day, OSLO, Resolution.PT15M)) == quarter_hours
    assert len(interval_ends(day, OSLO, Resolution.PT1H)) == hours


def test_positions_across_the_spring_change() -> None:
    ends = interval_ends(SPRING, OSLO, Resolution.PT15M)
    # Position 1 is 00:00-00:15 CET = 23:00-23:15 UTC the evening before.
    assert ends[0] == utc(2026, 3, 28, 23, 15)
    # Position 8 ends at 02:00 CET (01:00 UTC), the instant the clocks jump to 03:00 CEST.
    assert ends[7] == utc(2026, 3, 29, 1, 0)
    assert ends[7].astimezone(OSLO).strftime("%H:%M%z") == "03:00+0200"
    # Position 9 is 03:00-03:15 CEST and ends at 01:15 UTC: no quarter-hour of 02:xx local exists.
    assert ends[8] == utc(2026, 3, 29, 1, 15)
    assert ends[8].astimezone(OSLO).strftime("%H:%M%z") == "03:15+0200"
    assert ends[-1] == utc(2026, 3, 29, 22, 0)
    assert all(later - earlier == timedelta(minutes=15) for earlier, later in pairwise(ends))


def test_positions_across_the_autumn_change() -> None:
    ends = interval_ends(AUTUMN, OSLO, Resolution.PT15M)
    # 02:00-03:00 local happens twice: first in CEST (00:00-01:00 UTC), positions 9-12, then in CET, 13-16.
    assert ends[8] == utc(2026, 10, 25, 0, 15)
    assert ends[8].astimezone(OSLO).strftime("%H:%M%z") == "02:15+0200"
    assert ends[12] == utc(2026, 10, 25, 1, 15)
    assert ends[12].astimezone(OSLO).strftime("%H:%M%z") == "02:15+0100"
    assert ends[-1] == utc(2026, 10, 25, 23, 0)


def test_hourly_positions_across_the_changes() -> None:
    # Local hours of the ends: 01:00-02:00 CET ends at 03:00 CEST (no 02:00 local that night).
    spring = interval_ends(SPRING, OSLO, Resolution.PT1H)
    assert [end.astimezone(OSLO).hour for end in spring[:4]] == [1, 3, 4, 5]
    # 02:00-03:00 CEST ends at 02:00 CET, then 02:00-03:00 CET ends at 03:00 CET.
    autumn = interval_ends(AUTUMN, OSLO, Resolution.PT1H)
    assert [end.astimezone(OSLO).strftime("%H%z") for end in autumn[:4]] == ["01+0200", "02+0200", "02+0100", "03+0100"]


def test_day_of_counts_the_interval_by_its_start() -> None:
    # The interval 23:45-24:00 local ends at the next day's midnight but belongs to the day it starts in.
    assert day_of(utc(2026, 3, 29, 22, 0), OSLO, Resolution.PT15M) == SPRING
    assert day_of(utc(2026, 3, 29, 22, 15), OSLO, Resolution.PT15M) == date(2026, 3, 30)
    assert day_of(utc(2026, 3, 28, 23, 15), OSLO, Resolution.PT15M) == SPRING
    assert day_of(utc(2026, 3, 28, 23, 0), OSLO, Resolution.PT15M) == date(2026, 3, 28)
    assert day_of(utc(2026, 10, 25, 23, 0), OSLO, Resolution.PT1H) == AUTUMN
    assert day_of(utc(2026, 10, 24, 23, 0), OSLO, Resolution.PT1H) == AUTUMN
    for day in (SPRING, AUTUMN, NORMAL):
        assert {day_of(end, OSLO, Resolution.PT15M) for end in interval_ends(day, OSLO, Resolution.PT15M)} == {day}


def test_hour_of_week() -> None:
    # 2026-06-08 is a Monday: 00:00-01:00 local (22:00-23:00 UTC the Sunday before) is hour 0.
    assert hour_of_week(utc(2026, 6, 7, 22, 15), OSLO, Resolution.PT15M) == 0
    assert hour_of_week(utc(2026, 6, 7, 23, 0), OSLO, Resolution.PT15M) == 0
    assert hour_of_week(utc(2026, 6, 7, 23, 0), OSLO, Resolution.PT1H) == 0
    assert hour_of_week(utc(2026, 6, 7, 23, 15), OSLO, Resolution.PT15M) == 1
    # Sunday 23:45-24:00 local is the last hour, 167.
    assert hour_of_week(utc(2026, 6, 7, 22, 0), OSLO, Resolution.PT15M) == 167
    # Sunday 2026-10-25: both 02:xx hours of the autumn change are hour 6*24+2.
    assert hour_of_week(utc(2026, 10, 25, 0, 15), OSLO, Resolution.PT15M) == 146
    assert hour_of_week(utc(2026, 10, 25, 1, 15), OSLO, Resolution.PT15M) == 146
    # Sunday 2026-03-29: 01:00-02:00 is 145, and the next interval is 03:00 local (147).
    assert hour_of_week(utc(2026, 3, 29, 1, 0), OSLO, Resolution.PT15M) == 145
    assert hour_of_week(utc(2026, 3, 29, 1, 15), OSLO, Resolution.PT15M) == 147


def test_deadlines() -> None:
    # D+1 07:00 local: CEST on 2026-03-30, CET on 2026-10-26.
    assert deadline_of(SPRING, OSLO) == utc(2026, 3, 30, 5, 0)
    assert deadline_of(AUTUMN, OSLO) == utc(2026, 10, 26, 6, 0)
    # The day before the spring change: its deadline is already in summer time.
    assert deadline_of(date(2026, 3, 28), OSLO) == utc(2026, 3, 29, 5, 0)
    assert deadline_of(SPRING, OSLO, days_after=5) == utc(2026, 4, 3, 5, 0)
    assert deadline_of(NORMAL, OSLO, days_after=1, local_time="10:30") == utc(2026, 6, 11, 8, 30)


def test_gaps_are_runs_of_missing_ends() -> None:
    ends = interval_ends(NORMAL, OSLO, Resolution.PT15M)
    missing = {2, 3, 4, 10, 95}
    present = frozenset(end for index, end in enumerate(ends) if index not in missing)
    assert gaps(ends, present, Resolution.PT15M) == [
        (ends[1], ends[4]),
        (ends[9], ends[10]),
        (ends[94], ends[95]),
    ]
    assert gaps(ends, frozenset(ends), Resolution.PT15M) == []
    assert gaps(ends, frozenset(), Resolution.PT15M) == [(ends[0] - timedelta(minutes=15), ends[-1])]


def test_gaps_break_where_the_expected_ends_jump() -> None:
    first = interval_ends(NORMAL, OSLO, Resolution.PT1H)
    later = interval_ends(NORMAL + timedelta(days=2), OSLO, Resolution.PT1H)
    assert gaps([*first[-2:], *later[:2]], frozenset(), Resolution.PT1H) == [
        (first[-3], first[-1]),
        (later[0] - timedelta(hours=1), later[1]),
    ]


@pytest.mark.parametrize(
    ("kind", "registers"),
    [
        (MeterpointType.CONSUMPTION, (Register.ACTIVE_IMPORT,)),
        (MeterpointType.PRODUCTION, (Register.ACTIVE_EXPORT,)),
        (MeterpointType.EXCHANGE, (Register.ACTIVE_IMPORT, Register.ACTIVE_EXPORT)),
    ],
)
def test_registers_per_type(kind: MeterpointType, registers: tuple[Register, ...]) -> None:
    meterpoint = Meterpoint(
        meterpoint_id="571313180400000025",
        grid_company=TENANT_A,
        grid_area="804",
        time_zone="Europe/Oslo",
        type=kind,
        resolution=Resolution.PT15M,
        connection_state=ConnectionState.CONNECTED,
        connected_since=date(2025, 1, 1),
        data_source=None,
        version=1,
    )
    assert meterpoint.registers == registers
    assert meterpoint.zone is OSLO


def test_profile_keeps_the_newest_samples() -> None:
    profile = Profile(max_samples=3)
    for value in (1.0, 2.0, 3.0, 4.0):
        profile.add(5, value)
    assert profile.samples[5] == [2.0, 3.0, 4.0]
    assert profile.mean(5) == 3.0
    assert profile.mean(5, min_samples=4) is None
    assert profile.mean(6) is None
    with pytest.raises(ValueError, match="outside"):
        profile.add(168, 1.0)


def test_profile_percentile_is_linear_between_ranks() -> None:
    profile = Profile()
    for value in (4.0, 1.0, 3.0, 2.0, 5.0):
        profile.add(0, value)
    assert profile.percentile(0, 0.0) == 1.0
    assert profile.percentile(0, 0.5) == 3.0
    assert profile.percentile(0, 1.0) == 5.0
    # rank 0.95 * 4 = 3.8: 4 + 0.8 * (5 - 4)
    assert profile.percentile(0, 0.95) == pytest.approx(4.8)
    assert profile.percentile(1, 0.95) is None
    single = Profile()
    single.add(0, 2.5)
    assert single.percentile(0, 0.95) == 2.5
