"""Payload and envelope rules that the wire format alone does not show."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from libs.events import (
    EVENT_CLASSES,
    EVENT_TYPES,
    CloudEvent,
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
    WorkOrderResult,
    WorkOrderStatus,
    WorkOrderType,
    envelope_class,
    event_class,
    events_on,
    make_event,
    reading_id,
    topics,
)

METERPOINT = "571313180400000025"
END = datetime(2025, 3, 1, 10, 15, tzinfo=UTC)


def reading(**changes: Any) -> MeterReadingReceived:
    fields: dict[str, Any] = {
        "meterpoint_id": METERPOINT,
        "register": Register.ACTIVE_IMPORT,
        "interval_end": END,
        "resolution": Resolution.PT15M,
        "value": 1.25,
        "unit": Unit.KWH,
        "quality": Quality.MEASURED,
        "source": "collection.rest",
    }
    return MeterReadingReceived.create(**{**fields, **changes})


def test_event_type_names_follow_one_scheme() -> None:
    assert EVENT_TYPES == (
        "gridhub.meter.reading.received",
        "gridhub.meter.alarm.raised",
        "gridhub.customer.registered",
        "gridhub.customer.updated",
        "gridhub.meterpoint.linked",
        "gridhub.meterpoint.unlinked",
        "gridhub.workorder.created",
        "gridhub.workorder.scheduled",
        "gridhub.workorder.started",
        "gridhub.workorder.completed",
        "gridhub.workorder.cancelled",
        "gridhub.meterpoint.registered",
        "gridhub.meterpoint.updated",
        "gridhub.meter.series.validated",
        "gridhub.meter.gapfill.requested",
    )
    assert all(event_class(name).event_type == name for name in EVENT_TYPES)


def test_every_event_lives_on_a_known_topic() -> None:
    assert {cls.topic for cls in EVENT_CLASSES} == set(topics.EVENT_TOPICS)
    assert events_on(topics.READINGS) == (MeterReadingReceived,)
    assert len(events_on(topics.CUSTOMERS)) == 4
    assert len(events_on(topics.WORKORDERS)) == 5


def test_create_fills_in_the_deterministic_reading_id_and_normalises_to_utc() -> None:
    in_cet = reading(interval_end=END.astimezone(timezone(timedelta(hours=1))))
    assert in_cet.interval_end == END
    assert in_cet.interval_end.tzinfo is UTC
    assert in_cet.reading_id == reading_id(METERPOINT, Register.ACTIVE_IMPORT, END, "collection.rest")
    assert in_cet == reading()


def test_create_refuses_a_naive_interval_end() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        reading(interval_end=datetime(2025, 3, 1, 10, 15))


def test_a_naive_datetime_is_refused_by_the_model() -> None:
    fields = reading().model_dump()
    fields["interval_end"] = datetime(2025, 3, 1, 10, 15)
    with pytest.raises(ValidationError, match="timezone"):
        MeterReadingReceived(**fields)


def test_register_is_required() -> None:
    # Regression: "register" shadows ABCMeta.register, which pydantic would otherwise take as its default.
    fields = reading().model_dump()
    del fields["register"]
    with pytest.raises(ValidationError, match="register"):
        MeterReadingReceived(**fields)


@pytest.mark.parametrize(
    ("register", "unit", "ok"),
    [
        (Register.ACTIVE_IMPORT, Unit.KWH, True),
        (Register.ACTIVE_EXPORT, Unit.MWH, True),
        (Register.REACTIVE_IMPORT, Unit.KVARH, True),
        (Register.REACTIVE_EXPORT, Unit.VARH, True),
        (Register.ACTIVE_IMPORT, Unit.KVARH, False),
        (Register.REACTIVE_EXPORT, Unit.WH, False),
    ],
)
def test_the_unit_fits_the_register(register: Register, unit: Unit, ok: bool) -> None:
    if ok:
        assert reading(register=register, unit=unit).unit is unit
    else:
        with pytest.raises(ValidationError, match="does not fit register"):
            reading(register=register, unit=unit)


def test_a_missing_interval_has_value_zero() -> None:
    assert reading(quality=Quality.MISSING, value=0.0).value == 0
    with pytest.raises(ValidationError, match="missing"):
        reading(quality=Quality.MISSING, value=0.5)


@pytest.mark.parametrize("value", [0.0, 0.001, 0.3, 12.34, 999_999_999.999, 123_456_789.123])
def test_values_with_up_to_3_decimals_are_taken_as_they_are(value: float) -> None:
    assert reading(value=value).value == value


@pytest.mark.parametrize("value", [0.0005, 1.2345, 0.1 + 0.2, 999_999_999.9989])
def test_values_with_more_than_3_decimals_are_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="at most 3 decimals"):
        reading(value=value)


@pytest.mark.parametrize("value", [-1e9, 1e9, float("nan"), float("inf")])
def test_values_out_of_range_are_refused(value: float) -> None:
    with pytest.raises(ValidationError):
        reading(value=value)


def test_payloads_are_immutable_and_closed() -> None:
    event = reading()
    with pytest.raises(ValidationError):
        event.value = 2.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        MeterReadingReceived.model_validate({**event.model_dump(), "voltage": 230})


def test_enums_are_strict_in_python_too() -> None:
    fields = reading().model_dump()
    fields["register"] = "active_import"
    with pytest.raises(ValidationError):
        MeterReadingReceived(**fields)


def test_make_event_uses_the_reading_id_as_event_id() -> None:
    event = make_event(reading(), source="/gridhub/collection")
    assert event.id == event.data.reading_id
    assert event.subject == METERPOINT
    assert event.type == "gridhub.meter.reading.received"
    assert event.schemaversion == 1
    assert event.time.tzinfo is UTC
    assert abs(datetime.now(UTC) - event.time) < timedelta(minutes=1)


def test_make_event_uses_the_alarm_id_as_event_id() -> None:
    alarm = MeterAlarmRaised.create(
        meterpoint_id=METERPOINT, alarm=MeterAlarm.TAMPER, raised_at=END, source="hes-north-01"
    )
    assert make_event(alarm, source="/gridhub/collection").id == alarm.alarm_id


def test_other_events_get_a_random_id_unless_one_is_given() -> None:
    link = MeterpointLinked(customer_id="C-1", meterpoint_id=METERPOINT, move_in=date(2025, 4, 1))
    first = make_event(link, source="/gridhub/customers")
    second = make_event(link, source="/gridhub/customers")
    assert first.id != second.id
    assert uuid.UUID(first.id).version == 4
    assert make_event(link, source="/gridhub/customers", id="outbox-42").id == "outbox-42"
    assert first.subject == "C-1"


def test_make_event_normalises_the_given_time_to_utc() -> None:
    time = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = make_event(reading(), source="/gridhub/collection", time=time)
    assert event.time == time
    assert event.time.tzinfo is UTC


def test_an_envelope_whose_subject_differs_from_the_key_field_is_refused() -> None:
    event = make_event(reading(), source="/gridhub/collection")
    fields = {name: getattr(event, name) for name in type(event).model_fields}
    with pytest.raises(ValidationError, match="subject does not match"):
        envelope_class(MeterReadingReceived)(**{**fields, "subject": "571313180400009172"})


def test_a_hand_built_generic_envelope_must_agree_with_its_data() -> None:
    event = make_event(reading(), source="/gridhub/collection")
    fields = {name: getattr(event, name) for name in type(event).model_fields}
    with pytest.raises(ValidationError, match="type and schemaversion"):
        CloudEvent[MeterReadingReceived](**{**fields, "type": "gridhub.meter.alarm.raised"})


def test_a_time_window_ends_after_it_starts() -> None:
    assert TimeWindow(start=END, end=END + timedelta(hours=4)).end > END
    with pytest.raises(ValidationError, match="ends after it starts"):
        TimeWindow(start=END, end=END)


def completed(**changes: Any) -> WorkOrderCompleted:
    fields: dict[str, Any] = {
        "work_order_id": "WO-1",
        "meterpoint_id": METERPOINT,
        "type": WorkOrderType.REPLACE_METER,
        "crew": "crew-1",
        "completed_at": END,
        "result": WorkOrderResult.SUCCEEDED,
        "new_meter_serial": "KAM-1",
    }
    return WorkOrderCompleted(**{**fields, **changes})


def test_a_succeeded_meter_fitting_names_the_new_serial() -> None:
    assert completed().new_meter_serial == "KAM-1"
    assert completed(type=WorkOrderType.INSPECT_METER, new_meter_serial=None).status is WorkOrderStatus.COMPLETED
    assert completed(result=WorkOrderResult.NO_ACCESS, new_meter_serial=None).new_meter_serial is None
    with pytest.raises(ValidationError, match="names the new meter"):
        completed(new_meter_serial=None)
    with pytest.raises(ValidationError, match="only a succeeded"):
        completed(type=WorkOrderType.DISCONNECT)


def test_each_work_order_event_carries_its_status() -> None:
    cancelled = WorkOrderCancelled(
        work_order_id="WO-1", meterpoint_id=METERPOINT, type=WorkOrderType.RECONNECT, reason="Duplicate order"
    )
    assert cancelled.status is WorkOrderStatus.CANCELLED
    with pytest.raises(ValidationError):
        WorkOrderCancelled(**{**cancelled.model_dump(), "status": WorkOrderStatus.CREATED})
