"""API keys of client systems: ``python -m services.workorders.apikeys add <client> [--role write]``.

Keys live in the service's own database (table ``api_keys``, hashed); the plain key is printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from libs.platform.apikeys import Role, generate_api_key
from libs.platform.apikeys_store import APIKEY_COMPONENT, APIKEY_MIGRATIONS, PostgresKeyStore
from libs.platform.db import create_pool
from libs.platform.migrations import migrate
from services.workorders.settings import WorkordersSettings


async def _run(args: argparse.Namespace, settings: WorkordersSettings) -> int:
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), schema=settings.postgres_schema, max_size=1)
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


def main(argv: list[str] | None = None) -> int:
    """Command line: ``add <client> [--role read|write|admin]`` or ``revoke <key id>``."""
    parser = argparse.ArgumentParser(prog="python -m services.workorders.apikeys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key for a client system")
    add.add_argument("client", help="the client system's name, e.g. work-planning")
    add.add_argument("--role", choices=[role.value for role in Role], default=Role.WRITE.value)
    revoke = commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args, WorkordersSettings()))


if __name__ == "__main__":
    sys.exit(main())
