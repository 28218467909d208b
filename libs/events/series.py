"""Validated series and gap-fill requests: what the validation stage (services/vee) publishes.

- ``meter.series.v1`` carries ``MeterSeriesValidated``: one meterpoint's register for one local day of its grid
  area, every interval measured, estimated (with the method and the rule that triggered it) or missing, in the
  ENTSO-E quantity-quality codes Energinet DataHub 3 uses and with Elhub's status beside each (the mapping is in
  contracts/events/README.md). A day is published when it is complete, at the D+1 deadline with estimates for what
  is still missing, and again (the next ``version``) whenever a later reading changes it.
- ``meter.commands.v1`` carries ``GapFillRequested``: the source of a meterpoint is asked to send a range of
  intervals again (collection routes it: an MQTT command to a device, a request a head-end system polls, a file in
  an FTP partner's outbox).
"""

from __future__ import annotations

import warnings
from datetime import date
from enum import StrEnum
from typing import Annotated, ClassVar, Self

from pydantic import Field, model_validator

from libs.events import topics
from libs.events.base import EventData, EventPart
from libs.events.fields import MAX_VERSION, Timestamp, UuidStr
from libs.events.gsrn import Gsrn
from libs.events.ids import digest_uuid, epoch_micros
from libs.events.meter import MAX_READING_VALUE, Register, Resolution
from libs.events.meterpoints import GRID_AREA_PATTERN, DataSource, MeterpointType
from libs.events.parties import MarketParticipantId


class QuantityQuality(StrEnum):
    """ENTSO-E quantity quality (code list of Energinet DataHub 3's RSM-012); DataHub 3 takes A02-A04 for metered
    data."""

    NOT_AVAILABLE = "A02"
    """Missing: no value could be measured or estimated (quantity 0)."""
    ESTIMATED = "A03"
    """Estimated by the validation stage (``method`` says how)."""
    AS_PROVIDED = "A04"
    """Measured: the value the meter or head-end system delivered."""
    INCOMPLETE = "A05"
    """Incomplete: an aggregate over intervals of which some are missing."""
    CALCULATED = "A06"
    """Calculated from other series (exchange or aggregates)."""


class IntervalStatus(StrEnum):
    """Elhub's status of a metered value, beside the ENTSO-E code."""

    MEASURED = "measured"
    ESTIMATED = "estimated"
    FINAL_ESTIMATE = "final_estimate"
    """An estimate that stands for billing: the billing deadline passed without a measured value."""
    MISSING = "missing"
    REJECTED = "rejected"
    """A delivered value that failed a hard rule: kept (``measured``), replaced in the series by an estimate."""
    TEMPORARY = "temporary"
    """A measured value that arrived before the day was complete and may still be corrected."""


class RuleCode(StrEnum):
    """A validation rule, or the reason an interval was estimated (docs/validation.md has thresholds and sources)."""

    SIGN = "sign"
    """Hard: a negative value on a consumption or production point."""
    RANGE = "range"
    """Hard: a value above the meterpoint type's plausible maximum per interval."""
    RESOLUTION = "resolution"
    """Hard: the reading's resolution differs from the master data's."""
    ALIGNMENT = "alignment"
    """Hard: the interval end is not on the resolution's grid."""
    CONNECTION_PERIOD = "connection_period"
    """Hard: the interval lies outside the meterpoint's connection period."""
    SPIKE = "spike"
    """Soft: above k times a high percentile of the same hour-of-week of the meterpoint's own history."""
    ZERO_RUN = "zero_run"
    """Soft: one of a long run of zeros on a point that normally consumes."""
    CORRECTION = "correction"
    """Soft: a later reading for the interval with another value (a new version of the interval)."""
    GAP = "gap"
    """Estimation trigger: no reading after the grace period."""
    REGISTER_SUM = "register_sum"
    """The estimates of a gap were scaled to sum exactly to the difference of the meter index around it."""


class EstimationMethod(StrEnum):
    """How an estimated value was computed."""

    LINEAR = "linear"
    """Linear interpolation between the measured neighbours (short gaps)."""
    PROFILE = "profile"
    """The meterpoint's own profile (same weekday and hour), scaled to the surrounding level (long gaps)."""


class PublicationReason(StrEnum):
    """Why this version of the day was published."""

    COMPLETE = "complete"
    """Every interval of the day is measured."""
    DEADLINE = "deadline"
    """The D+1 deadline came: what is still missing is estimated or flagged."""
    CORRECTION = "correction"
    """A reading after an earlier publication changed the day."""


SeriesQuantity = Annotated[float, Field(ge=-MAX_READING_VALUE, le=MAX_READING_VALUE, allow_inf_nan=False)]
"""An interval's energy in kWh, at most 3 decimals."""


