"""The exactly-once apply: one batch of view changes and its offsets in one PostgreSQL transaction.

Every batch is one transaction that (1) reads the view version pointer ``FOR SHARE`` (a switch waits for it and it
waits for a switch), (2) moves the stored offsets of the batch's partitions *only if* they still are where this
consumer left them (a fence against a consumer that lost its partitions in a rebalance but still writes), and
(3) applies the view changes. Commit makes offsets and views move together; a crash anywhere rolls back both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.readside.adapters.schema import TopicPartitionKey, current_version, search_path
from services.readside.projections import ViewChanges, WorkOrderRow, fold_work_orders
from services.readside.series import SeriesCurrentRow, SeriesDayRow, SeriesPointRow


class VersionChanged(Exception):
    """The view version pointer moved (a rebuild switched): re-read the offsets of the new version."""

    def __init__(self, version: int) -> None:
        super().__init__(f"the views are now version {version}")
        self.version = version


class Fenced(Exception):
    """The stored offsets are not where this consumer left them: another consumer owns the partition now."""


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    """Move one partition's stored offset from ``expected`` (None: nothing applied yet) to ``next_offset``."""

    topic: str
    partition: int
    expected: int | None
    next_offset: int
    high_watermark: int | None


_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging_readings (
    meterpoint_id text COLLATE "C",
    register      text COLLATE "C",
    interval_end  timestamptz,
    resolution    text,
    value         float8,
    unit          text,
    quality       text,
    source        text,
    reading_id    uuid
) ON COMMIT DELETE ROWS
"""
_STAGING_COLUMNS = (
    "meterpoint_id",
    "register",
    "interval_end",
    "resolution",
    "value",
    "unit",
    "quality",
    "source",
    "reading_id",
)

_STAGING_SERIES = """
CREATE TEMP TABLE IF NOT EXISTS staging_series_points (
    meterpoint_id  text COLLATE "C",
    register       text COLLATE "C",
    interval_end   timestamptz,
    version        integer,
    day            date,
    position       smallint,
    interval_start timestamptz,
    quantity       float8,
    quality        text,
    status         text,
    point_version  integer,
    method         text,
    rules          text[],
    measured       float8
) ON COMMIT DELETE ROWS
"""
_STAGING_SERIES_COLUMNS = SeriesPointRow._fields

_FENCE = """
UPDATE consumer_offsets o
SET next_offset = a.next_offset, high_watermark = a.high_watermark, applied_at = now()
FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[])
     AS a(topic, partition, expected, next_offset, high_watermark)
