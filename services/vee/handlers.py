"""The use cases: a consumed batch applied (rules, profile, days re-assembled and published), a scheduler tick (days
published at their deadline, days without any reading created) and a gap scan (GapFillRequested for what is still
missing). Each runs inside one transaction the caller opened; events go out through the transactional outbox.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from libs.events import CloudEvent, MeterpointRegistered, MeterpointUpdated, MeterReadingReceived, make_event
from libs.events.meter import Quality, Register, Unit
from libs.events.records import to_record
from libs.events.series import GapFillRequested, MeterSeriesValidated, PublicationReason, RuleCode, SeriesPoint
from libs.platform.db import Connection
from libs.platform.outbox import OutboxRecord, add_to_outbox
from services.vee import domain
from services.vee.adapters import postgres as db
from services.vee.domain import Measured, Meterpoint, Profile, RuleSettings
from services.vee.metrics import VeeMetrics

SOURCE = "/gridhub/vee"
_KWH_PER_UNIT = {Unit.WH: 0.001, Unit.KWH: 1.0, Unit.MWH: 1000.0}
_ACTIVE = frozenset({Register.ACTIVE_IMPORT, Register.ACTIVE_EXPORT})

WallClock = Callable[[], datetime]
"""The wall clock (aware, UTC): injected so that tests drive deadlines and grace periods."""


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Context:
    """What every use case needs besides its message: the rules, the deadlines, the topics, the metrics."""

    rules: RuleSettings
    series_topic: str
    commands_topic: str
    deadline_days_after: int = 1
    deadline_local_time: str = "07:00"
    billing_days_after: int = 5
    metrics: VeeMetrics | None = None


@dataclass(slots=True)
class _Reading:
    meterpoint_id: str
    register: Register
    reading: MeterReadingReceived
    received_at: datetime
    event_time: datetime


@dataclass(slots=True)
class BatchOutcome:
    """What a batch did (for metrics and tests)."""

    stored: list[datetime] = field(default_factory=list)
    duplicates: int = 0
    missing: int = 0
    held: int = 0
    unvalidated: int = 0
    published: int = 0


def kwh(reading: MeterReadingReceived) -> tuple[float, float | None]:
    """The reading's value and meter index in kWh."""
    factor = _KWH_PER_UNIT[reading.unit]
    index = None if reading.meter_index is None else round(reading.meter_index * factor, 6)
    return round(reading.value * factor, 6), index


async def apply_batch(
    conn: Connection, events: Sequence[CloudEvent[Any]], *, ctx: Context, now: datetime
) -> BatchOutcome:
    """Master data first, then the readings (held ones of a meterpoint that just arrived first of all)."""
    outcome = BatchOutcome()
    arrived: list[str] = []
    readings: list[_Reading] = []
    for event in events:
        data = event.data
        if isinstance(data, MeterpointRegistered | MeterpointUpdated):
            if await db.upsert_meterpoint(conn, Meterpoint.from_event(data)):
                arrived.append(data.meterpoint_id)
        elif isinstance(data, MeterReadingReceived):
            if data.quality is Quality.MISSING:
                # The source says it has no value: the interval stays a gap (estimated, asked for again).
                outcome.missing += 1
                continue
            readings.append(_Reading(data.meterpoint_id, data.register, data, now, event.time))
    held_before = [
        _Reading(r.meterpoint_id, r.register, r, received_at, received_at)
        for text, received_at in await db.take_held_readings(conn, arrived)
        for r in [MeterReadingReceived.model_validate_json(text)]
    ]
    readings = held_before + readings
    meterpoints = await db.load_meterpoints(conn, {r.meterpoint_id for r in readings})
    held: list[tuple[str, str, datetime]] = []
    unvalidated: dict[tuple[str, str], int] = defaultdict(int)
    groups: dict[tuple[str, Register], list[_Reading]] = defaultdict(list)
    for reading in readings:
        meterpoint = meterpoints.get(reading.meterpoint_id)
        if meterpoint is None:
            held.append((reading.meterpoint_id, reading.reading.model_dump_json(), reading.received_at))
        elif reading.register not in _ACTIVE or reading.register not in meterpoint.registers:
            unvalidated[(reading.meterpoint_id, str(reading.register))] += 1
        else:
            groups[(reading.meterpoint_id, reading.register)].append(reading)
    await db.hold_readings(conn, held)
    await db.count_unvalidated(conn, unvalidated)
    outcome.held, outcome.unvalidated = len(held), sum(unvalidated.values())
    if groups:
        await _apply_series(conn, meterpoints, groups, ctx=ctx, now=now, outcome=outcome)
    if ctx.metrics is not None:
        ctx.metrics.held.inc(outcome.held)
        ctx.metrics.unvalidated.inc(outcome.unvalidated)
        ctx.metrics.duplicates.inc(outcome.duplicates)
        ctx.metrics.missing.inc(outcome.missing)
    return outcome


