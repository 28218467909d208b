"""Every committed change reaches Kafka, even when the service dies before publishing; nothing else does."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import zeep
from aiokafka import AIOKafkaConsumer
from jsonschema import Draft202012Validator, FormatChecker

from libs.events import event_class, from_record, is_valid_gsrn, with_check_digit
from libs.events.fields import RFC3339_PATTERN
from libs.events.schemas import CONTRACTS_DIR, schema_file_name
from services.customers import handlers
from services.customers.adapters.postgres import PostgresCustomerStore
from services.customers.domain import DetailsInput, RegisterCustomer, validate_details
from services.customers.settings import DEV_CLIENTS, CustomersSettings
from tests.integration.customers.support import (
    ServiceProcess,
    consumption_point,
    in_process_soap,
    person,
    running_app,
    soap_service,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

GSRN = with_check_digit("57131318040000002")
OTHER_GSRN = with_check_digit("57131318040000917")

FORMATS = FormatChecker(Draft202012Validator.FORMAT_CHECKER.checkers)
FORMATS.checks("gsrn")(lambda value: not isinstance(value, str) or is_valid_gsrn(value))
FORMATS.checks("date-time", raises=ValueError)(
    lambda value: (
        not isinstance(value, str)
        or (re.fullmatch(RFC3339_PATTERN, value) is not None and datetime.fromisoformat(value).tzinfo is not None)
    )
)


def check_against_contract(value: bytes) -> dict[str, Any]:
    """The event as JSON, after checking it against its committed JSON Schema (and the models)."""
    document: dict[str, Any] = orjson.loads(value)
    schema = orjson.loads((CONTRACTS_DIR / schema_file_name(event_class(document["type"]))).read_bytes())
    Draft202012Validator(schema, format_checker=FORMATS).validate(document)
    return document


@contextlib.asynccontextmanager
async def consumer_of(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read_until(
    consumer: AIOKafkaConsumer, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Consume (and check every record against its contract) until ``done(events)`` holds."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not done(events):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    document = check_against_contract(record.value)
                    from_record(record.value, record.headers, record.key)  # headers and key agree with the value
                    events.append(document)
    return events


def summary(events: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"].removeprefix("gridhub."), event["subject"]) for event in events]


def per_key(events: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Event types per Kafka key, in order: Kafka orders records within a key's partition only."""
    grouped: dict[str, list[str]] = {}
    for event_type, key in events:
        grouped.setdefault(key, []).append(event_type)
    return grouped


async def test_events_committed_before_a_kill_are_published_after_the_restart(
    pg_dsn: str, pg_schema: str, kafka_bootstrap: str, new_topic: Callable[..., Any], tmp_path: Path
) -> None:
    topic = await new_topic("customers")
    env = {
        "CUSTOMERS_POSTGRES_DSN": pg_dsn,
        "CUSTOMERS_POSTGRES_SCHEMA": pg_schema,
        "CUSTOMERS_EVENTS_TOPIC": topic,
        # The meterpoint registered for the links publishes too: into a topic of this test, not meterpoints.v1.
        "CUSTOMERS_METERPOINTS_TOPIC": await new_topic("meterpoints"),
        "GRIDHUB_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CUSTOMERS_RELAY_POLL_INTERVAL": "0.5",
    }
    # The relay is off, so every change is committed and then "lost in flight" when the process is killed.
    service = ServiceProcess({**env, "CUSTOMERS_RELAY_ENABLED": "false"}, tmp_path / "first.log")
    await asyncio.to_thread(service.start)
    try:
        soap = soap_service(service.soap_url)

        def changes() -> list[str]:
            soap.RegisterMeterpoint(**consumption_point(GSRN))
            mette = soap.RegisterCustomer(**person("Mette Hansen"))
            jens = soap.RegisterCustomer(**person("Jens Holm"))
            soap.UpdateCustomer(customerId=mette.customerId, expectedVersion=1, **person("Mette Holm"))
            soap.LinkMeterpoint(customerId=mette.customerId, meterpointId=GSRN, moveIn="2025-04-01")
            soap.UnlinkMeterpoint(customerId=mette.customerId, meterpointId=GSRN, moveOut="2025-09-30")
            soap.LinkMeterpoint(customerId=jens.customerId, meterpointId=GSRN, moveIn="2025-10-01")
            refused = [
                lambda: soap.RegisterCustomer(
                    kind="person", name="X", contact={"address": {**person()["contact"]["address"], "postcode": "1"}}
                ),
                lambda: soap.UpdateCustomer(customerId=mette.customerId, expectedVersion=1, **person("Stale")),
                lambda: soap.LinkMeterpoint(customerId=mette.customerId, meterpointId=GSRN, moveIn="2025-12-01"),
                lambda: soap.LinkMeterpoint(customerId="C-999999", meterpointId=OTHER_GSRN, moveIn="2025-12-01"),
            ]
            for call in refused:
                with pytest.raises(zeep.exceptions.Fault):
                    call()
            return [mette.customerId, jens.customerId]

        mette_id, jens_id = await asyncio.to_thread(changes)
    finally:
        service.kill()

    expected = [
        ("customer.registered", mette_id),
        ("customer.registered", jens_id),
        ("customer.updated", mette_id),
        ("meterpoint.linked", mette_id),
        ("meterpoint.unlinked", mette_id),
        ("meterpoint.linked", jens_id),
    ]
    async with consumer_of(kafka_bootstrap, topic) as consumer:
        assert await consumer.getmany(timeout_ms=500) == {}  # nothing was published before the kill

        restarted = ServiceProcess({**env, "CUSTOMERS_RELAY_ENABLED": "true"}, tmp_path / "second.log")
        await asyncio.to_thread(restarted.start)
        try:
            events = await read_until(consumer, lambda seen: len(seen) >= len(expected))
            # Nothing more: the refused requests left no events behind.
            extra = (await consumer.getmany(timeout_ms=1000)).values()
            assert [record for records in extra for record in records] == []
        finally:
            assert restarted.stop() in (0, -signal.SIGTERM), restarted.log_tail()

    assert per_key(summary(events)) == per_key(expected)  # every event, per key in commit order
    assert len({event["id"] for event in events}) == len(expected)
    updated = next(event for event in events if event["type"] == "gridhub.customer.updated")
    assert updated["data"]["name"] == "Mette Holm"
    assert updated["data"]["version"] == 2


