"""One suite for every KeyStore: the in-memory one of unit tests and the PostgreSQL one services use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from libs.platform.apikeys import (
    InMemoryKeyStore,
    KeyState,
    KeyStore,
    Role,
    authenticate,
    generate_api_key,
    rotate_api_key,
)
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.db import create_pool
from libs.platform.migrations import migrate
from tests.tenants import TENANT_A, TENANT_B

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


async def test_an_expired_key_no_longer_authenticates(store: KeyStore) -> None:
    now = datetime.now(UTC)
    new = generate_api_key("hes-expiring", Role.SOURCE, tenant=TENANT_A, now=now, expires_at=now + timedelta(hours=1))
    await store.add(new.record)
    assert await authenticate(store, new.plain_key, now=now + timedelta(minutes=59)) is not None
    assert await authenticate(store, new.plain_key, now=now + timedelta(hours=1)) is None
    kept = await store.get(new.record.key_id)
    assert kept is not None
    assert kept.expires_at == now + timedelta(hours=1)
    assert kept.state(now + timedelta(hours=2)) is KeyState.EXPIRED


async def test_a_rotation_keeps_both_keys_until_the_overlap_ends(store: KeyStore) -> None:
    assert isinstance(store, InMemoryKeyStore | PostgresKeyStore)
    now = datetime.now(UTC)
    old = generate_api_key("hes-rotating", Role.SOURCE, tenant=TENANT_A, now=now - timedelta(days=30))
    await store.add(old.record)
    rotation = rotate_api_key(old.record, overlap=timedelta(days=7), now=now)
    await store.add(rotation.new.record)
    assert await store.set_expiry(old.record.key_id, rotation.old_expires_at) is True
    assert await store.set_expiry("0000000000000000", rotation.old_expires_at) is False
    # A later, longer end never lengthens the old key's life.
    await store.set_expiry(old.record.key_id, now + timedelta(days=30))
    for moment, old_works in [(now + timedelta(days=6), True), (now + timedelta(days=7), False)]:
        assert (await authenticate(store, old.plain_key, now=moment) is not None) is old_works
        assert await authenticate(store, rotation.new.plain_key, now=moment) is not None
    successor = await store.get(rotation.new.record.key_id)
    assert successor is not None
    assert (successor.client, successor.tenant, successor.role) == ("hes-rotating", TENANT_A, Role.SOURCE)
    assert successor.rotated_from == old.record.key_id


async def test_the_postgres_store_lists_keys_by_tenant(pg_dsn: str, pg_schema: str) -> None:
    pool = await create_pool(pg_dsn, schema=pg_schema)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, APIKEY_COMPONENT, APIKEY_MIGRATIONS)
        store = PostgresKeyStore(pool)
        mine = generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A)
        theirs = generate_api_key("hes-b", Role.READER, tenant=TENANT_B)
        await store.add(mine.record)
        await store.add(theirs.record)
        assert [r.key_id for r in await store.list(tenant=TENANT_A)] == [mine.record.key_id]
        assert {r.key_id for r in await store.list()} >= {mine.record.key_id, theirs.record.key_id}
        await store.revoke(theirs.record.key_id)
        tenants = await store.tenants()
        assert tenants.get(TENANT_A) == 1
        assert TENANT_B not in tenants, "a tenant whose keys are all revoked has no working key"
    finally:
        await pool.close()
