"""Canonical readings and alarms, and the one validator every ingress path uses (REST, MQTT, FTP). Pure: no I/O.

An entry point turns its wire format into `ReadingInput` / `AlarmInput` items: JSON straight from the bytes with
`parse_readings` / `parse_alarms`, a CSV row with ``ReadingInput.model_validate(row, strict=False)``. Then
`check_readings` / `check_alarms` give one outcome per item, in order:

- `Accepted`: a canonical `Reading` / `Alarm` (UTC, deterministic id) to publish;
- `Duplicate`: the same id and content as an earlier item of the batch (published once);
- `Rejected`: a stable `RejectReason` plus a detail naming the field and the rule, never the input's value;
- `Held`: only from the scope check (``scope.py``): valid, but its meterpoint is not registered yet.

Types are checked by pydantic (a wrong type is ``malformed``); meaning is checked here in Python, so that each
rule has its own reason: GSRN check digit, timezone, alignment to the resolution, not in the future beyond a
tolerance, value range (signed) and decimals, the meter index's range and decimals, unit against register,
quality ``missing`` means 0, duplicates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache, lru_cache
from hashlib import blake2b
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema
from pydantic_core import from_json, to_json

from libs.events.fields import RFC3339_PATTERN, LongText, SourceId
from libs.events.gsrn import GSRN_JSON_SCHEMA, GSRN_LENGTH, gsrn_check_digit
from libs.events.ids import alarm_id
from libs.events.meter import (
    ACTIVE_UNITS,
    MAX_READING_VALUE,
    REACTIVE_UNITS,
    MeterAlarm,
    MeterAlarmRaised,
    MeterReadingReceived,
    Quality,
    Register,
    Resolution,
    Unit,
)

DEFAULT_SOURCE = "meter"
"""`source` when the sender names none: the value was read from the meter itself (not estimated by a system)."""

_UNITS_OF = {
    Register.ACTIVE_IMPORT: ACTIVE_UNITS,
    Register.ACTIVE_EXPORT: ACTIVE_UNITS,
    Register.REACTIVE_IMPORT: REACTIVE_UNITS,
    Register.REACTIVE_EXPORT: REACTIVE_UNITS,
}
_STEP_MINUTES = {Resolution.PT15M: 15, Resolution.PT1H: 60}
_MAX_DETAIL_ERRORS = 5


class RejectReason(StrEnum):
    """Why an item was refused: stable codes for API results, dead-letter headers and metrics."""

    MALFORMED = "malformed"
    INVALID_METERPOINT = "invalid_meterpoint"
    NAIVE_TIMESTAMP = "naive_timestamp"
    MISALIGNED_INTERVAL = "misaligned_interval"
    IN_FUTURE = "in_future"
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    TOO_MANY_DECIMALS = "too_many_decimals"
    UNIT_MISMATCH = "unit_mismatch"
    MISSING_WITH_VALUE = "missing_with_value"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    METERPOINT_MISMATCH = "meterpoint_mismatch"
    # File lines (FTP): the bytes of a line are no UTF-8, or the line is longer than the limit.
    INVALID_ENCODING = "invalid_encoding"
    LINE_TOO_LONG = "line_too_long"
    # Scope (``scope.py``): the meterpoint is assigned to another source or grid company, or to nobody (rejected);
    # the meterpoint is not registered (yet): held in the DLQ with the validated event, redriven once it is.
    NOT_IN_SCOPE = "not_in_scope"
    UNKNOWN_METERPOINT = "unknown_meterpoint"


class MalformedBatch(ValueError):
    """The whole body or message is unusable (not JSON, not a batch, empty, too many items)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- what senders write ----------------------------------------------------------------------------------------

