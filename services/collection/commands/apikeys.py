"""API keys of client systems: ``python -m services.collection.commands.apikeys add <client> --tenant <id>``
(and ``rotate``, ``revoke``, ``list``).

Keys live in the service's own database (table ``api_keys``, hashed); the plain key is printed once.
"""

from __future__ import annotations

import sys

from libs.platform import apikeys_cli
from services.collection.settings import CollectionSettings


def main(argv: list[str] | None = None) -> int:
    """Command line: ``add <client> --tenant <id> [--role R] [--expires-in D]``, ``rotate <key id> [--overlap D]``,
    ``revoke <key id>``, ``list [--tenant <id>]`` (`libs.platform.apikeys_cli`)."""
    return apikeys_cli.main(argv, CollectionSettings(), example_client="hes-north")


if __name__ == "__main__":
    sys.exit(main())
