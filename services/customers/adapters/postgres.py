"""The customer store over asyncpg: plain SQL, one transaction per unit of work, events into the outbox.

Isolation is READ COMMITTED with explicit locks, which is enough here:
- writers of one customer lock its row first (``FOR NO KEY UPDATE``), so they go one at a time and the outbox
  ids of one Kafka key follow commit order (what the relay's ordering relies on);
- UpdateCustomer compares versions on the locked row, so of two updates from the same version one wins and the
  other sees the new version and gets Client.Conflict;
- the exclusion constraint on (meterpoint, period) refuses overlapping links even when two transactions check
  at the same time; the loser's insert waits for the winner's commit and then fails (Client.Conflict);
- writers of one meterpoint lock its row the same way; two registrations of one GSRN meet at the primary key
  (``ON CONFLICT DO NOTHING`` waits for the first to commit, then the second reads what it stored);
- LinkMeterpoint reads the meterpoint ``FOR SHARE``, so it cannot move to another grid company until the link
  has committed.
Database outages (no connection, timeouts, shutdowns, deadlocks) become `StoreUnavailable`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from libs.events import CustomerKind, EventData, make_event, to_record, topics
from libs.events.meter import Resolution
from libs.events.meterpoints import ConnectionState, MeterpointType, SettlementMethod, SourceKind
from libs.platform.audit import Actor, DetailValue, record_audit
from libs.platform.db import Connection
from libs.platform.outbox import OutboxRecord, add_to_outbox
from services.customers.domain import (
    Address,
    Conflict,
    Contact,
    Customer,
    CustomerDetails,
    CustomerSearch,
    MeterpointHolder,
    MeterpointLink,
    format_customer_id,
)
from services.customers.handlers import StoreUnavailable
from services.customers.registry import DataSourceRef, Meterpoint, MeterpointSpec

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
COMPONENT = "customers"

# Failures that say nothing about the request, only that the database cannot serve it now.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # query cancelled, admin shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.LockNotAvailableError,
)

# Spelled out in full (no string building), so every statement is a constant a reader can run in psql.
_INSERT_CUSTOMER = (
    "INSERT INTO customers "
    "(customer_id, kind, name, email, phone, street, postcode, city, country, version, grid_company) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
# $2 is the caller's grid company, NULL for the platform: the tenant is a condition of the statement that finds the
# row, so another grid company's row is never locked and is answered as fast as a missing one.
_LOCK_CUSTOMER = (
    "SELECT customer_id, kind, name, email, phone, street, postcode, city, country, version, grid_company "
    "FROM customers WHERE customer_id = $1 AND ($2::text IS NULL OR grid_company = $2) FOR NO KEY UPDATE"
)
_GET_CUSTOMER = (
    "SELECT customer_id, kind, name, email, phone, street, postcode, city, country, version, grid_company "
    "FROM customers WHERE customer_id = $1 AND ($2::text IS NULL OR grid_company = $2)"
)
# $3 is the caller's grid company, NULL for the platform (every grid company, and customers of none).
_COUNT_CUSTOMERS = (
    "SELECT count(*) FROM customers "
    "WHERE ($1::text IS NULL OR name ILIKE $1) AND ($2::text IS NULL OR upper(replace(postcode, ' ', '')) = $2) "
    "AND ($3::text IS NULL OR grid_company = $3)"
)
_FIND_CUSTOMERS = (
    "SELECT customer_id, kind, name, email, phone, street, postcode, city, country, version, grid_company "
    "FROM customers "
    "WHERE ($1::text IS NULL OR name ILIKE $1) AND ($2::text IS NULL OR upper(replace(postcode, ' ', '')) = $2) "
    "AND ($5::text IS NULL OR grid_company = $5) "
    "ORDER BY name, customer_id LIMIT $3 OFFSET $4"
)
_METERPOINT = (
    "SELECT meterpoint_id, grid_company, grid_area, time_zone, type, neighbour_grid_area, resolution, "
    "settlement_method, connection_state, connection_since, data_source_kind, data_source_id, version "
    "FROM meterpoints "
)
_ONE_METERPOINT = _METERPOINT + "WHERE meterpoint_id = $1 AND ($2::text IS NULL OR grid_company = $2) "
_INSERT_METERPOINT = (
    "INSERT INTO meterpoints (meterpoint_id, grid_company, grid_area, time_zone, type, neighbour_grid_area, "
    "resolution, settlement_method, connection_state, connection_since, data_source_kind, data_source_id, version) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (meterpoint_id) DO NOTHING"
)
_SAVE_METERPOINT = (
    "UPDATE meterpoints SET grid_company = $2, grid_area = $3, time_zone = $4, type = $5, neighbour_grid_area = $6, "
    "resolution = $7, settlement_method = $8, connection_state = $9, connection_since = $10, "
    "data_source_kind = $11, data_source_id = $12, version = $13, updated_at = now() WHERE meterpoint_id = $1"
)
# $1 the caller's grid company (NULL: the platform, every grid company), $2 a grid area or NULL, $3 the last id of
# the page before or NULL; served by meterpoints_grid_company(_area) for a tenant.
_LIST_METERPOINTS = (
    _METERPOINT + "WHERE ($1::text IS NULL OR grid_company = $1) AND ($2::text IS NULL OR grid_area = $2) "
    "AND ($3::text IS NULL OR meterpoint_id > $3) ORDER BY meterpoint_id LIMIT $4"
)


def _customer(row: asyncpg.Record, prefix: str = "") -> Customer:
    address = Address(row[f"{prefix}street"], row[f"{prefix}postcode"], row[f"{prefix}city"], row[f"{prefix}country"])
    contact = Contact(row[f"{prefix}email"], row[f"{prefix}phone"], address)
    details = CustomerDetails(CustomerKind(row[f"{prefix}kind"]), row[f"{prefix}name"], contact)
    return Customer(row[f"{prefix}customer_id"], details, row[f"{prefix}version"], row[f"{prefix}grid_company"])


def _meterpoint(row: asyncpg.Record) -> Meterpoint:
    kind, source_id = row["data_source_kind"], row["data_source_id"]
    settlement = row["settlement_method"]
    spec = MeterpointSpec(
        grid_area=row["grid_area"],
        time_zone=row["time_zone"],
        type=MeterpointType(row["type"]),
        neighbour_grid_area=row["neighbour_grid_area"],
        resolution=Resolution(row["resolution"]),
        settlement_method=None if settlement is None else SettlementMethod(settlement),
        connection_state=ConnectionState(row["connection_state"]),
        connection_since=row["connection_since"],
        data_source=None if kind is None else DataSourceRef(SourceKind(kind), source_id),
    )
    return Meterpoint(row["meterpoint_id"], row["grid_company"], spec, row["version"])


def _meterpoint_values(meterpoint: Meterpoint) -> tuple[Any, ...]:
    spec = meterpoint.spec
    source = spec.data_source
    return (
        meterpoint.meterpoint_id,
        meterpoint.grid_company,
        spec.grid_area,
        spec.time_zone,
        spec.type.value,
        spec.neighbour_grid_area,
        spec.resolution.value,
        None if spec.settlement_method is None else spec.settlement_method.value,
        spec.connection_state.value,
        spec.connection_since,
        None if source is None else source.kind.value,
        None if source is None else source.id,
        meterpoint.version,
    )


def _link(row: asyncpg.Record) -> MeterpointLink:
    return MeterpointLink(row["customer_id"], row["meterpoint_id"], row["move_in"], row["move_out"])


def _like_fragment(text: str) -> str:
    """``%text%`` for ILIKE with the caller's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _customer_values(customer: Customer) -> tuple[Any, ...]:
    details = customer.details
    contact = details.contact
    address = contact.address
    return (
        customer.customer_id,
        details.kind.value,
        details.name,
        contact.email,
        contact.phone,
        address.street,
        address.postcode,
        address.city,
        address.country,
        customer.version,
        customer.grid_company,
    )


