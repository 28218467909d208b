"""The validation stage's rules, pure: no I/O, no clock of its own (``now`` is passed in), no asyncpg or aiokafka.

The service (handlers.py, adapters/) keeps the state in PostgreSQL and calls these functions; docs/validation.md
explains each rule, each estimation method and the quality codes, with their sources.

Units: every value here is in kWh (the service converts Wh and MWh on the way in). Times are aware datetimes in
UTC; local days and hours are counted in the meterpoint's ``time_zone``. An interval is named by its end (the
reading's ``interval_end``) and belongs to the local day in which it *starts*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from libs.events.meter import Register, Resolution
from libs.events.meterpoints import (
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    MeterpointUpdated,
)
from libs.events.series import EstimationMethod, IntervalStatus, QuantityQuality, RuleCode, SeriesPoint

HARD_RULES: frozenset[RuleCode] = frozenset(
    {RuleCode.SIGN, RuleCode.RANGE, RuleCode.RESOLUTION, RuleCode.ALIGNMENT, RuleCode.CONNECTION_PERIOD}
)
"""A measured value flagged by one of these is kept but rejected from the series (estimated in its place)."""


@dataclass(frozen=True, slots=True)
class Meterpoint:
    """The master data the rules need, from the newest MeterpointRegistered/Updated."""

    meterpoint_id: str
    grid_company: str
    grid_area: str
    time_zone: str
    type: MeterpointType
    resolution: Resolution
    connection_state: ConnectionState
    connected_since: date
    data_source: DataSource | None
    version: int

    @classmethod
    def from_event(cls, event: MeterpointRegistered | MeterpointUpdated) -> Meterpoint:
        return cls(
            meterpoint_id=event.meterpoint_id,
            grid_company=event.grid_company,
            grid_area=event.grid_area,
            time_zone=event.time_zone,
            type=event.type,
            resolution=event.resolution,
            connection_state=event.connection.state,
            connected_since=event.connection.since,
            data_source=event.data_source,
            version=event.version,
        )

    @property
    def registers(self) -> tuple[Register, ...]:
        """The series this meterpoint has: consumption active_import, production active_export, exchange both."""
        return _REGISTERS[self.type]

    @property
    def zone(self) -> ZoneInfo:
        return zone_of(self.time_zone)


_REGISTERS: dict[MeterpointType, tuple[Register, ...]] = {
    MeterpointType.CONSUMPTION: (Register.ACTIVE_IMPORT,),
    MeterpointType.PRODUCTION: (Register.ACTIVE_EXPORT,),
    MeterpointType.EXCHANGE: (Register.ACTIVE_IMPORT, Register.ACTIVE_EXPORT),
}


@lru_cache(maxsize=64)
def zone_of(name: str) -> ZoneInfo:
    """The zone of a grid area, built once per name (check_reading runs per reading)."""
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """Every threshold of the rules and the estimation; the service's settings (VEE_RULES__*) fill it in.

    The defaults are documented in docs/validation.md with their reasons.
    """

    max_kwh_per_hour: Mapping[MeterpointType, float] = field(
        default_factory=lambda: {
            MeterpointType.CONSUMPTION: 1_000.0,
            MeterpointType.PRODUCTION: 100_000.0,
            MeterpointType.EXCHANGE: 1_000_000.0,
        }
    )
    spike_factor: float = 3.0
    spike_percentile: float = 0.95
    spike_min_samples: int = 4
    spike_min_kwh: float = 0.5
    zero_run_hours: float = 12.0
    short_gap_hours: float = 3.0
    profile_min_samples: int = 1
    profile_max_samples: int = 8
    profile_level_hours: float = 24.0
    """How far on each side of a long gap the measured intervals set the level its profile estimates scale to."""


@dataclass(slots=True)
class Profile:
    """A meterpoint register's own history per hour-of-week (0 = Monday 00-01 local ... 167): the newest
    ``max_samples`` measured values (kWh per interval) of each, oldest first."""

    samples: dict[int, list[float]] = field(default_factory=dict)
    max_samples: int = 8

    def add(self, hour_of_week: int, value: float) -> None:
        if not 0 <= hour_of_week < HOURS_PER_WEEK:
            raise ValueError(f"hour of week {hour_of_week} is outside 0..167")
        hour = self.samples.setdefault(hour_of_week, [])
        hour.append(value)
        if len(hour) > self.max_samples:
            del hour[: len(hour) - self.max_samples]

    def percentile(self, hour_of_week: int, q: float) -> float | None:
        """The ``q`` quantile of the hour's samples, None without any.

        Linear between the two nearest ranks (numpy's default, statistics.quantiles' "inclusive"): q=0 is the
        smallest sample, q=1 the largest."""
        hour = self.samples.get(hour_of_week)
        if not hour:
            return None
        ordered = sorted(hour)
        rank = min(max(q, 0.0), 1.0) * (len(ordered) - 1)
        below = int(rank)
        if below + 1 >= len(ordered):
            return ordered[-1]
        return ordered[below] + (ordered[below + 1] - ordered[below]) * (rank - below)

    def mean(self, hour_of_week: int, min_samples: int = 1) -> float | None:
        """The mean of the hour's samples, None with fewer than ``min_samples``."""
        hour = self.samples.get(hour_of_week)
        if not hour or len(hour) < min_samples:
            return None
        return sum(hour) / len(hour)


