"""The work order lifecycle and its rules (pure domain, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from libs.events import (
    MeterAlarm,
    MeterAlarmRaised,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderScheduled,
    WorkOrderStarted,
    make_event,
    with_check_digit,
)
from services.workorders import domain
from services.workorders.domain import (
    ALLOWED_FROM,
    Action,
    Cancel,
    Complete,
    CustomerInfo,
    CustomerStatus,
    InvalidCommand,
    InvalidTransition,
    OpenWorkOrder,
    Rules,
    Schedule,
    Start,
    Window,
    WorkOrder,
    WorkOrderResult,
    WorkOrderStatus,
    WorkOrderType,
)

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
METERPOINT = with_check_digit("57131318040000002")
RULES = Rules()
WINDOW = Window(NOW + timedelta(days=1), NOW + timedelta(days=1, hours=2))


def opened(kind: WorkOrderType = WorkOrderType.REPLACE_METER) -> WorkOrder:
    order, _ = domain.open_work_order(
        "WO-00000001", OpenWorkOrder(METERPOINT, kind), now=NOW, customer=CustomerInfo.pending()
    )
    return order


def step(order: WorkOrder, command: domain.Command, now: datetime = NOW) -> WorkOrder:
    changed, _ = domain.apply(order, command, now=now, rules=RULES)
    return changed


def in_status(status: WorkOrderStatus, kind: WorkOrderType = WorkOrderType.REPLACE_METER) -> WorkOrder:
    order = opened(kind)
    path: list[domain.Command] = {
        WorkOrderStatus.CREATED: [],
        WorkOrderStatus.SCHEDULED: [Schedule("crew-7", WINDOW)],
        WorkOrderStatus.IN_PROGRESS: [Schedule("crew-7", WINDOW), Start()],
        WorkOrderStatus.COMPLETED: [Schedule("crew-7", WINDOW), Start(), Complete(WorkOrderResult.FAILED)],
        WorkOrderStatus.CANCELLED: [Cancel("customer moved")],
    }[status]
    for command in path:
        order = step(order, command)
    assert order.status is status
    return order


COMMANDS: dict[Action, domain.Command] = {
    Action.SCHEDULE: Schedule("crew-7", WINDOW),
    Action.START: Start(),
    Action.COMPLETE: Complete(WorkOrderResult.SUCCEEDED, "SN-1234"),
    Action.CANCEL: Cancel("no longer needed"),
}


def test_a_new_order_is_created_at_version_1_with_its_event() -> None:
    order, event = domain.open_work_order(
        "WO-00000001",
        OpenWorkOrder(METERPOINT, WorkOrderType.INSTALL_METER, "Gate code 1234"),
        now=NOW,
        customer=CustomerInfo.pending(),
    )
    assert (order.status, order.version, order.origin) == (WorkOrderStatus.CREATED, 1, domain.Origin.API)
    assert isinstance(event, WorkOrderCreated)
    assert (event.work_order_id, event.meterpoint_id, event.description) == (
        "WO-00000001",
        METERPOINT,
        "Gate code 1234",
    )
    assert order.customer.status is CustomerStatus.PENDING


def test_the_happy_path_publishes_one_event_per_transition() -> None:
    order = opened(WorkOrderType.REPLACE_METER)
    events = []
    for command in (Schedule("crew-7", WINDOW), Start(), Complete(WorkOrderResult.SUCCEEDED, "SN-1234")):
        order, event = domain.apply(order, command, now=NOW, rules=RULES)
        events.append(event)
    assert [type(e) for e in events] == [WorkOrderScheduled, WorkOrderStarted, WorkOrderCompleted]
    assert order.status is WorkOrderStatus.COMPLETED
    assert order.version == 4
    assert order.new_meter_serial == "SN-1234"
    completed = events[-1]
    assert isinstance(completed, WorkOrderCompleted)
    assert (completed.crew, completed.result) == ("crew-7", WorkOrderResult.SUCCEEDED)
    for event in events:
        make_event(event, source="/gridhub/workorders")  # every event is a valid contract event


@pytest.mark.parametrize("status", list(WorkOrderStatus))
@pytest.mark.parametrize("action", list(Action))
def test_each_action_is_allowed_exactly_from_its_statuses(status: WorkOrderStatus, action: Action) -> None:
    order = in_status(status)
    if status in ALLOWED_FROM[action]:
        changed = step(order, COMMANDS[action])
        assert changed.version == order.version + 1
    else:
        with pytest.raises(InvalidTransition) as raised:
            step(order, COMMANDS[action])
        assert (raised.value.action, raised.value.status) == (action, status)


def test_completed_and_cancelled_are_final_and_cancel_is_allowed_until_completion() -> None:
    final = {WorkOrderStatus.COMPLETED, WorkOrderStatus.CANCELLED}
    for action, statuses in ALLOWED_FROM.items():
        assert not statuses & final, action
    assert ALLOWED_FROM[Action.CANCEL] == {
        WorkOrderStatus.CREATED,
        WorkOrderStatus.SCHEDULED,
        WorkOrderStatus.IN_PROGRESS,
    }


def test_rescheduling_replaces_crew_and_window() -> None:
    order = in_status(WorkOrderStatus.SCHEDULED)
    later = Window(WINDOW.start + timedelta(days=2), WINDOW.end + timedelta(days=2))
    changed, event = domain.apply(order, Schedule("crew-9", later), now=NOW, rules=RULES)
    assert (changed.status, changed.crew, changed.window) == (WorkOrderStatus.SCHEDULED, "crew-9", later)
    assert isinstance(event, WorkOrderScheduled)


def test_cancelling_in_progress_keeps_the_reason() -> None:
    changed, event = domain.apply(in_status(WorkOrderStatus.IN_PROGRESS), Cancel("unsafe site"), now=NOW, rules=RULES)
    assert (changed.status, changed.cancel_reason, changed.cancelled_at) == (
        WorkOrderStatus.CANCELLED,
        "unsafe site",
        NOW,
    )
    assert isinstance(event, WorkOrderCancelled)


def violations(error: pytest.ExceptionInfo[InvalidCommand]) -> set[str]:
    return {v.field for v in error.value.violations}


@pytest.mark.parametrize(
    ("window", "field"),
    [
        (Window(WINDOW.end, WINDOW.start), "window.end"),
        (Window(WINDOW.start, WINDOW.start), "window.end"),
        (Window(WINDOW.start, WINDOW.start + timedelta(days=8)), "window"),
        (Window(NOW - timedelta(hours=3), NOW - timedelta(hours=1)), "window.end"),
        (Window(datetime(2026, 3, 3, 8, 0), datetime(2026, 3, 3, 9, 0)), "window.start"),
    ],
)
def test_a_visit_window_must_be_ordered_bounded_future_and_zoned(window: Window, field: str) -> None:
    with pytest.raises(InvalidCommand) as raised:
        step(opened(), Schedule("crew-7", window))
    assert field in violations(raised)


def test_a_crew_id_is_an_opaque_id() -> None:
    with pytest.raises(InvalidCommand) as raised:
        step(opened(), Schedule("crew 7!", WINDOW))
    assert violations(raised) == {"crew"}


@pytest.mark.parametrize(
    ("kind", "result", "serial", "ok"),
    [
        (WorkOrderType.REPLACE_METER, WorkOrderResult.SUCCEEDED, "SN-1", True),
        (WorkOrderType.INSTALL_METER, WorkOrderResult.SUCCEEDED, None, False),
        (WorkOrderType.REPLACE_METER, WorkOrderResult.NO_ACCESS, None, True),
        (WorkOrderType.REPLACE_METER, WorkOrderResult.FAILED, "SN-1", False),
        (WorkOrderType.INSPECT_METER, WorkOrderResult.SUCCEEDED, None, True),
        (WorkOrderType.DISCONNECT, WorkOrderResult.SUCCEEDED, "SN-1", False),
    ],
)
def test_a_new_meter_serial_is_named_exactly_when_a_meter_was_fitted(
    kind: WorkOrderType, result: WorkOrderResult, serial: str | None, ok: bool
) -> None:
    order = in_status(WorkOrderStatus.IN_PROGRESS, kind)
    if ok:
        assert step(order, Complete(result, serial)).new_meter_serial == serial
    else:
        with pytest.raises(InvalidCommand) as raised:
            step(order, Complete(result, serial))
        assert violations(raised) == {"new_meter_serial"}


def test_reported_times_must_not_be_in_the_future_or_out_of_order() -> None:
    scheduled = in_status(WorkOrderStatus.SCHEDULED)
    with pytest.raises(InvalidCommand):
        step(scheduled, Start(NOW + RULES.clock_tolerance + timedelta(seconds=1)))
    assert step(scheduled, Start(NOW + RULES.clock_tolerance)).started_at == NOW + RULES.clock_tolerance
    started = step(scheduled, Start(NOW - timedelta(minutes=1)))
    with pytest.raises(InvalidCommand) as raised:
        step(started, Complete(WorkOrderResult.FAILED, completed_at=NOW - timedelta(minutes=2)))
    assert violations(raised) == {"completed_at"}


def test_all_violations_are_reported_at_once() -> None:
    with pytest.raises(InvalidCommand) as raised:
        domain.open_work_order(
            "WO-1",
            OpenWorkOrder("571313180400000026", WorkOrderType.RECONNECT, "  "),
            now=NOW,
            customer=CustomerInfo.pending(),
        )
    assert violations(raised) == {"meterpoint_id", "description"}


def test_an_alarm_asks_for_an_inspection_that_remembers_the_alarm() -> None:
    alarm = MeterAlarmRaised.create(
        meterpoint_id=METERPOINT, alarm=MeterAlarm.TAMPER, raised_at=NOW, source="hes-north", details="cover opened"
    )
    command = domain.inspection_for(alarm)
    assert command.type is WorkOrderType.INSPECT_METER
    assert command.description is not None
    assert "tamper" in command.description
    assert "cover opened" in command.description
    order, _ = domain.open_work_order("WO-2", command, now=NOW, customer=CustomerInfo.pending(), alarm=alarm)
    assert (order.origin, order.alarm_id, order.alarm) == (domain.Origin.ALARM, alarm.alarm_id, MeterAlarm.TAMPER)


def test_transitions_do_not_touch_the_customer() -> None:
    order = replace(opened(), customer=CustomerInfo.vacant(NOW))
    assert step(order, Cancel("duplicate")).customer == order.customer


def test_free_text_refuses_control_characters_but_descriptions_keep_line_breaks() -> None:
    ok, _ = domain.open_work_order(
        "WO-3",
        OpenWorkOrder(METERPOINT, WorkOrderType.RECONNECT, "Gate:\n\tcode 1234"),
        now=NOW,
        customer=CustomerInfo.pending(),
    )
    assert ok.description == "Gate:\n\tcode 1234"
    with pytest.raises(InvalidCommand):
        domain.open_work_order(
            "WO-4",
            OpenWorkOrder(METERPOINT, WorkOrderType.RECONNECT, "a\x00b"),
            now=NOW,
            customer=CustomerInfo.pending(),
        )
    with pytest.raises(InvalidCommand) as raised:
        step(opened(), Cancel("two\nlines"))
    assert violations(raised) == {"reason"}
    alarm = MeterAlarmRaised.create(
        meterpoint_id=METERPOINT,
        alarm=MeterAlarm.CLOCK_ERROR,
        raised_at=NOW,
        source="hes-north",
        details="drift\x07 9s",
    )
    order, _ = domain.open_work_order("WO-5", domain.inspection_for(alarm), now=NOW, customer=CustomerInfo.pending())
    assert order.description is not None
    assert "\x07" not in order.description
