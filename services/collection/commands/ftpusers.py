"""FTP partner accounts: ``python -m services.collection.commands.ftpusers add <login> [--password PW]``.

Accounts live in the service's own database (table ``ftp_users``, scrypt hashes); a generated password is
printed once. ``passwd`` sets a new password (and enables a disabled account), ``disable`` locks it out (open
sessions end with their connection). The partner's home (``inbox/``, ``outbox/``) is created at its first login.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys

from libs.platform.database import open_database
from libs.platform.passwords import hash_password
from services.collection.adapters.ftpusers import (
    FTP_USERS_COMPONENT,
    FTP_USERS_MIGRATIONS,
    PostgresFtpUserStore,
    check_login,
    new_ftp_user,
)
from services.collection.settings import CollectionSettings


async def _run(args: argparse.Namespace, settings: CollectionSettings) -> int:
    pool = await open_database(settings, [(FTP_USERS_COMPONENT, FTP_USERS_MIGRATIONS)], max_size=1)
    try:
        store = PostgresFtpUserStore(pool)
        if args.command == "add":
            password = args.password or secrets.token_urlsafe(24)
            await store.add(new_ftp_user(args.login, password))
            print(f"FTP user {args.login} added: upload into /inbox, receipts in /outbox")
            if args.password is None:
                print(f"password (shown once): {password}")
            return 0
        if args.command == "passwd":
            password = args.password or secrets.token_urlsafe(24)
            if len(password) < 12:
                raise ValueError("an FTP password has at least 12 characters")
            if not await store.set_password_hash(check_login(args.login), hash_password(password)):
                print(f"no FTP user {args.login}", file=sys.stderr)
                return 1
            print(f"password of {args.login} changed")
            if args.password is None:
                print(f"password (shown once): {password}")
            return 0
        if await store.disable(args.login):
            print(f"FTP user {args.login} disabled")
            return 0
        print(f"no FTP user {args.login}", file=sys.stderr)
        return 1
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: ``add <login> [--password PW]``, ``passwd <login> [--password PW]``, ``disable <login>``."""
    parser = argparse.ArgumentParser(prog="python -m services.collection.commands.ftpusers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a partner account")
    add.add_argument("login", help="1-63 of a-z, 0-9, '.', '_', '-', e.g. hes-north")
    add.add_argument("--password", help="at least 12 characters (default: a new random one, printed once)")
    passwd = commands.add_parser("passwd", help="set a new password (enables a disabled account)")
    passwd.add_argument("login")
    passwd.add_argument("--password", help="at least 12 characters (default: a new random one, printed once)")
    disable = commands.add_parser("disable", help="lock a partner out")
    disable.add_argument("login")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args, CollectionSettings()))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
