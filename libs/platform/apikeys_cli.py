"""The API-key command every service with keys offers: ``add``, ``rotate``, ``revoke`` and ``list``.

``add <client> --tenant <id> [--role ...] [--expires-in 90d|2027-03-31]``, ``rotate <key id> [--overlap 7d]
[--expires-in ...]``, ``revoke <key id>``, ``list [--tenant <id>]``. Keys live in the service's own database (table
``api_keys``, hashed); a plain key is printed once. Every change writes an audit event (`libs.platform.audit`) in the
same transaction: who (the OS user at this host), what, which tenant, when. A service's ``commands/apikeys.py``
calls `main` with its settings (the ``postgres_*`` fields every service names alike); ``gridhub apikey`` calls the
async functions directly.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from libs.platform.apikeys import ApiKeyRecord, NewApiKey, Rotation, generate_api_key, parse_duration, parse_expiry
from libs.platform.apikeys import rotate_api_key as rotation_of
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.audit import AUDIT_COMPONENT, AUDIT_MIGRATIONS, Actor, record_audit
from libs.platform.database import open_database
from libs.platform.settings import ServiceSettings
from libs.platform.tenancy import Role, validate_tenant

DEFAULT_OVERLAP = timedelta(days=7)


@asynccontextmanager
async def key_database(settings: ServiceSettings) -> AsyncIterator[asyncpg.Pool[Any]]:
    """The service's pool with the key and audit tables migrated (one connection: a tool's)."""
    migrations = [(APIKEY_COMPONENT, APIKEY_MIGRATIONS), (AUDIT_COMPONENT, AUDIT_MIGRATIONS)]
    pool = await open_database(settings, migrations, max_size=1, application_name="gridhub-ops")
    try:
        yield pool
    finally:
        await pool.close()


def _expiry_detail(expires_at: datetime | None) -> str | None:
    return None if expires_at is None else expires_at.isoformat()


async def add_key(
    settings: ServiceSettings,
    client: str,
    role: Role,
    *,
    tenant: str | None,
    expires_at: datetime | None = None,
    actor: Actor,
) -> NewApiKey:
    """Create a key for ``client`` of ``tenant`` and store it with its audit event; ValueError for bad input."""
    validate_tenant(tenant, role)
    new = generate_api_key(client, role, tenant=tenant, expires_at=expires_at)
    async with key_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        await PostgresKeyStore(pool).add(new.record, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="apikey.add",
            subject=new.record.key_id,
            tenant=tenant,
            detail={"client": client, "role": role.value, "expires_at": _expiry_detail(expires_at)},
            at=new.record.created_at,
        )
    return new


async def rotate_key(
    settings: ServiceSettings,
    key_id: str,
    *,
    overlap: timedelta = DEFAULT_OVERLAP,
    expires_at: datetime | None = None,
    actor: Actor,
    now: datetime | None = None,
) -> Rotation | None:
    """Issue the successor of ``key_id`` and end the old key at now + ``overlap``, audited, in one transaction.

    None when there is no such key; ValueError when it cannot be rotated (revoked, expired, bad overlap).
    """
    async with key_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        store = PostgresKeyStore(pool)
        # FOR UPDATE: two rotations of one key at once would give it two successors.
        row = await connection.fetchrow("SELECT key_id FROM api_keys WHERE key_id = $1 FOR UPDATE", key_id)
        old = None if row is None else await store.get(key_id, connection=connection)
        if old is None:
            return None
        moment = now or datetime.now(UTC)
        rotation = rotation_of(old, overlap=overlap, now=moment, expires_at=expires_at)
        await store.add(rotation.new.record, connection=connection)
        await store.set_expiry(key_id, rotation.old_expires_at, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="apikey.rotate",
            subject=key_id,
            tenant=old.tenant,
            detail={
                "client": old.client,
                "role": old.role.value,
                "successor": rotation.new.record.key_id,
                "old_expires_at": rotation.old_expires_at.isoformat(),
                "new_expires_at": _expiry_detail(rotation.new.record.expires_at),
            },
            at=moment,
        )
    return rotation


async def revoke_key(settings: ServiceSettings, key_id: str, *, actor: Actor) -> ApiKeyRecord | None:
    """Revoke ``key_id`` with its audit event; the record as it was before, or None when there is no such key."""
    async with key_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        store = PostgresKeyStore(pool)
        before = await store.get(key_id, connection=connection)
        if before is None:
            return None
        now = datetime.now(UTC)
        await store.revoke(key_id, at=now, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="apikey.revoke",
            subject=key_id,
            tenant=before.tenant,
            detail={
                "client": before.client,
                "role": before.role.value,
                "already_revoked": before.revoked_at is not None,
            },
            at=now,
        )
    return before


async def list_keys(settings: ServiceSettings, *, tenant: str | None = None) -> list[ApiKeyRecord]:
    """The service's keys (of ``tenant`` if given), oldest first."""
    async with key_database(settings) as pool:
        return await PostgresKeyStore(pool).list(tenant=tenant)


