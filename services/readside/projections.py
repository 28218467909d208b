"""Pure projections: a batch of decoded events becomes set-based changes to the views (no I/O here).

The rules that make the views exact whatever Kafka redelivers:

- A reading is identified by its natural key (meterpoint, register, interval end). The last write in Kafka order
  wins: a resend (same reading id, same value) changes nothing, a correction (same key, new value) replaces the
  value. Readings of one meterpoint share a partition (the key), so "Kafka order" is well defined per key. Within
  a batch only the last write per key survives (``readings``); across batches the database compares with the
  stored row and hands the difference to the aggregates.
- Everything else is merged so that the result does not depend on how the topics interleave (a rebuild
  reads them in another interleaving than the live consumer did): latest reading = greatest interval end, last
  seen = greatest event time, customers by version, meterpoint master data by version (the newest wins: it names
  the grid company, the tenant, that owns the meterpoint), meterpoint links by their dates, alarms by id. Work
  orders are folded per work order in Kafka order (one partition per work order) with a status that never moves back.
  Validated daily series keep every version; the greatest version of a day is its current one
  (``services.readside.series``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from libs.events import (
    CloudEvent,
    CustomerRegistered,
    CustomerUpdated,
    EventData,
    MeterAlarmRaised,
    MeterpointLinked,
    MeterpointUnlinked,
    MeterReadingReceived,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderStatus,
    events_on,
    topics,
)
from libs.events.meterpoints import MeterpointRegistered, MeterpointUpdated
from libs.events.series import MeterSeriesValidated
from services.readside.series import SeriesChanges, project_series


class TopicRole(StrEnum):
    """What a consumed topic carries, whatever it is called (tests and rebuilds use their own topic names)."""

    READINGS = topics.READINGS
    METER_EVENTS = topics.METER_EVENTS
    CUSTOMERS = topics.CUSTOMERS
    WORKORDERS = topics.WORKORDERS
    METERPOINTS = topics.METERPOINTS
    SERIES = topics.SERIES

    @property
    def event_classes(self) -> tuple[type[EventData], ...]:
        """The payload types allowed on a topic of this role."""
        return events_on(self.value)


UNIT_FACTORS: Mapping[str, Decimal] = {
    "Wh": Decimal("0.001"),
    "kWh": Decimal(1),
    "MWh": Decimal(1000),
    "varh": Decimal("0.001"),
    "kvarh": Decimal(1),
    "Mvarh": Decimal(1000),
}
"""Factor from a reading's unit to the unit the aggregates are kept in (kWh for active, kvarh for reactive)."""

AGGREGATE_UNITS: Mapping[str, str] = {
    "active_import": "kWh",
    "active_export": "kWh",
    "reactive_import": "kvarh",
    "reactive_export": "kvarh",
}
"""The unit of a register's consumption totals."""


class ReadingRow(NamedTuple):
    """One row of the readings table, in the column order of the staging table (COPY)."""

    meterpoint_id: str
    register: str
    interval_end: datetime
    resolution: str
    value: float
    unit: str
    quality: str
    source: str
    reading_id: str


class LatestReadingRow(NamedTuple):
    """The newest interval of one register of one meterpoint in a batch, and the newest reading event time."""

    meterpoint_id: str
    register: str
    interval_end: datetime
    value: float
    unit: str
    quality: str
    source: str
    last_seen: datetime


class MeterpointRow(NamedTuple):
    """A meterpoint an alarm, link or work order names; ``last_seen`` is the newest alarm time (None: no alarm).

    Meterpoints known from readings live in ``latest_readings`` (with their own last-seen time): keeping them out
    of this table spares the hot path an upsert per meterpoint and batch.
    """

    meterpoint_id: str
    last_seen: datetime | None


class AlarmRow(NamedTuple):
    """A meter alarm, identified by its deterministic alarm id."""

    alarm_id: str
    meterpoint_id: str
    alarm: str
    raised_at: datetime
    source: str
    details: str | None


class CustomerRow(NamedTuple):
    """The newest version of a customer record in a batch."""

    customer_id: str
    kind: str
    name: str
    email: str | None
    phone: str | None
    street: str
    postcode: str
    city: str
    country: str
    version: int
    changed_at: datetime
    grid_company: str | None
    """The tenant the customer belongs to (None: a customer from before tenancy, visible to the platform only)."""


class MeterpointMasterRow(NamedTuple):
    """The newest version of a meterpoint's master data in a batch: who owns it (the tenant) and where it is."""

    meterpoint_id: str
    grid_company: str
    grid_area: str
    master_version: int


