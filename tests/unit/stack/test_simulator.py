"""The simulator's data: valid meterpoint ids, readings every channel's validator accepts, deterministic values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from libs.events.gsrn import is_valid_gsrn
from services.collection import csvformat
from services.collection.domain import Reading, ValidationRules, check_reading, parse_readings
from stack.dev.channels import CSV_HEADER, HeadEnd, MqttMeter, csv_line, person
from stack.dev.simulator import SimulatorSettings, first_interval_end, history, parse_reread, reading, reading_value

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


def test_a_reread_is_the_meters_history_within_the_range_and_what_it_has_produced() -> None:
    meterpoint = SimulatorSettings().plan().mqtt[0]
    first_end = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    last_end = datetime(2026, 3, 28, 6, 0, tzinfo=UTC)
    start, end = datetime(2026, 3, 28, 1, 0, tzinfo=UTC), datetime(2026, 3, 28, 2, 0, tzinfo=UTC)
    again = history(meterpoint, start, end, first_end=first_end, last_end=last_end)
    assert [r["interval_end"] for r in again] == [
        "2026-03-28T01:15:00Z",
        "2026-03-28T01:30:00Z",
        "2026-03-28T01:45:00Z",
        "2026-03-28T02:00:00Z",
    ]  # start exclusive, end inclusive
    assert again == [
        reading(meterpoint, datetime(2026, 3, 28, 1, 15, tzinfo=UTC) + timedelta(minutes=15 * n)) for n in range(4)
    ]
    # Before its first interval and after its latest it has nothing.
    early = history(
        meterpoint,
        first_end - timedelta(hours=5),
        first_end + timedelta(minutes=15),
        first_end=first_end,
        last_end=last_end,
    )
    assert [r["interval_end"] for r in early] == ["2026-03-28T00:00:00Z", "2026-03-28T00:15:00Z"]
    assert history(meterpoint, last_end, last_end + timedelta(hours=3), first_end=first_end, last_end=last_end) == []


def test_a_reread_command_is_parsed_and_anything_else_is_ignored() -> None:
    payload = orjson.dumps(
        {
            "command": "reread",
            "request_id": "0b9c2a8e-5c1d-8f3a-9d2e-4f6a7b8c9d0e",
            "meterpoint_id": "571313180000000005",
            "start": "2026-03-28T01:00:00Z",
            "end": "2026-03-28T02:00:00+01:00",
            "register": "active_import",
            "resolution": "PT15M",
            "requested_at": "2026-03-28T03:00:00Z",
        }
    )
    command = parse_reread(payload)
    assert command is not None
    assert (command.start, command.end) == (
        datetime(2026, 3, 28, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 28, 1, 0, tzinfo=UTC),
    )
    assert parse_reread(b"not json") is None
    assert parse_reread(orjson.dumps({"command": "reboot"})) is None
    assert parse_reread(orjson.dumps({"command": "reread", "start": "x"})) is None


class Message:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def test_a_meter_queues_the_rereads_it_receives_and_answers_each_once() -> None:
    meter = MqttMeter("571313180000000005", "secret", "127.0.0.1", 1, "gridhub/meters")
    command = {
        "command": "reread",
        "request_id": "0b9c2a8e-5c1d-8f3a-9d2e-4f6a7b8c9d0e",
        "meterpoint_id": "571313180000000005",
        "start": "2026-03-28T01:00:00Z",
        "end": "2026-03-28T02:00:00Z",
        "register": "active_import",
    }
    meter._on_message(None, None, Message(orjson.dumps(command)))
    meter._on_message(None, None, Message(b"garbage"))
    [taken] = meter.take_rereads()
    assert taken.request_id == command["request_id"]
    assert meter.take_rereads() == []


async def test_the_head_end_resends_each_requested_range_then_acknowledges_it() -> None:
    posted: list[Any] = []
    deleted: list[str] = []
    request = {
        "command": "reread",
        "request_id": "0b9c2a8e-5c1d-8f3a-9d2e-4f6a7b8c9d0e",
        "meterpoint_id": "571313180000000005",
        "start": "2026-03-28T01:00:00Z",
        "end": "2026-03-28T01:30:00Z",
        "register": "active_import",
        "resolution": "PT15M",
        "requested_at": "2026-03-28T03:00:00Z",
    }

    def serve(incoming: httpx.Request) -> httpx.Response:
        if incoming.method == "GET":
            return httpx.Response(200, json={"requests": [request]})
        if incoming.method == "POST":
            items = orjson.loads(incoming.content)
            posted.extend(items)
            return httpx.Response(202, json={"accepted": len(items), "rejected": 0, "results": []})
        deleted.append(incoming.url.path)
        return httpx.Response(204)

    head_end = HeadEnd("http://collection", "ghk_test")
    head_end.http = httpx.AsyncClient(base_url="http://collection", transport=httpx.MockTransport(serve))
    first_end = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)

    def readings_of(command: Any) -> list[Any]:
        return history(command.meterpoint_id, command.start, command.end, first_end=first_end, last_end=NOW)

    await head_end.answer_rereads(readings_of)
    await head_end.close()
    assert [item["interval_end"] for item in posted] == ["2026-03-28T01:15:00Z", "2026-03-28T01:30:00Z"]
    assert deleted == [f"/v1/reread-requests/{request['request_id']}"]
    assert head_end.rereads == 1
