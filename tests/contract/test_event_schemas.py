"""The committed JSON Schemas in contracts/events agree with the event models: same events valid, same refused."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from libs.events import (
    EVENT_CLASSES,
    CloudEvent,
    CustomerRegistered,
    CustomerUpdated,
    EventData,
    InvalidEvent,
    MeterAlarmRaised,
    MeterpointLinked,
    MeterReadingReceived,
    Quality,
    Register,
    Resolution,
    Unit,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderScheduled,
    decode,
    encode,
    is_valid_gsrn,
    make_event,
    with_check_digit,
)
from libs.events.examples import example_events
from libs.events.fields import RFC3339_PATTERN
from libs.events.meterpoints import MeterpointRegistered, MeterpointUpdated
from libs.events.parties import is_valid_eic, is_valid_gln
from libs.events.schemas import CONTRACTS_DIR, differences, schema_file_name

EXAMPLES = example_events()


def _is_rfc3339(instance: object) -> bool:
    # jsonschema asserts "date-time" only with an optional package; this check is as strict as the contract.
    if not isinstance(instance, str):
        return True
    if not re.fullmatch(RFC3339_PATTERN, instance):
        return False
    return datetime.fromisoformat(instance).tzinfo is not None


def _is_gsrn(instance: object) -> bool:
    return not isinstance(instance, str) or is_valid_gsrn(instance)


def _is_market_participant_id(instance: object) -> bool:
    return not isinstance(instance, str) or is_valid_gln(instance) or is_valid_eic(instance)


FORMATS = FormatChecker(Draft202012Validator.FORMAT_CHECKER.checkers)
FORMATS.checks("date-time", raises=ValueError)(_is_rfc3339)
FORMATS.checks("gsrn")(_is_gsrn)
FORMATS.checks("market-participant-id")(_is_market_participant_id)


def committed_schema(payload: type[EventData]) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads((CONTRACTS_DIR / schema_file_name(payload)).read_bytes())
    return schema


def validator(payload: type[EventData]) -> Draft202012Validator:
    return Draft202012Validator(committed_schema(payload), format_checker=FORMATS)


def as_json(event: CloudEvent[Any]) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(encode(event))
    return document


def example(payload: type[EventData]) -> dict[str, Any]:
    return next(as_json(event) for event in EXAMPLES if type(event.data) is payload)


def test_committed_schema_files_are_generated_from_the_models() -> None:
    assert differences() == [], "run: uv run python -m libs.events.schemas"


def test_every_event_type_has_an_example() -> None:
    assert [type(event.data) for event in EXAMPLES] == list(EVENT_CLASSES)


@pytest.mark.parametrize("payload", EVENT_CLASSES, ids=lambda cls: cls.event_type)
def test_schema_is_a_valid_draft_2020_12_schema_with_id_and_closed_objects(payload: type[EventData]) -> None:
    schema = committed_schema(payload)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + schema_file_name(payload))
    assert schema["description"]
    objects = [schema, *(d for d in schema["$defs"].values() if d.get("type") == "object")]
    assert all(obj["additionalProperties"] is False for obj in objects)
    assert schema["properties"]["type"]["const"] == payload.event_type


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: event.type)
def test_every_example_event_validates_against_its_committed_schema(event: CloudEvent[Any]) -> None:
    errors = list(validator(type(event.data)).iter_errors(as_json(event)))
    assert errors == []


@pytest.mark.parametrize("payload", EVENT_CLASSES, ids=lambda cls: cls.event_type)
def test_examples_in_the_schema_files_are_accepted_by_both(payload: type[EventData]) -> None:
    for document in committed_schema(payload)["examples"]:
        assert validator(payload).is_valid(document)
        assert type(decode(orjson.dumps(document)).data) is payload


def _reading_with(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document["data"].update(changes)

    return mutate


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        target = document
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


def _set(value: Any, *path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        target = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def _meterpoint(value: Any) -> Callable[[dict[str, Any]], None]:
    """Change the key on both sides, so that only the value itself is wrong."""
    return _both(_set(value, "subject"), _set(value, "data", "meterpoint_id"))


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(document)

    return mutate


_BAD_CHECK_DIGIT = "571313180400000026"  # the example's GSRN with the last digit off by one

INVALID: list[tuple[str, type[EventData], Callable[[dict[str, Any]], None]]] = [
    ("gsrn with a wrong check digit", MeterReadingReceived, _meterpoint(_BAD_CHECK_DIGIT)),
    ("gsrn of 17 digits", MeterReadingReceived, _meterpoint("57131318040000002")),
    ("gsrn with a letter", MeterReadingReceived, _meterpoint("57131318040000002X")),
    ("missing data field", MeterReadingReceived, _drop("data", "value")),
    ("missing envelope attribute", MeterReadingReceived, _drop("time")),
    ("extra data field", MeterReadingReceived, _reading_with(voltage=230)),
    ("extra envelope attribute", MeterReadingReceived, _set("x", "partitionkey")),
    ("naive interval end", MeterReadingReceived, _reading_with(interval_end="2025-03-01T10:15:00")),
    ("naive event time", MeterReadingReceived, _set("2025-03-01T10:16:00", "time")),
    ("value below the negative bound", MeterReadingReceived, _reading_with(value=-1e12)),
    ("negative meter index", MeterReadingReceived, _reading_with(meter_index=-1.0)),
    ("value beyond the bound", MeterReadingReceived, _reading_with(value=1e12)),
    ("value as a string", MeterReadingReceived, _reading_with(value="0.412")),
    ("schemaversion as a string", MeterReadingReceived, _set("1", "schemaversion")),
    ("gsrn as a number", MeterReadingReceived, _meterpoint(571313180400000025)),
    ("unknown register", MeterReadingReceived, _reading_with(register="active")),
    ("reactive unit on an active register", MeterReadingReceived, _reading_with(unit="kvarh")),
    ("missing quality with a value", MeterReadingReceived, _reading_with(quality="missing")),
    ("reading id not a uuid", MeterReadingReceived, _reading_with(reading_id="reading-1")),
    ("other specversion", MeterReadingReceived, _set("0.3", "specversion")),
    ("type of another event", MeterReadingReceived, _set("gridhub.meter.alarm.raised", "type")),
    ("unsupported schemaversion", MeterReadingReceived, _set(2, "schemaversion")),
    ("blank event id", MeterReadingReceived, _set("", "id")),
    ("unknown alarm", MeterAlarmRaised, _set("smoke", "data", "alarm")),
    ("email without domain", CustomerRegistered, _set("mette.hansen", "data", "contact", "email")),
    ("phone not in E.164", CustomerRegistered, _set("20 12 34 56", "data", "contact", "phone")),
    ("extra address field", CustomerRegistered, _set("Jylland", "data", "contact", "address", "region")),
    ("version 0", CustomerUpdated, _set(0, "data", "version")),
    ("move-in not a date", MeterpointLinked, _set("2025-04-31", "data", "move_in")),
    ("unknown work order type", WorkOrderCreated, _set("paint_meter", "data", "type")),
    ("status of another event", WorkOrderScheduled, _set("completed", "data", "status")),
    ("succeeded replacement without serial", WorkOrderCompleted, _drop("data", "new_meter_serial")),
    ("serial on a failed job", WorkOrderCompleted, _set("failed", "data", "result")),
    ("blank cancel reason", WorkOrderCancelled, _set(" ", "data", "reason")),
    ("customer grid company, bad GLN check", CustomerRegistered, _set("5790000000013", "data", "grid_company")),
    ("customer's grid company of 12 digits", CustomerRegistered, _set("579000000001", "data", "grid_company")),
    ("grid company with a wrong GLN check digit", MeterpointRegistered, _set("5790000000013", "data", "grid_company")),
    ("grid company, bad EIC check", MeterpointRegistered, _set("10X-GRIDHUB-A--8", "data", "grid_company")),
    ("missing grid company", MeterpointRegistered, _drop("data", "grid_company")),
    ("meterpoint gsrn with a wrong check digit", MeterpointRegistered, _meterpoint(_BAD_CHECK_DIGIT)),
    ("unknown meterpoint type", MeterpointRegistered, _set("storage", "data", "type")),
    ("resolution of a day", MeterpointRegistered, _set("P1D", "data", "resolution")),
    ("unknown data source kind", MeterpointRegistered, _set("email", "data", "data_source", "kind")),
    ("grid area in lower case", MeterpointRegistered, _set("north", "data", "grid_area")),
    ("connection since not a date", MeterpointRegistered, _set("2024-02-30", "data", "connection", "since")),
    ("meterpoint version 0", MeterpointUpdated, _set(0, "data", "version")),
]


@pytest.mark.parametrize(("name", "payload", "mutate"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_events_are_refused_by_the_schema_and_by_the_model(
    name: str, payload: type[EventData], mutate: Callable[[dict[str, Any]], None]
) -> None:
    document = copy.deepcopy(example(payload))
    mutate(document)
    assert not validator(payload).is_valid(document), f"schema accepted: {name}"
    with pytest.raises(InvalidEvent):
        decode(orjson.dumps(document))


def test_a_datetime_with_an_offset_is_accepted_by_both() -> None:
    document = example(MeterReadingReceived)
    document["data"]["interval_end"] = "2025-03-01T11:15:00+01:00"
    assert validator(MeterReadingReceived).is_valid(document)
    event = decode(orjson.dumps(document))
    assert event.data == EXAMPLES[0].data


def test_a_customer_event_without_a_grid_company_is_accepted_by_both() -> None:
    # Customers registered before tenancy have none, and producers built before the field leave it out.
    document = example(CustomerRegistered)
    del document["data"]["grid_company"]
    assert validator(CustomerRegistered).is_valid(document)
    assert decode(orjson.dumps(document)).data.grid_company is None


def test_an_eic_grid_company_is_accepted_by_both() -> None:
    document = example(MeterpointRegistered)
    document["data"]["grid_company"] = "10X-GRIDHUB-A--9"
    assert validator(MeterpointRegistered).is_valid(document)
    assert decode(orjson.dumps(document)).data.grid_company == "10X-GRIDHUB-A--9"


def test_the_exchange_rules_are_model_only_rules() -> None:
    # "an exchange point names its neighbour area" compares fields: the model refuses, the schema cannot.
    document = example(MeterpointUpdated)
    document["data"]["neighbour_grid_area"] = None
    assert validator(MeterpointUpdated).is_valid(document)
    with pytest.raises(InvalidEvent):
        decode(orjson.dumps(document))


def test_the_model_only_rules_are_documented_limits_of_the_schema() -> None:
    # A subject that differs from data's key passes the schema (JSON Schema cannot compare two values) but not
    # the model; the schema says so in its description. README.md lists these model-only rules.
    document = example(MeterReadingReceived)
    document["subject"] = with_check_digit("57131318040000917")
    assert validator(MeterReadingReceived).is_valid(document)
    with pytest.raises(InvalidEvent):
        decode(orjson.dumps(document))
    assert "equals data.meterpoint_id" in committed_schema(MeterReadingReceived)["properties"]["subject"]["description"]
    # Likewise "at most 3 decimals": multipleOf 0.001 misjudges binary floats in many validators.
    document = example(MeterReadingReceived)
    document["data"]["value"] = 0.0005
    assert validator(MeterReadingReceived).is_valid(document)
    with pytest.raises(InvalidEvent):
        decode(orjson.dumps(document))


@settings(max_examples=60, deadline=None)
@given(
    serial=st.from_regex(r"\A57[0-9]{15}\Z"),
    register=st.sampled_from(list(Register)),
    minutes=st.integers(min_value=0, max_value=10 * 365 * 24 * 4).map(lambda n: n * 15),
    value=st.decimals(min_value=0, max_value="999999999.999", places=3).map(float),
    quality=st.sampled_from([Quality.MEASURED, Quality.ESTIMATED]),
)
def test_generated_readings_validate_against_the_schema(
    serial: str, register: Register, minutes: int, value: float, quality: Quality
) -> None:
    active = register in (Register.ACTIVE_IMPORT, Register.ACTIVE_EXPORT)
    reading = MeterReadingReceived.create(
        meterpoint_id=with_check_digit(serial),
        register=register,
        interval_end=datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
        resolution=Resolution.PT15M,
        value=value,
        unit=Unit.KWH if active else Unit.KVARH,
        quality=quality,
        source="collection.rest",
    )
    event = make_event(reading, source="/gridhub/collection")
    assert validator(MeterReadingReceived).is_valid(as_json(event))
    assert decode(encode(event)) == event
