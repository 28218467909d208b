"""The work order store over asyncpg: orders, idempotency keys, the customer replica, and the outbox.

Each write is one READ COMMITTED transaction that changes the order and adds its event to the outbox
(``libs.platform.outbox``), so an event exists exactly when its change was committed. Transitions lock the
order's row (``FOR UPDATE``), so of two updates made from the same version one wins and the other sees the new
version (412). Every call runs under the `Database` guard: an outage is a `Refused`, never a silent skip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from libs.events import (
    CloudEvent,
    CustomerRegistered,
    CustomerUpdated,
    EventData,
    MeterAlarm,
    MeterAlarmRaised,
    MeterpointLinked,
    MeterpointUnlinked,
    WorkOrderResult,
    WorkOrderStatus,
    WorkOrderType,
    make_event,
    to_record,
)
from libs.events.meterpoints import MeterpointRegistered, MeterpointUpdated
from libs.platform.db import Connection
from libs.platform.outbox import OutboxRecord, add_to_outbox
from services.workorders.adapters.database import Database
from services.workorders.domain import (
    Address,
    Customer,
    CustomerInfo,
    CustomerSource,
    CustomerStatus,
    Origin,
    Window,
    WorkOrder,
)
from services.workorders.handlers import (
    AlarmLimit,
    AlarmOutcome,
    AlarmResult,
    Build,
    Change,
    ClaimTaken,
    IdempotencyClaim,
    ListQuery,
    NotFound,
    Page,
    PendingEnrichment,
    VersionMismatch,
    Versions,
)

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
COMPONENT = "workorders"
T = TypeVar("T")

_COLUMNS = (
    "seq, work_order_id, meterpoint_id, type, status, version, created_at, updated_at, origin, description, "
    "alarm_id, alarm, crew, window_start, window_end, started_at, completed_at, result, new_meter_serial, "
    "cancel_reason, cancelled_at, customer_status, customer_source, customer_id, customer_name, customer_email, "
    "customer_phone, customer_street, customer_postcode, customer_city, customer_country, customer_checked_at, "
    "grid_company"
)
_PLACEHOLDERS = ", ".join(f"${n}" for n in range(1, _COLUMNS.count(",") + 2))
_INSERT = f"INSERT INTO work_orders ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"  # noqa: S608 - constant text
# $2: the caller's tenant, NULL for the platform role (every order, also those whose tenant is not known yet).
_BY_ID_IN_SCOPE = "work_order_id = $1 AND ($2::text IS NULL OR grid_company = $2::text)"
_UPDATE = (
    "UPDATE work_orders SET status = $2, version = $3, updated_at = $4, crew = $5, window_start = $6, "
    "window_end = $7, started_at = $8, completed_at = $9, result = $10, new_meter_serial = $11, "
    "cancel_reason = $12, cancelled_at = $13 WHERE seq = $1"
)


def work_order_id_of(seq: int) -> str:
    """The readable id of work order number ``seq``."""
    return f"WO-{seq:08d}"


def _customer_values(info: CustomerInfo) -> list[Any]:
    c = info.customer
    contact: list[Any] = [None] * 8
    if c is not None:
        a = c.address
        contact = [c.customer_id, c.name, c.email, c.phone, a.street, a.postcode, a.city, a.country]
    return [info.status.value, info.source.value if info.source else None, *contact, info.checked_at]


def _row_values(seq: int, order: WorkOrder) -> list[Any]:
    window = order.window
    return [
        seq,
        order.work_order_id,
        order.meterpoint_id,
        order.type.value,
        order.status.value,
        order.version,
        order.created_at,
        order.updated_at,
        order.origin.value,
        order.description,
        order.alarm_id,
        order.alarm.value if order.alarm else None,
        order.crew,
        window.start if window else None,
        window.end if window else None,
        order.started_at,
        order.completed_at,
        order.result.value if order.result else None,
        order.new_meter_serial,
        order.cancel_reason,
        order.cancelled_at,
        *_customer_values(order.customer),
        order.grid_company,
    ]


def _customer_of(row: asyncpg.Record, prefix: str = "customer_") -> Customer:
    address = Address(row[f"{prefix}street"], row[f"{prefix}postcode"], row[f"{prefix}city"], row[f"{prefix}country"])
    return Customer(row[f"{prefix}id"], row[f"{prefix}name"], row[f"{prefix}email"], row[f"{prefix}phone"], address)


def _order_of(row: asyncpg.Record) -> WorkOrder:
    start, end = row["window_start"], row["window_end"]
    customer = CustomerInfo(
        status=CustomerStatus(row["customer_status"]),
        customer=_customer_of(row) if row["customer_id"] is not None else None,
        source=CustomerSource(row["customer_source"]) if row["customer_source"] else None,
        checked_at=row["customer_checked_at"],
    )
    return WorkOrder(
        work_order_id=row["work_order_id"],
        meterpoint_id=row["meterpoint_id"],
        type=WorkOrderType(row["type"]),
        status=WorkOrderStatus(row["status"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        customer=customer,
        origin=Origin(row["origin"]),
        description=row["description"],
        alarm_id=str(row["alarm_id"]) if row["alarm_id"] is not None else None,
        alarm=MeterAlarm(row["alarm"]) if row["alarm"] else None,
        crew=row["crew"],
        window=Window(start, end) if start is not None and end is not None else None,
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        result=WorkOrderResult(row["result"]) if row["result"] else None,
        new_meter_serial=row["new_meter_serial"],
        cancel_reason=row["cancel_reason"],
        cancelled_at=row["cancelled_at"],
        grid_company=row["grid_company"],
    )


class PostgresWorkOrderStore:
    """`handlers.WorkOrderStore` over an asyncpg pool (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        database: Database,
        *,
        topic: str,
        source: str,
        acquire_timeout: float = 2.0,
    ) -> None:
        self._pool = pool
        self._db = database
        self._topic = topic
        self._source = source
        self._acquire_timeout = acquire_timeout

    async def _read(self, query: Callable[[Connection], Awaitable[T]]) -> T:
        async def run() -> T:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                return await query(conn)

        return await self._db.run(run)

    async def _write(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        async def run() -> T:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn, conn.transaction():
                return await work(conn)

        return await self._db.run(run)

    async def _publish(self, conn: Connection, event: EventData) -> None:
        record = to_record(make_event(event, source=self._source))
        await add_to_outbox(conn, [OutboxRecord(self._topic, record.key, record.value, record.headers)])

    async def get(self, work_order_id: str, tenant: str | None) -> WorkOrder | None:
        async def query(conn: Connection) -> WorkOrder | None:
            # One statement for "no such order" and "not the caller's": the same answer, in the same time.
            sql = f"SELECT {_COLUMNS} FROM work_orders WHERE {_BY_ID_IN_SCOPE}"  # noqa: S608 - constant text
            row = await conn.fetchrow(sql, work_order_id, tenant)
            return _order_of(row) if row is not None else None

        return await self._read(query)

    async def page(self, query: ListQuery, tenant: str | None) -> Page:
        conditions: list[str] = []
        args: list[Any] = []

        def where(condition: str, value: Any) -> None:
            args.append(value)
            conditions.append(condition.format(f"${len(args)}"))

        if tenant is not None:
            # A tenant's orders are an index range (work_orders_by_tenant); the platform's are all of them.
            where("grid_company = {}", tenant)

        if query.statuses:
            where("status = ANY({}::text[])", [s.value for s in query.statuses])
        if query.types:
            where("type = ANY({}::text[])", [t.value for t in query.types])
        if query.meterpoint_id is not None:
            where("meterpoint_id = {}", query.meterpoint_id)
        if query.created_from is not None:
            where("created_at >= {}", query.created_from)
        if query.created_to is not None:
            where("created_at < {}", query.created_to)
        if query.after is not None:
            where("seq < {}", query.after)
        args.append(query.limit + 1)
        clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        # The conditions are fixed fragments; values only ever travel as parameters.
        sql = f"SELECT {_COLUMNS} FROM work_orders {clause} ORDER BY seq DESC LIMIT ${len(args)}"  # noqa: S608

        async def run(conn: Connection) -> Page:
            rows = await conn.fetch(sql, *args)
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            return Page([_order_of(row) for row in rows], rows[-1]["seq"] if more and rows else None)

        return await self._read(run)

    async def find_claim(self, client: str, key: str) -> tuple[str, WorkOrder | None] | None:
        async def query(conn: Connection) -> tuple[str, WorkOrder | None] | None:
            row = await conn.fetchrow(
                "SELECT request_hash, work_order_id FROM idempotency_keys WHERE client = $1 AND key = $2", client, key
            )
            if row is None:
                return None
            order = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM work_orders WHERE work_order_id = $1",  # noqa: S608
                row["work_order_id"],
            )
            return row["request_hash"], _order_of(order) if order is not None else None

        return await self._read(query)

    async def meterpoint_owner(self, meterpoint_id: str) -> str | None:
        async def query(conn: Connection) -> str | None:
            owner: str | None = await conn.fetchval(
                "SELECT grid_company FROM meterpoint_owners WHERE meterpoint_id = $1", meterpoint_id
            )
            return owner

        return await self._read(query)

    async def create(self, build: Build, claim: IdempotencyClaim | None, grid_company: str | None) -> WorkOrder:
        async def work(conn: Connection) -> WorkOrder:
            seq: int = await conn.fetchval("SELECT nextval('work_order_number')")
            work_order_id = work_order_id_of(seq)
            if claim is not None:
                # A concurrent request with the same key waits here until the first commits, then gives way.
                claimed = await conn.fetchval(
                    "INSERT INTO idempotency_keys (client, key, request_hash, work_order_id) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT DO NOTHING RETURNING true",
                    claim.client,
                    claim.key,
                    claim.request_hash,
                    work_order_id,
                )
                if not claimed:
                    raise ClaimTaken(claim.key)
            order, event = build(work_order_id)
            order = replace(order, grid_company=grid_company)
            await conn.execute(_INSERT, *_row_values(seq, order))
            await self._publish(conn, event)
            return order

        return await self._write(work)

    async def create_for_alarm(
        self, alarm: MeterAlarmRaised, build: Build, limit: AlarmLimit, now: datetime
    ) -> AlarmResult:
        async def work(conn: Connection) -> AlarmResult:
            # Alarms of one meterpoint and type are decided one at a time (the consumers run several records
            # at once): of two concurrent first alarms, one opens the order and the other attaches to it.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"workorders.alarm:{alarm.meterpoint_id}:{alarm.alarm.value}",
            )
            if await conn.fetchval("SELECT 1 FROM work_order_alarms WHERE alarm_id = $1", alarm.alarm_id):
                return AlarmResult(AlarmOutcome.REPEATED)
            open_order = await conn.fetchval(
                "SELECT work_order_id FROM work_orders WHERE meterpoint_id = $1 AND alarm = $2 AND origin = 'alarm' "
                "AND status IN ('created', 'scheduled', 'in_progress') ORDER BY seq DESC LIMIT 1",
                alarm.meterpoint_id,
                alarm.alarm.value,
            )
            if open_order is not None:
                await self._record_alarm(conn, alarm, AlarmOutcome.ATTACHED, open_order)
                return AlarmResult(AlarmOutcome.ATTACHED, open_order)
            recent: int = await conn.fetchval(
                "SELECT count(*) FROM work_orders WHERE meterpoint_id = $1 AND origin = 'alarm' AND created_at > $2",
                alarm.meterpoint_id,
                now - limit.window,
            )
            if recent >= limit.max_orders:
                await self._record_alarm(conn, alarm, AlarmOutcome.RATE_LIMITED, None)
                return AlarmResult(AlarmOutcome.RATE_LIMITED)
            seq: int = await conn.fetchval("SELECT nextval('work_order_number')")
            order, event = build(work_order_id_of(seq))
            assert order.alarm_id == alarm.alarm_id
            # The meterpoint's owner if its master data is here; otherwise NULL (platform only) until it arrives and
            # apply_meterpoint_event fills it in: an alarm is never held back for lack of master data.
            owner = await conn.fetchval(
                "SELECT grid_company FROM meterpoint_owners WHERE meterpoint_id = $1", alarm.meterpoint_id
            )
            order = replace(order, grid_company=owner)
            await conn.execute(_INSERT, *_row_values(seq, order))
            await self._record_alarm(conn, alarm, AlarmOutcome.OPENED, order.work_order_id)
            await self._publish(conn, event)
            return AlarmResult(AlarmOutcome.OPENED, order.work_order_id, order)

        return await self._write(work)

    async def _record_alarm(
        self, conn: Connection, alarm: MeterAlarmRaised, outcome: AlarmOutcome, work_order_id: str | None
    ) -> None:
        await conn.execute(
            "INSERT INTO work_order_alarms (alarm_id, meterpoint_id, alarm, raised_at, outcome, work_order_id) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            alarm.alarm_id,
            alarm.meterpoint_id,
            alarm.alarm.value,
            alarm.raised_at,
            outcome.value,
            work_order_id,
        )

    async def change(self, work_order_id: str, expected: Versions, change: Change, tenant: str | None) -> WorkOrder:
        async def work(conn: Connection) -> WorkOrder:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM work_orders WHERE {_BY_ID_IN_SCOPE} FOR UPDATE",  # noqa: S608
                work_order_id,
                tenant,
            )
            if row is None:
                raise NotFound(work_order_id)
            current = _order_of(row)
            if expected is not None and current.version not in expected:
                raise VersionMismatch(current)
            changed, event = change(current)
            window = changed.window
            await conn.execute(
                _UPDATE,
                row["seq"],
                changed.status.value,
                changed.version,
                changed.updated_at,
                changed.crew,
                window.start if window else None,
                window.end if window else None,
                changed.started_at,
                changed.completed_at,
                changed.result.value if changed.result else None,
                changed.new_meter_serial,
                changed.cancel_reason,
                changed.cancelled_at,
            )
            await self._publish(conn, event)
            return changed

        return await self._write(work)

    async def replica_customer(self, meterpoint_id: str, on: date) -> Customer | None:
        async def query(conn: Connection) -> Customer | None:
            row = await conn.fetchrow(
                "SELECT c.customer_id AS c_id, c.name AS c_name, c.email AS c_email, c.phone AS c_phone, "
                "c.street AS c_street, c.postcode AS c_postcode, c.city AS c_city, c.country AS c_country "
                "FROM replica_meterpoint_links l JOIN replica_customers c USING (customer_id) "
                "WHERE l.meterpoint_id = $1 AND l.move_in <= $2 AND (l.move_out IS NULL OR l.move_out >= $2) "
                "ORDER BY l.move_in DESC LIMIT 1",
                meterpoint_id,
                on,
            )
            return _customer_of(row, "c_") if row is not None else None

        return await self._read(query)

    async def apply_customer_event(self, event: CloudEvent[Any]) -> None:
        data = event.data

        async def work(conn: Connection) -> None:
            match data:
                case CustomerRegistered() | CustomerUpdated():
                    a = data.contact.address
                    # Full records with versions: an older or repeated one changes nothing.
                    await conn.execute(
                        "INSERT INTO replica_customers "
                        "(customer_id, kind, name, email, phone, street, postcode, city, country, version) "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (customer_id) DO UPDATE SET "
                        "kind = EXCLUDED.kind, name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone, "
                        "street = EXCLUDED.street, postcode = EXCLUDED.postcode, city = EXCLUDED.city, "
                        "country = EXCLUDED.country, version = EXCLUDED.version, updated_at = now() "
                        "WHERE replica_customers.version < EXCLUDED.version",
                        data.customer_id,
                        data.kind.value,
                        data.name,
                        data.contact.email,
                        data.contact.phone,
                        a.street,
                        a.postcode,
                        a.city,
                        a.country,
                        data.version,
                    )
                case MeterpointLinked():
                    await conn.execute(
                        "INSERT INTO replica_meterpoint_links (meterpoint_id, customer_id, move_in) "
                        "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        data.meterpoint_id,
                        data.customer_id,
                        data.move_in,
                    )
                case MeterpointUnlinked():
                    # The open (or already closed on that day: a redelivery) period the move-out ends.
                    await conn.execute(
                        "UPDATE replica_meterpoint_links SET move_out = $3 WHERE (meterpoint_id, customer_id, move_in) "
                        "= (SELECT meterpoint_id, customer_id, move_in FROM replica_meterpoint_links "
                        "WHERE meterpoint_id = $1 AND customer_id = $2 AND move_in <= $3 "
                        "AND (move_out IS NULL OR move_out = $3) ORDER BY move_in DESC LIMIT 1)",
                        data.meterpoint_id,
                        data.customer_id,
                        data.move_out,
                    )
                case _:
                    pass  # other event types on the topic do not concern the replica

        await self._write(work)

    async def apply_meterpoint_event(self, event: CloudEvent[Any]) -> None:
        data = event.data
        if not isinstance(data, MeterpointRegistered | MeterpointUpdated):
            return

        async def work(conn: Connection) -> None:
            # The newest version wins (a redelivered or older record changes nothing); the meterpoint's orders follow
            # its owner, those opened before it was known included. Their representation changed, so their version.
            await conn.execute(
                "WITH owner AS ("
                " INSERT INTO meterpoint_owners (meterpoint_id, grid_company, version) VALUES ($1, $2, $3)"
                " ON CONFLICT (meterpoint_id) DO UPDATE SET grid_company = EXCLUDED.grid_company,"
                " version = EXCLUDED.version, updated_at = now() WHERE meterpoint_owners.version < EXCLUDED.version"
                " RETURNING meterpoint_id, grid_company) "
                "UPDATE work_orders w SET grid_company = o.grid_company, version = w.version + 1, updated_at = now() "
                "FROM owner o WHERE w.meterpoint_id = o.meterpoint_id "
                "AND w.grid_company IS DISTINCT FROM o.grid_company",
                data.meterpoint_id,
                data.grid_company,
                data.version,
            )

        await self._write(work)

    async def pending_enrichment(self, limit: int) -> list[PendingEnrichment]:
        async def query(conn: Connection) -> list[PendingEnrichment]:
            rows = await conn.fetch(
                "SELECT work_order_id, meterpoint_id, created_at, enrich_attempts FROM work_orders "
                "WHERE customer_status = 'pending' AND (enrich_after IS NULL OR enrich_after <= now()) "
                "ORDER BY seq LIMIT $1",
                limit,
            )
            return [
                PendingEnrichment(r["work_order_id"], r["meterpoint_id"], r["created_at"], r["enrich_attempts"])
                for r in rows
            ]

        return await self._read(query)

    async def enrich(self, work_order_id: str, customer: CustomerInfo) -> bool:
        async def work(conn: Connection) -> bool:
            # Only a still pending customer is filled in; the representation changed, so the version (ETag) moves.
            status = await conn.execute(
                "UPDATE work_orders SET customer_status = $2, customer_source = $3, customer_id = $4, "
                "customer_name = $5, customer_email = $6, customer_phone = $7, customer_street = $8, "
                "customer_postcode = $9, customer_city = $10, customer_country = $11, customer_checked_at = $12, "
                "enrich_after = NULL, version = version + 1, updated_at = $12 "
                "WHERE work_order_id = $1 AND customer_status = 'pending'",
                work_order_id,
                *_customer_values(customer),
            )
            return bool(status == "UPDATE 1")

        return await self._write(work)

    async def postpone_enrichment(self, work_order_id: str, delay: timedelta) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(
                "UPDATE work_orders SET enrich_after = now() + $2::interval, enrich_attempts = enrich_attempts + 1 "
                "WHERE work_order_id = $1",
                work_order_id,
                delay,
            )

        await self._write(work)

    async def purge_idempotency_keys(self, older_than: timedelta) -> int:
        async def work(conn: Connection) -> int:
            status = await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", older_than
            )
            return int(status.split()[-1])

        return await self._write(work)


async def pending_count(pool: asyncpg.Pool[Any]) -> int:
    """Orders whose customer is still pending (a gauge for operations)."""
    value = await pool.fetchval("SELECT count(*) FROM work_orders WHERE customer_status = 'pending'")
    return int(value)


__all__ = ["COMPONENT", "MIGRATIONS", "PostgresWorkOrderStore", "pending_count", "work_order_id_of"]
