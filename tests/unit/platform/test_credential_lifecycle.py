"""Expiry, rotation and the audit's rules, on an injected clock: no I/O, no sleeping."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.platform.apikeys import (
    MAX_LIFETIME,
    InMemoryKeyStore,
    KeyState,
    Role,
    authenticate,
    generate_api_key,
    parse_duration,
    parse_expiry,
    rotate_api_key,
)
from libs.platform.apikeys_asgi import KEY_CACHE_SECONDS, CachedKeyStore
from libs.platform.audit import Actor, record_audit
from libs.platform.passwords import hash_password
from libs.platform.tenancy import PrincipalKind
from services.collection.adapters.ftpusers import FtpUser, PartnerState, matching_hash, new_ftp_user
from tests.tenants import TENANT_A, TENANT_B

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("1d12h", timedelta(hours=36)),
        ("45s", timedelta(seconds=45)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "12", "h", "-1d", "1.5d", "1d 2h", "5000d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer"):
        parse_duration(text)


def test_an_expiry_is_a_duration_a_date_or_a_datetime_in_the_future() -> None:
    assert parse_expiry("7d", now=NOW) == NOW + timedelta(days=7)
    assert parse_expiry("2027-03-31", now=NOW) == datetime(2027, 3, 31, tzinfo=UTC)
    assert parse_expiry("2027-01-01T08:00:00+01:00", now=NOW) == datetime(2027, 1, 1, 7, tzinfo=UTC)
    assert parse_expiry("2027-01-01T08:00:00", now=NOW) == datetime(2027, 1, 1, 8, tzinfo=UTC), "no offset: UTC"
    with pytest.raises(ValueError, match="not in the future"):
        parse_expiry("2026-01-01", now=NOW)
    with pytest.raises(ValueError, match="days ahead"):
        parse_expiry("2035-01-01", now=NOW)
    with pytest.raises(ValueError, match="neither"):
        parse_expiry("next tuesday", now=NOW)


def test_a_key_is_active_until_its_expiry_then_expired_and_a_revocation_wins() -> None:
    key = generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A, now=NOW, expires_at=NOW + timedelta(hours=1))
    assert key.record.state(NOW + timedelta(minutes=59)) is KeyState.ACTIVE
    assert key.record.state(NOW + timedelta(hours=1)) is KeyState.EXPIRED
    assert key.record.valid_at(NOW + timedelta(hours=1)) is False
    revoked = replace(key.record, revoked_at=NOW - timedelta(days=1))
    assert revoked.state(NOW + timedelta(hours=2)) is KeyState.REVOKED, "revoked, whatever its expiry"
    with pytest.raises(ValueError, match="not in the future"):
        generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A, now=NOW, expires_at=NOW)


async def test_an_expired_key_is_refused_like_a_revoked_one() -> None:
    key = generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A, now=NOW, expires_at=NOW + timedelta(hours=1))
    store = InMemoryKeyStore([key.record])
    assert await authenticate(store, key.plain_key, now=NOW) is not None
    assert await authenticate(store, key.plain_key, now=NOW + timedelta(hours=1)) is None


def test_a_rotation_keeps_client_tenant_and_role_and_ends_the_old_key_after_the_overlap() -> None:
    old = generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A, now=NOW - timedelta(days=10)).record
    rotation = rotate_api_key(old, overlap=timedelta(days=7), now=NOW)
    new = rotation.new.record
    assert (new.client, new.tenant, new.role, new.rotated_from) == ("hes-a", TENANT_A, Role.SOURCE, old.key_id)
    assert rotation.old_expires_at == NOW + timedelta(days=7)
    assert new.expires_at is None, "a key without an end gets a successor without one"
    assert new.key_id != old.key_id
    assert rotation.new.plain_key not in repr(new)


def test_a_rotation_never_lengthens_the_old_key_and_the_new_one_lives_as_long_as_the_old_was_made_to() -> None:
    old = generate_api_key(
        "web", Role.READER, tenant=TENANT_B, now=NOW - timedelta(days=85), expires_at=NOW + timedelta(days=5)
    ).record
    rotation = rotate_api_key(old, overlap=timedelta(days=7), now=NOW)
    assert rotation.old_expires_at == NOW + timedelta(days=5), "the old end comes sooner than the overlap's"
    assert rotation.new.record.expires_at == NOW + timedelta(days=90), "the old key's lifetime, from now"
    chosen = rotate_api_key(old, overlap=timedelta(hours=1), now=NOW, expires_at=NOW + timedelta(days=30))
    assert chosen.new.record.expires_at == NOW + timedelta(days=30)
    with pytest.raises(ValueError, match="outlive"):
        rotate_api_key(old, overlap=timedelta(days=2), now=NOW, expires_at=NOW + timedelta(days=1))


@pytest.mark.parametrize("overlap", [timedelta(seconds=-1), MAX_LIFETIME + timedelta(days=1)])
def test_an_overlap_out_of_bounds_is_refused(overlap: timedelta) -> None:
    old = generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A, now=NOW).record
    with pytest.raises(ValueError, match="overlap"):
        rotate_api_key(old, overlap=overlap, now=NOW)


def test_a_revoked_or_expired_key_is_not_rotated() -> None:
    key = generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A, now=NOW, expires_at=NOW + timedelta(hours=1))
    with pytest.raises(ValueError, match="expired"):
        rotate_api_key(key.record, overlap=timedelta(days=1), now=NOW + timedelta(hours=2))
    with pytest.raises(ValueError, match="revoked"):
        rotate_api_key(replace(key.record, revoked_at=NOW), overlap=timedelta(days=1), now=NOW)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_cache_shows_a_revocation_and_a_rotations_end_within_its_ttl_and_expiry_at_once() -> None:
    assert KEY_CACHE_SECONDS == 5.0, "the figure docs/security.md states"
    old = generate_api_key("hes-a", Role.SOURCE, tenant=TENANT_A, now=NOW)
    backing = InMemoryKeyStore([old.record])
    clock = Clock()
    cache = CachedKeyStore(backing, clock=clock)
    assert await authenticate(cache, old.plain_key, now=NOW) is not None
    # Another process (the operator's command) rotates the key with a 1 s overlap, straight in the database.
    rotation = rotate_api_key(old.record, overlap=timedelta(seconds=1), now=NOW)
    await backing.add(rotation.new.record)
    await backing.set_expiry(old.record.key_id, rotation.old_expires_at)
    later = NOW + timedelta(seconds=2)
    clock.now = KEY_CACHE_SECONDS - 0.1
    assert await authenticate(cache, old.plain_key, now=later) is not None, "the cached record, for at most the TTL"
    clock.now = KEY_CACHE_SECONDS
    assert await authenticate(cache, old.plain_key, now=later) is None, "the new end, once the TTL passed"
    assert await authenticate(cache, rotation.new.plain_key, now=later) is not None
    # Expiry needs no refresh: the cached record's end is checked against the clock on every request.
    expiring = generate_api_key("hes-b", Role.SOURCE, tenant=TENANT_A, now=NOW, expires_at=NOW + timedelta(minutes=1))
    await backing.add(expiring.record)
    assert await authenticate(cache, expiring.plain_key, now=NOW) is not None
    assert await authenticate(cache, expiring.plain_key, now=NOW + timedelta(minutes=1)) is None
    # A revocation elsewhere: refused once the TTL passed.
    await backing.revoke(rotation.new.record.key_id)
    clock.now += KEY_CACHE_SECONDS
    assert await authenticate(cache, rotation.new.plain_key, now=later) is None


def test_an_ftp_partner_has_a_tenant_an_expiry_and_an_overlap_of_two_hashes() -> None:
    user = new_ftp_user("hes-north", "correct horse battery", tenant=TENANT_A, now=NOW, expires_at=NOW + timedelta(1))
    assert user.principal.kind is PrincipalKind.FTP_PARTNER
    assert (user.principal.role, user.principal.tenant) == (Role.SOURCE, TENANT_A)
    assert user.state(NOW) is PartnerState.ACTIVE
    assert user.state(NOW + timedelta(days=1)) is PartnerState.EXPIRED
    new_hash = hash_password("a brand new password")
    rotated = replace(
        user,
        password_hash=new_hash,
        previous_password_hash=user.password_hash,
        previous_valid_until=NOW + timedelta(hours=1),
    )
    assert rotated.password_hashes(NOW) == (new_hash, user.password_hash)
    assert rotated.password_hashes(NOW + timedelta(hours=1)) == (new_hash,)
    hashes = rotated.password_hashes(NOW)
    assert matching_hash("correct horse battery", hashes, new_hash) == user.password_hash
    assert matching_hash("a brand new password", hashes, new_hash) == new_hash
    assert matching_hash("wrong", hashes, new_hash) is None
    assert matching_hash("a brand new password", (), new_hash) is None, "no account: the dummy is never a match"
    legacy = FtpUser("old-partner", new_hash, NOW)
    assert legacy.state(NOW) is PartnerState.DISABLED, "a partner from before tenancy opens no session"
    with pytest.raises(ValueError, match="tenant"):
        new_ftp_user("hes-north", "correct horse battery", tenant="5790000000013")


class RecordingConnection:
    """Stands in for an asyncpg connection: keeps what would be executed."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, query: str, *args: Any) -> str:
        self.executed.append((query, args))
        return "INSERT 0 1"


