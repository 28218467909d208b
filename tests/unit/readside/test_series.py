"""Validated series projection: every version kept, the greatest current whatever the order, DST days, aggregates."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from libs.events import make_event, with_check_digit
from libs.events.meter import Resolution
from libs.events.series import IntervalStatus, QuantityQuality
from services.readside.projections import MeterpointRow, project
from services.readside.series import aggregate_quality, aggregate_status, project_series
from tests.unit.readside.builders import estimated, missing, validated_day

MP = with_check_digit("57131318040000002")
DAY = date(2026, 1, 14)
AT = datetime(2026, 1, 15, 6, tzinfo=UTC)


def test_a_day_becomes_one_day_row_and_a_point_per_interval() -> None:
    series = validated_day(MP, DAY, points={5: estimated(0.3), 6: missing()})
    changes = project_series([(series, AT)])
    [day] = changes.days
    assert (day.meterpoint_id, day.register, day.day, day.version, day.series_id) == (
        MP,
        "active_import",
        DAY,
        1,
        series.series_id,
    )
    assert (day.intervals, day.measured, day.estimated, day.missing) == (96, 94, 1, 1)
    assert (day.grid_area, day.reason, day.final, day.published_at) == ("NO1", "complete", False, AT)
    assert len(changes.points) == 96
    first, fifth, sixth = changes.points[0], changes.points[4], changes.points[5]
    # Oslo is UTC+1 in January: position 1 starts at 23:00 UTC the evening before.
    assert (first.position, first.interval_start, first.interval_end) == (
        1,
        datetime(2026, 1, 13, 23, tzinfo=UTC),
        datetime(2026, 1, 13, 23, 15, tzinfo=UTC),
    )
    assert (fifth.quality, fifth.status, fifth.method, fifth.rules, fifth.quantity) == (
        "A03",
        "estimated",
        "linear",
        ["gap"],
        0.3,
    )
    assert (sixth.quality, sixth.status, sixth.method, sixth.quantity) == ("A02", "missing", None, 0.0)
    assert changes.current[0][:4] == (MP, "active_import", DAY, 1)


@pytest.mark.parametrize(("day", "intervals"), [(date(2026, 3, 29), 92), (date(2026, 10, 25), 100)])
def test_dst_days_keep_their_length_and_contiguous_intervals(day: date, intervals: int) -> None:
    changes = project_series([(validated_day(MP, day), AT)])
    assert changes.days[0].intervals == len(changes.points) == intervals
    ends = [p.interval_end for p in changes.points]
    assert all(b - a == timedelta(minutes=15) for a, b in itertools.pairwise(ends))
    assert changes.points[-1].interval_end == changes.days[0].day_end


def test_hourly_days_step_by_the_hour() -> None:
    changes = project_series([(validated_day(MP, DAY, resolution=Resolution.PT1H), AT)])
    assert len(changes.points) == 24
    assert changes.points[1].interval_start - changes.points[0].interval_start == timedelta(hours=1)


def test_every_version_is_kept_and_the_greatest_is_current_in_any_order() -> None:
    v1 = validated_day(MP, DAY, version=1, points={3: missing()})
    v2 = validated_day(MP, DAY, version=2)
    for order in ([v1, v2], [v2, v1]):
        changes = project_series([(series, AT) for series in order])
        assert [d.version for d in changes.days] == [1, 2]
        assert len(changes.points) == 192
        assert [(c.day, c.version) for c in changes.current] == [(DAY, 2)]


def test_a_republished_version_is_stored_once_the_first_copy_winning() -> None:
    first = validated_day(MP, DAY, version=1)
    resent = validated_day(MP, DAY, version=1, quantity=0.5)
    changes = project_series([(first, AT), (resent, AT + timedelta(hours=1))])
    assert len(changes.days) == 1
    assert changes.days[0].published_at == AT
    assert {p.quantity for p in changes.points} == {0.25}


def test_project_routes_series_events_and_names_the_meterpoint() -> None:
    event = make_event(validated_day(MP, DAY), source="/gridhub/vee", time=AT)
    changes = project([event])
    assert len(changes.series.days) == 1
    assert changes.meterpoints == [MeterpointRow(MP, None)]
    assert not project([]).series


def test_the_quality_of_an_aggregate_follows_the_entso_e_codes() -> None:
    assert aggregate_quality(["A04", "A04"]) is QuantityQuality.AS_PROVIDED
    assert aggregate_quality(["A02", "A02"]) is QuantityQuality.NOT_AVAILABLE
    assert aggregate_quality(["A04", "A02"]) is QuantityQuality.INCOMPLETE
    assert aggregate_quality(["A04", "A03", "A02"]) is QuantityQuality.INCOMPLETE
    assert aggregate_quality(["A04", "A03"]) is QuantityQuality.ESTIMATED
    assert aggregate_quality(["A04", "A06"]) is QuantityQuality.CALCULATED
    with pytest.raises(ValueError, match="at least one"):
        aggregate_quality([])


def test_the_status_of_an_aggregate_is_its_least_settled() -> None:
    assert aggregate_status(["measured", "measured"]) is IntervalStatus.MEASURED
    assert aggregate_status(["measured", "temporary"]) is IntervalStatus.TEMPORARY
    assert aggregate_status(["final_estimate", "estimated", "measured"]) is IntervalStatus.ESTIMATED
    assert aggregate_status(["rejected", "missing"]) is IntervalStatus.MISSING
