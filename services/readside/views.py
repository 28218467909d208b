"""The queries: short plain SQL over the current view version, each answer read in one snapshot with its freshness.

A request reads the version pointer, sets its transaction's search_path to that version and runs its SELECTs in
one REPEATABLE READ, read-only transaction, so the data and the applied offsets it reports belong together.

Every query is scoped to the caller's tenant (`libs.platform.tenancy`) in its own SQL: a meterpoint, customer or
work order of another grid company, or one whose owner is not known yet, is not found, by the same statement
and in the same time as an id that does not exist (the platform role sees everything, owned or not).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg

from libs.events.series import QuantityQuality
from libs.platform.db import Connection
from libs.platform.tenancy import Principal
from services.readside.adapters.schema import read_offsets, search_path
from services.readside.metrics import LagTracker
from services.readside.models import (
    ActiveAlarm,
    BucketValidation,
    Completeness,
    Consumption,
    ConsumptionPoint,
    CurrentCustomer,
    CustomerMeterpoint,
    CustomerOverview,
    Freshness,
    GridAreaCompleteness,
    LatestReading,
    MeterpointOverview,
    OpenWorkOrder,
    PartitionFreshness,
    Resolution,
    SeriesInterval,
    SeriesVersion,
    SeriesVersions,
    ValidatedSeries,
    WorkOrder,
    WorkOrderPage,
)
from services.readside.projections import AGGREGATE_UNITS, OPEN_STATUSES
from services.readside.series import aggregate_quality, aggregate_status

T = TypeVar("T")

# $2: the caller's tenant, NULL for the platform. A tenant sees a meterpoint only once its master data names the
# tenant as owner; the platform sees every meterpoint any event named.
_VISIBLE = """
CASE WHEN $2::text IS NULL
     THEN m.meterpoint_id IS NOT NULL OR EXISTS (SELECT FROM latest_readings WHERE meterpoint_id = $1)
     ELSE coalesce(m.grid_company = $2::text, false) END
"""
METERPOINT = f"""
SELECT greatest(m.last_seen, (SELECT max(last_seen) FROM latest_readings WHERE meterpoint_id = $1)) AS last_seen,
       m.grid_company, m.grid_area, {_VISIBLE} AS visible
FROM (VALUES (1)) AS one (x) LEFT JOIN meterpoints m ON m.meterpoint_id = $1
"""  # noqa: S608 - constant text
VISIBLE_METERPOINT = f"SELECT {_VISIBLE} FROM (VALUES (1)) AS one (x) LEFT JOIN meterpoints m ON m.meterpoint_id = $1"  # noqa: S608
LATEST_READINGS = """
SELECT register, interval_end, value, unit, quality, source FROM latest_readings
WHERE meterpoint_id = $1 ORDER BY register
"""
CURRENT_CUSTOMER = """
SELECT l.customer_id, c.name, l.move_in, l.move_out
FROM meterpoint_links l LEFT JOIN customers c USING (customer_id)
WHERE l.meterpoint_id = $1 AND l.move_in <= $2 AND (l.move_out IS NULL OR l.move_out >= $2)
ORDER BY l.move_in DESC, l.customer_id LIMIT 1
"""
# Each open order with the customer at its meterpoint on the local day it was opened: the crew's contact.
OPEN_WORK_ORDERS = """
SELECT w.work_order_id, w.type, w.status, w.crew, w.window_start, w.window_end, w.created_at,
       c.customer_id, c.name AS customer_name