async def test_an_audit_event_is_written_with_who_what_when_and_where() -> None:
    connection = RecordingConnection()
    actor = Actor.operator(user="alice", host="ops-1")
    assert (actor.name, actor.kind, actor.origin) == ("alice@ops-1", "operator", "ops-1")
    await record_audit(
        connection,  # type: ignore[arg-type]
        actor=actor,
        action="apikey.rotate",
        subject="0123456789abcdef",
        tenant=TENANT_A,
        detail={"successor": "fedcba9876543210", "overlap_seconds": 604800},
        at=NOW,
    )
    ((query, args),) = connection.executed
    assert "INSERT INTO audit_events" in query
    assert args[:7] == (NOW, "alice@ops-1", "operator", "ops-1", "apikey.rotate", "0123456789abcdef", TENANT_A)
    assert '"successor": "fedcba9876543210"' in args[7]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": "rotate"}, "thing"),
        ({"tenant": "5790000000013"}, "GLN"),
        ({"subject": ""}, "subject"),
        ({"detail": {"new_password": "x"}}, "secret"),
        ({"detail": {"key_hash": "x"}}, "secret"),
        ({"detail": {"Client": "x"}}, "identifiers"),
        ({"detail": {"nested": {"a": 1}}}, "string, number"),
        ({"at": datetime(2026, 1, 1)}, "timezone"),
    ],
)
async def test_a_malformed_or_secret_audit_event_is_refused_before_anything_is_written(
    changes: dict[str, Any], message: str
) -> None:
    connection = RecordingConnection()
    values: dict[str, Any] = {
        "actor": Actor.operator(user="alice", host="ops-1"),
        "action": "ftp_partner.rotate",
        "subject": "hes-north",
        "tenant": TENANT_A,
        "detail": {},
        **changes,
    }
    with pytest.raises(ValueError, match=message):
        await record_audit(connection, **values)  # type: ignore[arg-type]
    assert connection.executed == []


def test_an_actor_is_a_principal_from_an_address() -> None:
    key = generate_api_key("crm", Role.ADMIN, tenant=TENANT_B)
    actor = Actor.of_principal(key.record.principal, origin="10.0.0.7")
    assert (actor.name, actor.kind, actor.origin) == ("crm", "api_key", "10.0.0.7")
    with pytest.raises(ValueError, match="kind"):
        Actor("x", "Not A Kind", "here")
