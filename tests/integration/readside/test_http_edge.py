"""The read side's REST edge over real sockets (uvicorn as ``serve`` runs it), against the attacks of issue 14.

12: fifty connections of one key send a query with a body and trickle it a byte per second. The queries take no
body, so each is answered at once or refused by the per-client cap (429), and the server closes the connection at
the drain timeout instead of reading the trickle on; another key's queries are answered all along. API keys come from
PostgreSQL through a short-lived cache: a revoked key stops working within the cache's TTL, and a key is looked
up once per TTL, not per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, PerClientSettings, QuotaSettings
from libs.platform.apikeys import ApiKeyRecord, KeyStore, Role, generate_api_key
from libs.platform.apikeys_store import PostgresKeyStore
from services.readside.app import create_app
from services.readside.settings import Boundaries
from tests.integration.http_support import SlowClient, free_port, served
from tests.integration.readside.support import Topics, settings_for
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CACHE_TTL = 1.0
# A body still trickling this long after its answer is cut off (uvicorn alone would wait for it forever).
DRAIN_TIMEOUT = 2.0


class CountingKeyStore:
    """The real PostgreSQL store, counting the lookups that reach it."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.lookups = 0

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        self.lookups += 1
        return await self.store.get(key_id)

    async def add(self, record: ApiKeyRecord) -> None:
        await self.store.add(record)

    async def revoke(self, key_id: str, *, at: Any = None) -> bool:
        return await self.store.revoke(key_id, at=at)


class LateStore:
    """A KeyStore whose backing store is set once the app's pool exists (inside its lifespan)."""

    def __init__(self) -> None:
        self.inner: CountingKeyStore | None = None

    def _store(self) -> CountingKeyStore:
        assert self.inner is not None, "the store is set once the pool is open"
        return self.inner

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return await self._store().get(key_id)

    async def add(self, record: ApiKeyRecord) -> None:
        await self._store().add(record)

    async def revoke(self, key_id: str, *, at: Any = None) -> bool:
        return await self._store().revoke(key_id, at=at)


@dataclass
class Edge:
    base_url: str
    port: int
    attacker: str
    partner: str
    partner_key_id: str
    admin: PostgresKeyStore
    counting: CountingKeyStore


@pytest.fixture
async def edge(pg_dsn: str, kafka_bootstrap: str, control_schema: str) -> AsyncIterator[Edge]:
    roles = ("readings", "events", "customers", "workorders", "meterpoints")
    unused = Topics(*(f"readside-edge-unused-{role}" for role in roles))
    rest = BoundaryPolicy(
        quota=QuotaSettings(rate=1000, burst=1000),
        per_client=PerClientSettings(max_per_client=4, retry_after=2.0),
        bulkhead=BulkheadSettings(max_concurrent=8, max_wait=0.5, max_waiting=64, retry_after=1.0),
        max_body_bytes=16 * 1024,
        body_timeout=2.0,
    )
    settings = settings_for(
        pg_dsn,
        kafka_bootstrap,
        control_schema,
        unused,
        consumer_enabled=False,
        require_api_key=True,
        http_port=free_port(),
        api_key_cache_seconds=CACHE_TTL,
        http_drain_timeout_seconds=DRAIN_TIMEOUT,
        boundaries=Boundaries(rest_api=rest),
    )
    late = LateStore()
    app = create_app(settings, registry=CollectorRegistry(), key_store=late)
    attacker, partner = (
        generate_api_key("scraper", Role.READER, tenant=TENANT_A),
        generate_api_key("web", Role.READER, tenant=TENANT_A),
    )
    async with served(app, settings) as base_url:
        pool = app.state.parts.pool
        # The store an operator's `gridhub ... apikeys` command writes to, and the one the app reads through.
        admin = PostgresKeyStore(pool)
        late.inner = CountingKeyStore(PostgresKeyStore(pool))
        await admin.add(attacker.record)
        await admin.add(partner.record)
        yield Edge(
            base_url,
            settings.http_port,
            attacker.plain_key,
            partner.plain_key,
            partner.record.key_id,
            admin,
            late.inner,
        )


async def test_slow_bodies_hold_nothing_and_another_key_is_served_meanwhile(edge: Edge) -> None:
    head = (
        b"GET /v1/workorders HTTP/1.1\r\nHost: readside\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + edge.attacker.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    slow = [SlowClient("127.0.0.1", edge.port, head, 1000, interval=1.0) for _ in range(50)]
    started = time.monotonic()
    deadline = started + DRAIN_TIMEOUT + 8.0
    attack = [asyncio.create_task(client.run(deadline)) for client in slow]

    statuses: list[int] = []
    headers = {"Authorization": f"Bearer {edge.partner}"}
    async with httpx.AsyncClient(base_url=edge.base_url, headers=headers, timeout=5.0) as partner:
        while not all(task.done() for task in attack):
            response = await partner.get("/v1/workorders")
            statuses.append(response.status_code)
            await asyncio.sleep(0.05)
    await asyncio.gather(*attack)
    elapsed = time.monotonic() - started

    assert statuses, "the partner sent nothing during the attack"
    assert set(statuses) == {200}, statuses
    answered = {client.status for client in slow}
    assert answered <= {200, 429}, answered
    assert all(client.closed_by_server for client in slow)
    # Nobody trickled on for long: the connections were closed, not left to the attacker's pace.
    assert max(client.bytes_sent for client in slow) <= DRAIN_TIMEOUT + 2
    assert elapsed < DRAIN_TIMEOUT + 4.0


async def test_a_revoked_key_stops_working_within_the_cache_ttl(edge: Edge) -> None:
    headers = {"Authorization": f"Bearer {edge.partner}"}
    async with httpx.AsyncClient(base_url=edge.base_url, headers=headers, timeout=5.0) as client:
        assert (await client.get("/v1/workorders")).status_code == 200
        before = edge.counting.lookups
        for _ in range(20):
            assert (await client.get("/v1/workorders")).status_code == 200
        # Twenty requests inside the TTL: at most one more lookup (the TTL may just have run out once).
        assert edge.counting.lookups - before <= 1

        assert await edge.admin.revoke(edge.partner_key_id)
        revoked_at = time.monotonic()
        async with asyncio.timeout(CACHE_TTL + 2.0):
            while (response := await client.get("/v1/workorders")).status_code == 200:
                await asyncio.sleep(0.05)
        refused_after = time.monotonic() - revoked_at
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert refused_after <= CACHE_TTL + 0.5