FROM work_orders w
LEFT JOIN LATERAL (
    SELECT l.customer_id, cu.name FROM meterpoint_links l LEFT JOIN customers cu USING (customer_id)
    WHERE l.meterpoint_id = w.meterpoint_id AND l.move_in <= (w.created_at AT TIME ZONE $3::text)::date
      AND (l.move_out IS NULL OR l.move_out >= (w.created_at AT TIME ZONE $3::text)::date)
    ORDER BY l.move_in DESC, l.customer_id LIMIT 1
) c ON true
WHERE w.meterpoint_id = $1 AND w.status = ANY($2::text[]) ORDER BY w.created_at, w.work_order_id
"""
# Outage alarms end with a later power restore; any alarm ends when a work order at the meterpoint completes
# after it was raised; and alarms older than the active window are history.
ACTIVE_ALARMS = """
SELECT a.alarm_id::text, a.alarm, a.raised_at, a.source, a.details FROM alarms a
WHERE a.meterpoint_id = $1 AND a.alarm <> 'power_restored' AND a.raised_at >= $2
  AND NOT (a.alarm IN ('power_failure', 'long_outage') AND EXISTS (
      SELECT 1 FROM alarms r WHERE r.meterpoint_id = a.meterpoint_id AND r.alarm = 'power_restored'
                             AND r.raised_at >= a.raised_at))
  AND NOT EXISTS (
      SELECT 1 FROM work_orders w WHERE w.meterpoint_id = a.meterpoint_id AND w.status = 'completed'
                                  AND w.completed_at >= a.raised_at)
ORDER BY a.raised_at DESC, a.alarm_id LIMIT 100
"""
HOURLY = """
SELECT hour AS start, energy, readings FROM consumption_hourly
WHERE meterpoint_id = $1 AND register = $2 AND hour >= $3 AND hour < $4 ORDER BY hour
"""
DAILY = """
SELECT day AS start, energy, readings FROM consumption_daily
WHERE meterpoint_id = $1 AND register = $2 AND day >= $3 AND day < $4 ORDER BY day
"""
# Validated series (meter.series.v1): the newest version of a day is the one series_current names.
SERIES_CURRENT = """
SELECT register, version FROM series_current
WHERE meterpoint_id = $1 AND day = $2 AND ($3::text IS NULL OR register = $3)
ORDER BY register <> 'active_import', register LIMIT 1
"""
SERIES_DAY = """
SELECT register, day, version, series_id::text, grid_area, meterpoint_type, resolution, time_zone,
       day_start AS start, day_end AS "end", reason, final, published_at, intervals, measured, estimated, missing
FROM series_days WHERE meterpoint_id = $1 AND register = $2 AND day = $3 AND version = $4
"""
# Bounded by the day's instants so the lookup is a range of the primary key.
SERIES_POINTS = """
SELECT position, interval_start, interval_end, quantity, quality, status, method, rules, point_version AS version,
       measured
FROM series_points
WHERE meterpoint_id = $1 AND register = $2 AND interval_end > $3 AND interval_end <= $4 AND version = $5
ORDER BY interval_end
"""
SERIES_VERSIONS = """
SELECT version, reason, final, published_at, series_id::text, intervals, measured, estimated, missing,
       version = $4 AS current
FROM series_days WHERE meterpoint_id = $1 AND register = $2 AND day = $3 ORDER BY version
"""
# The intervals of the newest version of each day whose start lies in [$3, $4), by bucket, quality and status.
# interval_end bounds the primary key range (an interval is at most an hour long).
_BUCKET_VALIDATION = """
SELECT {bucket} AS start, p.quality, p.status, count(*)::integer AS intervals, sum(p.quantity) AS quantity,
       max(p.version) AS version
FROM series_points p JOIN series_current c
  ON c.meterpoint_id = p.meterpoint_id AND c.register = p.register AND c.day = p.day AND c.version = p.version
WHERE p.meterpoint_id = $1 AND p.register = $2
  AND p.interval_end > $3::timestamptz AND p.interval_end <= $4::timestamptz + interval '1 hour'
  AND p.interval_start >= $3::timestamptz AND p.interval_start < $4::timestamptz
GROUP BY 1, 2, 3
"""
HOURLY_VALIDATION = _BUCKET_VALIDATION.format(bucket="date_trunc('hour', p.interval_start, 'UTC')")
DAILY_VALIDATION = _BUCKET_VALIDATION.format(bucket="(p.interval_start AT TIME ZONE $5::text)::date")
# $3: the caller's tenant (NULL: the platform, every meterpoint); a tenant counts the meterpoints it owns.
COMPLETENESS = """
SELECT c.grid_area, count(DISTINCT c.meterpoint_id)::integer AS meterpoints, count(*)::integer AS series,
       sum(d.intervals)::integer AS intervals, sum(d.measured)::integer AS measured,
       sum(d.estimated)::integer AS estimated, sum(d.missing)::integer AS missing
