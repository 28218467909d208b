"""API keys checked before flow control, so each client system gets its own quota."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, FastAPI

from libs.flowcontrol.asgi import FlowControlMiddleware, client_key_resolver
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock
from libs.platform.apikeys import ApiKeyRecord, InMemoryKeyStore, Role, generate_api_key, require_role, set_key_store
from libs.platform.apikeys_asgi import ApiKeyMiddleware, CachedKeyStore
from libs.platform.problems import install_problem_handlers
from tests.tenants import TENANT_A


def build_app(store: InMemoryKeyStore, quota: Quota) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    set_key_store(app, store)

    @app.post("/v1/readings", status_code=202)
    async def post_readings(key: Annotated[ApiKeyRecord, Depends(require_role(Role.SOURCE))]) -> dict[str, str]:
        return {"client": key.client}

    # Added last = outermost: authentication first, then the quota keyed by the authenticated client.
    app.add_middleware(FlowControlMiddleware, quota=quota, client_key=client_key_resolver(header=None))
    app.add_middleware(ApiKeyMiddleware, store=store)
    return app


async def test_each_client_system_has_its_own_quota_whatever_its_address() -> None:
    store = InMemoryKeyStore()
    north, south = (
        generate_api_key("headend-north", Role.SOURCE, tenant=TENANT_A),
        generate_api_key("headend-south", Role.SOURCE, tenant=TENANT_A),
    )
    await store.add(north.record)
    await store.add(south.record)
    app = build_app(store, Quota(rate=1.0, burst=2, clock=FakeClock()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as client:
        statuses = [
            (await client.post("/v1/readings", headers={"Authorization": f"Bearer {north.plain_key}"})).status_code
            for _ in range(3)
        ]
        assert statuses == [202, 202, 429]
        other = await client.post("/v1/readings", headers={"X-API-Key": south.plain_key})
        assert other.status_code == 202
        assert other.json() == {"client": "headend-south"}


async def test_a_bad_key_still_gets_401_from_the_route() -> None:
    store = InMemoryKeyStore()
    reader = generate_api_key("dwh", Role.READER, tenant=TENANT_A)
    await store.add(reader.record)
    app = build_app(store, Quota(rate=100.0, burst=100, clock=FakeClock()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as client:
        missing = await client.post("/v1/readings")
        wrong = await client.post("/v1/readings", headers={"Authorization": "Bearer ghk_0123456789abcdef_nope"})
        too_low = await client.post("/v1/readings", headers={"Authorization": f"Bearer {reader.plain_key}"})
    assert (missing.status_code, wrong.status_code, too_low.status_code) == (401, 401, 403)
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_cache_serves_hot_keys_and_forgets_within_its_ttl() -> None:
    now = [0.0]
    backing = InMemoryKeyStore()
    new = generate_api_key("crm", Role.SOURCE, tenant=TENANT_A)
    await backing.add(new.record)
    calls: list[str] = []
    original_get = backing.get

    async def counting_get(key_id: str) -> ApiKeyRecord | None:
        calls.append(key_id)
        return await original_get(key_id)

    backing.get = counting_get  # type: ignore[method-assign]
    cache = CachedKeyStore(backing, ttl=30, max_entries=2, clock=lambda: now[0])
    for _ in range(5):
        assert await cache.get(new.record.key_id) == new.record
    assert len(calls) == 1
    await backing.revoke(new.record.key_id)  # revoked elsewhere (another replica)
    now[0] = 31.0
    refreshed = await cache.get(new.record.key_id)
    assert refreshed is not None
    assert refreshed.active is False
    for key_id in ("a" * 16, "b" * 16, "c" * 16):
        await cache.get(key_id)
    assert len(cache._entries) == 2, "the cache is bounded"