class _FailingAfterPublish:
    """A unit of work that fails after writing its events, as a crash before commit would."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def publish(self, events: Any) -> None:
        await self._inner.publish(events)
        raise RuntimeError("failure after the outbox write")


class _FailingStore:
    def __init__(self, inner: PostgresCustomerStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[Any]:
        async with self._inner.unit_of_work() as uow:
            yield _FailingAfterPublish(uow)


async def test_refused_and_rolled_back_requests_publish_nothing(
    settings_for: Callable[..., CustomersSettings], kafka_bootstrap: str, new_topic: Callable[..., Any]
) -> None:
    topic = await new_topic("customers")
    settings = settings_for(
        relay_enabled=True,
        events_topic=topic,
        meterpoints_topic=await new_topic("meterpoints"),
        kafka_bootstrap_servers=kafka_bootstrap,
        relay_poll_interval=0.5,
    )
    async with (
        running_app(settings) as app,
        in_process_soap(app) as soap,
        consumer_of(kafka_bootstrap, topic) as consumer,
    ):
        await soap.RegisterMeterpoint(**consumption_point(GSRN))
        mette = await soap.RegisterCustomer(**person("Mette Hansen"))
        jens = await soap.RegisterCustomer(**person("Jens Holm"))
        await soap.LinkMeterpoint(customerId=mette.customerId, meterpointId=GSRN, moveIn="2025-04-01")

        endpoint = app.state.soap_endpoint
        real_store = endpoint.store
        endpoint.store = _FailingStore(real_store)
        with pytest.raises(zeep.exceptions.Fault) as rolled_back:
            await soap.UpdateCustomer(customerId=jens.customerId, expectedVersion=1, **person("Rolled Back"))
        assert rolled_back.value.code == "soap:Server"
        assert "Traceback" not in rolled_back.value.message
        endpoint.store = real_store

        refused = [
            soap.RegisterCustomer(
                **{**person("Bad Mail"), "contact": {"email": "nope", "address": person()["contact"]["address"]}}
            ),
            soap.UpdateCustomer(customerId=mette.customerId, expectedVersion=7, **person("Stale")),
            soap.UpdateCustomer(customerId="C-999999", expectedVersion=1, **person("Nobody")),
            soap.LinkMeterpoint(customerId=jens.customerId, meterpointId=GSRN, moveIn="2025-05-01"),
            soap.UnlinkMeterpoint(customerId=jens.customerId, meterpointId=GSRN, moveOut="2025-05-01"),
        ]
        for call in refused:
            with pytest.raises(zeep.exceptions.Fault):
                await call
        # Updating to the same details changes nothing, so it announces nothing either.
        unchanged = await soap.UpdateCustomer(customerId=jens.customerId, expectedVersion=1, **person("Jens Holm"))
        assert unchanged.version == 1
        marker = await soap.UpdateCustomer(customerId=jens.customerId, expectedVersion=1, **person("Jens Marker"))

        events = await read_until(consumer, lambda seen: any(e["data"].get("name") == marker.name for e in seen))
        assert per_key(summary(events)) == {
            mette.customerId: ["customer.registered", "meterpoint.linked"],
            jens.customerId: ["customer.registered", "customer.updated"],
        }
        # Four customer events and the meterpoint's registration (on its own topic).
        assert await app.state.pool.fetchval("SELECT count(*) FROM outbox") == 5
        assert await app.state.pool.fetchval("SELECT name FROM customers WHERE customer_id = $1", jens.customerId) == (
            "Jens Marker"
        )


async def test_a_unit_of_work_that_fails_after_writing_events_leaves_neither_state_nor_events(
    settings_for: Callable[..., CustomersSettings],
) -> None:
    async with running_app(settings_for()) as app:
        pool = app.state.pool
        store = _FailingStore(PostgresCustomerStore(pool, topic="customers.v1", source="/gridhub/customers"))
        details = validate_details(
            DetailsInput("person", "Mette Hansen", None, None, "Vestergade 12", "8000", "Aarhus C", "DK")
        )
        with pytest.raises(RuntimeError, match="after the outbox write"):
            await handlers.register_customer(
                RegisterCustomer(details), store, handlers.Caller(DEV_CLIENTS["billing"].principal("billing"))
            )
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        assert await pool.fetchval("SELECT count(*) FROM customers") == 0
