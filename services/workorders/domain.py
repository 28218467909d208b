"""Work orders and their lifecycle. Pure: no I/O, no clock (``now`` is passed in), no framework.

    created --schedule--> scheduled --start--> in_progress --complete--> completed
       |                  |  ^  |                  |
       |                  +--+ reschedule          |
       +-------cancel-----+-------cancel-----------+------------------> cancelled

``cancel`` is allowed from created, scheduled and in_progress, as the ``workorders.v1`` contract says ("cancelled
from any state before completed"): a crew on site may find the job unsafe and stop. completed and cancelled are
final. Every transition returns the new order (version + 1) and the event it publishes; an action the current
status does not allow raises `InvalidTransition`, a command that breaks a rule raises `InvalidCommand`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeAlias

from libs.events import (
    EventData,
    MeterAlarm,
    MeterAlarmRaised,
    TimeWindow,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderResult,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderStatus,
    WorkOrderType,
    is_valid_gsrn,
)
from libs.events.fields import OPAQUE_ID_PATTERN
from libs.events.workorders import METER_FITTING

__all__ = [
    "ALLOWED_FROM",
    "Action",
    "Address",
    "Cancel",
    "Command",
    "Complete",
    "Customer",
    "CustomerInfo",
    "CustomerSource",
    "CustomerStatus",
    "InvalidCommand",
    "InvalidTransition",
    "OpenWorkOrder",
    "Origin",
    "Rules",
    "Schedule",
    "Start",
    "Violation",
    "Window",
    "WorkOrder",
    "WorkOrderResult",
    "WorkOrderStatus",
    "WorkOrderType",
    "action_of",
    "apply",
    "inspection_for",
    "open_work_order",
]

_OPAQUE_ID = re.compile(OPAQUE_ID_PATTERN)
MAX_DESCRIPTION = 2000
MAX_SHORT_TEXT = 200


class Action(StrEnum):
    """What can be done to an existing work order."""

    SCHEDULE = "schedule"
    START = "start"
    COMPLETE = "complete"
    CANCEL = "cancel"


S = WorkOrderStatus
ALLOWED_FROM: dict[Action, frozenset[WorkOrderStatus]] = {
    Action.SCHEDULE: frozenset({S.CREATED, S.SCHEDULED}),
    Action.START: frozenset({S.SCHEDULED}),
    Action.COMPLETE: frozenset({S.IN_PROGRESS}),
    Action.CANCEL: frozenset({S.CREATED, S.SCHEDULED, S.IN_PROGRESS}),
}
"""The statuses each action may start from; everything else is an invalid transition."""


class Origin(StrEnum):
    """Who opened the work order."""

    API = "api"
    ALARM = "alarm"


class CustomerStatus(StrEnum):
    """Whether the customer at the meterpoint is known.

    ``pending``: the customers service has not answered yet (it was down or slow); ``customer`` may hold a
    provisional value from the local replica. ``known``: the customers service named the customer. ``none``:
    the customers service says nobody holds the meterpoint on that date (e.g. a new connection).
    """

    PENDING = "pending"
    KNOWN = "known"
    NONE = "none"


class CustomerSource(StrEnum):
    """Where the customer data came from."""

    CUSTOMERS_SERVICE = "customers_service"
    REPLICA = "replica"


@dataclass(frozen=True, slots=True)
class Address:
    """A postal address."""

    street: str
    postcode: str
    city: str
    country: str


@dataclass(frozen=True, slots=True)
class Customer:
    """The customer at a meterpoint as the crew needs them: who, and how to reach them."""

    customer_id: str
    name: str
    email: str | None
    phone: str | None
    address: Address


@dataclass(frozen=True, slots=True)
class CustomerInfo:
    """The customer part of a work order (see `CustomerStatus`)."""

    status: CustomerStatus
    customer: Customer | None = None
    source: CustomerSource | None = None
    checked_at: datetime | None = None

    @classmethod
    def pending(cls, provisional: Customer | None = None) -> CustomerInfo:
        """Not confirmed yet; ``provisional`` is the local replica's answer, if it had one."""
        source = CustomerSource.REPLICA if provisional is not None else None
        return cls(CustomerStatus.PENDING, provisional, source)

    @classmethod
    def known(cls, customer: Customer, at: datetime) -> CustomerInfo:
        """The customers service named ``customer``."""
        return cls(CustomerStatus.KNOWN, customer, CustomerSource.CUSTOMERS_SERVICE, at)

    @classmethod
    def vacant(cls, at: datetime) -> CustomerInfo:
        """The customers service says nobody holds the meterpoint."""
        return cls(CustomerStatus.NONE, None, CustomerSource.CUSTOMERS_SERVICE, at)