async def _apply_series(
    conn: Connection,
    meterpoints: dict[str, Meterpoint],
    groups: dict[tuple[str, Register], list[_Reading]],
    *,
    ctx: Context,
    now: datetime,
    outcome: BatchOutcome,
) -> None:
    """The batch's readings per series: state read in one query per table, rules, rows written in one go, then
    the days settled (each series' own days, and the neighbours already published with estimates: an unpublished
    neighbour's completeness cannot change by a reading outside it, and the scheduler assembles it at its
    deadline; a complete one's measured points cannot change by it either)."""
    windows: dict[tuple[str, Register], tuple[datetime, datetime]] = {}
    for (meterpoint_id, register), readings in groups.items():
        meterpoint = meterpoints[meterpoint_id]
        zone, resolution = meterpoint.zone, meterpoint.resolution
        days = {domain.day_of(r.reading.interval_end, zone, resolution) for r in readings}
        windows[(meterpoint_id, register)] = (
            domain.day_bounds(min(days) - timedelta(days=2), zone)[0],
            domain.day_bounds(max(days) + timedelta(days=2), zone)[1],
        )
    measured_of = await db.load_measured_many(conn, windows)
    profiles = await db.load_profiles(conn, list(groups), ctx.rules.profile_max_samples)
    rows: list[db.IntervalRow] = []
    touched: dict[tuple[str, Register], set[int]] = defaultdict(set)
    own: dict[tuple[str, Register], set[date]] = defaultdict(set)
    neighbours: dict[tuple[str, Register], set[date]] = defaultdict(set)
    for key, readings in groups.items():
        meterpoint = meterpoints[key[0]]
        zone, resolution = meterpoint.zone, meterpoint.resolution
        step = domain.step_of(resolution)
        measured, profile = measured_of[key], profiles[key]
        for item in readings:
            reading = item.reading
            value, index = kwh(reading)
            end_at = reading.interval_end
            previous = measured.get(end_at)
            if previous is not None and previous.value == value and previous.meter_index == index:
                outcome.duplicates += 1
                continue
            zeros = 0
            cursor = end_at - step
            while (earlier := measured.get(cursor)) is not None and earlier.value == 0 and not earlier.rejected:
                zeros += 1
                cursor -= step
            rules = domain.check_reading(
                meterpoint,
                interval_end=end_at,
                resolution=reading.resolution,
                value=value,
                previous=previous,
                profile=profile,
                zeros_before=zeros,
                settings=ctx.rules,
            )
            current = Measured(end_at, value, 1 if previous is None else previous.version + 1, rules, index)
            measured[end_at] = current
            rows.append(
                db.IntervalRow(key[0], key[1], reading.resolution, reading.reading_id, item.received_at, current)
            )
            outcome.stored.append(item.event_time)
            if all(rule is RuleCode.CORRECTION for rule in rules):
                hour = domain.hour_of_week(end_at, zone, resolution)
                profile.add(hour, value)
                touched[key].add(hour)
            day = domain.day_of(end_at, zone, resolution)
            own[key].add(day)
            neighbours[key].update((day - timedelta(days=1), day + timedelta(days=1)))
    await db.insert_intervals(conn, rows)
    await db.save_profiles(conn, {key: (profiles[key], hours) for key, hours in touched.items()})
    for key in own:
        neighbours[key] -= own[key]
    published_neighbours = await db.published_days(conn, {key: days for key, days in neighbours.items() if days})
    for key, days in own.items():
        meterpoint = meterpoints[key[0]]
        settle = sorted(days | published_neighbours.get(key, set()))
        for day in settle:
            if day < meterpoint.connected_since:
                continue
            # A day this batch measured in goes out at once when its deadline passed already.
            outcome.published += await settle_day(
                conn, meterpoint, key[1], day, measured_of[key], profiles[key], ctx=ctx, now=now, late=day in days
            )


def _deadlines(meterpoint: Meterpoint, day: date, ctx: Context) -> tuple[datetime, datetime, datetime]:
    zone = meterpoint.zone
    deadline = domain.deadline_of(day, zone, days_after=ctx.deadline_days_after, local_time=ctx.deadline_local_time)
    billing = domain.deadline_of(day, zone, days_after=ctx.billing_days_after, local_time=ctx.deadline_local_time)
    return deadline, billing, domain.day_bounds(day, zone)[1]