_METERPOINT = Annotated[str, WithJsonSchema(GSRN_JSON_SCHEMA)]
_TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}
_VALUE = Annotated[
    float,
    WithJsonSchema(
        {
            "type": "number",
            "minimum": -MAX_READING_VALUE,
            "maximum": MAX_READING_VALUE,
            "description": "Energy in the interval, at most 3 decimals; 0 when quality is 'missing'. Signed: a "
            "negative value (a head-end system's difference of two indexes after a meter exchange) is kept and "
            "flagged by validation, not refused here.",
        }
    ),
]
_INDEX = Annotated[
    float,
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_READING_VALUE,
            "description": "The register's cumulative index at interval_end, in the reading's unit, at most 3 "
            "decimals; optional.",
        }
    ),
]

with warnings.catch_warnings():
    # A field named "register" shadows BaseModel.register (see libs.events.meter); Field() keeps it required.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class ReadingInput(BaseModel):
        """One interval reading as a meter or head-end system sends it (REST item, MQTT message, CSV line)."""

        model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="Reading")

        meterpoint_id: _METERPOINT = Field(description="GSRN-18 of the meterpoint (GS1 check digit).")
        register: Register = Field(description="The meter register the value was read from.")
        interval_end: Annotated[datetime, WithJsonSchema(_TIMESTAMP_SCHEMA)] = Field(
            description="End of the interval, RFC 3339 with an offset; aligned to the resolution (in UTC)."
        )
        resolution: Resolution = Field(description="Length of the interval.")
        value: _VALUE
        unit: Unit = Field(description="Wh/kWh/MWh for active registers, varh/kvarh/Mvarh for reactive ones.")
        quality: Quality
        source: SourceId = Field(
            default=DEFAULT_SOURCE,
            description="The system that produced the value: 'meter' (default) or a head-end / MDM system id. "
            "Part of the reading id: the same reading sent again, over any path, keeps its id.",
        )
        meter_index: _INDEX | None = None