@dataclass(frozen=True, slots=True)
class Window:
    """The agreed visit window: start inclusive, end exclusive."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """A job for a field crew at a meterpoint, and where it is in its lifecycle."""

    work_order_id: str
    meterpoint_id: str
    type: WorkOrderType
    status: WorkOrderStatus
    version: int
    created_at: datetime
    updated_at: datetime
    customer: CustomerInfo
    origin: Origin = Origin.API
    description: str | None = None
    alarm_id: str | None = None
    alarm: MeterAlarm | None = None
    crew: str | None = None
    window: Window | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: WorkOrderResult | None = None
    new_meter_serial: str | None = None
    cancel_reason: str | None = None
    cancelled_at: datetime | None = None
    grid_company: str | None = None
    """The tenant: the grid company owning the meterpoint (its master data); None until that is known, when only
    the platform role sees the order."""


@dataclass(frozen=True, slots=True)
class OpenWorkOrder:
    """Open a new work order."""

    meterpoint_id: str
    type: WorkOrderType
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """Assign a crew and a visit window (again, to reschedule)."""

    crew: str
    window: Window


@dataclass(frozen=True, slots=True)
class Start:
    """The crew started on site (at ``started_at``, or now)."""

    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Complete:
    """The crew finished; a fitted meter's serial is named when an install or replace job succeeded."""

    result: WorkOrderResult
    new_meter_serial: str | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the work order for good."""

    reason: str


Command: TypeAlias = Schedule | Start | Complete | Cancel


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the field (dotted path) and a message without the input value."""

    field: str
    message: str


class InvalidTransition(Exception):
    """The action is not allowed in the order's current status (HTTP 409)."""

    def __init__(self, action: Action, status: WorkOrderStatus) -> None:
        allowed = ", ".join(sorted(ALLOWED_FROM[action]))
        super().__init__(f"cannot {action} a work order that is {status}; {action} is allowed from: {allowed}")
        self.action = action
        self.status = status


class InvalidCommand(Exception):
    """The command breaks one or more rules (HTTP 422); all violations are reported at once."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.message}" for v in violations))
        self.violations = tuple(violations)


@dataclass(frozen=True, slots=True)
class Rules:
    """Limits that are policy rather than physics; set from the service's settings."""

    clock_tolerance: timedelta = timedelta(minutes=5)
    max_window: timedelta = timedelta(days=7)


def action_of(command: Command) -> Action:
    """The action a command performs."""
    match command:
        case Schedule():
            return Action.SCHEDULE
        case Start():
            return Action.START
        case Complete():
            return Action.COMPLETE
        case Cancel():
            return Action.CANCEL


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAK = re.compile(r"[\t\n\r]")


def _text(violations: list[Violation], field: str, value: str | None, limit: int, *, lines: bool = False) -> None:
    if value is None:
        return
    if not value.strip() or len(value) > limit:
        violations.append(Violation(field, f"must be 1 to {limit} characters and not blank"))
    elif _CONTROL.search(value) or (not lines and _LINE_BREAK.search(value)):
        allowed = "tabs and line breaks" if lines else "none"
        violations.append(Violation(field, f"must not contain control characters ({allowed} allowed)"))