FROM series_current c
JOIN series_days d
  ON d.meterpoint_id = c.meterpoint_id AND d.register = c.register AND d.day = c.day AND d.version = c.version
LEFT JOIN meterpoints m ON m.meterpoint_id = c.meterpoint_id
WHERE c.day = $1 AND ($2::text IS NULL OR c.grid_area = $2) AND ($3::text IS NULL OR m.grid_company = $3)
GROUP BY c.grid_area ORDER BY c.grid_area
"""
CUSTOMER = """
SELECT customer_id, kind, name, version, grid_company FROM customers
WHERE customer_id = $1 AND ($2::text IS NULL OR grid_company = $2)
"""
CUSTOMER_METERPOINTS = """
SELECT l.meterpoint_id, l.move_in, l.move_out,
       (l.move_in <= $3 AND (l.move_out IS NULL OR l.move_out >= $3)) AS current,
       (SELECT coalesce(sum(d.energy), 0) FROM consumption_daily d
        WHERE d.meterpoint_id = l.meterpoint_id AND d.register = 'active_import'
          AND d.day BETWEEN greatest(l.move_in, $2) AND least(coalesce(l.move_out, $3), $3)) AS consumption
FROM meterpoint_links l WHERE l.customer_id = $1 ORDER BY l.move_in, l.meterpoint_id
"""
_WORK_ORDER_PAGE = """
SELECT work_order_id, meterpoint_id, type, status, crew, window_start, window_end, description, started_at,
       completed_at, result, new_meter_serial, cancel_reason, created_at, updated_at
FROM work_orders WHERE {tenant} AND {status} AND work_order_id > $2
ORDER BY work_order_id LIMIT $3
"""


def _work_order_page(*, tenant: bool, status: bool) -> str:
    # One statement per combination rather than "$n IS NULL OR ...": a prepared statement's generic plan cannot
    # use an index for such a condition, and a tenant's page must stay an index range (grid_company, id).
    return _WORK_ORDER_PAGE.format(
        tenant="grid_company = $4::text" if tenant else "$4::text IS NULL",
        status="status = $1::text" if status else "$1::text IS NULL",
    )


_BOTH = (False, True)
WORK_ORDERS = {(tenant, status): _work_order_page(tenant=tenant, status=status) for tenant in _BOTH for status in _BOTH}
"""The page of work orders, by (scoped to a tenant, filtered by status)."""


def tenant_of(principal: Principal) -> str | None:
    """The grid company a caller's queries are limited to; None for the platform role (every tenant)."""
    if principal.is_platform:
        return None
    # A principal of any other role has a tenant (Principal refuses one without), so None never widens a scope.
    assert principal.tenant is not None
    return principal.tenant


def utc_now() -> datetime:
    """The current time (a parameter of `ViewQueries`, so tests can pin "today")."""
    return datetime.now(UTC)