class AlarmInput(BaseModel):
    """One alarm as a meter or head-end system sends it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="MeterEvent")

    meterpoint_id: _METERPOINT = Field(description="GSRN-18 of the meterpoint (GS1 check digit).")
    alarm: MeterAlarm
    raised_at: Annotated[datetime, WithJsonSchema(_TIMESTAMP_SCHEMA)] = Field(
        description="When the meter raised the alarm, RFC 3339 with an offset."
    )
    source: SourceId = Field(default=DEFAULT_SOURCE, description="The system that raised it; part of the alarm id.")
    details: LongText | None = Field(default=None, description="Free text from the head-end system, if any.")


# --- canonical forms -------------------------------------------------------------------------------------------


class Reading(NamedTuple):
    """A valid reading, interval end in UTC, with its deterministic id; the data of MeterReadingReceived.

    A NamedTuple: one is built per reading on the hot path (PERFORMANCE.md).
    """

    meterpoint_id: str
    register: Register
    interval_end: datetime
    resolution: Resolution
    value: float
    unit: Unit
    quality: Quality
    source: str
    reading_id: str
    meter_index: float | None = None

    @property
    def event_id(self) -> str:
        """The CloudEvent id: the reading id."""
        return self.reading_id

    def to_event_data(self) -> MeterReadingReceived:
        """The event payload (validated: a check that the rules here imply the contract's)."""
        return MeterReadingReceived(**self._asdict())


class Alarm(NamedTuple):
    """A valid alarm, raise time in UTC, with its deterministic id; the data of MeterAlarmRaised."""

    meterpoint_id: str
    alarm: MeterAlarm
    raised_at: datetime
    source: str
    alarm_id: str
    details: str | None

    @property
    def event_id(self) -> str:
        """The CloudEvent id: the alarm id."""
        return self.alarm_id

    def to_event_data(self) -> MeterAlarmRaised:
        """The event payload (validated)."""
        return MeterAlarmRaised(**self._asdict())


class Rejection(NamedTuple):
    """Why one item is refused."""

    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """Item `index` is valid and new in its batch: publish `event`."""

    index: int
    event: Any  # Reading | Alarm

    @property
    def event_id(self) -> str:
        """The id of the event to publish."""
        return str(self.event.event_id)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Item `index` repeats item `duplicate_of` (same id, same content); nothing more is published."""

    index: int
    event_id: str
    duplicate_of: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """Item `index` is refused for `reason`."""

    index: int
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class Held:
    """Item `index` is valid but its meterpoint is not registered: ``event`` goes to the DLQ, held for a redrive."""

    index: int
    reason: RejectReason
    detail: str
    event: Any  # Reading | Alarm

    @property
    def event_id(self) -> str:
        """The id the event keeps when it is redriven."""
        return str(self.event.event_id)


ItemOutcome = Accepted | Duplicate | Rejected | Held


@dataclass(frozen=True, slots=True)
class ValidationRules:
    """The tunable parts of validation (from settings)."""

    future_tolerance: timedelta = timedelta(minutes=5)


# --- parsing from bytes ----------------------------------------------------------------------------------------

Item = TypeVar("Item", ReadingInput, AlarmInput)


@cache
def _batch_adapter(model: type[BaseModel], max_items: int) -> TypeAdapter[list[Any]]:
    batch: Any = Annotated[list[model], Field(min_length=1, max_length=max_items)]  # type: ignore[valid-type]
    return TypeAdapter(batch)


def _describe(error: ValidationError) -> str:
    # Field locations and rules only: the input may be personal data (consumption is), so it is never echoed.
    errors = error.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or '(item)'}: {e['msg']}" for e in errors[:_MAX_DETAIL_ERRORS]]
    more = len(errors) - _MAX_DETAIL_ERRORS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _malformed(error: ValidationError) -> Rejection:
    return Rejection(RejectReason.MALFORMED, _describe(error))


def malformed(error: ValidationError) -> Rejection:
    """The `Rejection` of an item pydantic refused: ``malformed``, naming fields and rules, never values."""
    return _malformed(error)


def _batch_error(error: ValidationError, max_items: int) -> MalformedBatch | None:
    for detail in error.errors(include_url=False, include_input=False, include_context=False):
        if detail["loc"]:
            continue
        kind = detail["type"]
        if kind == "json_invalid":
            return MalformedBatch("invalid_json", f"the body is not valid JSON: {detail['msg']}")
        if kind == "list_type":
            return MalformedBatch("not_a_batch", "the body must be a JSON array of items")
        if kind == "too_short":
            return MalformedBatch("empty_batch", "the batch has no items")
        if kind == "too_long":
            return MalformedBatch("too_many_items", f"a batch has at most {max_items} items")
    return None


def parse_batch(
    body: bytes, model: type[Item], *, max_items: int, allow_single: bool = False
) -> list[Item | Rejection]:
    """Validate a JSON array of items straight from ``body``: one typed item or `Rejection` per element.

    With ``allow_single`` a lone JSON object counts as a batch of one (MQTT). Raises `MalformedBatch` when the
    body as a whole is unusable. A batch whose items all have the right types costs one pydantic pass over the
    bytes; only a batch with a malformed item is parsed again item by item.
    """
    if allow_single and body.lstrip()[:1] == b"{":
        try:
            return [model.model_validate_json(body)]
        except ValidationError as error:
            if any(e["type"] == "json_invalid" for e in error.errors(include_url=False, include_input=False)):
                raise MalformedBatch("invalid_json", "the payload is not valid JSON") from None
            return [_malformed(error)]
    adapter = _batch_adapter(model, max_items)
    try:
        items: list[Item | Rejection] = adapter.validate_json(body)
        return items
    except ValidationError as error:
        whole = _batch_error(error, max_items)
        if whole is not None:
            raise whole from None
    # Some items are malformed: parse the array once more and validate each element on its own, so that one bad
    # item cannot hide the good ones. Re-encoding keeps JSON-mode validation (strict types, as on the wire).
    results: list[Item | Rejection] = []
    for element in from_json(body):
        try:
            results.append(model.model_validate_json(to_json(element)))
        except ValidationError as error:
            results.append(_malformed(error))
    return results


def parse_readings(body: bytes, *, max_items: int, allow_single: bool = False) -> list[ReadingInput | Rejection]:
    """`parse_batch` for readings."""
    return parse_batch(body, ReadingInput, max_items=max_items, allow_single=allow_single)


def parse_alarms(body: bytes, *, max_items: int, allow_single: bool = False) -> list[AlarmInput | Rejection]:
    """`parse_batch` for alarms (meter events)."""
    return parse_batch(body, AlarmInput, max_items=max_items, allow_single=allow_single)


def raw_items(body: bytes) -> list[Any]:
    """The elements of a JSON array body (or the lone object), e.g. to dead-letter one item in its own words."""
    parsed = from_json(body)
    return parsed if isinstance(parsed, list) else [parsed]


# --- the rules -------------------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _digest_uuid(natural_key: str) -> str:
    # libs.events.ids.digest_uuid, spelled with string operations: a fifth cheaper, and it runs per reading.
    # A unit test holds both equal.
    h = blake2b(natural_key.encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@lru_cache(maxsize=65_536)
def _meterpoint_problem(meterpoint_id: str) -> Rejection | None:
    # Cached: a meterpoint sends 24-96 readings a day, and a batch usually carries many of one meterpoint.
    if len(meterpoint_id) != GSRN_LENGTH or not (meterpoint_id.isascii() and meterpoint_id.isdigit()):
        return Rejection(RejectReason.INVALID_METERPOINT, "meterpoint_id: a GSRN has exactly 18 digits (0-9)")
    expected = gsrn_check_digit(meterpoint_id[:17])
    if int(meterpoint_id[17]) != expected:
        # Neither digit is personal data; naming both makes a typo easy to find.
        return Rejection(
            RejectReason.INVALID_METERPOINT,
            f"meterpoint_id: check digit is {meterpoint_id[17]} but the GS1 check digit of the first 17 digits "
            f"is {expected}",
        )
    return None


def _naive(field: str) -> Rejection:
    return Rejection(RejectReason.NAIVE_TIMESTAMP, f"{field}: needs a UTC offset (e.g. 2025-03-01T10:15:00Z or +01:00)")


def _future(field: str, tolerance: timedelta) -> Rejection:
    return Rejection(RejectReason.IN_FUTURE, f"{field}: more than {tolerance.total_seconds():g} s in the future")


def _check_reading(item: ReadingInput, latest: datetime, tolerance: timedelta) -> Reading | Rejection:
    meterpoint_id = item.meterpoint_id
    if (problem := _meterpoint_problem(meterpoint_id)) is not None:
        return problem
    end = item.interval_end
    if end.tzinfo is None:  # pydantic gives an aware datetime whenever the text has an offset
        return _naive("interval_end")
    end = end.astimezone(UTC)
    if end > latest:
        return _future("interval_end", tolerance)
    resolution = item.resolution
    if end.minute % _STEP_MINUTES[resolution] or end.second or end.microsecond:
        return Rejection(
            RejectReason.MISALIGNED_INTERVAL, f"interval_end: not on a {resolution} boundary (checked in UTC)"
        )
    value = item.value
    if not -MAX_READING_VALUE <= value <= MAX_READING_VALUE:  # also refuses NaN
        return Rejection(
            RejectReason.VALUE_OUT_OF_RANGE, f"value: must be between -{MAX_READING_VALUE} and {MAX_READING_VALUE}"
        )
    # round() is correctly rounded: this holds exactly for the double nearest a 3-decimal value.
    if round(value, 3) != value:
        return Rejection(RejectReason.TOO_MANY_DECIMALS, "value: at most 3 decimals")
    meter_index = item.meter_index
    if meter_index is not None:
        if not 0 <= meter_index <= MAX_READING_VALUE:
            return Rejection(RejectReason.VALUE_OUT_OF_RANGE, f"meter_index: must be between 0 and {MAX_READING_VALUE}")
        if round(meter_index, 3) != meter_index:
            return Rejection(RejectReason.TOO_MANY_DECIMALS, "meter_index: at most 3 decimals")
    register, unit, quality = item.register, item.unit, item.quality
    if unit not in _UNITS_OF[register]:
        return Rejection(RejectReason.UNIT_MISMATCH, f"unit: {unit} does not fit register {register}")
    if quality is Quality.MISSING and value != 0:
        return Rejection(RejectReason.MISSING_WITH_VALUE, "value: must be 0 when quality is 'missing'")
    source = item.source
    # The natural key of libs.events.ids.reading_id; aligned, so whole seconds: timestamp() is exact here.
    micros = int(end.timestamp()) * 1_000_000
    reading_id = _digest_uuid(f"reading|{meterpoint_id}|{register.value}|{micros}|{source}")
    return Reading(meterpoint_id, register, end, resolution, value, unit, quality, source, reading_id, meter_index)


def _check_alarm(item: AlarmInput, latest: datetime, tolerance: timedelta) -> Alarm | Rejection:
    meterpoint_id = item.meterpoint_id
    if (problem := _meterpoint_problem(meterpoint_id)) is not None:
        return problem
    raised_at = item.raised_at
    if raised_at.tzinfo is None:
        return _naive("raised_at")
    raised_at = raised_at.astimezone(UTC)
    if raised_at > latest:
        return _future("raised_at", tolerance)
    source = item.source
    return Alarm(
        meterpoint_id,
        item.alarm,
        raised_at,
        source,
        alarm_id(meterpoint_id, item.alarm, raised_at, source),
        item.details,
    )


def check_reading(item: ReadingInput, *, now: datetime, rules: ValidationRules) -> Reading | Rejection:
    """The canonical reading of ``item``, or why it is refused. ``now`` must be timezone-aware."""
    return _check_reading(item, now + rules.future_tolerance, rules.future_tolerance)


def check_alarm(item: AlarmInput, *, now: datetime, rules: ValidationRules) -> Alarm | Rejection:
    """The canonical alarm of ``item``, or why it is refused."""
    return _check_alarm(item, now + rules.future_tolerance, rules.future_tolerance)


def _check_batch(
    items: Sequence[Any],
    check: Any,
    *,
    now: datetime,
    rules: ValidationRules,
) -> list[ItemOutcome]:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    tolerance = rules.future_tolerance
    latest = (now + tolerance).astimezone(UTC)
    outcomes: list[ItemOutcome] = []
    first: dict[str, tuple[int, Any]] = {}
    for index, item in enumerate(items):
        result = item if type(item) is Rejection else check(item, latest, tolerance)
        if isinstance(result, Rejection):
            outcomes.append(Rejected(index, result.reason, result.detail))
            continue
        event_id = result.event_id
        seen = first.get(event_id)
        if seen is None:
            first[event_id] = (index, result)
            outcomes.append(Accepted(index, result))
        elif seen[1] == result:
            outcomes.append(Duplicate(index, event_id, seen[0]))
        else:
            outcomes.append(
                Rejected(
                    index,
                    RejectReason.CONFLICTING_DUPLICATE,
                    f"item {seen[0]} has the same id (meterpoint, key time and source) with different content",
                )
            )
    return outcomes


def check_readings(
    items: Sequence[ReadingInput | Rejection], *, now: datetime, rules: ValidationRules
) -> list[ItemOutcome]:
    """One outcome per item, in order; duplicates are detected by reading id within the batch."""
    return _check_batch(items, _check_reading, now=now, rules=rules)


def check_alarms(
    items: Sequence[AlarmInput | Rejection], *, now: datetime, rules: ValidationRules
) -> list[ItemOutcome]:
    """One outcome per item, in order; duplicates are detected by alarm id within the batch."""
    return _check_batch(items, _check_alarm, now=now, rules=rules)


def foreign_meterpoint(items: Sequence[ReadingInput | AlarmInput | Rejection], meterpoint_id: str) -> int | None:
    """The index of the first item that names a meterpoint other than ``meterpoint_id`` (None if all agree).

    A device may only speak for its own meterpoint: a message that names another is refused as a whole.
    """
    for index, item in enumerate(items):
        if not isinstance(item, Rejection) and item.meterpoint_id != meterpoint_id:
            return index
    return None