class PostgresUnitOfWork:
    """The writes of one open transaction (see `services.customers.handlers.UnitOfWork`)."""

    def __init__(self, conn: Connection, *, topic_of: Mapping[str, str], source: str) -> None:
        self._conn = conn
        self._topics = topic_of
        self._source = source

    async def new_customer_id(self) -> str:
        number: int = await self._conn.fetchval("SELECT nextval('customer_number')")
        return format_customer_id(number)

    async def insert_customer(self, customer: Customer) -> None:
        await self._conn.execute(
            _INSERT_CUSTOMER,
            *_customer_values(customer),
        )

    async def lock_customer(self, customer_id: str, grid_company: str | None) -> Customer | None:
        row = await self._conn.fetchrow(_LOCK_CUSTOMER, customer_id, grid_company)
        return None if row is None else _customer(row)

    async def save_customer(self, customer: Customer) -> None:
        await self._conn.execute(
            "UPDATE customers SET kind = $2, name = $3, email = $4, phone = $5, street = $6, postcode = $7, "
            "city = $8, country = $9, version = $10, grid_company = $11, updated_at = now() WHERE customer_id = $1",
            *_customer_values(customer),
        )

    async def links_reaching(self, meterpoint_id: str, day: date) -> list[MeterpointLink]:
        rows = await self._conn.fetch(
            "SELECT customer_id, meterpoint_id, move_in, move_out FROM meterpoint_links "
            "WHERE meterpoint_id = $1 AND period && daterange($2, NULL, '[]') ORDER BY move_in",
            meterpoint_id,
            day,
        )
        return [_link(row) for row in rows]

    async def insert_link(self, link: MeterpointLink) -> None:
        try:
            # A savepoint is unnecessary: a violation ends the whole unit of work anyway.
            await self._conn.execute(
                "INSERT INTO meterpoint_links (customer_id, meterpoint_id, move_in, move_out) VALUES ($1, $2, $3, $4)",
                link.customer_id,
                link.meterpoint_id,
                link.move_in,
                link.move_out,
            )
        except asyncpg.ExclusionViolationError:
            raise Conflict(
                f"meterpoint {link.meterpoint_id} is held by another customer on a day from "
                f"{link.move_in.isoformat()} on (a concurrent change)",
                reason="overlapping_link",
            ) from None

    async def lock_open_link(self, customer_id: str, meterpoint_id: str) -> MeterpointLink | None:
        row = await self._conn.fetchrow(
            "SELECT customer_id, meterpoint_id, move_in, move_out FROM meterpoint_links "
            "WHERE customer_id = $1 AND meterpoint_id = $2 AND move_out IS NULL FOR UPDATE",
            customer_id,
            meterpoint_id,
        )
        return None if row is None else _link(row)

    async def save_move_out(self, link: MeterpointLink) -> None:
        await self._conn.execute(
            "UPDATE meterpoint_links SET move_out = $3, updated_at = now() "
            "WHERE customer_id = $1 AND meterpoint_id = $2 AND move_out IS NULL",
            link.customer_id,
            link.meterpoint_id,
            link.move_out,
        )

    async def insert_meterpoint(self, meterpoint: Meterpoint) -> bool:
        status: str = await self._conn.execute(_INSERT_METERPOINT, *_meterpoint_values(meterpoint))
        return status == "INSERT 0 1"

    async def lock_meterpoint(self, meterpoint_id: str, grid_company: str | None) -> Meterpoint | None:
        row = await self._conn.fetchrow(_ONE_METERPOINT + "FOR NO KEY UPDATE", meterpoint_id, grid_company)
        return None if row is None else _meterpoint(row)

    async def share_meterpoint(self, meterpoint_id: str, grid_company: str | None) -> Meterpoint | None:
        row = await self._conn.fetchrow(_ONE_METERPOINT + "FOR SHARE", meterpoint_id, grid_company)
        return None if row is None else _meterpoint(row)

    async def save_meterpoint(self, meterpoint: Meterpoint) -> None:
        await self._conn.execute(_SAVE_METERPOINT, *_meterpoint_values(meterpoint))

    async def audit(
        self, actor: Actor, action: str, subject: str, tenant: str | None, detail: Mapping[str, DetailValue]
    ) -> None:
        await record_audit(self._conn, actor=actor, action=action, subject=subject, tenant=tenant, detail=detail)

    async def publish(self, events: Sequence[EventData]) -> None:
        records = []
        for payload in events:
            record = to_record(make_event(payload, source=self._source))
            # The topic comes from settings rather than the payload class, so a test can use a topic of its own.
            records.append(OutboxRecord(self._topics[payload.topic], record.key, record.value, record.headers))
        await add_to_outbox(self._conn, records)


