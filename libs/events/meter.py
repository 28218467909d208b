"""Meter data events on ``meter.readings.v1`` and ``meter.events.v1``, keyed by meterpoint id."""

from __future__ import annotations

import warnings
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import ConfigDict, Field, model_validator

from libs.events import topics
from libs.events.base import EventData
from libs.events.fields import LongText, SourceId, Timestamp, UuidStr, as_utc
from libs.events.gsrn import Gsrn
from libs.events.ids import alarm_id, reading_id


class Register(StrEnum):
    """The meter register a value was read from: energy direction seen from the grid customer."""

    ACTIVE_IMPORT = "active_import"
    ACTIVE_EXPORT = "active_export"
    REACTIVE_IMPORT = "reactive_import"
    REACTIVE_EXPORT = "reactive_export"


class Unit(StrEnum):
    """Unit of a reading's value: active energy for active registers, reactive energy for reactive ones."""

    WH = "Wh"
    KWH = "kWh"
    MWH = "MWh"
    VARH = "varh"
    KVARH = "kvarh"
    MVARH = "Mvarh"


ACTIVE_UNITS = frozenset({Unit.WH, Unit.KWH, Unit.MWH})
REACTIVE_UNITS = frozenset({Unit.VARH, Unit.KVARH, Unit.MVARH})
_UNITS_OF = {
    Register.ACTIVE_IMPORT: ACTIVE_UNITS,
    Register.ACTIVE_EXPORT: ACTIVE_UNITS,
    Register.REACTIVE_IMPORT: REACTIVE_UNITS,
    Register.REACTIVE_EXPORT: REACTIVE_UNITS,
}


class Quality(StrEnum):
    """How the value was obtained; ``missing`` marks an interval the meter did not deliver (value 0)."""

    MEASURED = "measured"
    ESTIMATED = "estimated"
    MISSING = "missing"


class Resolution(StrEnum):
    """Length of the metering interval (ISO 8601 duration)."""

    PT15M = "PT15M"
    PT1H = "PT1H"


class MeterAlarm(StrEnum):
    """What a meter or head-end system reported."""

    TAMPER = "tamper"
    POWER_FAILURE = "power_failure"
    POWER_RESTORED = "power_restored"
    LONG_OUTAGE = "long_outage"
    CLOCK_ERROR = "clock_error"
    VOLTAGE_SAG = "voltage_sag"
    VOLTAGE_SWELL = "voltage_swell"
    REVERSE_FLOW = "reverse_flow"
    COMMUNICATION_LOST = "communication_lost"


MAX_READING_VALUE = 999_999_999.999

EnergyValue = Annotated[float, Field(ge=-MAX_READING_VALUE, le=MAX_READING_VALUE, allow_inf_nan=False)]
"""Energy of one interval, at most 3 decimals (Wh resolution for kWh) and 9 integer digits.

Signed: a head-end system that derives interval values from two meter indexes delivers a negative one after a
meter exchange or a register rollback. The edge keeps it (refusing it would turn it into a gap that nobody sees);
the validation stage flags it (rule ``sign``) and estimates the interval in the validated series.

A float, not a Decimal: every value of this range with 3 decimals has at most 12 significant digits, which an
IEEE double and its JSON spelling carry exactly (``Decimal(repr(value))`` or a NUMERIC(12, 3) column gets the
meter's decimal back). A float sum of n values totalling T rounds back to the exact 3-decimal sum while
n * T < 1e12 (a day of quarter-hours of a 100 MW plant is ~2e8); beyond that, sum in NUMERIC or integer Wh.
A float costs a third of a validated Decimal per reading, and pydantic's Decimal also takes "12.5" strings,
which the contract refuses.
"""

IndexValue = Annotated[float, Field(ge=0, le=MAX_READING_VALUE, allow_inf_nan=False)]
"""A register's cumulative reading (the meter index) in the reading's unit, at most 3 decimals."""


_READING_RULES: dict[str, Any] = {
    "allOf": [
        {
            "if": {"properties": {"register": {"enum": ["active_import", "active_export"]}}},
            "then": {"properties": {"unit": {"enum": [unit.value for unit in Unit if unit in ACTIVE_UNITS]}}},
        },
        {
            "if": {"properties": {"register": {"enum": ["reactive_import", "reactive_export"]}}},
            "then": {"properties": {"unit": {"enum": [unit.value for unit in Unit if unit in REACTIVE_UNITS]}}},
        },
        {
            "if": {"properties": {"quality": {"const": "missing"}}, "required": ["quality"]},
            "then": {"properties": {"value": {"const": 0}}},
        },
    ]
}

