"""Pure projection of validated daily series (``meter.series.v1``, issue 16) into versioned view rows.

Every published version of a meterpoint's register's local day is kept: a day row and its points, keyed by the day's
version, are inserted once and never updated in place (a republished version, same ``series_id``, changes nothing).
Beside them ``series_current`` names the newest version of each day: the greatest version wins whatever order the
versions arrive in, so a version 1 that arrives after version 2 is stored but does not become current.

The quality of an aggregate (an hour or a day of consumption made of several intervals) follows the ENTSO-E codes:
one code when every interval has it, A05 (incomplete) when some are missing, else A03 when some are estimated, else
A06 (calculated) for a mix of measured and calculated ones. Its status is the least settled status of its intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import NamedTuple

from libs.events.meter import Resolution
from libs.events.series import IntervalStatus, MeterSeriesValidated, QuantityQuality


class SeriesDayRow(NamedTuple):
    """One published version of a day (the series_days columns, in order)."""

    meterpoint_id: str
    register: str
    day: date
    version: int
    series_id: str
    grid_company: str
    grid_area: str
    meterpoint_type: str
    resolution: str
    time_zone: str
    day_start: datetime
    day_end: datetime
    reason: str
    final: bool
    published_at: datetime
    intervals: int
    measured: int
    estimated: int
    missing: int


class SeriesPointRow(NamedTuple):
    """One interval of one version of a day (the staging_series_points columns, in order)."""

    meterpoint_id: str
    register: str
    interval_end: datetime
    version: int
    day: date
    position: int
    interval_start: datetime
    quantity: float
    quality: str
    status: str
    point_version: int
    method: str | None
    rules: list[str]
    measured: float | None


class SeriesCurrentRow(NamedTuple):
    """The newest version of a day in a batch (``series_current`` keeps the greatest one it has seen)."""

    meterpoint_id: str
    register: str
    day: date
    version: int
    grid_area: str


@dataclass(frozen=True, slots=True)
class SeriesChanges:
    """The rows a batch's validated series add: every version's day and points, and the newest version per day."""

    days: list[SeriesDayRow] = field(default_factory=list)
    points: list[SeriesPointRow] = field(default_factory=list)
    current: list[SeriesCurrentRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.days)


_STEPS: Mapping[Resolution, timedelta] = {Resolution.PT15M: timedelta(minutes=15), Resolution.PT1H: timedelta(hours=1)}


def project_series(series: Iterable[tuple[MeterSeriesValidated, datetime]]) -> SeriesChanges:
    """The rows of validated series (each with its event time, the publication time), in Kafka order.

    The first copy of a version wins within a batch, as across batches (the database inserts a version once).
    """
    days: dict[tuple[str, str, date, int], SeriesDayRow] = {}
    points: list[SeriesPointRow] = []
    current: dict[tuple[str, str, date], SeriesCurrentRow] = {}
    for data, published_at in series:
        register = str(data.register)
        key = (data.meterpoint_id, register, data.day, data.version)
        if key in days:
            continue
        qualities = [point.quality for point in data.points]
        days[key] = SeriesDayRow(
            data.meterpoint_id,
            register,
            data.day,
            data.version,
            data.series_id,
            data.grid_company,
            data.grid_area,
            str(data.meterpoint_type),
            str(data.resolution),
            data.time_zone,
            data.start,
            data.end,
            str(data.reason),
            data.final,
            published_at,
            len(qualities),
            qualities.count(QuantityQuality.AS_PROVIDED),
            qualities.count(QuantityQuality.ESTIMATED),
            qualities.count(QuantityQuality.NOT_AVAILABLE),
        )
        step = _STEPS[data.resolution]
        for point in data.points:
            interval_start = data.start + step * (point.position - 1)
            points.append(
                SeriesPointRow(
                    data.meterpoint_id,
                    register,
                    interval_start + step,
                    data.version,
                    data.day,
                    point.position,
                    interval_start,
                    point.quantity,
                    str(point.quality),
                    str(point.status),
                    point.version,
                    str(point.method) if point.method is not None else None,
                    [str(rule) for rule in point.rules],
                    point.measured,
                )
            )
        newest = current.get(key[:3])
        if newest is None or data.version > newest.version:
            current[key[:3]] = SeriesCurrentRow(data.meterpoint_id, register, data.day, data.version, data.grid_area)
    return SeriesChanges(sorted(days.values()), sorted(points), sorted(current.values()))


# Least settled first: an aggregate's status is that of its least settled interval.
_SETTLED = (
    IntervalStatus.MISSING,
    IntervalStatus.REJECTED,
    IntervalStatus.ESTIMATED,
    IntervalStatus.TEMPORARY,
    IntervalStatus.FINAL_ESTIMATE,
    IntervalStatus.MEASURED,
)


def aggregate_quality(qualities: Iterable[str]) -> QuantityQuality:
    """The ENTSO-E quality of an aggregate of intervals with these qualities (module docstring)."""
    found = {QuantityQuality(quality) for quality in qualities}
    if not found:
        raise ValueError("an aggregate has at least one interval")
    if len(found) == 1:
        return next(iter(found))
    if found & {QuantityQuality.NOT_AVAILABLE, QuantityQuality.INCOMPLETE}:
        return QuantityQuality.INCOMPLETE
    if QuantityQuality.ESTIMATED in found:
        return QuantityQuality.ESTIMATED
    return QuantityQuality.CALCULATED


def aggregate_status(statuses: Iterable[str]) -> IntervalStatus:
    """The least settled of the statuses of an aggregate's intervals."""
    found = {IntervalStatus(status) for status in statuses}
    if not found:
        raise ValueError("an aggregate has at least one interval")
    return min(found, key=_SETTLED.index)
