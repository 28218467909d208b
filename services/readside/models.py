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


class BucketValidation(_Body):
    """What the validated series (meter.series.v1, newest version of each day) say about a bucket's intervals."""

    quality: str = Field(
        description="ENTSO-E quality of the bucket: its intervals' one code, A05 when some are missing (A02), else "
        "A03 when some are estimated, else A06."
    )
    status: str = Field(description="Elhub status: the least settled of its intervals' statuses.")
    version: int = Field(description="The newest day version among its intervals' days.")
    quantity: Decimal = Field(description="Sum of the validated quantities in kWh (estimates included).")
    intervals: int = Field(description="Validated intervals in the bucket.")
    measured: int = Field(description="Of those, measured (A04).")
    estimated: int = Field(description="Of those, estimated (A03).")
    missing: int = Field(description="Of those, missing (A02).")


class ConsumptionPoint(_Body):
    """Energy of one bucket: ``start`` is an instant (hour) or a local date (day)."""

    start: datetime | date
    energy: Decimal = Field(description="Energy in the series' unit (decimal string, exact).")
    readings: int = Field(description="Number of interval readings in the bucket.")
    validated: BucketValidation | None = Field(
        default=None, description="The validated quality of the bucket; None where no validated series covers it."
    )


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


class SeriesInterval(_Body):
    """One interval of a validated day."""

    position: int = Field(description="1 is the interval that starts at the day's local midnight.")
    interval_start: datetime
    interval_end: datetime
    quantity: Decimal = Field(description="kWh (decimal string, exact); 0 when missing (A02).")
    quality: str = Field(description="ENTSO-E quantity quality: A04 measured, A03 estimated, A02 missing, A05, A06.")
    status: str = Field(description="Elhub status: measured, estimated, final_estimate, missing, rejected, temporary.")
    method: str | None = Field(description="How it was estimated (linear, profile); estimates only.")
    rules: list[str] = Field(description="Rules that flagged the interval, and the trigger of an estimate.")
    version: int = Field(description="The interval's own version: 1, and +1 per change of it.")
    measured: Decimal | None = Field(
        description="The delivered value of a rejected interval (kept, not in the series)."
    )


class SeriesVersion(_Body):
    """One published version of a day."""

    version: int
    reason: str = Field(description="complete, deadline or correction.")
    final: bool = Field(description="True once the billing deadline passed.")
    published_at: datetime = Field(description="When the validation stage published it (its event time).")
    series_id: str
    intervals: int
    measured: int = Field(description="Intervals measured (A04).")
    estimated: int = Field(description="Intervals estimated (A03).")
    missing: int = Field(description="Intervals missing (A02).")
    current: bool = Field(description="True for the newest version (the one answered by default).")


# "register" shadows BaseModel.register (ABCMeta); an explicit annotation keeps it a required field.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class ValidatedSeries(_Body):
        """One version of a meterpoint's validated local day, every interval with its quantity and quality."""

        meterpoint_id: str
        register: str = Field(description="The meter register (active_import, active_export, ...).")
        day: date = Field(description="The local day of the meterpoint's grid area.")
        grid_area: str
        meterpoint_type: str
        resolution: str
        time_zone: str
        start: datetime = Field(description="The day's local midnight.")
        end: datetime = Field(description="The next day's local midnight (23, 24 or 25 hours later).")
        version: int = Field(description="The day's version answered.")
        current_version: int = Field(description="The day's newest version.")
        reason: str = Field(description="Why this version was published: complete, deadline or correction.")
        final: bool
        published_at: datetime
        intervals: int
        measured: int
        estimated: int
        missing: int
        points: list[SeriesInterval]
        freshness: Freshness

    class SeriesVersions(_Body):
        """Every published version of a meterpoint's validated day, oldest first."""

        meterpoint_id: str
        register: str = Field(description="The meter register (active_import, active_export, ...).")
        day: date
        current_version: int
        versions: list[SeriesVersion]
        freshness: Freshness


class GridAreaCompleteness(_Body):
    """The intervals of one grid area's day over the newest version of each meterpoint's validated day."""

    grid_area: str
    day: date
    meterpoints: int = Field(description="Meterpoints with a validated series of the day.")
    series: int = Field(description="Validated series (meterpoint and register) of the day.")
    intervals: int
    measured: int = Field(description="Intervals measured (A04).")
    estimated: int = Field(description="Intervals estimated (A03).")
    missing: int = Field(description="Intervals missing (A02).")
    other: int = Field(description="Intervals of another quality (A05 incomplete, A06 calculated).")
    measured_share: Decimal = Field(description="measured / intervals, 6 decimals (decimal string).")
    estimated_share: Decimal = Field(description="estimated / intervals, 6 decimals.")
    missing_share: Decimal = Field(description="missing / intervals, 6 decimals.")


class Completeness(_Body):
    """Completeness of the validated series per grid area for one day (the caller's meterpoints only)."""

    day: date
    grid_area: str | None = Field(description="The grid area asked for; None: every grid area with series that day.")
    areas: list[GridAreaCompleteness]
    freshness: Freshness