async def key_tenants(settings: ServiceSettings) -> dict[str, int]:
    """Tenants with a working key in this service, and how many."""
    async with key_database(settings) as pool:
        return await PostgresKeyStore(pool).tenants()


def describe(record: ApiKeyRecord, now: datetime) -> str:
    """One line per key: id, client, tenant, role, expiry and state."""
    owner = record.tenant or "platform"
    expiry = record.expires_at.isoformat(timespec="seconds") if record.expires_at else "never"
    return f"{record.key_id}  {record.client}  {owner}  {record.role}  expires {expiry}  {record.state(now)}"


async def _run(args: argparse.Namespace, settings: ServiceSettings) -> int:
    actor = Actor.operator()
    now = datetime.now(UTC)
    if args.command == "add":
        role = Role(args.role)
        expires_at = parse_expiry(args.expires_in, now=now) if args.expires_in else None
        new = await add_key(settings, args.client, role, tenant=args.tenant, expires_at=expires_at, actor=actor)
        owner = "the platform" if args.tenant is None else f"tenant {args.tenant}"
        until = f", expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
        print(f"key id {new.record.key_id} for {args.client} of {owner} (role {args.role}{until})")
        print(f"API key (shown once): {new.plain_key}")
        return 0
    if args.command == "rotate":
        overlap = parse_duration(args.overlap)
        expires_at = parse_expiry(args.expires_in, now=now) if args.expires_in else None
        rotation = await rotate_key(settings, args.key_id, overlap=overlap, expires_at=expires_at, actor=actor, now=now)
        if rotation is None:
            print(f"no key {args.key_id}", file=sys.stderr)
            return 1
        record = rotation.new.record
        print(f"key {args.key_id} works until {rotation.old_expires_at.isoformat(timespec='seconds')} (the overlap)")
        print(f"key id {record.key_id} replaces it for {record.client} (role {record.role})")
        print(f"API key (shown once): {rotation.new.plain_key}")
        return 0
    if args.command == "list":
        for record in await list_keys(settings, tenant=args.tenant):
            print(describe(record, now))
        return 0
    if await revoke_key(settings, args.key_id, actor=actor) is not None:
        print(f"key {args.key_id} revoked")
        return 0
    print(f"no key {args.key_id}", file=sys.stderr)
    return 1


def main(
    argv: Sequence[str] | None,
    settings: ServiceSettings,
    *,
    example_client: str,
    default_role: Role = Role.SOURCE,
) -> int:
    """``python -m services.<service>.commands.apikeys add|rotate|revoke|list ...`` (see the module doc)."""
    service = settings.service_name
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}.commands.apikeys", description=f"API keys of {service}'s client systems."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key for a client system")
    add.add_argument("client", help=f"the client system's name, e.g. {example_client}")
    add.add_argument("--role", choices=[role.value for role in Role], default=default_role.value)
    add.add_argument("--tenant", help="the grid company (GLN-13 or EIC-16) the key belongs to; none for platform")
    add.add_argument("--expires-in", help="a duration (90d, 12h) or a date (2027-03-31); default: no expiry")
    rotate = commands.add_parser("rotate", help="issue a successor; the old key works until the overlap ends")
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap", default="7d", help="how long the old key keeps working (default 7d)")
    rotate.add_argument("--expires-in", help="the new key's expiry (default: the old key's lifetime, if it had one)")
    revoke = commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    listing = commands.add_parser("list", help="keys with tenant, role, expiry and state")
    listing.add_argument("--tenant")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args, settings))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
