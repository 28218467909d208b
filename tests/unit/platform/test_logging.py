"""JSON log lines, the correlation id contextvar, and the correlation id middleware."""

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from libs.platform.logging import (
    CORRELATION_ID_HEADER,
    CorrelationIdMiddleware,
    bind_correlation_id,
    configure_logging,
    get_correlation_id,
    is_valid_correlation_id,
    new_correlation_id,
    reset_correlation_id,
    set_correlation_id,
)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    configure_logging("collection", "DEBUG", stream=stream)
    yield stream
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_core_and_extra_fields(log_stream: io.StringIO) -> None:
    logging.getLogger("gridhub.collection.mqtt").info(
        "reading accepted for %s", "571234567890123457", extra={"meterpoint_id": "571234567890123457", "kwh": 1.25}
    )
    [entry] = lines(log_stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "gridhub.collection.mqtt"
    assert entry["message"] == "reading accepted for 571234567890123457"
    assert entry["service"] == "collection"
    assert entry["correlation_id"] is None
    assert entry["meterpoint_id"] == "571234567890123457"
    assert entry["kwh"] == 1.25
    assert entry["time"].endswith("+00:00")


def test_multiline_message_and_exception_stay_on_one_line(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("bad\nreading")
    except ValueError:
        logging.getLogger("gridhub").exception("line one\nline two")
    [entry] = lines(log_stream)
    assert entry["message"] == "line one\nline two"
    assert "ValueError: bad\nreading" in entry["exception"]


def test_unserialisable_extra_is_logged_as_text(log_stream: io.StringIO) -> None:
    logging.getLogger("gridhub").warning("odd values", extra={"when": object(), "huge": 2**70})
    [entry] = lines(log_stream)
    assert entry["message"] == "odd values"
    assert entry["huge"] == str(2**70)
    assert entry["when"].startswith("<object object")


def test_configure_twice_keeps_one_handler(log_stream: io.StringIO) -> None:
    second = io.StringIO()
    configure_logging("collection", "INFO", stream=second)
    logging.getLogger("gridhub").info("once")
    assert log_stream.getvalue() == ""
    assert len(lines(second)) == 1


def test_bound_correlation_id_appears_in_log_and_is_restored(log_stream: io.StringIO) -> None:
    with bind_correlation_id("order-42") as correlation_id:
        assert correlation_id == "order-42"
        logging.getLogger("gridhub").info("inside")
    logging.getLogger("gridhub").info("outside")
    inside, outside = lines(log_stream)
    assert inside["correlation_id"] == "order-42"
    assert outside["correlation_id"] is None


def test_bind_generates_an_id_for_none_or_invalid_values() -> None:
    with bind_correlation_id() as generated:
        assert is_valid_correlation_id(generated)
        assert get_correlation_id() == generated
    with bind_correlation_id("bad id; drop table") as replaced:
        assert replaced != "bad id; drop table"
        assert is_valid_correlation_id(replaced)
    assert get_correlation_id() is None


def test_set_and_reset() -> None:
    token = set_correlation_id("abc")
    assert get_correlation_id() == "abc"
    reset_correlation_id(token)
    assert get_correlation_id() is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0b7c1e2a9f7d4d8e8a0f5d3c2b1a0e9f", True),
        ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("has space", False),
        ("semi;colon", False),
        ("-leading-dash", False),
        ("ünïcode", False),
    ],
)
def test_correlation_id_validation(value: str, valid: bool) -> None:
    assert is_valid_correlation_id(value) is valid


async def test_contextvar_is_isolated_between_concurrent_tasks() -> None:
    async def job(correlation_id: str) -> str | None:
        with bind_correlation_id(correlation_id):
            await asyncio.sleep(0)
            return get_correlation_id()

    assert list(await asyncio.gather(job("first"), job("second"))) == ["first", "second"]


def echo_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(CorrelationIdMiddleware)

    @app.get("/echo")
    async def echo() -> dict[str, str | None]:
        logging.getLogger("gridhub.test").info("handling echo")
        return {"correlation_id": get_correlation_id()}

    @app.get("/echo-sync")
    def echo_sync() -> dict[str, str | None]:
        return {"correlation_id": get_correlation_id()}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://collection.test")


async def test_middleware_adopts_a_valid_correlation_id(log_stream: io.StringIO) -> None:
    async with client(echo_app()) as http:
        response = await http.get("/echo", headers={CORRELATION_ID_HEADER: "req-2024.11:0001"})
    assert response.headers[CORRELATION_ID_HEADER] == "req-2024.11:0001"
    assert response.json() == {"correlation_id": "req-2024.11:0001"}
    handled = [entry for entry in lines(log_stream) if entry["message"] == "handling echo"]
    assert handled[0]["correlation_id"] == "req-2024.11:0001"
    assert get_correlation_id() is None


async def test_middleware_generates_an_id_when_missing() -> None:
    async with client(echo_app()) as http:
        first = await http.get("/echo")
        second = await http.get("/echo-sync")
    for response in (first, second):
        generated = response.headers[CORRELATION_ID_HEADER]
        assert is_valid_correlation_id(generated)
        assert response.json() == {"correlation_id": generated}
    assert first.headers[CORRELATION_ID_HEADER] != second.headers[CORRELATION_ID_HEADER]


@pytest.mark.parametrize("bad", ["x" * 129, "evil value", "<script>", "a,b"])
async def test_middleware_replaces_an_invalid_id(bad: str) -> None:
    async with client(echo_app()) as http:
        response = await http.get("/echo", headers={CORRELATION_ID_HEADER: bad})
    echoed = response.headers[CORRELATION_ID_HEADER]
    assert echoed != bad
    assert is_valid_correlation_id(echoed)
    assert response.json() == {"correlation_id": echoed}


def test_new_ids_are_unique() -> None:
    assert len({new_correlation_id() for _ in range(1000)}) == 1000