async def settle_day(
    conn: Connection,
    meterpoint: Meterpoint,
    register: Register,
    day: date,
    measured: dict[datetime, Measured],
    profile: Profile,
    *,
    ctx: Context,
    now: datetime,
    late: bool,
) -> int:
    """Re-assemble ``day`` (locked) and publish it when it is due: 1 when a version went out, else 0.

    A first version goes out when the day is complete or (``late``: a day due for it) its deadline passed; a
    later one whenever its points changed (a correction; ``final`` after the billing deadline, with an audit row).
    """
    deadline, billing, day_end = _deadlines(meterpoint, day, ctx)
    state = await db.lock_day(
        conn, meterpoint.meterpoint_id, register, day, deadline=deadline, billing_deadline=billing, day_end=day_end
    )
    previous: tuple[SeriesPoint, ...] | None = None
    if state.published_version is not None:
        previous = await db.published_points(conn, meterpoint.meterpoint_id, register, day, state.published_version)
    final = now >= state.billing_deadline
    zone = meterpoint.zone
    window_start = domain.day_bounds(day - timedelta(days=1), zone)[0]
    window_end = domain.day_bounds(day + timedelta(days=1), zone)[1]
    around = {end: m for end, m in measured.items() if window_start < end <= window_end}
    if state.published_version is None and not (late and now >= state.deadline):
        # Nothing can go out unless the day is complete: checked on the measured values alone (the common case
        # of a day still in progress), without assembling it.
        ends = domain.interval_ends(day, zone, meterpoint.resolution)
        if not all((m := around.get(end)) is not None and not m.rejected for end in ends):
            return 0
    points = domain.assemble_day(meterpoint, day, around, profile, previous=previous, final=final, settings=ctx.rules)
    complete = domain.is_complete(points)
    reason: PublicationReason | None = None
    if state.published_version is None:
        if complete:
            reason = PublicationReason.COMPLETE
        elif late and now >= state.deadline:
            reason = PublicationReason.DEADLINE
    elif domain.changed(previous, points):
        reason = PublicationReason.CORRECTION
    if reason is None:
        await db.record_day(
            conn, meterpoint.meterpoint_id, register, day, complete=complete, published=None, corrected_points=None
        )
        return 0
    version = (state.published_version or 0) + 1
    corrected = None
    if reason is PublicationReason.CORRECTION and final:
        assert previous is not None
        corrected = sum(1 for old, new in zip(previous, points, strict=False) if old != new)
    start, end = domain.day_bounds(day, zone)
    event = MeterSeriesValidated(
        series_id=MeterSeriesValidated.id_of(meterpoint.meterpoint_id, register, day, version),
        meterpoint_id=meterpoint.meterpoint_id,
        grid_company=meterpoint.grid_company,
        grid_area=meterpoint.grid_area,
        meterpoint_type=meterpoint.type,
        register=register,
        resolution=meterpoint.resolution,
        time_zone=meterpoint.time_zone,
        day=day,
        start=start,
        end=end,
        version=version,
        reason=reason,
        final=final,
        points=points,
    )
    await _publish(conn, make_event(event, source=SOURCE, time=now), ctx.series_topic)
    await db.record_day(
        conn,
        meterpoint.meterpoint_id,
        register,
        day,
        complete=complete,
        published=(version, str(reason), final, points, now),
        corrected_points=corrected,
    )
    if ctx.metrics is not None:
        ctx.metrics.published.labels(str(reason)).inc()
    return 1


async def _publish(conn: Connection, event: CloudEvent[Any], topic: str) -> None:
    record = to_record(event)
    await add_to_outbox(conn, [OutboxRecord(topic, record.key, record.value, record.headers)])


async def _settle_stored_day(
    conn: Connection, meterpoint: Meterpoint, register: Register, day: date, *, ctx: Context, now: datetime
) -> int:
    zone = meterpoint.zone
    start = domain.day_bounds(day - timedelta(days=1), zone)[0]
    end = domain.day_bounds(day + timedelta(days=1), zone)[1]
    measured = await db.load_measured(conn, meterpoint.meterpoint_id, register, start, end)
    profile = await db.load_profile(conn, meterpoint.meterpoint_id, register, ctx.rules.profile_max_samples)
    return await settle_day(conn, meterpoint, register, day, measured, profile, ctx=ctx, now=now, late=True)


