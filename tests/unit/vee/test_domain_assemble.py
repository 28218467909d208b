"""A day assembled from its measured intervals: linear and profile estimates with their exact values, missing
intervals, rejected values kept beside their estimate, register sums to the Wh, final estimates, interval
versions, and the 92/100 intervals of the DST days."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from libs.events.meter import Register, Resolution
from libs.events.meterpoints import ConnectionState, MeterpointType
from libs.events.series import (
    EstimationMethod,
    IntervalStatus,
    MeterSeriesValidated,
    PublicationReason,
    QuantityQuality,
    RuleCode,
    SeriesPoint,
)
from services.vee.domain import (
    Measured,
    Meterpoint,
    Profile,
    RuleSettings,
    assemble_day,
    changed,
    day_bounds,
    hour_of_week,
    interval_ends,
    is_complete,
    zone_of,
)
from tests.tenants import TENANT_A

OSLO = zone_of("Europe/Oslo")
DAY = date(2026, 6, 10)
SETTINGS = RuleSettings()
CONSUMER = Meterpoint(
    meterpoint_id="571313180400000025",
    grid_company=TENANT_A,
    grid_area="804",
    time_zone="Europe/Oslo",
    type=MeterpointType.CONSUMPTION,
    resolution=Resolution.PT15M,
    connection_state=ConnectionState.CONNECTED,
    connected_since=date(2026, 1, 1),
    data_source=None,
    version=1,
)
QUARTER = timedelta(minutes=15)


def ends_of(*days: date) -> list[datetime]:
    return [end for day in days for end in interval_ends(day, OSLO, Resolution.PT15M)]


def around(day: date = DAY) -> list[datetime]:
    """The day and one day on each side: what the service passes."""
    return ends_of(day - timedelta(days=1), day, day + timedelta(days=1))


def measured_at(ends: Iterable[datetime], value: Callable[[datetime], float]) -> dict[datetime, Measured]:
    return {end: Measured(interval_end=end, value=value(end), version=1) for end in ends}


def assemble(
    measured: dict[datetime, Measured],
    profile: Profile | None = None,
    *,
    day: date = DAY,
    previous: tuple[SeriesPoint, ...] | None = None,
    final: bool = False,
    settings: RuleSettings = SETTINGS,
) -> tuple[SeriesPoint, ...]:
    return assemble_day(
        CONSUMER,
        day,
        measured,
        profile if profile is not None else Profile(),
        previous=previous,
        final=final,
        settings=settings,
    )


def without(measured: dict[datetime, Measured], ends: Iterable[datetime]) -> dict[datetime, Measured]:
    gone = set(ends)
    return {end: reading for end, reading in measured.items() if end not in gone}


DAY_ENDS = ends_of(DAY)


def gap_between_1_and_3(count: int) -> dict[datetime, Measured]:
    """Everything measured at 2.0 around a gap of ``count`` quarter-hours from position 41 (10:00 local) on, its
    neighbours 1.0 (position 40) and 3.0."""
    measured = measured_at(around(), lambda end: 2.0)
    measured[DAY_ENDS[39]] = Measured(interval_end=DAY_ENDS[39], value=1.0, version=1)
    after = DAY_ENDS[40 + count]
    measured[after] = Measured(interval_end=after, value=3.0, version=1)
    return without(measured, DAY_ENDS[40 : 40 + count])


def test_a_complete_day_is_measured() -> None:
    points = assemble(measured_at(around(), lambda end: 0.25))
    assert len(points) == 96
    assert [point.position for point in points] == list(range(1, 97))
    assert all(point.quality is QuantityQuality.AS_PROVIDED for point in points)
    assert all(point.status is IntervalStatus.MEASURED and point.version == 1 for point in points)
    assert {point.quantity for point in points} == {0.25}
    assert is_complete(points)


def test_a_two_hour_gap_is_interpolated_linearly() -> None:
    points = assemble(gap_between_1_and_3(8))
    gap = points[40:48]
    # 1.0 + (3.0 - 1.0) * k / 9 for k = 1..8, each rounded to the nearest Wh (3 decimals).
    assert [point.quantity for point in gap] == [1.222, 1.444, 1.667, 1.889, 2.111, 2.333, 2.556, 2.778]
    for point in gap:
        assert point.quality is QuantityQuality.ESTIMATED
        assert point.status is IntervalStatus.ESTIMATED
        assert point.method is EstimationMethod.LINEAR
        assert point.rules == (RuleCode.GAP,)
        assert point.measured is None
    assert points[39].quantity == 1.0
    assert points[48].quantity == 3.0
    assert points[39].status is IntervalStatus.MEASURED
    assert not is_complete(points)


def test_short_gap_limit() -> None:
    # 3 hours (12 quarter-hours) is still short; 3 h 15 min is long (and this point has no history: missing).
    at_limit = assemble(gap_between_1_and_3(12))[40:52]
    assert {point.method for point in at_limit} == {EstimationMethod.LINEAR}
    assert at_limit[0].quantity == round(1.0 + 2.0 / 13, 3) == 1.154
    above = assemble(gap_between_1_and_3(13))[40:53]
    assert {point.status for point in above} == {IntervalStatus.MISSING}
    assert {point.quality for point in above} == {QuantityQuality.NOT_AVAILABLE}
    longer = assemble(gap_between_1_and_3(13), settings=RuleSettings(short_gap_hours=3.25))[40:53]
    assert {point.method for point in longer} == {EstimationMethod.LINEAR}


def test_a_gap_across_midnight_is_one_run_for_both_days() -> None:
    tomorrow = DAY + timedelta(days=1)
    ends = ends_of(DAY - timedelta(days=1), DAY, tomorrow, tomorrow + timedelta(days=1))
    measured = measured_at(ends, lambda end: 1.0)
    tomorrow_ends = ends_of(tomorrow)
    measured[DAY_ENDS[-3]] = Measured(interval_end=DAY_ENDS[-3], value=0.5, version=1)
    measured[tomorrow_ends[2]] = Measured(interval_end=tomorrow_ends[2], value=3.0, version=1)
    measured = without(measured, [DAY_ENDS[-2], DAY_ENDS[-1], tomorrow_ends[0], tomorrow_ends[1]])
    # 0.5 + 2.5 * k / 5: 1.0, 1.5 | 2.0, 2.5
    assert [point.quantity for point in assemble(measured)[-2:]] == [1.0, 1.5]
    assert [point.quantity for point in assemble(measured, day=tomorrow)[:2]] == [2.0, 2.5]


def two_weeks_of_history(value: Callable[[int], float]) -> Profile:
    """The profile of two earlier weeks, measured at ``value(hour of day) -/+ 0.05``: its means are ``value``."""
    profile = Profile()
    for week, offset in ((3, -0.05), (2, 0.05)):
        first = DAY - timedelta(weeks=week)
        for end in ends_of(*(first + timedelta(days=k) for k in range(7))):
            how = hour_of_week(end, OSLO, Resolution.PT15M)
            profile.add(how, round(value(how % 24) + offset, 3))
    return profile


def usual(hour: int) -> float:
    return 0.6 + 0.05 * hour


def test_a_two_day_gap_is_estimated_from_the_profile() -> None:
    profile = two_weeks_of_history(usual)
    # Nothing measured on the day before and the day itself; the day after runs at twice the usual level.
    tomorrow = DAY + timedelta(days=1)
    measured = measured_at(ends_of(tomorrow), lambda end: round(2 * usual(end.astimezone(OSLO).hour), 3))
    points = assemble(measured, profile)
    hours = [(end - QUARTER).astimezone(OSLO).hour for end in DAY_ENDS]
    assert [point.quantity for point in points] == [round(2 * usual(hour), 3) for hour in hours]
    assert points[0].quantity == 1.2
    assert points[-1].quantity == 3.5
    assert {point.method for point in points} == {EstimationMethod.PROFILE}
    assert {point.status for point in points} == {IntervalStatus.ESTIMATED}
    assert {point.rules for point in points} == {(RuleCode.GAP,)}


def test_profile_estimates_without_a_level_around_them_are_the_means() -> None:
    profile = two_weeks_of_history(usual)
    points = assemble({}, profile)
    hours = [(end - QUARTER).astimezone(OSLO).hour for end in DAY_ENDS]
    assert [point.quantity for point in points] == [round(usual(hour), 3) for hour in hours]
    assert points[40].quantity == 1.1  # 10:00-10:15 local


def test_without_history_intervals_are_missing() -> None:
    points = assemble({})
    assert len(points) == 96
    for point in points:
        assert point.quality is QuantityQuality.NOT_AVAILABLE
        assert point.quantity == 0
        assert point.status is IntervalStatus.MISSING
        assert point.method is None
        assert point.rules == (RuleCode.GAP,)


def test_missing_stays_missing_when_final() -> None:
    assert {point.status for point in assemble({}, final=True)} == {IntervalStatus.MISSING}


def test_a_rejected_value_is_kept_and_estimated_in_its_place() -> None:
    measured = gap_between_1_and_3(1)
    negative = DAY_ENDS[40]
    measured[negative] = Measured(interval_end=negative, value=-1.5, version=1, rules=(RuleCode.SIGN,))
    point = assemble(measured)[40]
    assert point.status is IntervalStatus.REJECTED
    assert point.quality is QuantityQuality.ESTIMATED
    assert point.method is EstimationMethod.LINEAR
    assert point.quantity == 2.0
    assert point.measured == -1.5
    assert point.rules == (RuleCode.SIGN,)


def test_a_soft_rule_keeps_the_value_measured() -> None:
    measured = measured_at(around(), lambda end: 1.0)
    spike = DAY_ENDS[10]
    measured[spike] = Measured(interval_end=spike, value=40.0, version=2, rules=(RuleCode.SPIKE, RuleCode.CORRECTION))
    point = assemble(measured)[10]
    assert (point.quantity, point.quality, point.status) == (40.0, QuantityQuality.AS_PROVIDED, IntervalStatus.MEASURED)
    assert point.rules == (RuleCode.SPIKE, RuleCode.CORRECTION)
    assert point.method is None
    assert point.measured is None


def with_index(measured: dict[datetime, Measured], end: datetime, value: float, index: float) -> None:
    measured[end] = Measured(interval_end=end, value=value, version=1, meter_index=index)


def test_a_register_bracketed_gap_sums_to_the_index_difference() -> None:
    measured = gap_between_1_and_3(3)
    # Equal neighbours give equal weights: 10 kWh over three intervals is 3.334 + 3.333 + 3.333 (the Wh left
    # over by rounding down goes to the largest remainder, the earliest on a tie).
    with_index(measured, DAY_ENDS[39], 1.0, 1000.0)
    with_index(measured, DAY_ENDS[43], 1.0, 1011.0)
    gap = assemble(measured)[40:43]
    assert [point.quantity for point in gap] == [3.334, 3.333, 3.333]
    assert {point.rules for point in gap} == {(RuleCode.GAP, RuleCode.REGISTER_SUM)}
    assert {point.method for point in gap} == {EstimationMethod.LINEAR}


def test_register_sum_keeps_the_linear_shape_to_the_wh() -> None:
    measured = gap_between_1_and_3(8)
    with_index(measured, DAY_ENDS[39], 1.0, 5000.0)
    # 12.345 kWh between the index after position 40 and the one before position 49.
    with_index(measured, DAY_ENDS[48], 3.0, 5015.345)
    gap = assemble(measured)[40:48]
    assert sum(round(point.quantity * 1000) for point in gap) == 12_345
    # The linear weights 1 + 2k/9 (sum 16) scaled by 12,345 Wh / 16: 943.02, 1114.48, 1285.94, 1457.40, 1628.85,
    # 1800.31, 1971.77, 2143.23 Wh. Rounded down they sum to 12,341; the 4 Wh left go to the 4 largest remainders
    # (.94, .85, .77, .48), so 1114.48 becomes 1115 while 1457.40 stays 1457.
    assert [point.quantity for point in gap] == [0.943, 1.115, 1.286, 1.457, 1.629, 1.800, 1.972, 2.143]


def test_a_long_register_bracketed_gap_without_history_is_spread_evenly() -> None:
    measured = gap_between_1_and_3(20)
    with_index(measured, DAY_ENDS[39], 1.0, 100.0)
    with_index(measured, DAY_ENDS[60], 3.0, 105.003)
    gap = assemble(measured)[40:60]
    # 2,003 Wh over 20 intervals: 100.15 each, so 100 each and the 3 Wh left to the first three (equal remainders).
    assert [point.quantity for point in gap] == [0.101] * 3 + [0.1] * 17
    assert {point.method for point in gap} == {EstimationMethod.LINEAR}
    assert {point.rules for point in gap} == {(RuleCode.GAP, RuleCode.REGISTER_SUM)}


def test_a_long_register_bracketed_gap_follows_the_profile_shape() -> None:
    profile = two_weeks_of_history(usual)
    measured = gap_between_1_and_3(16)
    with_index(measured, DAY_ENDS[39], 1.0, 0.0)
    with_index(measured, DAY_ENDS[56], 3.0, 23.0)
    gap = assemble(measured, profile)[40:56]
    assert sum(round(point.quantity * 1000) for point in gap) == 20_000
    assert {point.method for point in gap} == {EstimationMethod.PROFILE}
    # Four hours 10..13 local, usual level 1.1, 1.15, 1.2, 1.25 per quarter-hour: the later hours get more.
    assert gap[0].quantity < gap[4].quantity < gap[8].quantity < gap[12].quantity


def test_an_index_that_went_back_is_not_forced_onto_the_gap() -> None:
    measured = gap_between_1_and_3(8)
    with_index(measured, DAY_ENDS[39], 1.0, 5000.0)
    with_index(measured, DAY_ENDS[48], 3.0, 10.0)
    gap = assemble(measured)[40:48]
    assert [point.quantity for point in gap] == [1.222, 1.444, 1.667, 1.889, 2.111, 2.333, 2.556, 2.778]
    assert {point.rules for point in gap} == {(RuleCode.GAP,)}


def test_final_estimates() -> None:
    points = assemble(gap_between_1_and_3(8), final=True)
    assert {point.status for point in points[40:48]} == {IntervalStatus.FINAL_ESTIMATE}
    assert points[39].status is IntervalStatus.MEASURED


def test_interval_versions() -> None:
    measured = gap_between_1_and_3(8)
    first = assemble(measured)
    assert {point.version for point in first} == {1}
    same = assemble(measured, previous=first)
    assert same == first
    assert not changed(first, same)
    # A reading arrives for position 44: the run splits into 41-43 and 45-48, all re-estimated.
    late = DAY_ENDS[43]
    measured[late] = Measured(interval_end=late, value=2.0, version=1)
    second = assemble(measured, previous=first)
    assert changed(first, second)
    assert second[43].status is IntervalStatus.MEASURED
    assert second[43].version == 2
    assert [point.version for point in second[40:48]] == [2] * 8
    assert {point.version for point in second[:40] + second[48:]} == {1}
    # A correction of the measured value: version 3 of that interval only.
    measured[late] = Measured(interval_end=late, value=2.5, version=2, rules=(RuleCode.CORRECTION,))
    third = assemble(measured, previous=second)
    changed_positions = [point.position for point, before in zip(third, second, strict=True) if point != before]
    assert 44 in changed_positions
    assert third[43].version == 3
    assert third[43].rules == (RuleCode.CORRECTION,)
    # Going final changes the estimates' status: +1 for those, nothing for the measured.
    final = assemble(measured, previous=third, final=True)
    assert {point.version for point in final[40:43]} == {third[40].version + 1}
    assert final[43].version == 3


def test_dst_days_assemble_to_92_and_100_points() -> None:
    for day, count in ((date(2026, 3, 29), 92), (date(2026, 10, 25), 100)):
        points = assemble(measured_at(around(day), lambda end: 0.1), day=day)
        assert len(points) == count
        assert [point.position for point in points] == list(range(1, count + 1))
        assert is_complete(points)
        assert len(assemble({}, day=day)) == count


def test_a_gap_across_the_spring_change_is_interpolated_over_real_time() -> None:
    day = date(2026, 3, 29)
    ends = ends_of(day)
    measured = measured_at(around(day), lambda end: 1.0)
    # Positions 7..10 are 01:30, 01:45 CET, 03:00, 03:15 CEST: four consecutive quarter-hours.
    measured[ends[5]] = Measured(interval_end=ends[5], value=1.0, version=1)
    measured[ends[10]] = Measured(interval_end=ends[10], value=2.0, version=1)
    points = assemble(without(measured, ends[6:10]), day=day)
    assert [point.quantity for point in points[6:10]] == [1.2, 1.4, 1.6, 1.8]
    assert ends[9] - ends[6] == timedelta(minutes=45)


def test_hourly_days() -> None:
    hourly = replace(CONSUMER, resolution=Resolution.PT1H)
    days = (DAY - timedelta(days=1), DAY, DAY + timedelta(days=1))
    ends = [end for day in days for end in interval_ends(day, OSLO, Resolution.PT1H)]
    measured = {end: Measured(interval_end=end, value=4.0, version=1) for end in ends}
    day_ends = interval_ends(DAY, OSLO, Resolution.PT1H)
    measured[day_ends[9]] = Measured(interval_end=day_ends[9], value=2.0, version=1)
    for end in day_ends[10:12]:
        del measured[end]
    points = assemble_day(hourly, DAY, measured, Profile(), previous=None, final=False, settings=SETTINGS)
    assert len(points) == 24
    # Positions 11 and 12 (10:00-12:00 local) between 2.0 and 4.0; position 11 ends at 11:00 CEST = 09:00 UTC.
    assert day_ends[10] == datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    assert [point.quantity for point in points[10:12]] == [2.667, 3.333]
    assert {point.method for point in points[10:12]} == {EstimationMethod.LINEAR}


def test_assembled_dst_days_make_valid_series_events() -> None:
    for day in (date(2026, 3, 29), date(2026, 10, 25), DAY):
        measured = without(measured_at(around(day), lambda end: 0.1), ends_of(day)[20:30])
        points = assemble(measured, day=day)
        start, end = day_bounds(day, OSLO)
        event = MeterSeriesValidated(
            series_id=MeterSeriesValidated.id_of(CONSUMER.meterpoint_id, Register.ACTIVE_IMPORT, day, 1),
            meterpoint_id=CONSUMER.meterpoint_id,
            grid_company=CONSUMER.grid_company,
            grid_area=CONSUMER.grid_area,
            meterpoint_type=CONSUMER.type,
            register=Register.ACTIVE_IMPORT,
            resolution=CONSUMER.resolution,
            time_zone=CONSUMER.time_zone,
            day=day,
            start=start,
            end=end,
            version=1,
            reason=PublicationReason.DEADLINE,
            final=False,
            points=points,
        )
        assert len(event.points) == (end - start) // QUARTER
        assert {point.method for point in event.points[20:30]} == {EstimationMethod.LINEAR}
