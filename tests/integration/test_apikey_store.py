"""One suite for every KeyStore: the in-memory one of unit tests and the PostgreSQL one services use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from libs.platform.apikeys import InMemoryKeyStore, KeyStore, Role, authenticate, generate_api_key
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.db import create_pool
from libs.platform.migrations import migrate
from tests.tenants import TENANT_A

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest, pg_dsn: str, pg_schema: str) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        yield InMemoryKeyStore()
        return
    pool = await create_pool(pg_dsn, schema=pg_schema)
    async with pool.acquire() as conn:
        await migrate(conn, APIKEY_COMPONENT, APIKEY_MIGRATIONS)
    try:
        yield PostgresKeyStore(pool)
    finally:
        await pool.close()


async def test_a_stored_key_authenticates_and_only_its_hash_is_kept(store: KeyStore) -> None:
    new = generate_api_key("headend-north", Role.SOURCE, tenant=TENANT_A)
    await store.add(new.record)
    found = await authenticate(store, new.plain_key)
    assert found is not None
    assert (found.client, found.role) == ("headend-north", Role.SOURCE)
    stored = await store.get(new.record.key_id)
    assert stored is not None
    assert new.plain_key.split("_")[-1] not in stored.key_hash


async def test_wrong_secret_and_unknown_key_are_refused(store: KeyStore) -> None:
    new = generate_api_key("billing", Role.READER, tenant=TENANT_A)
    await store.add(new.record)
    tampered = new.plain_key[:-4] + ("AAAA" if not new.plain_key.endswith("AAAA") else "BBBB")
    assert await authenticate(store, tampered) is None
    assert await authenticate(store, generate_api_key("other", Role.READER, tenant=TENANT_A).plain_key) is None


async def test_revoked_key_no_longer_authenticates(store: KeyStore) -> None:
    new = generate_api_key("partner-ftp", Role.ADMIN, tenant=TENANT_A)
    await store.add(new.record)
    assert await store.revoke(new.record.key_id, at=datetime(2026, 11, 26, tzinfo=UTC)) is True
    assert await store.revoke(new.record.key_id) is True, "revoking again is harmless"
    assert await store.revoke("0000000000000000") is False
    assert await authenticate(store, new.plain_key) is None
    kept = await store.get(new.record.key_id)
    assert kept is not None
    assert kept.revoked_at == datetime(2026, 11, 26, tzinfo=UTC)


async def test_duplicate_key_id_is_refused(store: KeyStore) -> None:
    new = generate_api_key("crm", Role.SOURCE, tenant=TENANT_A)
    await store.add(new.record)
    with pytest.raises(ValueError, match="already exists"):
        await store.add(new.record)
