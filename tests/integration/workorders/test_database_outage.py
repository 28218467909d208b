"""A database outage: the API answers 503 at once (never 500), the consumer pauses and skips nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from libs.events import MeterAlarm, MeterAlarmRaised, make_event, to_record
from libs.platform.apikeys import Role
from services.workorders.settings import WorkordersSettings
from tests.integration.workorders.conftest import Running, auth
from tests.integration.workorders.support import (
    FakeDirectory,
    TcpProxy,
    new_meterpoint,
    produce,
    read_topic,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[TcpProxy]:
    target = urlsplit(pg_dsn)
    assert target.hostname is not None
    assert target.port is not None
    running = await TcpProxy(target.hostname, target.port).start()
    yield running
    await running.close()


def through(dsn: str, proxy: TcpProxy) -> str:
    parts = urlsplit(dsn)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))


def paused_count(running: Running) -> float:
    value = running.parts.registry.get_sample_value(
        "gridhub_flow_rejected_total", {"boundary": "workorders_meter_events_consumer", "reason": "paused"}
    )
    return value or 0.0


async def test_a_database_outage_gives_503_and_pauses_the_consumer_without_skipping(
    pg_dsn: str,
    kafka_bootstrap: str,
    proxy: TcpProxy,
    new_topic: Callable[..., Awaitable[str]],
    settings_for: Callable[..., WorkordersSettings],
    start_app: Callable[..., Awaitable[Running]],
    db: asyncpg.Connection[Any],
) -> None:
    meter_events = await new_topic("wo.outage", partitions=1, with_dlq=True)
    settings = settings_for(
        postgres_dsn=through(pg_dsn, proxy),
        consumers_enabled=True,
        meter_events_topic=meter_events,
        meterpoints_topic=await new_topic("wo.outage-meterpoints", partitions=1),
        postgres_acquire_timeout=1.0,
        postgres_command_timeout=2.0,
    )
    running = await start_app(settings, customers=FakeDirectory())
    headers = auth() | {"Idempotency-Key": "before-the-outage"}
    meterpoint = await running.register(new_meterpoint())
    created = await running.client.post(
        "/v1/work-orders", json={"meterpoint_id": meterpoint, "type": "reconnect"}, headers=headers
    )
    assert created.status_code == 201
    url = created.headers["Location"]

    proxy.cut()
    for _ in range(4):
        response = await running.client.get(url, headers=auth(Role.READER))
        assert response.status_code == 503, response.text
        assert response.json()["reason"] in {"database_unavailable", "breaker_open"}
        assert int(response.headers["Retry-After"]) >= 1

    alarm = MeterAlarmRaised.create(
        meterpoint_id=new_meterpoint(), alarm=MeterAlarm.TAMPER, raised_at=datetime.now(UTC), source="hes-north"
    )
    record = to_record(make_event(alarm, source="/gridhub/collection"))
    await produce(kafka_bootstrap, meter_events, [(record.key, record.value, record.headers)])

    async def consumer_paused() -> bool:
        return paused_count(running) >= 2

    await wait_for(consumer_paused, 20, "the consumer to pause on the refused database (twice)")
    group = f"{settings.consumer_group_prefix}.meter-events"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        assert all(meta.offset <= 0 for meta in offsets.values()), "nothing committed during the outage"
        assert await read_topic(kafka_bootstrap, f"{meter_events}.dlq", 1) == [], "nothing dead-lettered"

        proxy.restore()

        async def inspection_opened() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM work_orders WHERE alarm_id = $1", alarm.alarm_id))

        await wait_for(inspection_opened, 20, "the paused record to be redelivered once the database is back")

        async def committed() -> bool:
            offsets = await admin.list_consumer_group_offsets(group)
            return sum(meta.offset for meta in offsets.values() if meta.offset >= 0) == 1

        await wait_for(committed, 20, "the record to be committed")
    finally:
        await admin.close()
    assert await db.fetchval("SELECT count(*) FROM work_orders WHERE alarm_id = $1", alarm.alarm_id) == 1

    async def api_back() -> bool:
        return (await running.client.get(url, headers=auth(Role.READER))).status_code == 200

    await wait_for(api_back, 20, "the API to answer again after the breaker's wait")
