"""The query API over real views: ETags and 304, bounded consumption ranges, freshness on every answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from services.readside.app import create_app
from tests.integration.readside.support import (
    TIMEZONE,
    ReadingStream,
    Topics,
    applied_through,
    end_offsets,
    entity_events,
    meterpoint,
    produce,
    reading_stream,
    records_of,
    settings_for,
    wait_for,
)
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
METERPOINTS = [meterpoint(n) for n in range(4)]


@pytest.fixture
async def api(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection
) -> AsyncIterator[tuple[httpx.AsyncClient, ReadingStream]]:
    stream = reading_stream(seed=41, meterpoints=4, start=NOW - timedelta(days=3), hours=60)
    await produce(kafka_bootstrap, records_of([*stream.events, *entity_events(41, METERPOINTS, now=NOW)], topics))
    settings = settings_for(pg_dsn, kafka_bootstrap, control_schema, topics, require_api_key=True)
    key = generate_api_key("web", Role.READER, tenant=TENANT_A)
    app = create_app(settings, registry=CollectorRegistry(), key_store=InMemoryKeyStore([key.record]))
    async with app.router.lifespan_context(app):
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "the events applied")
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key.plain_key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://readside", headers=headers) as client:
            yield client, stream


async def test_meterpoint_overview_with_etag_and_freshness(
    api: tuple[httpx.AsyncClient, ReadingStream], kafka_bootstrap: str, topics: Topics, control_schema: str, pg
) -> None:
    client, stream = api
    assert (await client.get(f"/v1/meterpoints/{METERPOINTS[2]}", headers={"Authorization": ""})).status_code == 401

    # Meterpoint 2 (see entity_events): a scheduled job, an outage never restored, a tamper alarm.
    response = await client.get(f"/v1/meterpoints/{METERPOINTS[2]}")
    assert response.status_code == 200
    body = response.json()
    assert body["customer"]["customer_id"] == "C-41-2"
    assert body["customer"]["name"] == "Customer 2 (moved)"
    assert [r["register"] for r in body["latest_readings"]] == ["active_export", "active_import"]
    latest = max(e.data.interval_end for e in stream.events if e.data.meterpoint_id == METERPOINTS[2])
    assert {datetime.fromisoformat(r["interval_end"]) for r in body["latest_readings"]} == {latest}
    assert [(w["work_order_id"], w["status"]) for w in body["open_work_orders"]] == [("WO-41-2", "scheduled")]
    # The crew's contact: the customer at the meterpoint when the order was opened, with the latest name.
    assert body["open_work_orders"][0]["customer_id"] == "C-41-2"
    assert body["open_work_orders"][0]["customer_name"] == "Customer 2 (moved)"
    assert [a["alarm"] for a in body["active_alarms"]] == ["tamper", "power_failure"]
    assert body["last_seen"] is not None
    freshness = body["freshness"]
    assert freshness["view_version"] == 1
    assert freshness["lag"] == 0
    assert {p["topic"] for p in freshness["partitions"]} == set(topics.all)
    assert response.headers["Readside-Lag"] == "0"
    assert response.headers["Readside-View-Version"] == "1"
    assert "Readside-Applied-At" in response.headers
    etag = response.headers["ETag"]
    assert etag.startswith('W/"')

    not_modified = await client.get(f"/v1/meterpoints/{METERPOINTS[2]}", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["ETag"] == etag
    assert not_modified.headers["Readside-Lag"] == "0"

    # Meterpoint 1: its outage was restored and its job cancelled; meterpoint 0's job completed weeks ago.
    one = (await client.get(f"/v1/meterpoints/{METERPOINTS[1]}")).json()
    assert one["open_work_orders"] == []
    assert [a["alarm"] for a in one["active_alarms"]] == ["tamper"]
    zero = (await client.get(f"/v1/meterpoints/{METERPOINTS[0]}")).json()
    assert zero["open_work_orders"] == []
    assert [a["alarm"] for a in zero["active_alarms"]] == ["tamper", "power_failure"]

    # New data for the meterpoint changes its ETag.
    newer = reading_stream(seed=42, meterpoints=1, first_meterpoint=2, start=NOW, hours=1)
    await produce(kafka_bootstrap, records_of(newer.events, topics))
    ends = await end_offsets(kafka_bootstrap, topics.all)
    await wait_for(lambda: applied_through(pg, control_schema, ends), 30, "the new readings applied")
    changed = await client.get(f"/v1/meterpoints/{METERPOINTS[2]}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag

    unknown = await client.get(f"/v1/meterpoints/{meterpoint(999)}")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.headers["Readside-Lag"] == "0"
    assert unknown.json()["freshness"]["view_version"] == 1
    assert (await client.get("/v1/meterpoints/571313180400000000")).status_code == 422


async def test_consumption_ranges_are_bounded_and_exact(
    api: tuple[httpx.AsyncClient, ReadingStream], topics: Topics
) -> None:
    client, stream = api
    gsrn = METERPOINTS[2]
    start = (NOW - timedelta(days=3)).isoformat()
    end = NOW.isoformat()
    hourly = await client.get(f"/v1/meterpoints/{gsrn}/consumption", params={"from": start, "to": end})
    assert hourly.status_code == 200
    body = hourly.json()
    expected = {
        hour: energy
        for (mp, register, hour), energy in stream.hourly.items()
        if mp == gsrn and register == "active_import" and NOW - timedelta(days=3) <= hour < NOW
    }
    assert {datetime.fromisoformat(p["start"]): Decimal(p["energy"]) for p in body["points"]} == expected
    assert Decimal(body["total"]) == sum(expected.values())
    assert body["unit"] == "kWh"
    assert body["from"] == start.replace("+00:00", "Z")
    assert body["freshness"]["lag"] == 0
    assert {p["topic"] for p in body["freshness"]["partitions"]} == {topics.readings, topics.meterpoints, topics.series}

    today = NOW.astimezone(ZoneInfo(TIMEZONE)).date()
    daily = await client.get(
        f"/v1/meterpoints/{gsrn}/consumption",
        params={"from": str(today - timedelta(days=5)), "to": str(today + timedelta(days=1)), "resolution": "day"},
    )
    assert daily.status_code == 200
    expected_days = {
        day: energy
        for (mp, register, day), energy in stream.daily.items()
        if mp == gsrn and register == "active_import"
    }
    assert {p["start"]: Decimal(p["energy"]) for p in daily.json()["points"]} == {
        str(day): energy for day, energy in expected_days.items() if day >= today - timedelta(days=5)
    }

    too_long = await client.get(
        f"/v1/meterpoints/{gsrn}/consumption",
        params={"from": (NOW - timedelta(days=32)).isoformat(), "to": end},
    )
    assert too_long.status_code == 400
    assert too_long.headers["content-type"] == "application/problem+json"
    assert "at most 31 days" in too_long.json()["detail"]
    backwards = await client.get(f"/v1/meterpoints/{gsrn}/consumption", params={"from": end, "to": start})
    assert backwards.status_code == 400
    instants_for_days = await client.get(
        f"/v1/meterpoints/{gsrn}/consumption", params={"from": start, "to": end, "resolution": "day"}
    )
    assert instants_for_days.status_code == 400
    years = await client.get(
        f"/v1/meterpoints/{gsrn}/consumption",
        params={"from": "2020-01-01", "to": "2025-01-01", "resolution": "day"},
    )
    assert years.status_code == 400


async def test_customer_overview_and_work_order_pages(
    api: tuple[httpx.AsyncClient, ReadingStream], topics: Topics
) -> None:
    client, stream = api
    overview = await client.get("/v1/customers/C-41-2/overview")
    assert overview.status_code == 200
    body = overview.json()
    assert body["name"] == "Customer 2 (moved)"
    assert body["version"] == 2
    first, last = datetime.fromisoformat(body["period_from"]).date(), datetime.fromisoformat(body["period_to"]).date()
    assert (last - first).days == 29
    expected = sum(
        (
            energy
            for (mp, register, day), energy in stream.daily.items()
            if mp == METERPOINTS[2] and register == "active_import" and first <= day <= last
        ),
        Decimal(0),
    )
    assert Decimal(body["consumption"]) == expected > 0
    assert [m["meterpoint_id"] for m in body["meterpoints"]] == [METERPOINTS[2]]
    assert {p["topic"] for p in body["freshness"]["partitions"]} == {topics.readings, topics.customers}
    assert (await client.get("/v1/customers/C-nobody/overview")).status_code == 404

    everything = (await client.get("/v1/workorders", params={"limit": 1000})).json()["items"]
    assert len(everything) == 4
    pages: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/workorders", params=params)).json()
        pages += [w["work_order_id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == sorted(w["work_order_id"] for w in everything)
    completed = (await client.get("/v1/workorders", params={"status": "completed"})).json()["items"]
    assert {w["work_order_id"] for w in completed} == {"WO-41-0", "WO-41-3"}
    assert all(w["status"] == "completed" for w in completed)
    # The resent "created" after "scheduled" did not move any work order back.
    assert (await client.get("/v1/workorders", params={"status": "created"})).json()["items"] == []
    assert (await client.get("/v1/workorders", params={"cursor": "%%%"})).status_code == 400


async def test_readiness_reports_lag_per_partition_and_metrics(api: tuple[httpx.AsyncClient, ReadingStream]) -> None:
    client, _ = api
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    # Kafka down degrades the read side but keeps it serving its views (marked stale); the database does not.
    assert {c["name"]: c.get("critical", True) for c in ready.json()["checks"]} == {
        "postgres": True,
        "kafka": False,
        "consumer": True,
    }
    consumer = ready.json()["consumer"]
    assert consumer["paused"] is False
    assert consumer["view_version"] == 1
    assert len(consumer["partitions"]) == 36  # six topics of six partitions
    assert all(
        {"topic", "partition", "lag", "applied_offset", "high_watermark"} <= set(p) for p in consumer["partitions"]
    )
    metrics = await client.get("/metrics")
    assert "readside_consumer_lag{" in metrics.text
