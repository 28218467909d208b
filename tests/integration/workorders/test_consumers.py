"""The consumers against the real Kafka and PostgreSQL: one inspection per alarm, the replica, dead letters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from libs.events import (
    Address,
    Contact,
    CustomerKind,
    CustomerRegistered,
    MeterAlarm,
    MeterAlarmRaised,
    MeterpointLinked,
    decode,
    make_event,
    to_record,
)
from libs.platform.apikeys import Role
from services.workorders.settings import WorkordersSettings
from tests.integration.workorders.conftest import Running, auth
from tests.integration.workorders.support import FakeDirectory, new_meterpoint, produce, read_topic, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def alarm_record(meterpoint_id: str, alarm: MeterAlarm, raised_at: datetime) -> tuple[MeterAlarmRaised, Record]:
    data = MeterAlarmRaised.create(meterpoint_id=meterpoint_id, alarm=alarm, raised_at=raised_at, source="hes-north")
    record = to_record(make_event(data, source="/gridhub/collection"))
    return data, (record.key, record.value, record.headers)


async def committed(kafka_bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


@pytest.fixture
async def topics(new_topic: Callable[..., Awaitable[str]]) -> dict[str, str]:
    """Fresh topics (with DLQs for the consumed ones), so other tests' records never reach these consumers."""
    return {
        "meter_events_topic": await new_topic("wo.meter-events", partitions=2, with_dlq=True),
        "customers_topic": await new_topic("wo.customers", partitions=2, with_dlq=True),
        "events_topic": await new_topic("wo.workorders", partitions=2),
        "meterpoints_topic": await new_topic("wo.meterpoints", partitions=2, with_dlq=True),
    }


async def test_an_alarm_opens_exactly_one_inspection_even_when_delivered_twice(
    kafka_bootstrap: str,
    topics: dict[str, str],
    settings_for: Callable[..., WorkordersSettings],
    start_app: Callable[..., Awaitable[Running]],
    db: asyncpg.Connection[Any],
) -> None:
    settings = settings_for(consumers_enabled=True, relay_enabled=True, relay_poll_interval=0.2, **topics)
    meterpoint, quiet_meterpoint = new_meterpoint(), new_meterpoint()
    now = datetime.now(UTC).replace(microsecond=0)
    # Who holds the meterpoint, as customers.v1 tells it: the order gets a provisional customer from the replica.
    registered = CustomerRegistered(
        customer_id="C-700001",
        kind=CustomerKind.PERSON,
        name="Mette Hansen",
        contact=Contact(
            email="mette@example.dk",
            address=Address(street="Vestergade 12", postcode="8000", city="Aarhus C", country="DK"),
        ),
        version=1,
    )
    linked = MeterpointLinked(
        customer_id="C-700001", meterpoint_id=meterpoint, move_in=date.today() - timedelta(days=30)
    )
    customer_records: list[Record] = []
    for data in (registered, linked):
        record = to_record(make_event(data, source="/gridhub/customers"))
        customer_records.append((record.key, record.value, record.headers))
    await produce(kafka_bootstrap, topics["customers_topic"], customer_records)

    tamper, tamper_record = alarm_record(meterpoint, MeterAlarm.TAMPER, now - timedelta(minutes=5))
    clock, clock_record = alarm_record(meterpoint, MeterAlarm.CLOCK_ERROR, now - timedelta(minutes=1))
    _, sag_record = alarm_record(quiet_meterpoint, MeterAlarm.VOLTAGE_SAG, now)
    _, ancient_record = alarm_record(quiet_meterpoint, MeterAlarm.TAMPER, now - timedelta(days=60))
    running = await start_app(settings, customers=FakeDirectory(available=False))
    await running.register(meterpoint)  # grid company A's, whose reader reads the order below
    group = f"{settings.consumer_group_prefix}.customers"

    async def replica_filled() -> bool:
        return await committed(kafka_bootstrap, group) == 2

    await wait_for(replica_filled, 30, "the customer events to be applied")
    # The tamper alarm twice (a producer retry, a re-sent batch), plus alarms that open nothing.
    records = [tamper_record, tamper_record, sag_record, clock_record, ancient_record, tamper_record]
    await produce(kafka_bootstrap, topics["meter_events_topic"], records)
    alarm_group = f"{settings.consumer_group_prefix}.meter-events"

    async def all_committed() -> bool:
        return await committed(kafka_bootstrap, alarm_group) == len(records)

    await wait_for(all_committed, 30, "every alarm to be handled and committed")

    rows = await db.fetch("SELECT work_order_id, alarm_id::text AS alarm_id FROM work_orders ORDER BY seq")
    assert sorted(row["alarm_id"] for row in rows) == sorted([tamper.alarm_id, clock.alarm_id])
    response = await running.client.get(f"/v1/work-orders/{rows[0]['work_order_id']}", headers=auth(Role.READER))
    order = response.json()
    assert (order["type"], order["origin"], order["meterpoint_id"]) == ("inspect_meter", "alarm", meterpoint)
    assert order["customer"]["status"] == "pending", "the customers service has not confirmed it"
    assert (order["customer"]["source"], order["customer"]["name"]) == ("replica", "Mette Hansen")

    async def published() -> bool:
        return len(await read_topic(kafka_bootstrap, topics["events_topic"], 2)) >= 2

    await wait_for(published, 15, "the outbox relay to publish the WorkOrderCreated events")
    events = [decode(r.value) for r in await read_topic(kafka_bootstrap, topics["events_topic"], 2)]
    assert sorted(e.subject for e in events) == sorted(row["work_order_id"] for row in rows)
    assert {e.type for e in events} == {"gridhub.workorder.created"}
    assert await read_topic(kafka_bootstrap, topics["meter_events_topic"] + ".dlq", 2) == []


async def test_a_poison_record_goes_to_the_dlq_and_the_partition_moves_on(
    kafka_bootstrap: str,
    topics: dict[str, str],
    settings_for: Callable[..., WorkordersSettings],
    start_app: Callable[..., Awaitable[Running]],
    db: asyncpg.Connection[Any],
) -> None:
    settings = settings_for(consumers_enabled=True, **topics)
    meterpoint = new_meterpoint()
    tamper, tamper_record = alarm_record(meterpoint, MeterAlarm.LONG_OUTAGE, datetime.now(UTC))
    key = meterpoint.encode()
    poison: list[Record] = [
        (key, b"{not json", [("content-type", b"application/cloudevents+json")]),
        (key, tamper_record[1].replace(b'"long_outage"', b'"meltdown"'), tamper_record[2]),
    ]
    await produce(kafka_bootstrap, topics["meter_events_topic"], [*poison, tamper_record])
    await start_app(settings, customers=FakeDirectory(available=False))

    async def dead_lettered() -> bool:
        return len(await read_topic(kafka_bootstrap, topics["meter_events_topic"] + ".dlq", 2)) == 2

    await wait_for(dead_lettered, 30, "both poison records in the DLQ")
    dead = await read_topic(kafka_bootstrap, topics["meter_events_topic"] + ".dlq", 2)
    assert sorted(r.value for r in dead) == sorted(value for _, value, _ in poison), "original bytes kept"
    reasons = sorted(dict(r.headers)["dlq.reason"].split(b":")[0] for r in dead)
    assert reasons == [b"invalid_json", b"schema_violation"]
    assert all(dict(r.headers)["dlq.attempts"] == b"1" for r in dead), "never retried"

    async def inspection_opened() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM work_orders WHERE alarm_id = $1", tamper.alarm_id))

    await wait_for(inspection_opened, 15, "the valid alarm behind the poison records to open its inspection")