WHERE o.topic = a.topic AND o.partition = a.partition AND o.next_offset IS NOT DISTINCT FROM a.expected
"""

# A float8 with at most 3 decimals and 12 significant digits converts to numeric through its 15-digit spelling,
# so round(value::numeric, 3) is the meter's decimal exactly. Only rows that changed come back from the upsert,
# each with the difference it made (the whole energy when it inserted); the aggregates add those differences,
# once per meterpoint-hour and meterpoint-day, in the same statement.
_APPLY_READINGS = """
WITH latest AS (
    -- The newest interval wins the reading fields; last_seen only grows (a late backfill still counts as contact).
    INSERT INTO latest_readings AS l (meterpoint_id, register, interval_end, value, unit, quality, source, last_seen)
    SELECT meterpoint_id, register, interval_end, round(value::numeric, 3), unit, quality, source, last_seen
    FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::float8[], $6::text[], $7::text[], $8::text[],
                $9::timestamptz[]) AS u(meterpoint_id, register, interval_end, value, unit, quality, source, last_seen)
    ON CONFLICT (meterpoint_id, register) DO UPDATE
    SET interval_end = CASE WHEN excluded.interval_end >= l.interval_end THEN excluded.interval_end
                            ELSE l.interval_end END,
        value = CASE WHEN excluded.interval_end >= l.interval_end THEN excluded.value ELSE l.value END,
        unit = CASE WHEN excluded.interval_end >= l.interval_end THEN excluded.unit ELSE l.unit END,
        quality = CASE WHEN excluded.interval_end >= l.interval_end THEN excluded.quality ELSE l.quality END,
        source = CASE WHEN excluded.interval_end >= l.interval_end THEN excluded.source ELSE l.source END,
        last_seen = greatest(l.last_seen, excluded.last_seen)
    WHERE excluded.interval_end >= l.interval_end OR excluded.last_seen > l.last_seen
), written AS (
    INSERT INTO readings AS r
        (meterpoint_id, register, interval_end, resolution, value, unit, quality, source, reading_id, energy)
    SELECT s.meterpoint_id, s.register, s.interval_end, s.resolution, v.value, s.unit, s.quality, s.source,
           s.reading_id,
           v.value * CASE s.unit WHEN 'Wh' THEN 0.001 WHEN 'varh' THEN 0.001
                                 WHEN 'MWh' THEN 1000 WHEN 'Mvarh' THEN 1000 ELSE 1 END
    FROM staging_readings s CROSS JOIN LATERAL (SELECT round(s.value::numeric, 3) AS value) v
    ON CONFLICT (meterpoint_id, register, interval_end) DO UPDATE
    SET resolution = excluded.resolution, value = excluded.value, unit = excluded.unit,
        quality = excluded.quality, source = excluded.source, reading_id = excluded.reading_id,
        energy = excluded.energy, replaced_energy = r.energy
    WHERE (r.value, r.unit, r.quality, r.source, r.resolution)
          IS DISTINCT FROM (excluded.value, excluded.unit, excluded.quality, excluded.source, excluded.resolution)
    RETURNING r.meterpoint_id, r.register, r.interval_end,
              r.energy - coalesce(r.replaced_energy, 0) AS delta, (r.replaced_energy IS NULL)::integer AS added
), hourly AS (
    SELECT meterpoint_id, register, date_trunc('hour', interval_end - interval '1 microsecond', 'UTC') AS hour,
           sum(delta) AS delta, sum(added)::integer AS added
    FROM written GROUP BY 1, 2, 3
), hourly_upsert AS (
    INSERT INTO consumption_hourly AS c (meterpoint_id, register, hour, energy, readings)
    SELECT meterpoint_id, register, hour, delta, added FROM hourly
    ON CONFLICT (meterpoint_id, register, hour) DO UPDATE
    SET energy = c.energy + excluded.energy, readings = c.readings + excluded.readings
)
INSERT INTO consumption_daily AS d (meterpoint_id, register, day, energy, readings)
SELECT meterpoint_id, register, (hour AT TIME ZONE $1)::date, sum(delta), sum(added)::integer
FROM hourly GROUP BY 1, 2, 3
ON CONFLICT (meterpoint_id, register, day) DO UPDATE
SET energy = d.energy + excluded.energy, readings = d.readings + excluded.readings
"""

_APPLY_METERPOINTS = """
INSERT INTO meterpoints AS m (meterpoint_id, last_seen)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT (meterpoint_id) DO UPDATE SET last_seen = excluded.last_seen
WHERE excluded.last_seen IS NOT NULL AND (m.last_seen IS NULL OR excluded.last_seen > m.last_seen)
"""

_APPLY_ALARMS = """
INSERT INTO alarms (alarm_id, meterpoint_id, alarm, raised_at, source, details)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])
ON CONFLICT (alarm_id) DO NOTHING
"""

_APPLY_CUSTOMERS = """
INSERT INTO customers AS c
    (customer_id, kind, name, email, phone, street, postcode, city, country, version, changed_at, grid_company)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::integer[], $11::timestamptz[], $12::text[])
ON CONFLICT (customer_id) DO UPDATE
SET kind = excluded.kind, name = excluded.name, email = excluded.email, phone = excluded.phone,
    street = excluded.street, postcode = excluded.postcode, city = excluded.city, country = excluded.country,
    version = excluded.version, changed_at = excluded.changed_at, grid_company = excluded.grid_company
