"""What the query API answers: response bodies (the OpenAPI document is generated from these)."""

from __future__ import annotations

import warnings
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


class Resolution(StrEnum):
    """Bucket size of consumption: UTC hours, or local calendar days of the view's time zone."""

    HOUR = "hour"
    DAY = "day"


class PartitionFreshness(_Body):
    """How far one partition of a source topic has been applied to the views."""

    topic: str
    partition: int
    applied_offset: int | None = Field(description="Next offset to apply (everything below is in the views).")
    high_watermark: int | None = Field(description="Log end offset last seen by the consumer.")
    lag: int = Field(description="Records in the log not yet in the views.")
    applied_at: datetime | None = Field(description="When the last batch of this partition was committed.")


class Freshness(_Body):
    """How fresh the answer is: the applied offsets of the topics it is built from and their lag."""

    view_version: int = Field(description="The version of the views answering (a rebuild makes a new one).")
    lag: int = Field(description="Records of the source topics not yet applied (sum over partitions).")
    applied_at: datetime | None = Field(description="When the newest applied batch was committed.")
    partitions: list[PartitionFreshness]


# "register" shadows BaseModel.register (ABCMeta); an explicit annotation keeps it a required field.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class LatestReading(_Body):
        """The newest interval value of one register."""

        register: str = Field(description="The meter register (active_import, active_export, ...).")
        interval_end: datetime
        value: Decimal = Field(description="Value as delivered, in `unit` (decimal string, exact).")
        unit: str
        quality: str
        source: str


class CurrentCustomer(_Body):
    """The customer holding the meterpoint today."""

    customer_id: str
    name: str | None = Field(description="None until the customer's record has arrived.")
    move_in: date
    move_out: date | None


class OpenWorkOrder(_Body):
    """A work order at the meterpoint that is neither completed nor cancelled."""

    work_order_id: str
    type: str
    status: str
    crew: str | None
    window_start: datetime | None
    window_end: datetime | None
    created_at: datetime
    customer_id: str | None = Field(description="The customer at the meterpoint on the day the order was opened.")
    customer_name: str | None = Field(description="That customer's name; None until the customer's record arrived.")


class ActiveAlarm(_Body):
    """An alarm not cleared by a later power restore (outages) or a completed work order."""

    alarm_id: str
    alarm: str
    raised_at: datetime
    source: str
    details: str | None


class MeterpointOverview(_Body):
    """Everything known about one meterpoint."""

    meterpoint_id: str
    grid_company: str | None = Field(
        description="The grid company that owns the meterpoint (its master data); None until that has arrived."
    )
    grid_area: str | None = Field(description="The grid area of the meterpoint (its master data).")
    last_seen: datetime | None = Field(description="Time of the newest reading or alarm event from the meter.")
    customer: CurrentCustomer | None
    latest_readings: list[LatestReading]
    open_work_orders: list[OpenWorkOrder]
    active_alarms: list[ActiveAlarm]
    freshness: Freshness


class ConsumptionPoint(_Body):
    """Energy of one bucket: ``start`` is an instant (hour) or a local date (day)."""

    start: datetime | date
    energy: Decimal = Field(description="Energy in the series' unit (decimal string, exact).")
    readings: int = Field(description="Number of interval readings in the bucket.")


# "register" shadows BaseModel.register (ABCMeta); an explicit annotation keeps it a required field.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Consumption(_Body):
        """Consumption of one register over ``[from, to)``; buckets without readings are left out."""

        meterpoint_id: str
        register: str = Field(description="The meter register (active_import, active_export, ...).")
        unit: str
        resolution: Resolution
        from_: datetime | date = Field(alias="from", serialization_alias="from")
        to: datetime | date
        total: Decimal
        points: list[ConsumptionPoint]
        freshness: Freshness

        model_config = ConfigDict(frozen=True, populate_by_name=True)


class CustomerMeterpoint(_Body):
    """A meterpoint the customer holds or held, with its consumption in the recent period while held."""

    meterpoint_id: str
    move_in: date
    move_out: date | None
    current: bool
    consumption: Decimal = Field(description="Active import in kWh over the period, days held only.")


class CustomerOverview(_Body):
    """A customer, their meterpoints, and their consumption of the recent days."""

    customer_id: str
    kind: str
    name: str
    version: int
    grid_company: str | None = Field(description="The grid company the customer belongs to (None: before tenancy).")
    period_from: date = Field(description="First local day of the consumption period.")
    period_to: date = Field(description="Last local day of the consumption period (today).")
    consumption: Decimal = Field(description="Active import in kWh over the period, all meterpoints held.")
    meterpoints: list[CustomerMeterpoint]
    freshness: Freshness


class WorkOrder(_Body):
    """One work order as the views know it."""

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


class WorkOrderPage(_Body):
    """One page of work orders, ordered by id; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[WorkOrder]
    next_cursor: str | None
    freshness: Freshness