def _aware(violations: list[Violation], field: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        violations.append(Violation(field, "must carry a time zone offset"))


def _raise_if(violations: list[Violation]) -> None:
    if violations:
        raise InvalidCommand(violations)


def open_work_order(
    work_order_id: str,
    command: OpenWorkOrder,
    *,
    now: datetime,
    customer: CustomerInfo,
    alarm: MeterAlarmRaised | None = None,
) -> tuple[WorkOrder, WorkOrderCreated]:
    """A new order in status created (version 1) and its WorkOrderCreated event."""
    violations: list[Violation] = []
    if not is_valid_gsrn(command.meterpoint_id):
        violations.append(Violation("meterpoint_id", "must be a GSRN-18 with a valid GS1 check digit"))
    _text(violations, "description", command.description, MAX_DESCRIPTION, lines=True)
    _raise_if(violations)
    order = WorkOrder(
        work_order_id=work_order_id,
        meterpoint_id=command.meterpoint_id,
        type=command.type,
        status=WorkOrderStatus.CREATED,
        version=1,
        created_at=now,
        updated_at=now,
        customer=customer,
        origin=Origin.ALARM if alarm is not None else Origin.API,
        description=command.description,
        alarm_id=alarm.alarm_id if alarm is not None else None,
        alarm=alarm.alarm if alarm is not None else None,
    )
    event = WorkOrderCreated(
        work_order_id=work_order_id, meterpoint_id=order.meterpoint_id, type=order.type, description=order.description
    )
    return order, event


def inspection_for(alarm: MeterAlarmRaised) -> OpenWorkOrder:
    """The inspect_meter order a meter alarm calls for."""
    text = f"Meter alarm {alarm.alarm} raised at {alarm.raised_at.isoformat()} by {alarm.source}."
    if alarm.details:
        # Head-end systems write what they like; control characters would only make the order unreadable.
        text = f"{text} Details: {_CONTROL.sub(' ', alarm.details)}"
    return OpenWorkOrder(alarm.meterpoint_id, WorkOrderType.INSPECT_METER, text[:MAX_DESCRIPTION])


def apply(order: WorkOrder, command: Command, *, now: datetime, rules: Rules) -> tuple[WorkOrder, EventData]:
    """Perform ``command`` on ``order``: the changed order (version + 1) and the event to publish."""
    action = action_of(command)
    if order.status not in ALLOWED_FROM[action]:
        raise InvalidTransition(action, order.status)
    match command:
        case Schedule():
            return _schedule(order, command, now, rules)
        case Start():
            return _start(order, command, now, rules)
        case Complete():
            return _complete(order, command, now, rules)
        case Cancel():
            return _cancel(order, command, now)


def _ids(order: WorkOrder) -> dict[str, Any]:
    return {"work_order_id": order.work_order_id, "meterpoint_id": order.meterpoint_id, "type": order.type}


def _schedule(order: WorkOrder, command: Schedule, now: datetime, rules: Rules) -> tuple[WorkOrder, EventData]:
    violations: list[Violation] = []
    if not _OPAQUE_ID.fullmatch(command.crew):
        violations.append(Violation("crew", "must be 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"))
    window = command.window
    _aware(violations, "window.start", window.start)
    _aware(violations, "window.end", window.end)
    _raise_if(violations)
    if window.end <= window.start:
        violations.append(Violation("window.end", "must be after window.start"))
    elif window.end - window.start > rules.max_window:
        violations.append(Violation("window", f"may be at most {rules.max_window} long"))
    if window.end <= now:
        violations.append(Violation("window.end", "must be in the future"))
    _raise_if(violations)
    changed = replace(order, status=WorkOrderStatus.SCHEDULED, crew=command.crew, window=window)
    event = WorkOrderScheduled(**_ids(order), crew=command.crew, window=TimeWindow(start=window.start, end=window.end))
    return _bump(changed, now), event


def _start(order: WorkOrder, command: Start, now: datetime, rules: Rules) -> tuple[WorkOrder, EventData]:
    started_at = command.started_at or now
    violations: list[Violation] = []
    _aware(violations, "started_at", started_at)
    _raise_if(violations)
    if started_at > now + rules.clock_tolerance:
        violations.append(Violation("started_at", "must not be in the future"))
    if started_at < order.created_at - rules.clock_tolerance:
        violations.append(Violation("started_at", "must not be before the work order was created"))
    _raise_if(violations)
    assert order.crew is not None  # scheduled orders have a crew
    changed = replace(order, status=WorkOrderStatus.IN_PROGRESS, started_at=started_at)
    return _bump(changed, now), WorkOrderStarted(**_ids(order), crew=order.crew, started_at=started_at)


def _complete(order: WorkOrder, command: Complete, now: datetime, rules: Rules) -> tuple[WorkOrder, EventData]:
    completed_at = command.completed_at or now
    violations: list[Violation] = []
    _aware(violations, "completed_at", completed_at)
    _text(violations, "new_meter_serial", command.new_meter_serial, MAX_SHORT_TEXT)
    _raise_if(violations)
    if completed_at > now + rules.clock_tolerance:
        violations.append(Violation("completed_at", "must not be in the future"))
    if order.started_at is not None and completed_at < order.started_at:
        violations.append(Violation("completed_at", "must not be before started_at"))
    fitted = order.type in METER_FITTING and command.result is WorkOrderResult.SUCCEEDED
    if fitted and command.new_meter_serial is None:
        violations.append(Violation("new_meter_serial", f"is required when a {order.type} job succeeded"))
    if not fitted and command.new_meter_serial is not None:
        violations.append(Violation("new_meter_serial", "only a succeeded install or replace job names a new meter"))
    _raise_if(violations)
    assert order.crew is not None  # started orders have a crew
    changed = replace(
        order,
        status=WorkOrderStatus.COMPLETED,
        completed_at=completed_at,
        result=command.result,
        new_meter_serial=command.new_meter_serial,
    )
    event = WorkOrderCompleted(
        **_ids(order),
        crew=order.crew,
        completed_at=completed_at,
        result=command.result,
        new_meter_serial=command.new_meter_serial,
    )
    return _bump(changed, now), event


def _cancel(order: WorkOrder, command: Cancel, now: datetime) -> tuple[WorkOrder, EventData]:
    violations: list[Violation] = []
    _text(violations, "reason", command.reason, MAX_SHORT_TEXT)
    _raise_if(violations)
    changed = replace(order, status=WorkOrderStatus.CANCELLED, cancel_reason=command.reason, cancelled_at=now)
    return _bump(changed, now), WorkOrderCancelled(**_ids(order), reason=command.reason)


def _bump(order: WorkOrder, now: datetime) -> WorkOrder:
    return replace(order, version=order.version + 1, updated_at=now)
