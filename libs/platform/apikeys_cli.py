"""The API-key command every service with keys offers: ``add <client> [--role ...]`` and ``revoke <key id>``.

Keys live in the service's own database (table ``api_keys``, hashed); the plain key is printed once. A service's
``apikeys`` module calls `main` with its name and the DSN and schema of its settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from libs.platform.apikeys import Role, generate_api_key
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.db import create_pool
from libs.platform.migrations import migrate


async def _run(args: argparse.Namespace, dsn: str, schema: str | None) -> int:
    pool = await create_pool(dsn, schema=schema, max_size=1)
    try:
        async with pool.acquire() as connection:
            await migrate(connection, APIKEY_COMPONENT, APIKEY_MIGRATIONS)
        store = PostgresKeyStore(pool)
        if args.command == "add":
            new = generate_api_key(args.client, Role(args.role))
            await store.add(new.record)
            print(f"key id {new.record.key_id} for {args.client} (role {args.role})")
            print(f"API key (shown once): {new.plain_key}")
            return 0
        if await store.revoke(args.key_id):
            print(f"key {args.key_id} revoked")
            return 0
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    finally:
        await pool.close()


def main(argv: Sequence[str] | None, *, service: str, dsn: str, schema: str | None, example_client: str) -> int:
    """``python -m services.<service>.apikeys add <client> [--role read|write|admin]`` or ``revoke <key id>``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}.apikeys", description=f"API keys of {service}'s client systems."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key for a client system")
    add.add_argument("client", help=f"the client system's name, e.g. {example_client}")
    add.add_argument("--role", choices=[role.value for role in Role], default=Role.WRITE.value)
    revoke = commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args, dsn, schema))
