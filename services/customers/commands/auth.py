"""A client system's login: ``python -m services.customers.commands.auth <client> --role R [--tenant GLN]``.

Asks for the password on the terminal (at least 16 characters; use a generated one) and prints the settings entry
``"<client>": {"password_hash": "scrypt$...", "role": "...", "tenant": "..."}`` for ``CUSTOMERS_CLIENTS``;
restart the service to apply it. The plain password goes to the client system only, never into the settings.
Roles: ``reader`` (read its grid company's customers and meterpoints), ``operator`` (also register and update
customers and move them in and out), ``admin`` (also the meterpoint master data), ``platform`` (every grid
company; no ``--tenant``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from libs.platform.passwords import hash_password
from libs.platform.tenancy import Role
from services.customers.auth import CLIENT_NAME, ClientSystem

MIN_PASSWORD_LENGTH = 16


def main(argv: Sequence[str] | None = None) -> int:
    """Print the settings entry for a client system: ``"<client>": {"password_hash": ..., "role": ..., ...}``."""
    parser = argparse.ArgumentParser(
        prog="python -m services.customers.commands.auth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("client", nargs="?", help="the client system's name (asked for when left out)")
    roles = [role.value for role in Role if role is not Role.SOURCE]
    parser.add_argument("--role", required=True, choices=roles, help="what the client system may do")
    parser.add_argument("--tenant", help="its grid company's GLN-13 or EIC-16 (every role but platform)")
    args = parser.parse_args(argv)
    client = args.client if args.client is not None else input("client system name: ")
    if not CLIENT_NAME.fullmatch(client):
        raise SystemExit("client names are 1-64 letters, digits, '.', '_' or '-'")
    password = getpass.getpass(f"password for {client}: ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise SystemExit(f"use a generated password of at least {MIN_PASSWORD_LENGTH} characters")
    try:
        entry = ClientSystem(password_hash=hash_password(password), role=Role(args.role), tenant=args.tenant)
    except ValidationError as error:
        raise SystemExit("; ".join(str(problem["msg"]) for problem in error.errors())) from None
    print(f"{json.dumps(client)}: {json.dumps(entry.model_dump(mode='json'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