# Pydantic warns that the field "register" shadows ABCMeta.register; an explicit Field() keeps the field
# required (without it the inherited method would become its default), so the warning is noise here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class MeterReadingReceived(EventData):
        """One interval value of one register of one meterpoint, as delivered by a meter or head-end system.

        ``reading_id`` is deterministic (see ``libs.events.ids.reading_id``), so a resent reading keeps its id.
        """

        model_config = ConfigDict(json_schema_extra=_READING_RULES)

        event_type: ClassVar[str] = "gridhub.meter.reading.received"
        topic: ClassVar[str] = topics.READINGS
        subject_field: ClassVar[str] = "meterpoint_id"

        meterpoint_id: Gsrn
        register: Register = Field(description="The meter register the value was read from.")
        interval_end: Timestamp = Field(description="End of the metering interval (exclusive).")
        resolution: Resolution
        value: EnergyValue = Field(
            description="Energy in the interval, at most 3 decimals (the model checks); 0 when quality is 'missing'."
        )
        unit: Unit
        quality: Quality
        source: SourceId = Field(description="Ingress channel or head-end system that delivered the reading.")
        reading_id: UuidStr = Field(description="Deterministic id of the natural key (see README).")
        meter_index: IndexValue | None = Field(
            default=None,
            description="The register's index at interval_end in the reading's unit, if the meter sends it: the"
            " validation stage makes the estimates of a gap between two indexes sum to their difference.",
        )

        @model_validator(mode="after")
        def _consistent(self) -> Self:
            if self.unit not in _UNITS_OF[self.register]:
                raise ValueError(f"unit {self.unit} does not fit register {self.register}")
            if self.quality is Quality.MISSING and self.value != 0:
                raise ValueError("a reading with quality 'missing' has value 0")
            # round() is correctly rounded, so this holds exactly for the double nearest a 3-decimal value.
            # (JSON Schema's multipleOf 0.001 would misjudge binary floats, so only the model checks it.)
            if round(self.value, 3) != self.value:
                raise ValueError("a reading value has at most 3 decimals")
            if self.meter_index is not None and round(self.meter_index, 3) != self.meter_index:
                raise ValueError("a meter index has at most 3 decimals")
            return self

        def natural_event_id(self) -> str:
            """The reading id: a resent reading is the same CloudEvent (same id)."""
            return self.reading_id

        @classmethod
        def create(
            cls,
            *,
            meterpoint_id: str,
            register: Register,
            interval_end: datetime,
            resolution: Resolution,
            value: float,
            unit: Unit,
            quality: Quality,
            source: str,
            meter_index: float | None = None,
        ) -> MeterReadingReceived:
            """A validated reading with its deterministic ``reading_id`` filled in and ``interval_end`` in UTC."""
            interval_end = as_utc(interval_end)
            return cls(
                meterpoint_id=meterpoint_id,
                register=register,
                interval_end=interval_end,
                resolution=resolution,
                value=value,
                unit=unit,
                quality=quality,
                source=source,
                reading_id=reading_id(meterpoint_id, register, interval_end, source),
                meter_index=meter_index,
            )


class MeterAlarmRaised(EventData):
    """An alarm a meter or head-end system raised for a meterpoint (outage, tamper, clock error, ...).

    ``alarm_id`` is deterministic (see ``libs.events.ids.alarm_id``), so a resent alarm keeps its id.
    """

    event_type: ClassVar[str] = "gridhub.meter.alarm.raised"
    topic: ClassVar[str] = topics.METER_EVENTS
    subject_field: ClassVar[str] = "meterpoint_id"

    meterpoint_id: Gsrn
    alarm: MeterAlarm
    raised_at: Timestamp = Field(description="When the meter raised the alarm.")
    source: SourceId = Field(description="Ingress channel or head-end system that delivered the alarm.")
    alarm_id: UuidStr = Field(description="Deterministic id of the natural key (see README).")
    details: LongText | None = Field(default=None, description="Free text from the head-end system, if any.")

    def natural_event_id(self) -> str:
        """The alarm id: a resent alarm is the same CloudEvent (same id)."""
        return self.alarm_id

    @classmethod
    def create(
        cls,
        *,
        meterpoint_id: str,
        alarm: MeterAlarm,
        raised_at: datetime,
        source: str,
        details: str | None = None,
    ) -> MeterAlarmRaised:
        """A validated alarm with its deterministic ``alarm_id`` filled in and ``raised_at`` in UTC."""
        raised_at = as_utc(raised_at)
        return cls(
            meterpoint_id=meterpoint_id,
            alarm=alarm,
            raised_at=raised_at,
            source=source,
            details=details,
            alarm_id=alarm_id(meterpoint_id, alarm, raised_at, source),
        )
