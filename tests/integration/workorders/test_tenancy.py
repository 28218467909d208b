"""Work orders of two grid companies, A and B, over real Kafka, PostgreSQL and HTTP.

Owners come from meterpoints.v1 through the service's own consumer; alarms open orders through meter.events.v1.
A's reader gets exactly the 404 of an unknown id for B's order, A's operator cannot transition it (404), lists
hold the caller's orders only, the platform sees both, and an alarm order for a meterpoint nobody registered
belongs to no tenant until its master data arrives.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from libs.events import MeterAlarm, MeterAlarmRaised, make_event, to_record
from libs.platform.apikeys import NewApiKey, Role
from services.workorders.settings import WorkordersSettings
from tests.integration.workorders.conftest import B_KEYS, KEYS, PLATFORM, Running
from tests.integration.workorders.support import FakeDirectory, master_data_record, new_meterpoint, produce, wait_for
from tests.tenants import TENANT_A, TENANT_B

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

BASE = "/v1/work-orders"
# Headers that differ between any two requests (the quota left counts down), not between a hidden and an unknown id.
_PER_REQUEST = {"x-correlation-id", "date", "content-length", "ratelimit"}


def as_(key: NewApiKey, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.plain_key}", **extra}


A_OPERATOR, A_READER = KEYS[Role.OPERATOR], KEYS[Role.READER]
B_OPERATOR, B_READER = B_KEYS[Role.OPERATOR], B_KEYS[Role.READER]


def _without_request(response: httpx.Response, work_order_id: str, placeholder: str) -> tuple[Any, dict[str, str]]:
    body = {**response.json(), "correlation_id": None}
    body["detail"] = body["detail"].replace(work_order_id, placeholder)
    headers = {k: v for k, v in response.headers.items() if k not in _PER_REQUEST}
    return body, headers


def assert_same_answer(hidden: httpx.Response, hidden_id: str, unknown: httpx.Response, unknown_id: str) -> None:
    """A hidden order is answered like an unknown one: status, headers, body (but for the id the caller sent)."""
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    assert _without_request(hidden, hidden_id, "<id>") == _without_request(unknown, unknown_id, "<id>")


async def create(running: Running, key: NewApiKey, meterpoint_id: str, idempotency_key: str) -> httpx.Response:
    body = {"meterpoint_id": meterpoint_id, "type": "replace_meter"}
    return await running.client.post(BASE, json=body, headers=as_(key, **{"Idempotency-Key": idempotency_key}))


async def ids(running: Running, key: NewApiKey, **params: Any) -> list[str]:
    found: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": 2, **params, **({"cursor": cursor} if cursor else {})}
        page = await running.client.get(BASE, params=query, headers=as_(key))
        assert page.status_code == 200, page.text
        found += [item["work_order_id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


async def test_each_grid_company_sees_and_changes_only_its_own_orders(
    kafka_bootstrap: str,
    new_topic: Callable[..., Awaitable[str]],
    settings_for: Callable[..., WorkordersSettings],
    start_app: Callable[..., Awaitable[Running]],
    db: asyncpg.Connection[Any],
) -> None:
    topics = {
        "meter_events_topic": await new_topic("wo.tenancy-alarms", partitions=2, with_dlq=True),
        "customers_topic": await new_topic("wo.tenancy-customers", partitions=1, with_dlq=True),
        "events_topic": await new_topic("wo.tenancy-orders", partitions=1),
        "meterpoints_topic": await new_topic("wo.tenancy-meterpoints", partitions=2, with_dlq=True),
    }
    a_point, b_point, unregistered = new_meterpoint(), new_meterpoint(), new_meterpoint()
    await produce(
        kafka_bootstrap,
        topics["meterpoints_topic"],
        [master_data_record(a_point, TENANT_A), master_data_record(b_point, TENANT_B)],
    )
    running = await start_app(settings_for(consumers_enabled=True, **topics), customers=FakeDirectory())

    async def owners_known() -> bool:
        return await db.fetchval("SELECT count(*) FROM meterpoint_owners") == 2

    await wait_for(owners_known, 30, "the meterpoints consumer to store both owners")

    # Creating: only at a meterpoint of one's own grid company; B's and an unknown one are refused alike.
    mine = await create(running, A_OPERATOR, a_point, "order-1")
    assert (mine.status_code, mine.json()["grid_company"]) == (201, TENANT_A), mine.text
    at_b = await create(running, A_OPERATOR, b_point, str(uuid.uuid4()))
    at_unknown = await create(running, A_OPERATOR, unregistered, str(uuid.uuid4()))
    assert (at_b.status_code, at_b.json()["reason"]) == (422, "invalid_command")
    assert at_b.json()["errors"] == at_unknown.json()["errors"]
    assert at_b.json()["errors"][0]["loc"] == ["body", "meterpoint_id"]
    # B's operator has the same client name and Idempotency-Key as A's: its own order, not a replay of A's.
    theirs = await create(running, B_OPERATOR, b_point, "order-1")
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert theirs.json()["work_order_id"] != mine.json()["work_order_id"]
    assert theirs.json()["grid_company"] == TENANT_B
    b_order = theirs.json()["work_order_id"]

    # Reading: B's order is A's unknown id.
    assert (await running.client.get(f"{BASE}/{b_order}", headers=as_(B_READER))).status_code == 200
    hidden = await running.client.get(f"{BASE}/{b_order}", headers=as_(A_READER))
    unknown = await running.client.get(f"{BASE}/WO-99999999", headers=as_(A_READER))
    assert_same_answer(hidden, b_order, unknown, "WO-99999999")

    # Changing: A's operator cannot cancel B's order (404, as for an unknown id), and it stays as it was.
    cancel = {"reason": "not ours"}
    refused = await running.client.post(
        f"{BASE}/{b_order}/cancel", json=cancel, headers=as_(A_OPERATOR, **{"If-Match": "*"})
    )
    unknown_cancel = await running.client.post(
        f"{BASE}/WO-99999999/cancel", json=cancel, headers=as_(A_OPERATOR, **{"If-Match": "*"})
    )
    assert_same_answer(refused, b_order, unknown_cancel, "WO-99999999")
    assert await db.fetchval("SELECT (status, version)::text FROM work_orders WHERE work_order_id = $1", b_order) == (
        "(created,1)"
    )

    # Alarms: one at A's meterpoint is A's order; one at a meterpoint nobody registered belongs to nobody yet.
    now = datetime.now(UTC).replace(microsecond=0)
    alarms = [
        MeterAlarmRaised.create(meterpoint_id=point, alarm=MeterAlarm.TAMPER, raised_at=now, source="hes-north")
        for point in (a_point, unregistered)
    ]
    records = [to_record(make_event(alarm, source="/gridhub/collection")) for alarm in alarms]
    await produce(kafka_bootstrap, topics["meter_events_topic"], [(r.key, r.value, r.headers) for r in records])

    async def alarm_orders() -> bool:
        return await db.fetchval("SELECT count(*) FROM work_orders WHERE origin = 'alarm'") == 2

    await wait_for(alarm_orders, 30, "both alarms to open their inspections")
    orphan = await db.fetchval("SELECT work_order_id FROM work_orders WHERE meterpoint_id = $1", unregistered)
    a_alarm = await db.fetchval(
        "SELECT work_order_id FROM work_orders WHERE meterpoint_id = $1 AND origin = 'alarm'", a_point
    )

    a_orders = sorted([mine.json()["work_order_id"], a_alarm], reverse=True)
    assert await ids(running, A_READER) == a_orders, "newest first, A's only"
    assert await ids(running, B_READER) == [b_order]
    assert await ids(running, PLATFORM) == sorted([*a_orders, b_order, orphan], reverse=True)
    assert await ids(running, A_READER, type="inspect_meter") == [a_alarm]
    assert (await running.client.get(f"{BASE}/{orphan}", headers=as_(A_READER))).status_code == 404
    seen = await running.client.get(f"{BASE}/{orphan}", headers=as_(PLATFORM))
    assert (seen.status_code, seen.json()["grid_company"]) == (200, None)

    # Its master data arrives: the order becomes A's (a new version: its representation changed).
    await produce(kafka_bootstrap, topics["meterpoints_topic"], [master_data_record(unregistered, TENANT_A)])

    async def adopted() -> bool:
        response = await running.client.get(f"{BASE}/{orphan}", headers=as_(A_READER))
        return response.status_code == 200

    await wait_for(adopted, 30, "the orphaned order to become A's once its meterpoint is registered")
    adopted_order = (await running.client.get(f"{BASE}/{orphan}", headers=as_(A_READER))).json()
    assert (adopted_order["grid_company"], adopted_order["version"]) == (TENANT_A, 2)
    assert orphan in await ids(running, A_READER)

    # An older version arriving late changes nothing; a newer one hands the meterpoint (and its orders) to B.
    await produce(
        kafka_bootstrap,
        topics["meterpoints_topic"],
        [master_data_record(a_point, TENANT_B, version=2), master_data_record(a_point, TENANT_A, version=1)],
    )

    async def moved() -> bool:
        return await db.fetchval("SELECT version FROM meterpoint_owners WHERE meterpoint_id = $1", a_point) == 2

    await wait_for(moved, 30, "version 2 of the master data")

    async def all_consumed() -> bool:
        return await committed(running, "meterpoints") == 5

    await wait_for(all_consumed, 30, "the late version 1 to be consumed (and ignored)")
    assert await db.fetchval("SELECT grid_company FROM meterpoint_owners WHERE meterpoint_id = $1", a_point) == (
        TENANT_B
    )
    assert sorted(await ids(running, B_READER)) == sorted([*a_orders, b_order])
    assert await ids(running, A_READER) == [orphan]
    assert await db.fetchval("SELECT count(*) FROM work_orders WHERE grid_company IS NULL") == 0


async def committed(running: Running, consumer: str) -> int:
    """Records the service's ``consumer`` group has committed (it commits after each record's transaction)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=running.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{running.settings.consumer_group_prefix}.{consumer}")
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)
