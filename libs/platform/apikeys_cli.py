"""The API-key command every service with keys offers: ``add <client> --tenant <id> [--role ...]``, ``revoke <key id>``.

Keys live in the service's own database (table ``api_keys``, hashed); the plain key is printed once. A service's
``commands/apikeys.py`` calls `main` with its settings (the ``postgres_*`` fields every service names alike).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from libs.platform.apikeys import generate_api_key
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.database import open_database
from libs.platform.settings import ServiceSettings
from libs.platform.tenancy import Role, validate_tenant


async def _run(args: argparse.Namespace, settings: ServiceSettings) -> int:
    if args.command == "add":
        try:
            validate_tenant(args.tenant, Role(args.role))
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
    pool = await open_database(settings, [(APIKEY_COMPONENT, APIKEY_MIGRATIONS)], max_size=1)
    try:
        store = PostgresKeyStore(pool)
        if args.command == "add":
            new = generate_api_key(args.client, Role(args.role), tenant=args.tenant)
            await store.add(new.record)
            owner = "the platform" if args.tenant is None else f"tenant {args.tenant}"
            print(f"key id {new.record.key_id} for {args.client} of {owner} (role {args.role})")
            print(f"API key (shown once): {new.plain_key}")
            return 0
        if await store.revoke(args.key_id):
            print(f"key {args.key_id} revoked")
            return 0
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    finally:
        await pool.close()


def main(
    argv: Sequence[str] | None,
    settings: ServiceSettings,
    *,
    example_client: str,
    default_role: Role = Role.SOURCE,
) -> int:
    """``python -m services.<service>.commands.apikeys add <client> [--role ...]`` or ``revoke <key id>``."""
    service = settings.service_name
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}.commands.apikeys", description=f"API keys of {service}'s client systems."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key for a client system")
    add.add_argument("client", help=f"the client system's name, e.g. {example_client}")
    add.add_argument("--role", choices=[role.value for role in Role], default=default_role.value)
    add.add_argument("--tenant", help="the grid company (GLN-13 or EIC-16) the key belongs to; none for platform")
    revoke = commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args, settings))
