"""Tenant-scoped views over real Kafka, PostgreSQL and HTTP: two grid companies, A and B, and the platform.

A's reader gets exactly the 404 of an unknown id for B's meterpoint, consumption and customer, and for a
meterpoint whose master data has not arrived; the work order list holds only the caller's rows; the platform sees
both. Ownership follows the newest master data version, whatever order the records come in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.events import make_event
from libs.platform.apikeys import InMemoryKeyStore, NewApiKey, Role, generate_api_key
from services.readside.app import create_app
from tests.integration.readside.support import (
    Topics,
    applied_through,
    end_offsets,
    entity_events,
    master_data,
    meterpoint,
    produce,
    reading_stream,
    records_of,
    settings_for,
    wait_for,
)
from tests.tenants import TENANT_A, TENANT_B

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
A_METERPOINTS = [meterpoint(n) for n in range(100, 103)]
B_METERPOINTS = [meterpoint(n) for n in range(200, 203)]
# Readings arrive for it, but no master data: nobody owns it yet.
UNOWNED = meterpoint(300)
NEVER_NAMED = meterpoint(999)
# Headers that differ between any two requests (the quota left counts down), not between a hidden and an unknown id.
_PER_REQUEST = {"x-correlation-id", "date", "content-length", "ratelimit"}


@dataclass
class Tenancy:
    clients: dict[str, httpx.AsyncClient]
    pg: asyncpg.Connection
    schema: str
    topics: Topics
    bootstrap: str

    async def applied(self) -> None:
        ends = await end_offsets(self.bootstrap, self.topics.all)
        await wait_for(lambda: applied_through(self.pg, self.schema, ends), 60, "the events applied")


@pytest.fixture
async def tenancy(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection
) -> AsyncIterator[Tenancy]:
    readings = reading_stream(seed=7, meterpoints=3, first_meterpoint=100, start=NOW - timedelta(days=2), hours=24)
    b_readings = reading_stream(seed=8, meterpoints=3, first_meterpoint=200, start=NOW - timedelta(days=2), hours=24)
    unowned = reading_stream(seed=9, meterpoints=1, first_meterpoint=300, start=NOW - timedelta(days=2), hours=4)
    events = [
        *readings.events,
        *b_readings.events,
        *unowned.events,
        *entity_events(51, A_METERPOINTS, now=NOW, grid_company=TENANT_A),
        *entity_events(52, B_METERPOINTS, now=NOW, grid_company=TENANT_B),
    ]
    await produce(kafka_bootstrap, records_of(events, topics))
    keys: dict[str, NewApiKey] = {
        "a": generate_api_key("web", Role.READER, tenant=TENANT_A),
        # The same client name in another grid company: scoping is by tenant, not by name.
        "b": generate_api_key("web", Role.READER, tenant=TENANT_B),
        "platform": generate_api_key("hub-ops", Role.PLATFORM),
    }
    settings = settings_for(pg_dsn, kafka_bootstrap, control_schema, topics, require_api_key=True)
    store = InMemoryKeyStore([key.record for key in keys.values()])
    app = create_app(settings, registry=CollectorRegistry(), key_store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        clients = {
            name: httpx.AsyncClient(
                transport=transport, base_url="http://readside", headers={"Authorization": f"Bearer {key.plain_key}"}
            )
            for name, key in keys.items()
        }
        tenancy = Tenancy(clients, pg, control_schema, topics, kafka_bootstrap)
        await tenancy.applied()
        try:
            yield tenancy
        finally:
            for client in clients.values():
                await client.aclose()


def _same_answer(hidden: httpx.Response, unknown: httpx.Response) -> None:
    """A hidden id is answered exactly like an unknown one: status, body and headers."""
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    # Everything but the correlation id, which names the request, not the resource.
    assert {**hidden.json(), "correlation_id": None} == {**unknown.json(), "correlation_id": None}
    strip = {k: v for k, v in hidden.headers.items() if k not in _PER_REQUEST}
    assert strip == {k: v for k, v in unknown.headers.items() if k not in _PER_REQUEST}


async def test_a_reader_sees_its_own_meterpoints_and_not_another_grid_companys(tenancy: Tenancy) -> None:
    a, b, platform = tenancy.clients["a"], tenancy.clients["b"], tenancy.clients["platform"]
    own = await a.get(f"/v1/meterpoints/{A_METERPOINTS[2]}")
    assert own.status_code == 200, own.text
    assert (own.json()["grid_company"], own.json()["grid_area"]) == (TENANT_A, "804")
    assert own.json()["customer"]["customer_id"] == "C-51-2"

    unknown = await a.get(f"/v1/meterpoints/{NEVER_NAMED}")
    _same_answer(await a.get(f"/v1/meterpoints/{B_METERPOINTS[2]}"), unknown)
    # Readings for it, but its master data has not arrived: nobody's yet, so only the platform sees it.
    _same_answer(await a.get(f"/v1/meterpoints/{UNOWNED}"), unknown)
    assert (await b.get(f"/v1/meterpoints/{B_METERPOINTS[2]}")).json()["grid_company"] == TENANT_B
    _same_answer(await b.get(f"/v1/meterpoints/{A_METERPOINTS[2]}"), await b.get(f"/v1/meterpoints/{NEVER_NAMED}"))

    seen_by_platform = [await platform.get(f"/v1/meterpoints/{m}") for m in (A_METERPOINTS[0], B_METERPOINTS[0])]
    assert [r.json()["grid_company"] for r in seen_by_platform] == [TENANT_A, TENANT_B]
    unowned = await platform.get(f"/v1/meterpoints/{UNOWNED}")
    assert (unowned.status_code, unowned.json()["grid_company"]) == (200, None)
    assert (await platform.get(f"/v1/meterpoints/{NEVER_NAMED}")).status_code == 404

    window = {"from": (NOW - timedelta(days=2)).isoformat(), "to": NOW.isoformat()}
    consumption = await a.get(f"/v1/meterpoints/{A_METERPOINTS[0]}/consumption", params=window)
    assert consumption.status_code == 200
    assert consumption.json()["points"]
    hidden = await a.get(f"/v1/meterpoints/{B_METERPOINTS[0]}/consumption", params=window)
    _same_answer(hidden, await a.get(f"/v1/meterpoints/{NEVER_NAMED}/consumption", params=window))
    assert (await platform.get(f"/v1/meterpoints/{B_METERPOINTS[0]}/consumption", params=window)).json()["points"]


async def test_a_reader_gets_404_for_another_grid_companys_customer(tenancy: Tenancy) -> None:
    a, platform = tenancy.clients["a"], tenancy.clients["platform"]
    own = await a.get("/v1/customers/C-51-1/overview")
    assert (own.status_code, own.json()["grid_company"]) == (200, TENANT_A)
    _same_answer(await a.get("/v1/customers/C-52-1/overview"), await a.get("/v1/customers/C-404-1/overview"))
    assert (await platform.get("/v1/customers/C-52-1/overview")).json()["grid_company"] == TENANT_B


async def _all_work_orders(client: httpx.AsyncClient, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": 2, **params, **({"cursor": cursor} if cursor else {})}
        page = await client.get("/v1/workorders", params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        ids += [item["work_order_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


async def test_the_work_order_list_holds_the_callers_rows_only(tenancy: Tenancy) -> None:
    a, b, platform = tenancy.clients["a"], tenancy.clients["b"], tenancy.clients["platform"]
    # entity_events opens one order per meterpoint: WO-<seed>-<index>.
    a_orders = [f"WO-51-{i}" for i in range(3)]
    b_orders = [f"WO-52-{i}" for i in range(3)]
    assert await _all_work_orders(a) == a_orders, "pages of two, A's rows only"
    assert await _all_work_orders(b) == b_orders
    assert await _all_work_orders(platform) == sorted(a_orders + b_orders)
    # Index 2 of each seed is still scheduled (see entity_events).
    assert await _all_work_orders(a, status="scheduled") == ["WO-51-2"]
    listing = (await a.get("/v1/workorders")).json()
    assert {p["topic"] for p in listing["freshness"]["partitions"]} == {
        tenancy.topics.workorders,
        tenancy.topics.meterpoints,
    }


async def test_ownership_follows_the_newest_master_data_version_and_carries_the_work_orders(
    tenancy: Tenancy,
) -> None:
    a, b = tenancy.clients["a"], tenancy.clients["b"]
    moved = A_METERPOINTS[1]
    # Version 2 gives the meterpoint to B; a late resend of version 1 (an outbox retry) must not take it back.
    events = [
        make_event(master_data(moved, TENANT_B, version=2, grid_area="805"), source="/gridhub/customers"),
        make_event(master_data(moved, TENANT_A, version=1), source="/gridhub/customers"),
    ]
    await produce(tenancy.bootstrap, records_of(events, tenancy.topics))
    await tenancy.applied()

    _same_answer(await a.get(f"/v1/meterpoints/{moved}"), await a.get(f"/v1/meterpoints/{NEVER_NAMED}"))
    now_b = await b.get(f"/v1/meterpoints/{moved}")
    assert (now_b.status_code, now_b.json()["grid_company"], now_b.json()["grid_area"]) == (200, TENANT_B, "805")
    assert await _all_work_orders(a) == ["WO-51-0", "WO-51-2"]
    assert await _all_work_orders(b) == ["WO-51-1", "WO-52-0", "WO-52-1", "WO-52-2"]

    # A work order arriving after its meterpoint's master data takes the owner at once.
    late = entity_events(53, [B_METERPOINTS[0]], now=NOW, grid_company=TENANT_B)
    orders = [e for e in late if e.type.startswith("gridhub.workorder.")]
    await produce(tenancy.bootstrap, records_of(orders, tenancy.topics))
    await tenancy.applied()
    assert "WO-53-0" in await _all_work_orders(b)
    assert "WO-53-0" not in await _all_work_orders(a)
    rows = await tenancy.pg.fetch(
        f'SELECT grid_company, count(*) AS n FROM "{tenancy.schema}_v1".work_orders GROUP BY 1 ORDER BY 1'
    )
    assert [(r["grid_company"], r["n"]) for r in rows] == [(TENANT_A, 2), (TENANT_B, 5)]