WHERE excluded.version > c.version
"""

# Master data: the newest version of a meterpoint wins, whatever order a rebuild reads the topics in. The owner is
# copied onto the meterpoint's work orders in the same statement (and a work order applied later takes it from
# here), so a tenant's list of orders is an index range of work_orders.
_APPLY_MASTERS = """
WITH owners AS (
    INSERT INTO meterpoints AS m (meterpoint_id, grid_company, grid_area, master_version)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[])
    ON CONFLICT (meterpoint_id) DO UPDATE
    SET grid_company = excluded.grid_company, grid_area = excluded.grid_area, master_version = excluded.master_version
    WHERE m.master_version IS NULL OR excluded.master_version > m.master_version
    RETURNING m.meterpoint_id, m.grid_company
)
UPDATE work_orders w SET grid_company = o.grid_company FROM owners o
WHERE w.meterpoint_id = o.meterpoint_id AND w.grid_company IS DISTINCT FROM o.grid_company
"""

_APPLY_LINKS = """
INSERT INTO meterpoint_links (customer_id, meterpoint_id, move_in)
SELECT * FROM unnest($1::text[], $2::text[], $3::date[])
ON CONFLICT DO NOTHING
"""

# An unlink ends the customer's latest holding that began on or before the move-out day, whatever order the
# link and unlink arrive in within the batch (links are applied first).
_APPLY_UNLINKS = """
UPDATE meterpoint_links l SET move_out = u.move_out
FROM unnest($1::text[], $2::text[], $3::date[]) AS u(customer_id, meterpoint_id, move_out)
WHERE l.customer_id = u.customer_id AND l.meterpoint_id = u.meterpoint_id
  AND l.move_in = (SELECT max(x.move_in) FROM meterpoint_links x
                   WHERE x.customer_id = u.customer_id AND x.meterpoint_id = u.meterpoint_id
                     AND x.move_in <= u.move_out)
"""

# Published versions are only ever inserted (a resend changes nothing); the current version only moves forward.
_APPLY_SERIES_DAYS = """
INSERT INTO series_days
SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::integer[], $5::uuid[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::text[],
                     $14::boolean[], $15::timestamptz[], $16::integer[], $17::integer[], $18::integer[],
                     $19::integer[])
ON CONFLICT DO NOTHING
"""
_APPLY_SERIES_POINTS = """
INSERT INTO series_points
    (meterpoint_id, register, interval_end, version, day, position, interval_start, quantity, quality, status,
     point_version, method, rules, measured)
SELECT meterpoint_id, register, interval_end, version, day, position, interval_start, round(quantity::numeric, 3),
       quality, status, point_version, method, rules, round(measured::numeric, 3)
FROM staging_series_points
ON CONFLICT DO NOTHING
"""
_APPLY_SERIES_CURRENT = """
INSERT INTO series_current AS c (meterpoint_id, register, day, version, grid_area)
SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::integer[], $5::text[])
ON CONFLICT (meterpoint_id, register, day) DO UPDATE SET version = excluded.version, grid_area = excluded.grid_area
WHERE excluded.version > c.version
"""

_WORK_ORDER_COLUMNS = WorkOrderRow._fields
_SELECT_WORK_ORDERS = """
SELECT work_order_id, meterpoint_id, type, status, crew, window_start, window_end, description, started_at,
       completed_at, result, new_meter_serial, cancel_reason, created_at, updated_at
FROM work_orders WHERE work_order_id = ANY($1::text[])
"""
_APPLY_WORK_ORDERS = """
INSERT INTO work_orders AS w
    (work_order_id, meterpoint_id, type, status, crew, window_start, window_end, description, started_at,
     completed_at, result, new_meter_serial, cancel_reason, created_at, updated_at, grid_company)
SELECT u.*, (SELECT m.grid_company FROM meterpoints m WHERE m.meterpoint_id = u.meterpoint_id)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::timestamptz[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[],
            $12::text[], $13::text[], $14::timestamptz[], $15::timestamptz[])
     AS u(work_order_id, meterpoint_id, type, status, crew, window_start, window_end, description, started_at,
          completed_at, result, new_meter_serial, cancel_reason, created_at, updated_at)