class PostgresCustomerStore:
    """`services.customers.handlers.CustomerStore` over a pool.

    ``topic`` takes the customer events, ``meterpoints_topic`` the meterpoint master data (settings name both, so a
    test can use topics of its own)."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        topic: str,
        source: str,
        meterpoints_topic: str = topics.METERPOINTS,
        acquire_timeout: float = 2.0,
    ) -> None:
        self._pool = pool
        self._topics = {topics.CUSTOMERS: topic, topics.METERPOINTS: meterpoints_topic}
        self._source = source
        self._acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[PostgresUnitOfWork]:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn, conn.transaction():
                yield PostgresUnitOfWork(conn, topic_of=self._topics, source=self._source)
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"the customer database is unavailable ({type(error).__name__})") from error

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"the customer database is unavailable ({type(error).__name__})") from error

    async def get_customer(self, customer_id: str, grid_company: str | None) -> Customer | None:
        async with self._reading() as conn:
            row = await conn.fetchrow(_GET_CUSTOMER, customer_id, grid_company)
        return None if row is None else _customer(row)

    async def links_of_customer(self, customer_id: str, limit: int) -> list[MeterpointLink]:
        async with self._reading() as conn:
            rows = await conn.fetch(
                "SELECT customer_id, meterpoint_id, move_in, move_out FROM meterpoint_links "
                "WHERE customer_id = $1 ORDER BY move_in, meterpoint_id LIMIT $2",
                customer_id,
                limit,
            )
        return [_link(row) for row in rows]

    async def find_customers(self, search: CustomerSearch, grid_company: str | None) -> tuple[list[Customer], int]:
        name = None if search.name_contains is None else _like_fragment(search.name_contains)
        async with self._reading() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # One snapshot for the count and the page, so they agree.
            total: int = await conn.fetchval(_COUNT_CUSTOMERS, name, search.postcode_key, grid_company)
            rows = await conn.fetch(
                _FIND_CUSTOMERS,
                name,
                search.postcode_key,
                search.page_size,
                search.offset,
                grid_company,
            )
        return [_customer(row) for row in rows], total

    async def get_meterpoint(self, meterpoint_id: str, grid_company: str | None) -> Meterpoint | None:
        async with self._reading() as conn:
            row = await conn.fetchrow(_ONE_METERPOINT, meterpoint_id, grid_company)
        return None if row is None else _meterpoint(row)

    async def list_meterpoints(
        self, grid_company: str | None, grid_area: str | None, after: str | None, limit: int
    ) -> list[Meterpoint]:
        async with self._reading() as conn:
            rows = await conn.fetch(_LIST_METERPOINTS, grid_company, grid_area, after, limit)
        return [_meterpoint(row) for row in rows]

    async def holder_on(self, meterpoint_id: str, day: date, grid_company: str | None) -> MeterpointHolder | None:
        async with self._reading() as conn:
            row = await conn.fetchrow(
                "SELECT l.customer_id, l.meterpoint_id, l.move_in, l.move_out, "
                "c.customer_id AS c_customer_id, c.kind AS c_kind, c.name AS c_name, c.email AS c_email, "
                "c.phone AS c_phone, c.street AS c_street, c.postcode AS c_postcode, c.city AS c_city, "
                "c.country AS c_country, c.version AS c_version, c.grid_company AS c_grid_company "
                "FROM meterpoint_links l JOIN customers c USING (customer_id) "
                "WHERE l.meterpoint_id = $1 AND l.period @> $2::date AND ($3::text IS NULL OR c.grid_company = $3)",
                meterpoint_id,
                day,
                grid_company,
            )
        if row is None:
            return None
        return MeterpointHolder(_customer(row, prefix="c_"), _link(row))