@dataclass(frozen=True, slots=True)
class Measured:
    """The current version of a measured interval (the newest reading of it) and the rules it failed."""

    interval_end: datetime
    value: float
    version: int
    rules: tuple[RuleCode, ...] = ()
    meter_index: float | None = None

    @property
    def rejected(self) -> bool:
        return any(rule in HARD_RULES for rule in self.rules)


# --- time -------------------------------------------------------------------------------------------------------


HOURS_PER_WEEK = 168

_STEPS: dict[Resolution, timedelta] = {
    Resolution.PT15M: timedelta(minutes=15),
    Resolution.PT1H: timedelta(hours=1),
}


def step_of(resolution: Resolution) -> timedelta:
    return _STEPS[resolution]


@lru_cache(maxsize=4096)
def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # A local time that does not exist (a zone that springs forward at midnight) resolves with fold=0 to the
    # instant of the change, which is where that local day really starts.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """(local midnight of ``day``, local midnight of the next day), both in UTC: 23, 24 or 25 hours apart."""
    return _midnight(day, zone), _midnight(day + timedelta(days=1), zone)


def interval_ends(day: date, zone: ZoneInfo, resolution: Resolution) -> list[datetime]:
    """The UTC ends of the day's intervals in order: position 1 is the first (92, 96 or 100 for PT15M)."""
    start, end = day_bounds(day, zone)
    step = _STEPS[resolution]
    return [start + step * position for position in range(1, (end - start) // step + 1)]


def day_of(interval_end: datetime, zone: ZoneInfo, resolution: Resolution) -> date:
    """The local day an interval belongs to (the day its start falls in)."""
    return (interval_end - _STEPS[resolution]).astimezone(zone).date()


def hour_of_week(interval_end: datetime, zone: ZoneInfo, resolution: Resolution) -> int:
    """0..167 of the interval's start in local time (Monday 00:00-01:00 is 0)."""
    start = (interval_end - _STEPS[resolution]).astimezone(zone)
    return start.weekday() * 24 + start.hour


def deadline_of(day: date, zone: ZoneInfo, *, days_after: int = 1, local_time: str = "07:00") -> datetime:
    """The UTC instant ``days_after`` days after ``day`` at ``local_time`` local (D+1 07:00 by default; billing
    deadline with days_after=5)."""
    at = time.fromisoformat(local_time)
    return datetime.combine(day + timedelta(days=days_after), at, tzinfo=zone).astimezone(UTC)


# --- rules on arrival -------------------------------------------------------------------------------------------


def check_reading(
    meterpoint: Meterpoint,
    *,
    interval_end: datetime,
    resolution: Resolution,
    value: float,
    previous: Measured | None,
    profile: Profile,
    zeros_before: int,
    settings: RuleSettings,
) -> tuple[RuleCode, ...]:
    """The rules a newly arrived reading (kWh) fails, in RuleCode order; () when it passes.

    ``previous`` is the interval's current version if there is one (a different value is a CORRECTION; the
    service does not call this for an identical one: that is a duplicate). ``zeros_before`` is the number of
    consecutive measured zeros that end right before this interval (ZERO_RUN when this value is zero too and the
    run reaches ``zero_run_hours`` while the profile says the point normally consumes). SPIKE compares with
    ``spike_factor`` x the ``spike_percentile`` of the same hour-of-week (with at least ``spike_min_samples``
    samples, and only above ``spike_min_kwh``). CONNECTION_PERIOD: before ``connected_since`` (local day) or
    while the point is not connected.

    The connection state is the master data's current one, in effect since ``connected_since``: a connected
    point takes intervals from that local day on; a disconnected or closed-down one takes the intervals before
    it (the last readings of a move-out arrive late), a new one none.
    """
    step = _STEPS[resolution]
    failed: list[RuleCode] = []
    if value < 0:
        failed.append(RuleCode.SIGN)
    if value - settings.max_kwh_per_hour[meterpoint.type] * (step / _HOUR) > _EPSILON:
        failed.append(RuleCode.RANGE)
    if resolution is not meterpoint.resolution:
        failed.append(RuleCode.RESOLUTION)
    # The grid is checked in UTC: the zones of the grid areas are whole hours off UTC, so a local quarter-hour
    # is a UTC one.
    stamp = interval_end.timestamp()
    whole = int(stamp)
    if stamp != whole or whole % int(step.total_seconds()):
        failed.append(RuleCode.ALIGNMENT)
    zone = zone_of(meterpoint.time_zone)
    if not _in_connection_period(meterpoint, interval_end - step, zone):
        failed.append(RuleCode.CONNECTION_PERIOD)
    samples = profile.samples
    if samples and value >= 0:
        how = hour_of_week(interval_end, zone, resolution)
        if value > settings.spike_min_kwh:
            hour = samples.get(how)
            if hour is not None and len(hour) >= settings.spike_min_samples:
                high = profile.percentile(how, settings.spike_percentile)
                if high is not None and value - settings.spike_factor * high > _EPSILON:
                    failed.append(RuleCode.SPIKE)
        if value == 0 and (zeros_before + 1) * (step / _HOUR) >= settings.zero_run_hours:
            usual = profile.mean(how, max(settings.profile_min_samples, 1))
            if usual is not None and usual > 0:
                failed.append(RuleCode.ZERO_RUN)
    if previous is not None and previous.value != value:
        failed.append(RuleCode.CORRECTION)
    return tuple(failed)


_HOUR = timedelta(hours=1)
_EPSILON = 1e-9
"""kWh: a value "at" a threshold computed in binary floats (3 x 1.85 = 5.550000000000001) is at it, not above;
values have at most 3 decimals, so this never hides a real excess."""


def _in_connection_period(meterpoint: Meterpoint, interval_start: datetime, zone: ZoneInfo) -> bool:
    state = meterpoint.connection_state
    if state is ConnectionState.NEW:
        return False
    since = _midnight(meterpoint.connected_since, zone)
    if state is ConnectionState.CONNECTED:
        return interval_start >= since
    return interval_start < since


# --- the day ----------------------------------------------------------------------------------------------------


def assemble_day(
    meterpoint: Meterpoint,
    day: date,
    measured: Mapping[datetime, Measured],
    profile: Profile,
    *,
    previous: Sequence[SeriesPoint] | None,
    final: bool,
    settings: RuleSettings,
) -> tuple[SeriesPoint, ...]:
    """Every interval of ``day``, measured, estimated or missing, with interval versions.

    ``measured`` holds the current versions keyed by interval end and may reach beyond the day (the service
    passes the day and one day on each side), so that gaps at the day's edges have their neighbours.
    - A clean measured interval: A04, status MEASURED (TEMPORARY is not used by this stage).
    - A rejected one (a hard rule): estimated like a gap, status REJECTED, ``measured`` = the delivered value,
      rules = its rules.
    - A gap (no measured value): a run of missing intervals of at most ``short_gap_hours`` between two measured
      neighbours is interpolated linearly (EstimationMethod.LINEAR); a longer one (or one without both
      neighbours) from the profile's mean of the same hour-of-week, scaled by the level of the measured
      intervals around it against their own profile means (PROFILE); without history A02, quantity 0, status
      MISSING. Estimates carry rules (GAP,), status ESTIMATED, or FINAL_ESTIMATE when ``final``.
    - Where the measured neighbours on both sides of a run carry a ``meter_index``, the run's estimates are
      scaled so that they sum exactly (to the Wh) to (index after - its value) - index before, and carry
      REGISTER_SUM as well.
    - Quantities are rounded to 3 decimals. Interval version: 1 for a new position, the previous point's version
      when nothing of it changed, +1 when quantity, quality, status, method or rules changed.

    A run of missing or rejected intervals is estimated as a whole, also where it crosses midnight, so the two
    days it touches agree on its values (as far as ``measured`` reaches on each side).
    """
    zone = zone_of(meterpoint.time_zone)
    resolution = meterpoint.resolution
    step = _STEPS[resolution]
    ends = interval_ends(day, zone, resolution)
    lower = min(measured) if measured else None
    upper = max(measured) if measured else None
    estimates: dict[datetime, _Estimate] = {}
    position = 0
    while position < len(ends):
        if _clean(measured.get(ends[position])):
            position += 1
            continue
        last = position
        while last + 1 < len(ends) and not _clean(measured.get(ends[last + 1])):
            last += 1
        left = _neighbour(measured, ends[position] - step, -step, lower, upper)
        right = _neighbour(measured, ends[last] + step, step, lower, upper)
        if left is not None and right is not None:
            run = [left.interval_end + step * k for k in range(1, (right.interval_end - left.interval_end) // step)]
        else:
            run = ends[position : last + 1]
        estimates.update(_estimate_run(run, left, right, profile, zone, resolution, measured, settings))
        position = last + 1

    before = {point.position: point for point in previous or ()}
    points: list[SeriesPoint] = []
    for number, end in enumerate(ends, start=1):
        current = measured.get(end)
        if current is not None and not current.rejected:
            fields = _Fields(
                round(current.value, 3), QuantityQuality.AS_PROVIDED, IntervalStatus.MEASURED, None, current.rules, None
            )
        else:
            fields = _estimated_fields(estimates[end], current, final)
        points.append(_point(number, fields, before.get(number)))
    return tuple(points)


@dataclass(frozen=True, slots=True)
class _Estimate:
    value: float | None
    """kWh, rounded to 3 decimals; None without any history (missing)."""
    method: EstimationMethod | None
    register_sum: bool = False


@dataclass(frozen=True, slots=True)
class _Fields:
    quantity: float
    quality: QuantityQuality
    status: IntervalStatus
    method: EstimationMethod | None
    rules: tuple[RuleCode, ...]
    measured: float | None


def _clean(current: Measured | None) -> bool:
    return current is not None and not current.rejected


def _neighbour(
    measured: Mapping[datetime, Measured],
    start: datetime,
    step: timedelta,
    lower: datetime | None,
    upper: datetime | None,
) -> Measured | None:
    """The first clean measured interval from ``start`` on in the direction of ``step``, within ``measured``."""
    if lower is None or upper is None:
        return None
    at = start
    while lower <= at <= upper:
        current = measured.get(at)
        if current is not None and not current.rejected:
            return current
        at += step
    return None


def _estimate_run(
    run: Sequence[datetime],
    left: Measured | None,
    right: Measured | None,
    profile: Profile,
    zone: ZoneInfo,
    resolution: Resolution,
    measured: Mapping[datetime, Measured],
    settings: RuleSettings,
) -> dict[datetime, _Estimate]:
    step = _STEPS[resolution]
    count = len(run)
    raw: list[float | None]
    if left is not None and right is not None and step * count <= timedelta(hours=settings.short_gap_hours):
        method = EstimationMethod.LINEAR
        raw = [left.value + (right.value - left.value) * k / (count + 1) for k in range(1, count + 1)]
    else:
        method = EstimationMethod.PROFILE
        scale = _level(left, right, profile, zone, resolution, measured, settings)
        means = [profile.mean(hour_of_week(end, zone, resolution), settings.profile_min_samples) for end in run]
        raw = [None if mean is None else mean * scale for mean in means]

    if left is not None and right is not None and left.meter_index is not None and right.meter_index is not None:
        total_wh = round(((right.meter_index - right.value) - left.meter_index) * 1000)
        if total_wh >= 0:
            weights = [value for value in raw if value is not None]
            if len(weights) < count or sum(weights) <= 0:
                # Without a shape for every interval, the index difference is spread evenly: a straight line of
                # the meter index between its two readings.
                method = EstimationMethod.LINEAR
                weights = [1.0] * count
            shares = _largest_remainder(total_wh, weights)
            return {end: _Estimate(wh / 1000, method, register_sum=True) for end, wh in zip(run, shares, strict=True)}

    return {
        end: _Estimate(None, None) if value is None else _Estimate(round(value, 3), method)
        for end, value in zip(run, raw, strict=True)
    }


def _level(
    left: Measured | None,
    right: Measured | None,
    profile: Profile,
    zone: ZoneInfo,
    resolution: Resolution,
    measured: Mapping[datetime, Measured],
    settings: RuleSettings,
) -> float:
    """The measured intervals around a gap against their own profile means (1.0 without a comparison)."""
    step = _STEPS[resolution]
    reach = max(int(timedelta(hours=settings.profile_level_hours) // step), 0)
    actual = 0.0
    usual = 0.0
    for neighbour, direction in ((left, -step), (right, step)):
        if neighbour is None:
            continue
        for k in range(reach):
            current = measured.get(neighbour.interval_end + direction * k)
            if current is None or current.rejected:
                continue
            mean = profile.mean(hour_of_week(current.interval_end, zone, resolution), settings.profile_min_samples)
            if mean is not None:
                actual += current.value
                usual += mean
    return actual / usual if usual > 0 else 1.0


def _largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` into whole numbers that sum to it exactly: each share rounded
    down, and the rest handed out one by one to the largest remainders (the earlier interval on a tie)."""
    whole = sum(weights)
    exact = [total * weight / whole for weight in weights]
    shares = [int(share) for share in exact]
    rest = total - sum(shares)
    order = sorted(range(len(exact)), key=lambda k: (-(exact[k] - shares[k]), k))
    for k in order[: max(rest, 0)]:
        shares[k] += 1
    return shares


def _estimated_fields(estimate: _Estimate, current: Measured | None, final: bool) -> _Fields:
    rejected = current is not None and current.rejected
    rules: tuple[RuleCode, ...] = current.rules if current is not None and rejected else (RuleCode.GAP,)
    if estimate.register_sum:
        rules = (*rules, RuleCode.REGISTER_SUM)
    delivered = round(current.value, 3) if current is not None and rejected else None
    if estimate.value is None:
        status = IntervalStatus.REJECTED if rejected else IntervalStatus.MISSING
        return _Fields(0.0, QuantityQuality.NOT_AVAILABLE, status, None, rules, delivered)
    if rejected:
        status = IntervalStatus.REJECTED
    else:
        status = IntervalStatus.FINAL_ESTIMATE if final else IntervalStatus.ESTIMATED
    return _Fields(estimate.value, QuantityQuality.ESTIMATED, status, estimate.method, rules, delivered)


def _point(position: int, fields: _Fields, before: SeriesPoint | None) -> SeriesPoint:
    version = 1
    if before is not None:
        same = (
            before.quantity == fields.quantity
            and before.quality is fields.quality
            and before.status is fields.status
            and before.method is fields.method
            and tuple(before.rules) == fields.rules
            and before.measured == fields.measured
        )
        version = before.version if same else before.version + 1
    return SeriesPoint(
        position=position,
        quantity=fields.quantity,
        quality=fields.quality,
        status=fields.status,
        version=version,
        method=fields.method,
        rules=fields.rules,
        measured=fields.measured,
    )


def is_complete(points: Sequence[SeriesPoint]) -> bool:
    """Every interval measured and none rejected."""
    return all(
        point.quality is QuantityQuality.AS_PROVIDED and point.status is IntervalStatus.MEASURED for point in points
    )


def changed(previous: Sequence[SeriesPoint] | None, points: Sequence[SeriesPoint]) -> bool:
    """True when a new version of the day is worth publishing (any point differs)."""
    return previous is None or tuple(previous) != tuple(points)


def gaps(
    expected: Sequence[datetime], present: frozenset[datetime], resolution: Resolution
) -> list[tuple[datetime, datetime]]:
    """Runs of missing interval ends as (start exclusive, end inclusive) ranges, in order: what to re-read.

    A run breaks where ``expected`` itself jumps (ends that are not one step apart)."""
    step = _STEPS[resolution]
    runs: list[tuple[datetime, datetime]] = []
    first: datetime | None = None
    last: datetime | None = None
    for end in expected:
        if end in present:
            if first is not None and last is not None:
                runs.append((first - step, last))
            first = last = None
        elif first is not None and last is not None and end == last + step:
            last = end
        else:
            if first is not None and last is not None:
                runs.append((first - step, last))
            first = last = end
    if first is not None and last is not None:
        runs.append((first - step, last))
    return runs


__all__ = [
    "HARD_RULES",
    "EstimationMethod",
    "Measured",
    "Meterpoint",
    "Profile",
    "RuleSettings",
    "assemble_day",
    "changed",
    "check_reading",
    "day_bounds",
    "day_of",
    "deadline_of",
    "gaps",
    "hour_of_week",
    "interval_ends",
    "is_complete",
    "step_of",
    "zone_of",
]