async def publish_due_days(conn: Connection, *, ctx: Context, now: datetime, limit: int) -> int:
    """Publish (reason DEADLINE) at most ``limit`` days whose deadline passed unpublished."""
    due = await db.due_days(conn, now, limit)
    meterpoints = await db.load_meterpoints(conn, {meterpoint_id for meterpoint_id, _, _ in due})
    published = 0
    for meterpoint_id, register, day in due:
        meterpoint = meterpoints.get(meterpoint_id)
        if meterpoint is not None:
            published += await _settle_stored_day(conn, meterpoint, register, day, ctx=ctx, now=now)
    return published


async def sweep_days(
    conn: Connection, *, ctx: Context, now: datetime, after: str, limit: int, lookback_days: int
) -> tuple[str, int]:
    """Create the day rows of up to ``limit`` connected meterpoints (after the cursor ``after``) for every day of
    the look-back that has begun, so that days without any reading reach their deadline too. Returns the next
    cursor ("" when the sweep went round) and how many meterpoints it covered."""
    batch = await db.connected_meterpoints(conn, after, limit)
    rows: list[tuple[str, str, date, datetime, datetime, datetime]] = []
    for meterpoint in batch:
        zone = meterpoint.zone
        today = now.astimezone(zone).date()
        for offset in range(lookback_days, -1, -1):
            day = today - timedelta(days=offset)
            if day < meterpoint.connected_since:
                continue
            deadline, billing, day_end = _deadlines(meterpoint, day, ctx)
            for register in meterpoint.registers:
                rows.append((meterpoint.meterpoint_id, str(register), day, deadline, billing, day_end))
    await db.ensure_days(conn, rows)
    cursor = batch[-1].meterpoint_id if len(batch) == limit else ""
    return cursor, len(batch)


@dataclass(frozen=True, slots=True)
class GapSettings:
    grace_seconds: float
    cooldown_seconds: float
    max_attempts: int
    max_per_scan: int
    max_per_meterpoint: int
    lookback_days: int


async def scan_gaps(
    conn: Connection, *, ctx: Context, gap: GapSettings, now: datetime, after: db.DayKey | None = None
) -> tuple[int, db.DayKey | None]:
    """Ask the sources of incomplete days for what is still missing after the grace period; bounded per scan and
    per meterpoint, each range at most ``max_attempts`` times and not again within the cool-down. Days are visited
    in key order from the cursor ``after``; returns the requests written and the next cursor (None: round done)."""
    grace = timedelta(seconds=gap.grace_seconds)
    limit = gap.max_per_scan * 4
    days = await db.incomplete_days(
        conn, now - grace + timedelta(days=1), now - timedelta(days=gap.lookback_days + 1), limit, after
    )
    cursor: db.DayKey | None = days[-1] if len(days) == limit else None
    meterpoints = await db.load_meterpoints(conn, {meterpoint_id for meterpoint_id, _, _ in days})
    sent = 0
    per_meterpoint: dict[str, int] = defaultdict(int)
    for meterpoint_id, register, day in days:
        meterpoint = meterpoints.get(meterpoint_id)
        if meterpoint is None or meterpoint.data_source is None:
            continue
        zone, resolution = meterpoint.zone, meterpoint.resolution
        expected = [end for end in domain.interval_ends(day, zone, resolution) if end <= now - grace]
        if not expected:
            continue
        start, end = domain.day_bounds(day, zone)
        present = await db.present_interval_ends(conn, meterpoint_id, register, start, end)
        for gap_start, gap_end in domain.gaps(expected, present, resolution):
            if sent >= gap.max_per_scan:
                return sent, (meterpoint_id, register, day - timedelta(days=1))  # this day again, next scan
            if per_meterpoint[meterpoint_id] >= gap.max_per_meterpoint:
                break
            attempt = await db.claim_gap_request(
                conn,
                meterpoint_id,
                register,
                gap_start,
                gap_end,
                now=now,
                cooldown_seconds=gap.cooldown_seconds,
                max_attempts=gap.max_attempts,
            )
            if attempt is None:
                continue
            request = GapFillRequested(
                request_id=GapFillRequested.id_of(meterpoint_id, register, gap_start, gap_end, attempt),
                meterpoint_id=meterpoint_id,
                grid_company=meterpoint.grid_company,
                data_source=meterpoint.data_source,
                register=register,
                resolution=resolution,
                start=gap_start,
                end=gap_end,
                attempt=attempt,
                requested_at=now,
            )
            await _publish(conn, make_event(request, source=SOURCE, time=now), ctx.commands_topic)
            sent += 1
            per_meterpoint[meterpoint_id] += 1
    if ctx.metrics is not None:
        ctx.metrics.gap_requests.inc(sent)
    return sent, cursor
