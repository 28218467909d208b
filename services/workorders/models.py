"""The REST representations: request bodies (validated, closed) and responses, mapped to and from the domain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from libs.events import Gsrn, MeterAlarm, WorkOrderResult, WorkOrderStatus, WorkOrderType
from libs.events.fields import LongText, OpaqueId, ShortText
from services.workorders import domain
from services.workorders.domain import CustomerSource, CustomerStatus, Origin

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _plausible(moment: datetime) -> datetime:
    try:
        inside = EARLIEST <= moment < LATEST
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 has no UTC equivalent
        inside = False
    if not inside:
        raise ValueError("must lie between 1970 and 2200")
    return moment


Moment = Annotated[AwareDatetime, AfterValidator(_plausible)]
"""An instant with an offset, between 1970 and 2200 (anything else is a typo and cannot be compared safely)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateWorkOrder(_Request):
    """A new work order at a meterpoint."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"meterpoint_id": "571313180400000025", "type": "replace_meter", "description": "Meter in the cellar."}
            ]
        }
    )

    meterpoint_id: Gsrn
    type: WorkOrderType
    description: LongText | None = Field(default=None, description="What the crew should know, 1-2000 characters.")

    def command(self) -> domain.OpenWorkOrder:
        return domain.OpenWorkOrder(self.meterpoint_id, self.type, self.description)


class VisitWindow(_Request):
    """The agreed visit window: start inclusive, end exclusive, end after start, at most 7 days long."""

    start: Moment
    end: Moment

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError("window.end must be after window.start")
        return self


class ScheduleWorkOrder(_Request):
    """Assign a crew and a visit window; on a scheduled order this reschedules it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"crew": "crew-7", "window": {"start": "2030-05-06T08:00:00Z", "end": "2030-05-06T10:00:00Z"}}]
        }
    )

    crew: OpaqueId = Field(description="Id of the field crew, 1-64 letters, digits, '.', '_' or '-'.")
    window: VisitWindow

    def command(self) -> domain.Schedule:
        return domain.Schedule(self.crew, domain.Window(self.window.start, self.window.end))


class StartWorkOrder(_Request):
    """The crew started on site."""

    started_at: Moment | None = Field(default=None, description="When; now if left out.")

    def command(self) -> domain.Start:
        return domain.Start(self.started_at)


class CompleteWorkOrder(_Request):
    """The crew finished the job."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"result": "succeeded", "new_meter_serial": "KAM-99812"}]}
    )

    result: WorkOrderResult
    new_meter_serial: ShortText | None = Field(
        default=None,
        description="Serial number of the meter fitted: required when an install or replace job succeeded, "
        "refused otherwise.",
    )
    completed_at: Moment | None = Field(default=None, description="When; now if left out.")

    def command(self) -> domain.Complete:
        return domain.Complete(self.result, self.new_meter_serial, self.completed_at)


class CancelWorkOrder(_Request):
    """Stop the work order for good."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "The customer moved out."}]})

    reason: ShortText

    def command(self) -> domain.Cancel:
        return domain.Cancel(self.reason)


class AddressOut(BaseModel):
    """A postal address."""

    street: str
    postcode: str
    city: str
    country: str


class CustomerOut(BaseModel):
    """The customer at the meterpoint, for the crew.

    status ``pending``: the customers service has not confirmed yet (it was unreachable); the fields may hold a
    provisional value from the local replica (``source`` = ``replica``) and are filled in once it answers.
    ``known``: confirmed by the customers service. ``none``: nobody holds the meterpoint on that date.
    """

    status: CustomerStatus
    source: CustomerSource | None = None
    customer_id: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    address: AddressOut | None = None
    checked_at: datetime | None = Field(default=None, description="When the customers service answered.")


class WindowOut(BaseModel):
    """The agreed visit window."""

    start: datetime
    end: datetime


class WorkOrderOut(BaseModel):
    """A work order; ``version`` is also its ETag (``"<version>"``), to be sent back in If-Match."""

    work_order_id: str = Field(examples=["WO-00000042"])
    meterpoint_id: str
    type: WorkOrderType
    status: WorkOrderStatus
    version: Annotated[int, Field(ge=1)]
    origin: Origin = Field(description="api: opened through this API; alarm: opened for a meter alarm.")
    description: str | None = None
    alarm_id: str | None = Field(default=None, description="The meter alarm an inspection was opened for.")
    alarm: MeterAlarm | None = None
    crew: str | None = None
    window: WindowOut | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: WorkOrderResult | None = None
    new_meter_serial: str | None = None
    cancel_reason: str | None = None
    cancelled_at: datetime | None = None
    customer: CustomerOut
    grid_company: str | None = Field(
        default=None,
        description="The grid company that owns the meterpoint and so the order; null while the meterpoint's master "
        "data has not arrived (then only the platform role sees the order).",
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, order: domain.WorkOrder) -> WorkOrderOut:
        info = order.customer
        person = info.customer
        customer = CustomerOut(status=info.status, source=info.source, checked_at=info.checked_at)
        if person is not None:
            a = person.address
            customer = customer.model_copy(
                update={
                    "customer_id": person.customer_id,
                    "name": person.name,
                    "email": person.email,
                    "phone": person.phone,
                    "address": AddressOut(street=a.street, postcode=a.postcode, city=a.city, country=a.country),
                }
            )
        window = WindowOut(start=order.window.start, end=order.window.end) if order.window else None
        return cls(
            work_order_id=order.work_order_id,
            meterpoint_id=order.meterpoint_id,
            type=order.type,
            status=order.status,
            version=order.version,
            origin=order.origin,
            description=order.description,
            alarm_id=order.alarm_id,
            alarm=order.alarm,
            crew=order.crew,
            window=window,
            started_at=order.started_at,
            completed_at=order.completed_at,
            result=order.result,
            new_meter_serial=order.new_meter_serial,
            cancel_reason=order.cancel_reason,
            cancelled_at=order.cancelled_at,
            customer=customer,
            grid_company=order.grid_company,
            created_at=order.created_at,
            updated_at=order.updated_at,
        )


class WorkOrderPage(BaseModel):
    """A page of work orders, newest first; pass ``next_cursor`` (with the same filters) for the next page."""

    items: list[WorkOrderOut]
    next_cursor: str | None = Field(description="Null on the last page.")
