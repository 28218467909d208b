"""FTP partner accounts: ``python -m services.collection.commands.ftpusers add <login> --tenant <id> [--password PW]``.

Accounts live in the service's own database (table ``ftp_users``, scrypt hashes); a generated password is printed
once. A partner is a source of one grid company (``--tenant``) and may end by itself (``--expires-in 365d`` or a
date). ``rotate`` gives it a new password while the old one keeps working for ``--overlap`` (default 7 days: the
partner switches its upload job in between); ``passwd`` replaces the password at once (and enables a disabled
account; ``--tenant`` gives an account from before tenancy its grid company); ``disable`` locks it out (open
sessions end with their connection); ``list`` shows tenant, expiry, overlap and state. Every change writes an audit
event in the same transaction (`libs.platform.audit`). The partner's home (``inbox/``, ``outbox/``) is created at its
first login.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from datetime import UTC, datetime, timedelta

from libs.platform.apikeys import MAX_LIFETIME, check_expiry, parse_duration, parse_expiry
from libs.platform.audit import Actor, record_audit
from libs.platform.passwords import hash_password
from libs.platform.tenancy import Role, validate_tenant
from services.collection.adapters.ftpusers import (
    FtpUser,
    PostgresFtpUserStore,
    check_login,
    check_password,
    new_ftp_user,
)
from services.collection.commands.database import collection_database
from services.collection.settings import CollectionSettings

DEFAULT_OVERLAP = timedelta(days=7)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


async def add(
    settings: CollectionSettings,
    login: str,
    password: str,
    *,
    tenant: str,
    actor: Actor,
    expires_at: datetime | None = None,
) -> FtpUser:
    """Create the partner account with its audit event; ValueError for bad input or an existing login."""
    user = new_ftp_user(login, password, tenant=tenant, expires_at=expires_at)
    async with collection_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        await PostgresFtpUserStore(pool).add(user, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="ftp_partner.add",
            subject=user.login,
            tenant=tenant,
            detail={"role": Role.SOURCE.value, "expires_at": _iso(expires_at)},
            at=user.created_at,
        )
    return user


async def set_password(
    settings: CollectionSettings,
    login: str,
    password: str,
    *,
    actor: Actor,
    tenant: str | None = None,
    expires_at: datetime | None = None,
) -> bool:
    """Replace the password at once (ending any overlap) and enable the account; False when there is no login."""
    check_login(login)
    check_password(password)
    if tenant is not None:
        validate_tenant(tenant, Role.SOURCE)
    now = datetime.now(UTC)
    if expires_at is not None:
        check_expiry(expires_at, now)
    async with collection_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        store = PostgresFtpUserStore(pool)
        before = await store.get(login, connection=connection)
        if before is None:
            return False
        if tenant is not None and before.tenant is not None and tenant != before.tenant:
            raise ValueError(f"FTP user {login} belongs to {before.tenant}; a partner does not change grid company")
        await store.set_password_hash(login, hash_password(password), tenant=tenant, connection=connection)
        if expires_at is not None:
            await store.set_expiry(login, expires_at, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="ftp_partner.passwd",
            subject=login,
            tenant=tenant or before.tenant,
            detail={"enabled": before.disabled_at is not None, "expires_at": _iso(expires_at or before.expires_at)},
            at=now,
        )
    return True


async def rotate(
    settings: CollectionSettings,
    login: str,
    password: str,
    *,
    actor: Actor,
    overlap: timedelta = DEFAULT_OVERLAP,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> datetime | None:
    """Make ``password`` current and keep the old one valid for ``overlap``; return the old one's end.

    None when there is no such login; ValueError when the account cannot log in now (disabled, expired, no tenant:
    there is nothing to overlap with; use ``passwd``) or the overlap is out of bounds.
    """
    check_login(login)
    check_password(password)
    if overlap < timedelta(0) or overlap > MAX_LIFETIME:
        raise ValueError(f"the overlap must be between 0 and {MAX_LIFETIME.days} days")
    moment = now or datetime.now(UTC)
    if expires_at is not None:
        check_expiry(expires_at, moment)
    async with collection_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        store = PostgresFtpUserStore(pool)
        # FOR UPDATE: two rotations at once would each keep a different "previous" hash.
        if await connection.fetchval("SELECT 1 FROM ftp_users WHERE login = $1 FOR UPDATE", login) is None:
            return None
        before = await store.get(login, connection=connection)
        assert before is not None
        state = before.state(moment)
        if not before.valid_at(moment):
            raise ValueError(f"FTP user {login} is {state}: set a password with passwd instead of rotating")
        old_end = moment + overlap
        if before.expires_at is not None:
            old_end = min(old_end, before.expires_at)
        await store.rotate_password_hash(
            login, hash_password(password), previous_valid_until=old_end, connection=connection
        )
        if expires_at is not None:
            await store.set_expiry(login, expires_at, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="ftp_partner.rotate",
            subject=login,
            tenant=before.tenant,
            detail={"previous_valid_until": old_end.isoformat(), "expires_at": _iso(expires_at or before.expires_at)},
            at=moment,
        )
    return old_end


async def disable(settings: CollectionSettings, login: str, *, actor: Actor) -> bool:
    """Lock the partner out, audited; False when there is no such login."""
    async with collection_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        store = PostgresFtpUserStore(pool)
        before = await store.get(login, connection=connection)
        if before is None:
            return False
        now = datetime.now(UTC)
        await store.disable(login, at=now, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="ftp_partner.disable",
            subject=login,
            tenant=before.tenant,
            detail={"already_disabled": before.disabled_at is not None},
            at=now,
        )
    return True


async def list_partners(settings: CollectionSettings, *, tenant: str | None = None) -> list[FtpUser]:
    """Partner accounts (of ``tenant`` if given), disabled ones too."""
    async with collection_database(settings) as pool:
        return await PostgresFtpUserStore(pool).list(tenant=tenant)


def describe(user: FtpUser, now: datetime) -> str:
    """One line per partner: login, tenant, role, expiry, overlap and state (never a hash)."""
    expiry = user.expires_at.isoformat(timespec="seconds") if user.expires_at else "never"
    overlap = ""
    if len(user.password_hashes(now)) > 1 and user.previous_valid_until is not None:
        overlap = f"  old password until {user.previous_valid_until.isoformat(timespec='seconds')}"
    return f"{user.login}  {user.tenant or '-'}  source  expires {expiry}  {user.state(now)}{overlap}"


async def _run(args: argparse.Namespace, settings: CollectionSettings) -> int:
    actor = Actor.operator()
    now = datetime.now(UTC)
    expires_at = parse_expiry(args.expires_in, now=now) if getattr(args, "expires_in", None) else None
    password = getattr(args, "password", None) or secrets.token_urlsafe(24)
    if args.command == "add":
        await add(settings, args.login, password, tenant=args.tenant, actor=actor, expires_at=expires_at)
        print(f"FTP user {args.login} of {args.tenant} added: upload into /inbox, receipts in /outbox")
    elif args.command == "passwd":
        if not await set_password(
            settings, args.login, password, actor=actor, tenant=args.tenant, expires_at=expires_at
        ):
            print(f"no FTP user {args.login}", file=sys.stderr)
            return 1
        print(f"password of {args.login} changed")
    elif args.command == "rotate":
        overlap = parse_duration(args.overlap)
        old_end = await rotate(
            settings, args.login, password, actor=actor, overlap=overlap, expires_at=expires_at, now=now
        )
        if old_end is None:
            print(f"no FTP user {args.login}", file=sys.stderr)
            return 1
        print(f"new password of {args.login} set; the old one works until {old_end.isoformat(timespec='seconds')}")
    elif args.command == "disable":
        if not await disable(settings, args.login, actor=actor):
            print(f"no FTP user {args.login}", file=sys.stderr)
            return 1
        print(f"FTP user {args.login} disabled")
        return 0
    else:
        for user in await list_partners(settings, tenant=args.tenant):
            print(describe(user, now))
        return 0
    if args.password is None:
        print(f"password (shown once): {password}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module doc)."""
    parser = argparse.ArgumentParser(
        prog="python -m services.collection.commands.ftpusers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    choose = "at least 12 characters (default: a new random one, printed once)"
    expiry = "a duration (365d) or a date (2027-03-31); default: no end"
    add = commands.add_parser("add", help="create a partner account")
    add.add_argument("login", help="1-63 of a-z, 0-9, '.', '_', '-', e.g. hes-north")
    add.add_argument("--tenant", required=True, help="the partner's grid company (GLN-13 or EIC-16)")
    add.add_argument("--password", help=choose)
    add.add_argument("--expires-in", help=expiry)
    passwd = commands.add_parser("passwd", help="set a new password at once (enables a disabled account)")
    passwd.add_argument("login")
    passwd.add_argument("--password", help=choose)
    passwd.add_argument("--tenant", help="give an account from before tenancy its grid company")
    passwd.add_argument("--expires-in", help="a new end for the account")
    rotate_parser = commands.add_parser("rotate", help="a new password; the old one works until the overlap ends")
    rotate_parser.add_argument("login")
    rotate_parser.add_argument("--password", help=choose)
    rotate_parser.add_argument("--overlap", default="7d", help="how long the old password keeps working (default 7d)")
    rotate_parser.add_argument("--expires-in", help="a new end for the account")
    disable_parser = commands.add_parser("disable", help="lock a partner out")
    disable_parser.add_argument("login")
    listing = commands.add_parser("list", help="partners with tenant, expiry, overlap and state")
    listing.add_argument("--tenant")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args, CollectionSettings()))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