class LinkRow(NamedTuple):
    """A customer holds a meterpoint from ``move_in``."""

    customer_id: str
    meterpoint_id: str
    move_in: date


class UnlinkRow(NamedTuple):
    """A customer's holding of a meterpoint ends on ``move_out`` (the last day held)."""

    customer_id: str
    meterpoint_id: str
    move_out: date


class WorkOrderRow(NamedTuple):
    """The state of one work order (the work_orders table's columns, in order)."""

    work_order_id: str
    meterpoint_id: str
    type: str
    status: str
    crew: str | None
    window_start: datetime | None
    window_end: datetime | None
    description: str | None
    started_at: datetime | None
    completed_at: datetime | None
    result: str | None
    new_meter_serial: str | None
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime


WorkOrderEvent = WorkOrderCreated | WorkOrderScheduled | WorkOrderStarted | WorkOrderCompleted | WorkOrderCancelled
_STATUS_RANK = {
    WorkOrderStatus.CREATED: 0,
    WorkOrderStatus.SCHEDULED: 1,
    WorkOrderStatus.IN_PROGRESS: 2,
    WorkOrderStatus.COMPLETED: 3,
    WorkOrderStatus.CANCELLED: 3,
}
TERMINAL_STATUSES = frozenset({WorkOrderStatus.COMPLETED, WorkOrderStatus.CANCELLED})
OPEN_STATUSES = tuple(status.value for status in WorkOrderStatus if status not in TERMINAL_STATUSES)


@dataclass(frozen=True, slots=True)
class ViewChanges:
    """The set-based changes one batch makes to the views."""

    readings: list[ReadingRow]
    months: frozenset[date]
    latest: list[LatestReadingRow]
    meterpoints: list[MeterpointRow]
    alarms: list[AlarmRow]
    customers: list[CustomerRow]
    masters: list[MeterpointMasterRow]
    links: list[LinkRow]
    unlinks: list[UnlinkRow]
    work_orders: list[tuple[WorkOrderEvent, datetime]]
    """Work order events with their event time, in Kafka order (`fold_work_orders` applies them to the stored state)."""
    series: SeriesChanges = field(default_factory=SeriesChanges)
    """Validated daily series: every version kept, the newest one current (`services.readside.series`)."""


