"""Devices allowed to publish over MQTT (``gridhub device`` runs this).

``python -m services.collection.commands.devices add <meterpoint> --tenant <id> [--password PW] [--expires-in 1y]``,
``passwd <meterpoint> [--password PW]`` (rotate), ``remove <meterpoint>``, ``list [--tenant <id>]``, ``prune``.

A device is a principal (role ``source``) of one grid company: the collection database's ``device_accounts`` says
whose it is, since when its password holds and when it ends (`services.collection.adapters.devices`), written in
one transaction with its audit event (`libs.platform.audit`); the broker holds the password. Mosquitto keeps one
password per user, so a rotation has no overlap: from the broker's reload (SIGHUP, at once) only the new password
logs in, and the broker also closes a session opened with the old one (Mosquitto 2 re-checks connected clients on
reload; the ops tests show it). So the meter gets its new password first (over its head-end or management channel),
then ``passwd`` runs; the meter reconnects with the new password, and readings it had not got a PUBACK for are sent
again (nothing acknowledged is lost). ``remove`` cuts a device off the same way. Expiry: the broker knows no end
date, so ``prune`` (run it from cron, e.g. every 5 minutes) takes every expired device out of the broker and marks it
removed; a device works at most one prune interval past its end.

A device logs in with its meterpoint id (GSRN-18) as user name; the broker's ACL pattern
(``pattern write gridhub/meters/%u/readings`` and ``.../events``) lets it publish under its own meterpoint only.

Here, for the local stack, a device is a line in the stack's Mosquitto password file (``mosquitto_passwd``),
which the running broker reloads on SIGHUP. Production would not edit files: Mosquitto's dynamic security
plugin manages clients at runtime (``mosquitto_ctrl dynsec createClient <meterpoint>`` plus a role granting
``publishClientSend gridhub/meters/%u/#``, or the same over the ``$CONTROL/dynamic-security/v1`` topic), or the
broker authenticates devices by client certificate with the meterpoint id as the certificate's CN.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from libs.events.gsrn import is_valid_gsrn
from libs.platform.apikeys import check_expiry, parse_expiry
from libs.platform.audit import Actor, record_audit
from libs.platform.tenancy import Role, validate_tenant
from services.collection.adapters.devices import DeviceAccount, PostgresDeviceStore
from services.collection.commands.database import collection_database
from services.collection.settings import CollectionSettings, DeviceSettings

_TOOL_TIMEOUT = 30.0


def _files(settings: DeviceSettings | None) -> tuple[Path, Path | None]:
    settings = CollectionSettings().devices if settings is None else settings
    if settings.password_file is None:
        raise ValueError("no device registry: set COLLECTION_DEVICES__PASSWORD_FILE (and __BROKER_PID_FILE)")
    return settings.password_file, settings.broker_pid_file


def _passwd(arguments: list[str], *, missing_ok: bool = False) -> None:
    result = subprocess.run(  # noqa: S603 - a fixed tool; the user name is a checked GSRN
        ["mosquitto_passwd", *arguments],  # noqa: S607 - Mosquitto's own tool, found on PATH
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0 and not (missing_ok and "not found" in result.stderr + result.stdout):
        raise ValueError(f"mosquitto_passwd failed: {(result.stderr or result.stdout).strip()}")


def _reload(pid_file: Path | None) -> None:
    """SIGHUP the broker named by ``pid_file`` (``<pid> <marker>``), if it runs and is the one recorded."""
    if pid_file is None:
        return
    try:
        fields = pid_file.read_text().split()
        pid, marker = int(fields[0]), fields[1]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return  # no broker running: it reads the file when it starts
    if marker in cmdline:
        os.kill(pid, signal.SIGHUP)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _checked(meterpoint_id: str) -> str:
    if not is_valid_gsrn(meterpoint_id):
        raise ValueError(f"{meterpoint_id!r} is no GSRN-18 with a valid check digit")
    return meterpoint_id


def add_device(meterpoint_id: str, password: str | None = None, *, settings: DeviceSettings | None = None) -> str:
    """Broker only: let ``meterpoint_id`` log in with ``password`` (random when None); return the password.

    Records no tenant and no audit event: operators use `add` (``gridhub device add``); tests of the broker itself
    and ``remove_device`` use this directly.
    """
    _checked(meterpoint_id)
    password_file, pid_file = _files(settings)
    password = password or secrets.token_urlsafe(24)
    _passwd(["-b", str(password_file), meterpoint_id, password])
    _reload(pid_file)
    return password


def remove_device(meterpoint_id: str, *, settings: DeviceSettings | None = None) -> None:
    """Broker only: remove the device's credentials (none is fine); the broker refuses its next login."""
    password_file, pid_file = _files(settings)
    _passwd(["-D", str(password_file), meterpoint_id], missing_ok=True)
    _reload(pid_file)