class ViewQueries:
    """Read-only queries over the current version of the views."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        control_schema: str,
        *,
        readings_topic: str,
        meter_events_topic: str,
        customers_topic: str,
        workorders_topic: str,
        meterpoints_topic: str,
        series_topic: str,
        live_lag: LagTracker | None = None,
        active_alarm_days: int = 30,
        customer_consumption_days: int = 30,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._pool = pool
        self._control = control_schema
        self._all_topics = (
            readings_topic,
            meter_events_topic,
            customers_topic,
            workorders_topic,
            meterpoints_topic,
            series_topic,
        )
        self._customer_topics = (readings_topic, customers_topic)
        # Ownership comes from the meterpoints topic: a 404 or a short list may mean it has not caught up yet.
        self._consumption_topics = (readings_topic, meterpoints_topic, series_topic)
        self._series_topics = (series_topic, meterpoints_topic)
        self._workorder_topics = (workorders_topic, meterpoints_topic)
        self._live_lag = live_lag
        self._active_alarm_days = active_alarm_days
        self._customer_days = customer_consumption_days
        self._clock = clock
        self._timezones: dict[int, ZoneInfo] = {}

    async def _read(self, query: Callable[[Connection, int, ZoneInfo], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            try:
                async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                    version: int = await conn.fetchval("SELECT version FROM view_version")
                    await conn.execute(
                        "SELECT set_config('search_path', $1, true)", search_path(self._control, version)
                    )
                    timezone = self._timezones.get(version)
                    if timezone is None:
                        timezone = self._timezones[version] = ZoneInfo(
                            await conn.fetchval("SELECT timezone FROM view_meta")
                        )
                    return await query(conn, version, timezone)
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                # A rebuild switched and dropped the version between reading the pointer and the tables.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def timezone(self) -> ZoneInfo:
        """The time zone of the current views' local days."""

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> ZoneInfo:
            return timezone

        return await self._read(query)

    async def _freshness(self, conn: Connection, version: int, topics: Sequence[str]) -> Freshness:
        partitions = []
        for stored in await read_offsets(conn, topics):
            high = stored.high_watermark
            tracker = self._live_lag
            live = None
            if tracker is not None and tracker.version == version:
                live = tracker.get(stored.topic, stored.partition)
            if live is not None and live.high_watermark is not None:
                # The consumer in this process saw the log end more recently than its last commit.
                high = live.high_watermark if high is None else max(high, live.high_watermark)
            lag = 0 if high is None else max(0, high - (stored.next_offset or 0))
            partitions.append(
                PartitionFreshness(
                    topic=stored.topic,
                    partition=stored.partition,
                    applied_offset=stored.next_offset,
                    high_watermark=high,
                    lag=lag,
                    applied_at=stored.applied_at,
                )
            )
        applied = [p.applied_at for p in partitions if p.applied_at is not None]
        return Freshness(
            view_version=version,
            lag=sum(p.lag for p in partitions),
            applied_at=max(applied) if applied else None,
            partitions=partitions,
        )

    async def freshness(self, answer: str) -> Freshness:
        """The freshness of the topics an answer ("meterpoint", "consumption", "series", "customer") is built from.

        Also for a 404, whose cause may be a view that has not caught up yet.
        """
        topics = {
            "meterpoint": self._all_topics,
            "consumption": self._consumption_topics,
            "series": self._series_topics,
        }.get(answer, self._customer_topics)

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> Freshness:
            return await self._freshness(conn, version, topics)

        return await self._read(query)

    def _today(self, timezone: ZoneInfo) -> date:
        return self._clock().astimezone(timezone).date()

    async def meterpoint(self, meterpoint_id: str, caller: Principal) -> MeterpointOverview | None:
        """The overview of one meterpoint, or None when no event named it or it is not the caller's."""

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> MeterpointOverview | None:
            row = await conn.fetchrow(METERPOINT, meterpoint_id, tenant_of(caller))
            if row is None or not row["visible"]:
                return None
            now = self._clock()
            customer = await conn.fetchrow(CURRENT_CUSTOMER, meterpoint_id, self._today(timezone))
            return MeterpointOverview(
                meterpoint_id=meterpoint_id,
                grid_company=row["grid_company"],
                grid_area=row["grid_area"],
                last_seen=row["last_seen"],
                customer=CurrentCustomer(**dict(customer)) if customer is not None else None,
                latest_readings=[LatestReading(**dict(r)) for r in await conn.fetch(LATEST_READINGS, meterpoint_id)],
                open_work_orders=[
                    OpenWorkOrder(**dict(r))
                    for r in await conn.fetch(OPEN_WORK_ORDERS, meterpoint_id, OPEN_STATUSES, timezone.key)
                ],
                active_alarms=[
                    ActiveAlarm(**dict(r))
                    for r in await conn.fetch(
                        ACTIVE_ALARMS, meterpoint_id, now - timedelta(days=self._active_alarm_days)
                    )
                ],
                freshness=await self._freshness(conn, version, self._all_topics),
            )

        return await self._read(query)

    async def consumption(
        self,
        meterpoint_id: str,
        register: str,
        resolution: Resolution,
        start: datetime | date,
        end: datetime | date,
        caller: Principal,
    ) -> Consumption | None:
        """Consumption buckets in ``[start, end)`` (instants for hours, local dates for days); None when the
        meterpoint is unknown or not the caller's (the same one statement either way)."""
        statement = HOURLY if resolution is Resolution.HOUR else DAILY

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> Consumption | None:
            if not await conn.fetchval(VISIBLE_METERPOINT, meterpoint_id, tenant_of(caller)):
                return None
            rows = await conn.fetch(statement, meterpoint_id, register, start, end)
            validation = await self._bucket_validation(conn, meterpoint_id, register, resolution, start, end, timezone)
            buckets = {
                r["start"]: ConsumptionPoint(
                    start=r["start"],
                    energy=r["energy"],
                    readings=r["readings"],
                    validated=validation.pop(r["start"], None),
                )
                for r in rows
            }
            # A bucket without readings but with validated intervals (estimates, missing flags) is shown too.
            for bucket, validated in validation.items():
                buckets[bucket] = ConsumptionPoint(start=bucket, energy=Decimal(0), readings=0, validated=validated)
            points = [buckets[bucket] for bucket in sorted(buckets)]
            return Consumption(
                meterpoint_id=meterpoint_id,
                register=register,
                unit=AGGREGATE_UNITS[register],
                resolution=resolution,
                from_=start,
                to=end,
                total=sum((p.energy for p in points), Decimal(0)),
                points=points,
                freshness=await self._freshness(conn, version, self._consumption_topics),
            )

        return await self._read(query)

    async def _bucket_validation(
        self,
        conn: Connection,
        meterpoint_id: str,
        register: str,
        resolution: Resolution,
        start: datetime | date,
        end: datetime | date,
        timezone: ZoneInfo,
    ) -> dict[Any, BucketValidation]:
        if resolution is Resolution.HOUR:
            rows = await conn.fetch(HOURLY_VALIDATION, meterpoint_id, register, start, end)
        else:
            first, last = _local_midnight(start, timezone), _local_midnight(end, timezone)
            rows = await conn.fetch(DAILY_VALIDATION, meterpoint_id, register, first, last, timezone.key)
        found: dict[Any, list[asyncpg.Record]] = {}
        for row in rows:
            found.setdefault(row["start"], []).append(row)
        return {bucket: _validation_of(rows) for bucket, rows in found.items()}

    async def series(
        self, meterpoint_id: str, day: date, register: str | None, version: int | None, caller: Principal
    ) -> ValidatedSeries | NoSeries | None:
        """One version of a validated day (default the newest); None when the meterpoint is unknown or not the
        caller's, `NO_SERIES` when it is the caller's but has no such day or version."""

        async def query(conn: Connection, version_: int, timezone: ZoneInfo) -> ValidatedSeries | NoSeries | None:
            if not await conn.fetchval(VISIBLE_METERPOINT, meterpoint_id, tenant_of(caller)):
                return None
            current = await conn.fetchrow(SERIES_CURRENT, meterpoint_id, day, register)
            if current is None:
                return NO_SERIES
            row = await conn.fetchrow(
                SERIES_DAY, meterpoint_id, current["register"], day, version or current["version"]
            )
            if row is None:
                return NO_SERIES
            points = await conn.fetch(
                SERIES_POINTS, meterpoint_id, row["register"], row["start"], row["end"], row["version"]
            )
            return ValidatedSeries(
                meterpoint_id=meterpoint_id,
                current_version=current["version"],
                points=[SeriesInterval(**dict(p)) for p in points],
                freshness=await self._freshness(conn, version_, self._series_topics),
                **{k: v for k, v in dict(row).items() if k != "series_id"},
            )

        return await self._read(query)

    async def series_versions(
        self, meterpoint_id: str, day: date, register: str | None, caller: Principal
    ) -> SeriesVersions | NoSeries | None:
        """Every published version of a validated day, like `series`."""

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> SeriesVersions | NoSeries | None:
            if not await conn.fetchval(VISIBLE_METERPOINT, meterpoint_id, tenant_of(caller)):
                return None
            current = await conn.fetchrow(SERIES_CURRENT, meterpoint_id, day, register)
            if current is None:
                return NO_SERIES
            rows = await conn.fetch(SERIES_VERSIONS, meterpoint_id, current["register"], day, current["version"])
            return SeriesVersions(
                meterpoint_id=meterpoint_id,
                register=current["register"],
                day=day,
                current_version=current["version"],
                versions=[SeriesVersion(**dict(r)) for r in rows],
                freshness=await self._freshness(conn, version, self._series_topics),
            )

        return await self._read(query)

    async def completeness(self, day: date, grid_area: str | None, caller: Principal) -> Completeness:
        """Per grid area, the caller's meterpoints' intervals of ``day`` measured / estimated / missing (newest
        version of each validated day)."""

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> Completeness:
            rows = await conn.fetch(COMPLETENESS, day, grid_area, tenant_of(caller))
            return Completeness(
                day=day,
                grid_area=grid_area,
                areas=[_area_completeness(day, row) for row in rows],
                freshness=await self._freshness(conn, version, self._series_topics),
            )

        return await self._read(query)

    async def customer(self, customer_id: str, caller: Principal) -> CustomerOverview | None:
        """A customer's overview, or None when the customer is unknown or not the caller's."""

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> CustomerOverview | None:
            row = await conn.fetchrow(CUSTOMER, customer_id, tenant_of(caller))
            if row is None:
                return None
            today = self._today(timezone)
            first = today - timedelta(days=self._customer_days - 1)
            meterpoints = [
                CustomerMeterpoint(**dict(r)) for r in await conn.fetch(CUSTOMER_METERPOINTS, customer_id, first, today)
            ]
            return CustomerOverview(
                **dict(row),
                period_from=first,
                period_to=today,
                consumption=sum((m.consumption for m in meterpoints), Decimal(0)),
                meterpoints=meterpoints,
                freshness=await self._freshness(conn, version, self._customer_topics),
            )

        return await self._read(query)

    async def work_orders(self, status: str | None, after: str, limit: int, caller: Principal) -> WorkOrderPage:
        """The caller's work orders (of one status, or all) with ids after ``after``, at most ``limit`` of them."""
        tenant = tenant_of(caller)
        statement = WORK_ORDERS[(tenant is not None, status is not None)]

        async def query(conn: Connection, version: int, timezone: ZoneInfo) -> WorkOrderPage:
            rows = await conn.fetch(statement, status, after, limit + 1, tenant)
            items = [WorkOrder(**dict(r)) for r in rows[:limit]]
            return WorkOrderPage(
                items=items,
                next_cursor=items[-1].work_order_id if len(rows) > limit else None,
                freshness=await self._freshness(conn, version, self._workorder_topics),
            )

        return await self._read(query)


