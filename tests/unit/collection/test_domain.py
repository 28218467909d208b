"""The one validator of readings and alarms: every rule has its reason, ids are the contract's, batches dedupe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from libs.events import MeterAlarm, MeterAlarmRaised, MeterReadingReceived, Quality, Register, Resolution, Unit
from libs.events.ids import alarm_id, digest_uuid, reading_id
from services.collection.domain import (
    DEFAULT_SOURCE,
    Accepted,
    AlarmInput,
    Duplicate,
    MalformedBatch,
    ReadingInput,
    Rejected,
    Rejection,
    RejectReason,
    ValidationRules,
    _digest_uuid,
    check_alarms,
    check_reading,
    check_readings,
    foreign_meterpoint,
    parse_alarms,
    parse_readings,
)

# Danish-style GSRNs (GS1 prefix 57); the check digits were worked out by hand with weights 3,1,3,... from the
# left: 5*3+7+1*3+3+1*3+3+1*3+8+0*3+4+0+0+0+0+0+0+2*3 = 55 -> check digit 5.
METERPOINT = "571313180400000025"
OTHER_METERPOINT = "571313180400009172"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RULES = ValidationRules(future_tolerance=timedelta(minutes=5))


def reading(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "meterpoint_id": METERPOINT,
        "register": "active_import",
        "interval_end": "2025-03-01T10:15:00Z",
        "resolution": "PT15M",
        "value": 0.412,
        "unit": "kWh",
        "quality": "measured",
    }
    item.update(changes)
    return {key: value for key, value in item.items() if value is not None}


def outcome_of(item: dict[str, Any], now: datetime = NOW) -> Accepted | Rejected | Duplicate:
    [outcome] = check_readings(parse_readings(orjson.dumps([item]), max_items=10), now=now, rules=RULES)
    return outcome


def reason_of(item: dict[str, Any], now: datetime = NOW) -> RejectReason:
    outcome = outcome_of(item, now)
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


def test_valid_reading_is_canonical_utc_with_the_contracts_id() -> None:
    outcome = outcome_of(reading(interval_end="2025-03-01T11:15:00+01:00"))
    assert isinstance(outcome, Accepted)
    canonical = outcome.event
    assert canonical.interval_end == datetime(2025, 3, 1, 10, 15, tzinfo=UTC)
    assert canonical.interval_end.tzinfo is UTC
    assert canonical.source == DEFAULT_SOURCE
    expected = MeterReadingReceived.create(
        meterpoint_id=METERPOINT,
        register=Register.ACTIVE_IMPORT,
        interval_end=datetime(2025, 3, 1, 10, 15, tzinfo=UTC),
        resolution=Resolution.PT15M,
        value=0.412,
        unit=Unit.KWH,
        quality=Quality.MEASURED,
        source=DEFAULT_SOURCE,
    )
    assert canonical.to_event_data() == expected
    assert canonical.reading_id == reading_id(METERPOINT, "active_import", canonical.interval_end, DEFAULT_SOURCE)


def test_fast_digest_equals_the_libs_digest() -> None:
    keys = [f"reading|{METERPOINT}|active_import|{n * 900_000_000}|meter" for n in range(2000)]
    assert [_digest_uuid(key) for key in keys] == [digest_uuid(key) for key in keys]


@pytest.mark.parametrize(
    ("meterpoint", "detail"),
    [
        ("571313180400000024", "check digit is 4 but the GS1 check digit of the first 17 digits is 5"),
        ("571313180400000052", "check digit"),  # neighbouring digits swapped
        ("57131318040000002", "exactly 18 digits"),
        ("5713131804000000255", "exactly 18 digits"),
        ("57131318040000002X", "exactly 18 digits"),
        ("٥٧١٣١٣١٨٠٤٠٠٠٠٠٠٢٥", "exactly 18 digits"),  # Arabic-Indic digits are digits, but no GSRN
    ],
)
def test_gsrn_check_digit_and_format(meterpoint: str, detail: str) -> None:
    outcome = outcome_of(reading(meterpoint_id=meterpoint))
    assert isinstance(outcome, Rejected)
    assert outcome.reason is RejectReason.INVALID_METERPOINT
    assert detail in outcome.detail


@pytest.mark.parametrize("meterpoint", ["571313180400000025", "571313180400009172", "735999100000000010"])
def test_real_gsrns_pass(meterpoint: str) -> None:
    assert isinstance(outcome_of(reading(meterpoint_id=meterpoint)), Accepted)


def test_naive_interval_end_is_refused_not_guessed() -> None:
    assert reason_of(reading(interval_end="2025-03-01T10:15:00")) is RejectReason.NAIVE_TIMESTAMP


@pytest.mark.parametrize(
    ("interval_end", "resolution", "aligned"),
    [
        ("2025-03-01T10:15:00Z", "PT15M", True),
        ("2025-03-01T10:00:00Z", "PT15M", True),
        ("2025-03-01T10:07:00Z", "PT15M", False),
        ("2025-03-01T10:15:30Z", "PT15M", False),
        ("2025-03-01T10:15:00.5Z", "PT15M", False),
        ("2025-03-01T10:00:00Z", "PT1H", True),
        ("2025-03-01T10:15:00Z", "PT1H", False),
        ("2025-03-01T11:00:00+01:00", "PT1H", True),
        ("2025-03-01T15:45:00+05:30", "PT15M", True),  # 10:15Z
        ("2025-03-01T15:30:00+05:30", "PT1H", True),  # 10:00Z: aligned in UTC
        ("2025-03-01T15:00:00+05:30", "PT1H", False),  # 09:30Z
    ],
)
def test_interval_end_is_aligned_to_its_resolution_in_utc(interval_end: str, resolution: str, aligned: bool) -> None:
    outcome = outcome_of(reading(interval_end=interval_end, resolution=resolution))
    if aligned:
        assert isinstance(outcome, Accepted)
    else:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is RejectReason.MISALIGNED_INTERVAL


@pytest.mark.parametrize(
    ("interval_end", "accepted"),
    [
        ("2025-03-01T12:00:00Z", True),  # ended before now
        ("2025-03-01T12:15:00Z", True),  # exactly the tolerance ahead (a fast meter clock)
        ("2025-03-01T13:15:00+01:00", True),  # the same instant, another offset
        ("2025-03-01T12:30:00Z", False),  # beyond it
        ("2025-03-02T00:00:00Z", False),
    ],
)
def test_not_in_the_future_beyond_the_tolerance(interval_end: str, accepted: bool) -> None:
    outcome = outcome_of(reading(interval_end=interval_end), now=datetime(2025, 3, 1, 12, 10, tzinfo=UTC))
    assert isinstance(outcome, Accepted) is accepted
    if not accepted:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is RejectReason.IN_FUTURE


@pytest.mark.parametrize(
    ("register", "unit", "fits"),
    [
        ("active_import", "kWh", True),
        ("active_export", "Wh", True),
        ("active_import", "MWh", True),
        ("reactive_import", "kvarh", True),
        ("reactive_export", "varh", True),
        ("active_import", "kvarh", False),
        ("reactive_export", "kWh", False),
    ],
)
def test_unit_matches_register(register: str, unit: str, fits: bool) -> None:
    outcome = outcome_of(reading(register=register, unit=unit))
    assert isinstance(outcome, Accepted) is fits
    if not fits:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is RejectReason.UNIT_MISMATCH


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, None),
        (999_999_999.999, None),
        (12.5, None),
        (-0.001, None),  # signed: kept at the edge, flagged by validation (rule sign)
        (-999_999_999.999, None),
        (-1_000_000_000, RejectReason.VALUE_OUT_OF_RANGE),
        (1_000_000_000, RejectReason.VALUE_OUT_OF_RANGE),
        (0.4125, RejectReason.TOO_MANY_DECIMALS),
    ],
)
def test_value_range_and_decimals(value: float, reason: RejectReason | None) -> None:
    outcome = outcome_of(reading(value=value))
    if reason is None:
        assert isinstance(outcome, Accepted)
    else:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is reason


def test_not_a_number_is_out_of_range() -> None:
    item = ReadingInput.model_validate(reading(value=float("nan")), strict=False)
    result = check_reading(item, now=NOW, rules=RULES)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.VALUE_OUT_OF_RANGE


def test_missing_quality_means_zero() -> None:
    assert isinstance(outcome_of(reading(quality="missing", value=0)), Accepted)
    assert reason_of(reading(quality="missing", value=0.1)) is RejectReason.MISSING_WITH_VALUE


def test_wrong_types_are_malformed_and_name_the_field_not_the_value() -> None:
    for item in (
        reading(value="0.412"),  # a string is not a number on the wire
        reading(register="active"),
        reading(unit="kwh"),
        reading(extra="x"),
        reading(meterpoint_id=571313180400000025),
        reading(value=None),
    ):
        outcome = outcome_of(item)
        assert isinstance(outcome, Rejected), item
        assert outcome.reason is RejectReason.MALFORMED
    outcome = outcome_of(reading(value="0.412"))
    assert isinstance(outcome, Rejected)
    assert outcome.detail.startswith("value:")
    assert "0.412" not in outcome.detail


def test_batch_dedupes_by_reading_id_and_flags_conflicts() -> None:
    items = [
        reading(),
        reading(interval_end="2025-03-01T11:15:00+01:00"),  # the same instant: the same reading
        reading(value=0.5),  # same key, other value
        reading(source="hes-north-01"),  # another source: another reading
        reading(interval_end="2025-03-01T10:30:00Z"),
    ]
    outcomes = check_readings(parse_readings(orjson.dumps(items), max_items=10), now=NOW, rules=RULES)
    assert [type(o) for o in outcomes] == [Accepted, Duplicate, Rejected, Accepted, Accepted]
    first, duplicate, conflict = outcomes[0], outcomes[1], outcomes[2]
    assert isinstance(first, Accepted)
    assert isinstance(duplicate, Duplicate)
    assert isinstance(conflict, Rejected)
    assert duplicate.duplicate_of == 0
    assert duplicate.event_id == first.event_id
    assert conflict.reason is RejectReason.CONFLICTING_DUPLICATE
    assert "item 0" in conflict.detail
    assert len({o.event_id for o in outcomes if isinstance(o, Accepted)}) == 3


def test_one_bad_item_does_not_hide_the_good_ones() -> None:
    items: list[Any] = [reading(), 42, reading(value="x"), reading(interval_end="2025-03-01T10:30:00Z"), None]
    outcomes = check_readings(parse_readings(orjson.dumps(items), max_items=10), now=NOW, rules=RULES)
    assert [o.index for o in outcomes] == [0, 1, 2, 3, 4]
    assert [type(o) for o in outcomes] == [Accepted, Rejected, Rejected, Accepted, Rejected]
    rejected = [o for o in outcomes if isinstance(o, Rejected)]
    assert {o.reason for o in rejected} == {RejectReason.MALFORMED}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"meterpoint_id": "571313180400000025"}', "not_a_batch"),
        (b'"readings"', "not_a_batch"),
        (b"[]", "empty_batch"),
        (orjson.dumps([reading()] * 4), "too_many_items"),
    ],
)
def test_unusable_bodies_are_malformed_batches(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedBatch) as raised:
        parse_readings(body, max_items=3)
    assert raised.value.reason == reason


def test_a_single_object_is_a_batch_of_one_where_allowed() -> None:
    [item] = parse_readings(orjson.dumps(reading()), max_items=3, allow_single=True)
    assert isinstance(item, ReadingInput)
    [bad] = parse_readings(orjson.dumps(reading(value="x")), max_items=3, allow_single=True)
    assert isinstance(bad, Rejection)
    with pytest.raises(MalformedBatch):
        parse_readings(b"{oops", max_items=3, allow_single=True)


def test_csv_style_strings_validate_in_lax_mode_for_ftp() -> None:
    row = {k: str(v) for k, v in reading().items()}
    item = ReadingInput.model_validate(row, strict=False)
    result = check_reading(item, now=NOW, rules=RULES)
    assert not isinstance(result, Rejection)
    assert result.value == 0.412


def test_foreign_meterpoint_finds_the_first_other_meterpoint() -> None:
    items = parse_readings(orjson.dumps([reading(), reading(meterpoint_id=OTHER_METERPOINT)]), max_items=5)
    assert foreign_meterpoint(items, METERPOINT) == 1
    assert foreign_meterpoint(items[:1], METERPOINT) is None


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        check_readings([], now=datetime(2025, 3, 1), rules=RULES)


def alarm(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"meterpoint_id": METERPOINT, "alarm": "power_failure", "raised_at": "2025-03-01T11:59:30Z"}
    item.update(changes)
    return item


def test_alarms_are_checked_and_deduplicated() -> None:
    items = [
        alarm(),
        alarm(raised_at="2025-03-01T12:59:30+01:00"),
        alarm(details="Phase L2 lost"),
        alarm(raised_at="2025-03-01T12:30:00Z"),
        alarm(raised_at="2025-03-01T11:59:30"),
        alarm(meterpoint_id="571313180400000024"),
        alarm(alarm="meltdown"),
    ]
    outcomes = check_alarms(parse_alarms(orjson.dumps(items), max_items=10), now=NOW, rules=RULES)
    kinds = [(type(o).__name__, getattr(o, "reason", None)) for o in outcomes]
    assert kinds == [
        ("Accepted", None),
        ("Duplicate", None),
        ("Rejected", RejectReason.CONFLICTING_DUPLICATE),
        ("Rejected", RejectReason.IN_FUTURE),
        ("Rejected", RejectReason.NAIVE_TIMESTAMP),
        ("Rejected", RejectReason.INVALID_METERPOINT),
        ("Rejected", RejectReason.MALFORMED),
    ]
    first = outcomes[0]
    assert isinstance(first, Accepted)
    raised_at = datetime(2025, 3, 1, 11, 59, 30, tzinfo=UTC)
    assert first.event_id == alarm_id(METERPOINT, "power_failure", raised_at, DEFAULT_SOURCE)
    assert first.event.to_event_data() == MeterAlarmRaised.create(
        meterpoint_id=METERPOINT, alarm=MeterAlarm.POWER_FAILURE, raised_at=raised_at, source=DEFAULT_SOURCE
    )
    assert AlarmInput.model_validate_json(orjson.dumps(alarm())).source == DEFAULT_SOURCE


def test_a_negative_value_and_a_meter_index_are_carried_into_the_event() -> None:
    outcome = outcome_of(reading(value=-0.25, meter_index=123_456.789))
    assert isinstance(outcome, Accepted)
    event = outcome.event.to_event_data()
    assert (event.value, event.meter_index) == (-0.25, 123_456.789)
    without = outcome_of(reading())
    assert isinstance(without, Accepted)
    assert without.event.to_event_data().meter_index is None


@pytest.mark.parametrize(
    ("meter_index", "reason"),
    [
        (0, None),
        (999_999_999.999, None),
        (-0.001, RejectReason.VALUE_OUT_OF_RANGE),
        (1_000_000_000, RejectReason.VALUE_OUT_OF_RANGE),
        (1.0005, RejectReason.TOO_MANY_DECIMALS),
        ("12.5", RejectReason.MALFORMED),  # a string is not a number on the wire
    ],
)
def test_meter_index_range_and_decimals(meter_index: Any, reason: RejectReason | None) -> None:
    outcome = outcome_of(reading(meter_index=meter_index))
    if reason is None:
        assert isinstance(outcome, Accepted)
    else:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is reason
        assert "meter_index" in outcome.detail
