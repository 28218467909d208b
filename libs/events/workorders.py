"""Work order events on ``workorders.v1``, keyed by work order id: the lifecycle of a field job at a meterpoint.

created -> scheduled -> in_progress -> completed, and cancelled from any state before completed. Each event
carries the status the work order has after it, so a projection can set the status without a state table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from libs.events import topics
from libs.events.base import EventData, EventPart
from libs.events.fields import LongText, OpaqueId, ShortText, Timestamp
from libs.events.gsrn import Gsrn


class WorkOrderType(StrEnum):
    """The job a crew does at the meterpoint."""

    INSTALL_METER = "install_meter"
    REPLACE_METER = "replace_meter"
    INSPECT_METER = "inspect_meter"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"


class WorkOrderStatus(StrEnum):
    """Where a work order is in its lifecycle."""

    CREATED = "created"
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class WorkOrderResult(StrEnum):
    """How a completed job went."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NO_ACCESS = "no_access"


METER_FITTING = frozenset({WorkOrderType.INSTALL_METER, WorkOrderType.REPLACE_METER})
"""Jobs that put a new meter in, so their successful completion names its serial number."""


class TimeWindow(EventPart):
    """The agreed visit window at the meterpoint (start inclusive, end exclusive; end after start)."""

    start: Timestamp
    end: Timestamp

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError("a time window ends after it starts")
        return self


class _WorkOrderEvent(EventData):
    topic: ClassVar[str] = topics.WORKORDERS
    subject_field: ClassVar[str] = "work_order_id"

    work_order_id: OpaqueId
    meterpoint_id: Gsrn
    type: WorkOrderType


class WorkOrderCreated(_WorkOrderEvent):
    """A work order was opened (by an operator, or by the work orders service reacting to a meter alarm)."""

    event_type: ClassVar[str] = "gridhub.workorder.created"

    status: Literal[WorkOrderStatus.CREATED] = WorkOrderStatus.CREATED
    description: LongText | None = Field(default=None, description="What the crew should know, if anything.")


class WorkOrderScheduled(_WorkOrderEvent):
    """A crew and a visit window were assigned (again, when rescheduled)."""

    event_type: ClassVar[str] = "gridhub.workorder.scheduled"

    status: Literal[WorkOrderStatus.SCHEDULED] = WorkOrderStatus.SCHEDULED
    crew: OpaqueId = Field(description="Id of the field crew doing the job.")
    window: TimeWindow


class WorkOrderStarted(_WorkOrderEvent):
    """The crew started the job on site."""

    event_type: ClassVar[str] = "gridhub.workorder.started"

    status: Literal[WorkOrderStatus.IN_PROGRESS] = WorkOrderStatus.IN_PROGRESS
    crew: OpaqueId
    started_at: Timestamp


_SERIAL_RULE: dict[str, Any] = {
    "if": {
        "properties": {
            "type": {"enum": [t.value for t in WorkOrderType if t in METER_FITTING]},
            "result": {"const": "succeeded"},
        },
        "required": ["type", "result"],
    },
    "then": {"required": ["new_meter_serial"], "properties": {"new_meter_serial": {"type": "string"}}},
    "else": {"properties": {"new_meter_serial": {"type": "null"}}},
}


class WorkOrderCompleted(_WorkOrderEvent):
    """The crew finished the job, successfully or not; a new meter's serial is named when one was fitted."""

    model_config = ConfigDict(json_schema_extra=_SERIAL_RULE)

    event_type: ClassVar[str] = "gridhub.workorder.completed"

    status: Literal[WorkOrderStatus.COMPLETED] = WorkOrderStatus.COMPLETED
    crew: OpaqueId
    completed_at: Timestamp
    result: WorkOrderResult
    new_meter_serial: ShortText | None = Field(
        default=None,
        description="Serial number of the meter fitted; required when an install or replace job succeeded.",
    )

    @model_validator(mode="after")
    def _serial_when_fitted(self) -> Self:
        fitted = self.type in METER_FITTING and self.result is WorkOrderResult.SUCCEEDED
        if fitted and self.new_meter_serial is None:
            raise ValueError(f"a succeeded {self.type} job names the new meter's serial number")
        if not fitted and self.new_meter_serial is not None:
            raise ValueError("only a succeeded install or replace job names a new meter serial number")
        return self


class WorkOrderCancelled(_WorkOrderEvent):
    """The work order was cancelled before completion."""

    event_type: ClassVar[str] = "gridhub.workorder.cancelled"

    status: Literal[WorkOrderStatus.CANCELLED] = WorkOrderStatus.CANCELLED
    reason: ShortText
