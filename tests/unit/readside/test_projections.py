"""Projections are pure: a batch of events becomes set-based view changes, independent of topic interleaving."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from libs.events import (
    Address,
    CloudEvent,
    Contact,
    CustomerKind,
    CustomerRegistered,
    CustomerUpdated,
    MeterAlarm,
    MeterAlarmRaised,
    MeterpointLinked,
    MeterReadingReceived,
    Quality,
    Register,
    Resolution,
    TimeWindow,
    Unit,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderResult,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderType,
    make_event,
    with_check_digit,
)
from libs.events.meterpoints import (
    Connection,
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    MeterpointUpdated,
    SettlementMethod,
    SourceKind,
)
from services.readside.projections import (
    ReadingRow,
    WorkOrderRow,
    fold_work_orders,
    latest_readings,
    month_of,
    project,
)

MP = with_check_digit("57131318040000002")
OTHER = with_check_digit("57131318040000917")
T0 = datetime(2025, 3, 31, 21, 0, tzinfo=UTC)


def reading(
    end: datetime, value: float, *, meterpoint: str = MP, source: str = "collection.mqtt", at: datetime | None = None
) -> CloudEvent[Any]:
    data = MeterReadingReceived.create(
        meterpoint_id=meterpoint,
        register=Register.ACTIVE_IMPORT,
        interval_end=end,
        resolution=Resolution.PT15M,
        value=value,
        unit=Unit.KWH,
        quality=Quality.MEASURED,
        source=source,
    )
    return make_event(data, source="/gridhub/collection", time=at or end + timedelta(minutes=1))


def test_the_last_write_per_natural_key_wins_and_rows_are_sorted() -> None:
    events = [
        reading(T0 + timedelta(minutes=30), 1.5),
        reading(T0 + timedelta(minutes=15), 0.25),
        reading(T0 + timedelta(minutes=30), 1.5),  # a resend
        reading(T0 + timedelta(minutes=15), 0.5),  # a correction, same reading id
        reading(T0 + timedelta(minutes=15), 0.75, source="collection.ftp"),  # same interval, other channel
        reading(T0, 0.1, meterpoint=OTHER),
    ]
    changes = project(events)
    assert [(r.meterpoint_id, r.interval_end, r.value, r.source) for r in changes.readings] == [
        (MP, T0 + timedelta(minutes=15), 0.75, "collection.ftp"),
        (MP, T0 + timedelta(minutes=30), 1.5, "collection.mqtt"),
        (OTHER, T0, 0.1, "collection.mqtt"),
    ]
    assert changes.months == frozenset({date(2025, 3, 1)})


def test_latest_reading_per_register_is_the_greatest_interval_end_whatever_the_arrival_order() -> None:
    changes = project([reading(T0 + timedelta(hours=2), 2.0), reading(T0 + timedelta(hours=1), 1.0)])
    assert [(r.interval_end, r.value) for r in changes.latest] == [(T0 + timedelta(hours=2), 2.0)]


def test_months_are_utc_months_of_the_interval_end() -> None:
    copenhagen = timezone(timedelta(hours=2))
    # 00:15 on 1 April in Copenhagen is still 31 March in UTC.
    assert month_of(datetime(2025, 4, 1, 0, 15, tzinfo=copenhagen)) == date(2025, 3, 1)
    changes = project([reading(T0, 1.0), reading(T0 + timedelta(hours=3), 1.0)])
    assert changes.months == frozenset({date(2025, 3, 1), date(2025, 4, 1)})


def test_last_seen_is_the_newest_meter_event_and_other_events_only_register_the_meterpoint() -> None:
    alarm = MeterAlarmRaised.create(meterpoint_id=MP, alarm=MeterAlarm.TAMPER, raised_at=T0, source="hes-1")
    events = [
        reading(T0, 1.0, at=T0 + timedelta(hours=5)),
        reading(T0 + timedelta(minutes=15), 1.0, at=T0 + timedelta(hours=1)),
        make_event(alarm, source="/gridhub/collection", time=T0 + timedelta(hours=2)),
        make_event(
            MeterpointLinked(customer_id="C-1", meterpoint_id=OTHER, move_in=date(2025, 1, 1)), source="/gridhub/c"
        ),
    ]
    changes = project(events)
    # Readings carry their last-seen time on the latest reading row (the newest event, not the newest interval).
    [latest] = changes.latest
    assert (latest.interval_end, latest.last_seen) == (T0 + timedelta(minutes=15), T0 + timedelta(hours=5))
    assert [(m.meterpoint_id, m.last_seen) for m in changes.meterpoints] == [
        (MP, T0 + timedelta(hours=2)),
        (OTHER, None),
    ]
    assert [a.alarm_id for a in changes.alarms] == [alarm.alarm_id]
    assert [(link.customer_id, link.meterpoint_id) for link in changes.links] == [("C-1", OTHER)]


def test_the_highest_customer_version_of_a_batch_wins() -> None:
    address = Address(street="Havnevej 4", postcode="9000", city="Aalborg", country="DK")
    v1 = CustomerRegistered(
        customer_id="C-1", kind=CustomerKind.PERSON, name="A", contact=Contact(address=address), version=1
    )
    v2 = CustomerUpdated(**{**v1.model_dump(), "name": "B", "version": 2})
    changes = project([make_event(v2, source="/c"), make_event(v1, source="/c")])
    assert [(c.name, c.version) for c in changes.customers] == [("B", 2)]


def test_a_customer_keeps_its_grid_company() -> None:
    address = Address(street="Havnevej 4", postcode="9000", city="Aalborg", country="DK")
    owned = CustomerRegistered(
        customer_id="C-1",
        kind=CustomerKind.PERSON,
        name="A",
        contact=Contact(address=address),
        version=1,
        grid_company="5790000000012",
    )
    legacy = CustomerRegistered(
        customer_id="C-2", kind=CustomerKind.PERSON, name="B", contact=Contact(address=address), version=1
    )
    changes = project([make_event(owned, source="/c"), make_event(legacy, source="/c")])
    assert [(c.customer_id, c.grid_company) for c in changes.customers] == [("C-1", "5790000000012"), ("C-2", None)]


def _master(version: int, grid_company: str) -> MeterpointRegistered | MeterpointUpdated:
    kind = MeterpointRegistered if version == 1 else MeterpointUpdated
    return kind(
        meterpoint_id=MP,
        grid_company=grid_company,
        grid_area="804",
        type=MeterpointType.CONSUMPTION,
        resolution=Resolution.PT15M,
        settlement_method=SettlementMethod.FLEX,
        connection=Connection(state=ConnectionState.CONNECTED, since=date(2025, 1, 1)),
        data_source=DataSource(kind=SourceKind.HEAD_END, id="hes-1"),
        version=version,
    )


def test_the_newest_master_data_version_of_a_batch_wins_in_any_order() -> None:
    first, moved = _master(1, "5790000000012"), _master(2, "5790000000029")
    for order in ([first, moved], [moved, first]):
        changes = project([make_event(data, source="/gridhub/customers") for data in order])
        assert [(m.meterpoint_id, m.grid_company, m.grid_area, m.master_version) for m in changes.masters] == [
            (MP, "5790000000029", "804", 2)
        ]


def _window() -> TimeWindow:
    return TimeWindow(start=T0, end=T0 + timedelta(hours=4))


def test_work_orders_never_move_back_and_keep_what_each_step_said() -> None:
    kind = WorkOrderType.REPLACE_METER
    created = WorkOrderCreated(work_order_id="WO-1", meterpoint_id=MP, type=kind, description="swap")
    scheduled = WorkOrderScheduled(work_order_id="WO-1", meterpoint_id=MP, type=kind, crew="c1", window=_window())
    started = WorkOrderStarted(work_order_id="WO-1", meterpoint_id=MP, type=kind, crew="c1", started_at=T0)
    events = [(created, T0), (scheduled, T0), (created, T0), (started, T0 + timedelta(hours=1))]
    [row] = fold_work_orders({}, events)
    assert (row.status, row.description, row.crew, row.window_start, row.started_at) == (
        "in_progress",
        "swap",
        "c1",
        T0,
        T0,
    )
    completed = WorkOrderCompleted(
        work_order_id="WO-1",
        meterpoint_id=MP,
        type=kind,
        crew="c1",
        completed_at=T0 + timedelta(hours=2),
        result=WorkOrderResult.SUCCEEDED,
        new_meter_serial="KAM-1",
    )
    cancelled = WorkOrderCancelled(work_order_id="WO-1", meterpoint_id=MP, type=kind, reason="late")
    [done] = fold_work_orders({"WO-1": row}, [(completed, T0), (scheduled, T0), (cancelled, T0)])
    assert (done.status, done.new_meter_serial, done.cancel_reason) == ("completed", "KAM-1", None)
    assert fold_work_orders({"WO-1": done}, [(scheduled, T0)]) == []


def test_folding_in_two_batches_equals_folding_in_one() -> None:
    kind = WorkOrderType.INSPECT_METER
    events = [
        (WorkOrderCreated(work_order_id="WO-2", meterpoint_id=MP, type=kind), T0),
        (WorkOrderScheduled(work_order_id="WO-2", meterpoint_id=MP, type=kind, crew="c2", window=_window()), T0),
        (WorkOrderCreated(work_order_id="WO-2", meterpoint_id=MP, type=kind), T0),
        (WorkOrderStarted(work_order_id="WO-2", meterpoint_id=MP, type=kind, crew="c3", started_at=T0), T0),
    ]
    whole = fold_work_orders({}, events)
    for split in range(1, len(events)):
        first = {row.work_order_id: row for row in fold_work_orders({}, events[:split])}
        second = fold_work_orders(first, events[split:])
        merged: dict[str, WorkOrderRow] = {**first, **{row.work_order_id: row for row in second}}
        assert list(merged.values()) == whole


def test_latest_readings_of_rows() -> None:
    rows = [
        ReadingRow(MP, "active_import", T0, "PT15M", 1.0, "kWh", "measured", "s", "id1"),
        ReadingRow(MP, "active_export", T0, "PT15M", 2.0, "kWh", "measured", "s", "id2"),
        ReadingRow(MP, "active_import", T0 + timedelta(hours=1), "PT15M", 3.0, "kWh", "measured", "s", "id3"),
    ]
    seen = {(MP, "active_import"): T0, (MP, "active_export"): T0}
    latest = latest_readings(rows, seen)
    assert {(r.register, r.value) for r in latest} == {("active_import", 3.0), ("active_export", 2.0)}