ON CONFLICT (work_order_id) DO UPDATE
SET meterpoint_id = excluded.meterpoint_id, type = excluded.type, status = excluded.status, crew = excluded.crew,
    window_start = excluded.window_start, window_end = excluded.window_end, description = excluded.description,
    started_at = excluded.started_at, completed_at = excluded.completed_at, result = excluded.result,
    new_meter_serial = excluded.new_meter_serial, cancel_reason = excluded.cancel_reason,
    created_at = excluded.created_at, updated_at = excluded.updated_at, grid_company = excluded.grid_company
"""


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


class ViewWriter:
    """Applies batches over one dedicated connection (its temp staging table and prepared statements live there).

    ``fixed_version`` pins the writer to one version (the rebuild); otherwise it follows the pointer and raises
    `VersionChanged` when the pointer moved since ``version`` was passed in.
    """

    def __init__(
        self,
        dsn: str,
        control_schema: str,
        *,
        fixed_version: int | None = None,
        command_timeout: float = 15.0,
        connect_timeout: float = 5.0,
        application_name: str = "readside",
    ) -> None:
        self._dsn = dsn
        self._control = control_schema
        self._fixed = fixed_version
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._conn: asyncpg.Connection[Any] | None = None
        self._timezones: dict[int, str] = {}
        self._months: dict[int, set[Any]] = {}

    async def _connection(self) -> asyncpg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings={
                    "application_name": self._application_name,
                    "search_path": f'"{self._control}"',
                    # A crash of PostgreSQL may lose the last commits, but views and offsets together (atomic,
                    # in order): the consumer then applies those records again. The log is the truth.
                    "synchronous_commit": "off",
                },
            )
            await conn.execute(_STAGING)
            await conn.execute(_STAGING_SERIES)
            self._conn = conn
        return conn

    def _discard(self) -> None:
        # After an error the connection's state is unknown (a broken socket, a half-done COPY): start afresh.
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=2.0)

    async def ping(self) -> None:
        """One round trip (a breaker probe)."""
        try:
            conn = await self._connection()
            await conn.fetchval("SELECT 1")
        except BaseException:
            self._discard()
            raise

    async def pointer(self) -> int:
        """The version the pointer names now."""
        try:
            conn = await self._connection()
            return await current_version(conn)
        except BaseException:
            self._discard()
            raise

    async def positions(
        self, partitions: Sequence[TopicPartitionKey]
    ) -> tuple[int, dict[TopicPartitionKey, int | None]]:
        """The version the writer works on and the stored next offset of each partition (rows made if missing)."""
        try:
            conn = await self._connection()
            async with conn.transaction():
                version = self._fixed if self._fixed is not None else await current_version(conn)
                await conn.execute("SELECT set_config('search_path', $1, true)", search_path(self._control, version))
                topics = [topic for topic, _ in partitions]
                numbers = [partition for _, partition in partitions]
                await conn.execute(
                    "INSERT INTO consumer_offsets (topic, partition) SELECT * FROM unnest($1::text[], $2::integer[]) "
                    "ON CONFLICT DO NOTHING",
                    topics,
                    numbers,
                )
                rows = await conn.fetch(
                    "SELECT o.topic, o.partition, o.next_offset FROM consumer_offsets o "
                    "JOIN unnest($1::text[], $2::integer[]) AS p(topic, partition) USING (topic, partition)",
                    topics,
                    numbers,
                )
                if version not in self._timezones:
                    self._timezones[version] = await conn.fetchval("SELECT timezone FROM view_meta")
        except BaseException:
            self._discard()
            raise
        return version, {(row["topic"], row["partition"]): row["next_offset"] for row in rows}

    async def apply(self, version: int, changes: ViewChanges, advances: Sequence[OffsetAdvance]) -> None:
        """Apply one batch to view ``version`` and move its offsets, in one transaction.

        Raises `VersionChanged` (the pointer moved) or `Fenced` (another consumer moved an offset); nothing is
        written then. Any other error means the database did not take the batch.
        """
        try:
            conn = await self._connection()
            if changes.months:
                await self._ensure_partitions(conn, version, changes)
            async with conn.transaction():
                path = search_path(self._control, version)
                if self._fixed is None:
                    # One round trip: the pointer (FOR SHARE: a switch waits for this batch) and the search_path.
                    pointer = await conn.fetchval(
                        "SELECT (SELECT version FROM view_version FOR SHARE), set_config('search_path', $1, true)", path
                    )
                    if pointer != version:
                        raise VersionChanged(pointer)
                else:
                    # A rebuild writes a version nobody reads yet; it must not wait for its own switch's lock.
                    await conn.execute("SELECT set_config('search_path', $1, true)", path)
                if advances:
                    status = await conn.execute(
                        _FENCE,
                        [a.topic for a in advances],
                        [a.partition for a in advances],
                        [a.expected for a in advances],
                        [a.next_offset for a in advances],
                        [a.high_watermark for a in advances],
                    )
                    if status != f"UPDATE {len(advances)}":
                        raise Fenced(f"expected to move {len(advances)} offsets, {status}")
                await self._apply_changes(conn, version, changes)
        except (VersionChanged, Fenced):
            raise
        except BaseException:
            self._discard()
            raise

    async def _ensure_partitions(self, conn: asyncpg.Connection[Any], version: int, changes: ViewChanges) -> None:
        known = self._months.setdefault(version, set())
        missing = sorted(changes.months - known)
        if not missing:
            return
        # Its own short transaction: DDL on the parent table must not be held for a whole batch.
        async with conn.transaction():
            await conn.execute("SELECT set_config('search_path', $1, true)", search_path(self._control, version))
            await conn.fetchval("SELECT ensure_readings_partitions($1::date[])", missing)
        known.update(missing)

    async def _apply_changes(self, conn: asyncpg.Connection[Any], version: int, changes: ViewChanges) -> None:
        if changes.readings:
            await conn.copy_records_to_table("staging_readings", records=changes.readings, columns=_STAGING_COLUMNS)
            await conn.execute(_APPLY_READINGS, self._timezones[version], *_columns(changes.latest, 8))
        if changes.meterpoints:
            await conn.execute(_APPLY_METERPOINTS, *_columns(changes.meterpoints, 2))
        if changes.alarms:
            await conn.execute(_APPLY_ALARMS, *_columns(changes.alarms, 6))
        if changes.customers:
            await conn.execute(_APPLY_CUSTOMERS, *_columns(changes.customers, 12))
        if changes.masters:
            # Before the work orders: an order applied in this batch takes its meterpoint's owner from here.
            await conn.execute(_APPLY_MASTERS, *_columns(changes.masters, 4))
        if changes.links:
            await conn.execute(_APPLY_LINKS, *_columns(changes.links, 3))
        if changes.unlinks:
            await conn.execute(_APPLY_UNLINKS, *_columns(changes.unlinks, 3))
        if changes.work_orders:
            ids = sorted({event.work_order_id for event, _ in changes.work_orders})
            stored = await conn.fetch(_SELECT_WORK_ORDERS, ids)
            current: Mapping[str, WorkOrderRow] = {row["work_order_id"]: WorkOrderRow(*row) for row in stored}
            changed = fold_work_orders(current, changes.work_orders)
            if changed:
                await conn.execute(_APPLY_WORK_ORDERS, *_columns(changed, len(_WORK_ORDER_COLUMNS)))
        series = changes.series
        if series:
            await conn.execute(_APPLY_SERIES_DAYS, *_columns(series.days, len(SeriesDayRow._fields)))
            await conn.copy_records_to_table(
                "staging_series_points", records=series.points, columns=_STAGING_SERIES_COLUMNS
            )
            await conn.execute(_APPLY_SERIES_POINTS)
            await conn.execute(_APPLY_SERIES_CURRENT, *_columns(series.current, len(SeriesCurrentRow._fields)))