class NoSeries(enum.Enum):
    """The meterpoint is the caller's, but it has no validated series for the day (or not that version)."""

    NO_SERIES = "no_series"


NO_SERIES = NoSeries.NO_SERIES
_SHARE = Decimal("0.000001")


def _local_midnight(day: datetime | date, timezone: ZoneInfo) -> datetime:
    assert not isinstance(day, datetime)  # daily consumption takes dates
    return datetime(day.year, day.month, day.day, tzinfo=timezone)


def _validation_of(rows: Sequence[asyncpg.Record]) -> BucketValidation:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["quality"]] = counts.get(row["quality"], 0) + row["intervals"]
    return BucketValidation(
        quality=aggregate_quality(counts),
        status=aggregate_status(row["status"] for row in rows),
        version=max(row["version"] for row in rows),
        quantity=sum((row["quantity"] for row in rows), Decimal(0)),
        intervals=sum(counts.values()),
        measured=counts.get(QuantityQuality.AS_PROVIDED, 0),
        estimated=counts.get(QuantityQuality.ESTIMATED, 0),
        missing=counts.get(QuantityQuality.NOT_AVAILABLE, 0),
    )


def _share(part: int, whole: int) -> Decimal:
    return (Decimal(part) / Decimal(whole)).quantize(_SHARE) if whole else Decimal(0).quantize(_SHARE)


def _area_completeness(day: date, row: asyncpg.Record) -> GridAreaCompleteness:
    intervals, measured, estimated, missing = row["intervals"], row["measured"], row["estimated"], row["missing"]
    return GridAreaCompleteness(
        grid_area=row["grid_area"],
        day=day,
        meterpoints=row["meterpoints"],
        series=row["series"],
        intervals=intervals,
        measured=measured,
        estimated=estimated,
        missing=missing,
        other=intervals - measured - estimated - missing,
        measured_share=_share(measured, intervals),
        estimated_share=_share(estimated, intervals),
        missing_share=_share(missing, intervals),
    )