async def add(
    settings: CollectionSettings,
    meterpoint_id: str,
    *,
    tenant: str,
    actor: Actor,
    password: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Register the device as a source of ``tenant`` and give the broker its password; return the password.

    The account row and its audit event commit only after the broker's password file has the device, so a
    recorded device can always log in; a failed commit takes the device out of the broker again.
    """
    _checked(meterpoint_id)
    validate_tenant(tenant, Role.SOURCE)
    now = datetime.now(UTC)
    if expires_at is not None:
        check_expiry(expires_at, now)
    account = DeviceAccount(meterpoint_id, tenant, now, now, expires_at)
    before: DeviceAccount | None = None
    written = False
    async with collection_database(settings) as pool, pool.acquire() as connection:
        try:
            async with connection.transaction():
                store = PostgresDeviceStore(pool)
                before = await store.get(meterpoint_id, connection=connection)
                if before is not None and before.removed_at is None and before.tenant != tenant:
                    raise ValueError(f"device {meterpoint_id} belongs to {before.tenant}: remove it first")
                await store.put(account, connection=connection)
                await record_audit(
                    connection,
                    actor=actor,
                    action="device.add",
                    subject=meterpoint_id,
                    tenant=tenant,
                    detail={"role": Role.SOURCE.value, "expires_at": _iso(expires_at)},
                    at=now,
                )
                password = await asyncio.to_thread(add_device, meterpoint_id, password, settings=settings.devices)
                written = True
        except BaseException:
            # The commit failed after the broker took the password: a device nobody recorded must not log in.
            if written and (before is None or before.removed_at is not None):
                with contextlib.suppress(ValueError, OSError):
                    await asyncio.to_thread(remove_device, meterpoint_id, settings=settings.devices)
            raise
    return password


async def rotate(
    settings: CollectionSettings,
    meterpoint_id: str,
    *,
    actor: Actor,
    password: str | None = None,
    expires_at: datetime | None = None,
) -> str | None:
    """Give the device a new password (the old one opens no new session); None when it has no active account."""
    _checked(meterpoint_id)
    now = datetime.now(UTC)
    if expires_at is not None:
        check_expiry(expires_at, now)
    async with collection_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        store = PostgresDeviceStore(pool)
        account = await store.get(meterpoint_id, connection=connection)
        if account is None or account.removed_at is not None:
            return None
        await store.password_set(meterpoint_id, now, expires_at=expires_at, connection=connection)
        await record_audit(
            connection,
            actor=actor,
            action="device.rotate",
            subject=meterpoint_id,
            tenant=account.tenant,
            detail={"expires_at": _iso(expires_at or account.expires_at)},
            at=now,
        )
        return await asyncio.to_thread(add_device, meterpoint_id, password, settings=settings.devices)


async def remove(settings: CollectionSettings, meterpoint_id: str, *, actor: Actor, reason: str = "removed") -> bool:
    """Take the device out of the broker and mark its account removed; False when it had no account."""
    now = datetime.now(UTC)
    async with collection_database(settings) as pool, pool.acquire() as connection, connection.transaction():
        store = PostgresDeviceStore(pool)
        account = await store.get(meterpoint_id, connection=connection)
        if account is not None:
            await store.remove(meterpoint_id, now, connection=connection)
            await record_audit(
                connection,
                actor=actor,
                action="device.remove",
                subject=meterpoint_id,
                tenant=account.tenant,
                detail={"reason": reason},
                at=now,
            )
        # Always out of the broker, also a device added with the broker-only tool.
        await asyncio.to_thread(remove_device, meterpoint_id, settings=settings.devices)
    return account is not None


async def prune(settings: CollectionSettings, *, actor: Actor, now: datetime | None = None) -> list[str]:
    """Remove every device past its end from the broker (at most 1,000 a run); return their meterpoints."""
    async with collection_database(settings) as pool:
        expired = await PostgresDeviceStore(pool).expired(now or datetime.now(UTC))
    for account in expired:
        await remove(settings, account.meterpoint_id, actor=actor, reason="expired")
    return [account.meterpoint_id for account in expired]


async def list_devices(settings: CollectionSettings, *, tenant: str | None = None) -> list[DeviceAccount]:
    """Device accounts (of ``tenant`` if given), removed ones too."""
    async with collection_database(settings) as pool:
        return await PostgresDeviceStore(pool).accounts(tenant=tenant)


async def _run(args: argparse.Namespace, settings: CollectionSettings) -> int:
    actor = Actor.operator()
    now = datetime.now(UTC)
    expires_at = parse_expiry(args.expires_in, now=now) if getattr(args, "expires_in", None) else None
    if args.command == "add":
        password = await add(
            settings, args.meterpoint_id, tenant=args.tenant, actor=actor, password=args.password, expires_at=expires_at
        )
        topics = f"gridhub/meters/{args.meterpoint_id}/readings and /events"
        print(f"device {args.meterpoint_id} of {args.tenant} may publish to {topics}")
        if args.password is None:
            print(f"password (shown once): {password}")
        return 0
    if args.command == "passwd":
        changed = await rotate(settings, args.meterpoint_id, actor=actor, password=args.password, expires_at=expires_at)
        if changed is None:
            print(f"no device {args.meterpoint_id}", file=sys.stderr)
            return 1
        print(f"password of device {args.meterpoint_id} changed: a session with the old one is closed")
        if args.password is None:
            print(f"password (shown once): {changed}")
        return 0
    if args.command == "remove":
        known = await remove(settings, _checked(args.meterpoint_id), actor=actor)
        print(f"device {args.meterpoint_id} removed" + ("" if known else " (it had no account; out of the broker)"))
        return 0
    if args.command == "prune":
        pruned = await prune(settings, actor=actor, now=now)
        print(f"{len(pruned)} expired device(s) removed" + (": " + ", ".join(pruned) if pruned else ""))
        return 0
    for account in await list_devices(settings, tenant=args.tenant):
        expiry = account.expires_at.isoformat(timespec="seconds") if account.expires_at else "never"
        set_at = account.password_set_at.isoformat(timespec="seconds")
        state = account.state(now)
        print(f"{account.meterpoint_id}  {account.tenant}  source  password since {set_at}  expires {expiry}  {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module doc); prints a generated password once."""
    parser = argparse.ArgumentParser(
        prog="python -m services.collection.commands.devices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser = commands.add_parser("add", help="let a meter publish under its meterpoint")
    add_parser.add_argument("meterpoint_id")
    add_parser.add_argument("--tenant", required=True, help="its grid company (GLN-13 or EIC-16)")
    add_parser.add_argument("--password", help="the device's password (default: a new random one, printed once)")
    add_parser.add_argument("--expires-in", help="a duration (365d) or a date (2027-03-31); default: no end")
    passwd = commands.add_parser("passwd", help="give a meter a new password (no overlap: see the module doc)")
    passwd.add_argument("meterpoint_id")
    passwd.add_argument("--password", help="the new password (default: a new random one, printed once)")
    passwd.add_argument("--expires-in", help="a new end for the account")
    remove_parser = commands.add_parser("remove", help="take a meter's credentials away")
    remove_parser.add_argument("meterpoint_id")
    commands.add_parser("prune", help="remove every device past its end from the broker")
    listing = commands.add_parser("list", help="device accounts with tenant, password age, expiry and state")
    listing.add_argument("--tenant")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args, CollectionSettings()))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
