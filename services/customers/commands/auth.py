"""A client system's login: ``python -m services.customers.commands.auth <client>``.

Asks for the password on the terminal (at least 16 characters; use a generated one) and prints the settings entry
``"<client>": "scrypt$..."`` for ``CUSTOMERS_CLIENTS``; restart the service to apply it. The plain password goes to
the client system only, never into the settings.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from libs.platform.passwords import hash_password
from services.customers.auth import CLIENT_NAME

MIN_PASSWORD_LENGTH = 16


def main(argv: Sequence[str] | None = None) -> int:
    """Print the settings entry for a client system: ``"<client>": "<hash>"``."""
    parser = argparse.ArgumentParser(
        prog="python -m services.customers.commands.auth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("client", nargs="?", help="the client system's name (asked for when left out)")
    args = parser.parse_args(argv)
    client = args.client if args.client is not None else input("client system name: ")
    if not CLIENT_NAME.fullmatch(client):
        raise SystemExit("client names are 1-64 letters, digits, '.', '_' or '-'")
    password = getpass.getpass(f"password for {client}: ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise SystemExit(f"use a generated password of at least {MIN_PASSWORD_LENGTH} characters")
    print(f'"{client}": "{hash_password(password)}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