def month_of(moment: datetime) -> date:
    """The first day of the UTC month ``moment`` falls in (the readings table has one partition per month)."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def project(events: Iterable[CloudEvent[Any]]) -> ViewChanges:
    """Turn decoded events, in Kafka order per partition, into the changes they make to the views."""
    readings: dict[tuple[str, str, datetime], ReadingRow] = {}
    last_seen: dict[str, datetime | None] = {}
    alarms: dict[str, AlarmRow] = {}
    customers: dict[str, CustomerRow] = {}
    masters: dict[str, MeterpointMasterRow] = {}
    links: dict[LinkRow, None] = {}
    unlinks: dict[UnlinkRow, None] = {}
    work_orders: list[tuple[WorkOrderEvent, datetime]] = []
    reading_times: dict[tuple[str, str], datetime] = {}
    series: list[tuple[MeterSeriesValidated, datetime]] = []

    for event in events:
        data = event.data
        if type(data) is MeterReadingReceived:
            # The hot path: one dict store per reading; everything else is derived from the survivors below.
            meterpoint_id = data.meterpoint_id
            register = data.register
            readings[(meterpoint_id, register, data.interval_end)] = ReadingRow(
                meterpoint_id,
                register,
                data.interval_end,
                data.resolution,
                data.value,
                data.unit,
                data.quality,
                data.source,
                data.reading_id,
            )
            seen = reading_times.get((meterpoint_id, register))
            if seen is None or event.time > seen:
                reading_times[(meterpoint_id, register)] = event.time
        elif isinstance(data, MeterAlarmRaised):
            alarms.setdefault(
                data.alarm_id,
                AlarmRow(data.alarm_id, data.meterpoint_id, data.alarm, data.raised_at, data.source, data.details),
            )
            _see(last_seen, data.meterpoint_id, event.time)
        elif isinstance(data, CustomerRegistered | CustomerUpdated):
            current = customers.get(data.customer_id)
            if current is None or data.version >= current.version:
                address = data.contact.address
                customers[data.customer_id] = CustomerRow(
                    data.customer_id,
                    data.kind,
                    data.name,
                    data.contact.email,
                    data.contact.phone,
                    address.street,
                    address.postcode,
                    address.city,
                    address.country,
                    data.version,
                    event.time,
                    data.grid_company,
                )
        elif isinstance(data, MeterpointRegistered | MeterpointUpdated):
            master = masters.get(data.meterpoint_id)
            if master is None or data.version >= master.master_version:
                masters[data.meterpoint_id] = MeterpointMasterRow(
                    data.meterpoint_id, data.grid_company, data.grid_area, data.version
                )
        elif isinstance(data, MeterpointLinked):
            links[LinkRow(data.customer_id, data.meterpoint_id, data.move_in)] = None
            _see(last_seen, data.meterpoint_id, None)
        elif isinstance(data, MeterpointUnlinked):
            unlinks[UnlinkRow(data.customer_id, data.meterpoint_id, data.move_out)] = None
            _see(last_seen, data.meterpoint_id, None)
        elif isinstance(data, WorkOrderEvent):
            work_orders.append((data, event.time))
            _see(last_seen, data.meterpoint_id, None)
        elif isinstance(data, MeterSeriesValidated):
            series.append((data, event.time))
            _see(last_seen, data.meterpoint_id, None)

    rows = sorted(readings.values())
    return ViewChanges(
        readings=rows,
        # Many readings share an interval end (every meterpoint reports the same quarter-hour): convert each once.
        months=frozenset(month_of(end) for end in {row.interval_end for row in rows}),
        latest=latest_readings(rows, reading_times),
        meterpoints=sorted(MeterpointRow(key, seen) for key, seen in last_seen.items()),
        alarms=sorted(alarms.values()),
        customers=sorted(customers.values()),
        masters=sorted(masters.values()),
        links=sorted(links),
        unlinks=sorted(unlinks),
        work_orders=work_orders,
        series=project_series(series),
    )


def _see(last_seen: dict[str, datetime | None], meterpoint_id: str, moment: datetime | None) -> None:
    current = last_seen.get(meterpoint_id)
    if moment is None:
        last_seen.setdefault(meterpoint_id, None)
    elif current is None or moment > current:
        last_seen[meterpoint_id] = moment


def latest_readings(rows: Sequence[ReadingRow], seen: Mapping[tuple[str, str], datetime]) -> list[LatestReadingRow]:
    """Per meterpoint and register the row with the greatest interval end (rows are unique per natural key).

    ``seen`` holds the newest event time per meterpoint and register (the "last seen" of the meter).
    """
    latest: dict[tuple[str, str], ReadingRow] = {}
    for row in rows:
        key = (row.meterpoint_id, row.register)
        current = latest.get(key)
        if current is None or row.interval_end > current.interval_end:
            latest[key] = row
    return [
        LatestReadingRow(r.meterpoint_id, r.register, r.interval_end, r.value, r.unit, r.quality, r.source, seen[key])
        for key, r in latest.items()
    ]


def fold_work_orders(
    current: Mapping[str, WorkOrderRow], events: Sequence[tuple[WorkOrderEvent, datetime]]
) -> list[WorkOrderRow]:
    """Apply work order events in Kafka order to their stored state; return the changed work orders.

    A status never moves back (an outbox relay may resend older events after newer ones) and a completed or
    cancelled work order stays so; an event that would move it back changes nothing.
    """
    state = dict(current)
    changed: dict[str, None] = {}
    for event, at in events:
        before = state.get(event.work_order_id)
        after = _apply_work_order_event(before, event, at)
        if after is not before:
            state[event.work_order_id] = after
            changed[event.work_order_id] = None
    return [state[key] for key in sorted(changed)]


def _apply_work_order_event(row: WorkOrderRow | None, event: WorkOrderEvent, at: datetime) -> WorkOrderRow:
    status = WorkOrderStatus(event.status)
    if row is None:
        row = WorkOrderRow(
            event.work_order_id,
            event.meterpoint_id,
            event.type,
            status,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            at,
            at,
        )
    else:
        previous = WorkOrderStatus(row.status)
        if previous in TERMINAL_STATUSES or _STATUS_RANK[status] < _STATUS_RANK[previous]:
            return row
        row = row._replace(status=status, type=event.type, meterpoint_id=event.meterpoint_id, updated_at=at)
    match event:
        case WorkOrderCreated():
            return row._replace(description=event.description, created_at=min(row.created_at, at))
        case WorkOrderScheduled():
            return row._replace(crew=event.crew, window_start=event.window.start, window_end=event.window.end)
        case WorkOrderStarted():
            return row._replace(crew=event.crew, started_at=event.started_at)
        case WorkOrderCompleted():
            return row._replace(
                crew=event.crew,
                completed_at=event.completed_at,
                result=event.result,
                new_meter_serial=event.new_meter_serial,
            )
        case WorkOrderCancelled():
            return row._replace(cancel_reason=event.reason)
