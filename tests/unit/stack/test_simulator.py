"""The simulator's data: valid meterpoint ids, readings every channel's validator accepts, deterministic values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from libs.events.gsrn import is_valid_gsrn
from services.collection import csvformat
from services.collection.domain import Reading, ValidationRules, check_reading, parse_readings
from stack.dev.channels import CSV_HEADER, csv_line, person
from stack.dev.simulator import SimulatorSettings, first_interval_end, reading, reading_value

NOW = datetime(2026, 3, 29, 1, 7, 12, tzinfo=UTC)  # the night Denmark moves to summer time


def test_the_plan_gives_every_channel_its_own_valid_meterpoints() -> None:
    plan = SimulatorSettings(meters=3, head_end_meters=2, ftp_meters=2, id_base="5713131").plan()
    assert (len(plan.mqtt), len(plan.rest), len(plan.ftp)) == (3, 2, 2)
    assert len(set(plan.all)) == 7
    assert all(is_valid_gsrn(meterpoint) and meterpoint.startswith("5713131") for meterpoint in plan.all)
    assert SimulatorSettings(ftp=False, ftp_meters=5).plan().ftp == []
    assert SimulatorSettings(id_base="5713131").plan() == SimulatorSettings(id_base="5713131").plan()


def test_an_id_base_too_long_for_the_meters_is_refused() -> None:
    with pytest.raises(ValueError, match="room for 10000"):
        SimulatorSettings(id_base="5713131800000", meters=10_000, head_end_meters=1, ftp_meters=0).plan()
    with pytest.raises(ValueError, match="id_base"):
        SimulatorSettings(id_base="57x")


def test_readings_start_on_a_quarter_hour_in_the_past() -> None:
    first = first_interval_end(NOW, timedelta(hours=2))
    assert first == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert first_interval_end(NOW, timedelta(0)) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_every_reading_passes_the_collection_validator_over_rest_mqtt_and_csv() -> None:
    meterpoint = SimulatorSettings().plan().mqtt[0]
    ends = [first_interval_end(NOW, timedelta(hours=24)) + timedelta(minutes=15 * n) for n in range(97)]
    readings = [reading(meterpoint, end) for end in ends]
    parsed = parse_readings(orjson.dumps(readings), max_items=200)
    checked = [check_reading(item, now=NOW, rules=ValidationRules()) for item in parsed]  # type: ignore[arg-type]
    assert all(isinstance(result, Reading) for result in checked), checked
    columns = csvformat.parse_header(CSV_HEADER.encode())
    lines = [csvformat.parse_line(csv_line(item).encode(), columns) for item in readings]
    assert all(isinstance(check_reading(line, now=NOW, rules=ValidationRules()), Reading) for line in lines)  # type: ignore[arg-type]


def test_values_are_deterministic_and_plausible() -> None:
    end = datetime(2026, 1, 15, 18, 0, tzinfo=UTC)
    assert reading_value("571313180000000005", end) == reading_value("571313180000000005", end)
    values = [reading_value("571313180000000005", end + timedelta(minutes=15 * n)) for n in range(96)]
    assert all(0 <= value < 1 and round(value, 3) == value for value in values)
    assert max(values) > 2 * min(values)  # evenings are not nights


def test_customers_are_valid_soap_requests() -> None:
    first, other = person(0), person(11)
    assert first["name"] != other["name"]
    assert first["contact"]["email"].isascii()
    assert first["contact"]["address"]["country"] == "DK"