class SeriesPoint(EventPart):
    """One interval of the day: ``position`` 1 is the interval that starts at the day's local midnight."""

    position: int = Field(ge=1, le=100)
    quantity: SeriesQuantity = Field(description="kWh; 0 when the quality is A02 (missing).")
    quality: QuantityQuality
    status: IntervalStatus
    version: int = Field(ge=1, le=MAX_VERSION, description="The interval's version: 1, and +1 per change of it.")
    method: EstimationMethod | None = Field(default=None, description="How it was estimated; estimates only.")
    rules: tuple[RuleCode, ...] = Field(
        default=(), max_length=10, description="Rules that flagged the interval, and the trigger of an estimate."
    )
    measured: SeriesQuantity | None = Field(
        default=None, description="The delivered value when the interval is rejected (kept, not in the series)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if round(self.quantity, 3) != self.quantity:
            raise ValueError("a quantity has at most 3 decimals")
        estimated = self.quality is QuantityQuality.ESTIMATED
        if estimated != (self.method is not None):
            raise ValueError("an estimated point names its method, and only an estimated one")
        if self.quality is QuantityQuality.NOT_AVAILABLE and self.quantity != 0:
            raise ValueError("a missing point has quantity 0")
        return self


# As in libs.events.meter: an explicit Field() keeps "register" required; pydantic's warning that it shadows
# ABCMeta.register is noise here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class MeterSeriesValidated(EventData):
        """One meterpoint's register for one local day, validated: every interval with its quantity and quality.

        ``series_id`` is deterministic (meterpoint, register, day, version), so a republished version keeps its id.
        """

        event_type: ClassVar[str] = "gridhub.meter.series.validated"
        topic: ClassVar[str] = topics.SERIES
        subject_field: ClassVar[str] = "meterpoint_id"

        series_id: UuidStr
        meterpoint_id: Gsrn
        grid_company: MarketParticipantId
        grid_area: str = Field(pattern=GRID_AREA_PATTERN)
        meterpoint_type: MeterpointType
        register: Register = Field(description="active_import for consumption, active_export for production.")
        resolution: Resolution
        time_zone: str = Field(pattern=r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+){0,2}$")
        day: date = Field(description="The local calendar day of the grid area.")
        start: Timestamp = Field(description="The day's local midnight, in UTC.")
        end: Timestamp = Field(description="The next day's local midnight, in UTC (23, 24 or 25 hours later).")
        version: int = Field(ge=1, le=MAX_VERSION, description="The day's version: 1, and +1 per publication.")
        reason: PublicationReason
        final: bool = Field(description="True once the billing deadline passed: a later version is a correction.")
        points: tuple[SeriesPoint, ...] = Field(min_length=23, max_length=100)

        @model_validator(mode="after")
        def _positions(self) -> Self:
            if self.end <= self.start:
                raise ValueError("a day ends after it starts")
            step = 900 if self.resolution is Resolution.PT15M else 3600
            expected = int((self.end - self.start).total_seconds()) // step
            if len(self.points) != expected:
                raise ValueError(f"the day has {expected} intervals of {self.resolution}, not {len(self.points)}")
            if [p.position for p in self.points] != list(range(1, expected + 1)):
                raise ValueError("points are numbered 1, 2, ... in order")
            return self

        def natural_event_id(self) -> str:
            return self.series_id

        @staticmethod
        def id_of(meterpoint_id: str, register: Register, day: date, version: int) -> str:
            """``series|<meterpoint>|<register>|<day ISO>|<version>``, hashed like a reading id."""
            return digest_uuid(f"series|{meterpoint_id}|{register}|{day.isoformat()}|{version}")

    class GapFillRequested(EventData):
        """Ask a meterpoint's source to send its readings with ``interval_end`` in (``start``, ``end``] again.

        ``request_id`` is deterministic (meterpoint, range, attempt): a republished request is the same event.
        """

        event_type: ClassVar[str] = "gridhub.meter.gapfill.requested"
        topic: ClassVar[str] = topics.COMMANDS
        subject_field: ClassVar[str] = "meterpoint_id"

        request_id: UuidStr
        meterpoint_id: Gsrn
        grid_company: MarketParticipantId
        data_source: DataSource = Field(description="Who is asked: the meterpoint's source in the master data.")
        register: Register = Field(description="The register whose intervals are missing.")
        resolution: Resolution
        start: Timestamp = Field(description="Exclusive: the end of the last interval before the gap.")
        end: Timestamp = Field(description="Inclusive: the end of the gap's last interval.")
        attempt: int = Field(ge=1, le=100)
        requested_at: Timestamp

        @model_validator(mode="after")
        def _window(self) -> Self:
            if self.end <= self.start:
                raise ValueError("a gap ends after it starts")
            if (self.end - self.start).days > 62:
                raise ValueError("a gap-fill request covers at most 62 days")
            return self

        def natural_event_id(self) -> str:
            return self.request_id

        @staticmethod
        def id_of(meterpoint_id: str, register: Register, start: Timestamp, end: Timestamp, attempt: int) -> str:
            """``gapfill|<meterpoint>|<register>|<start µs>|<end µs>|<attempt>``, hashed like a reading id."""
            return digest_uuid(
                f"gapfill|{meterpoint_id}|{register}|{epoch_micros(start)}|{epoch_micros(end)}|{attempt}"
            )
