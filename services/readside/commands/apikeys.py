"""API keys of client systems: ``python -m services.readside.commands.apikeys add <client> --tenant <id>``
(and ``rotate``, ``revoke``, ``list``).

Keys live in the service's own database (table ``api_keys``, hashed); the plain key is printed once.
"""

from __future__ import annotations

import sys

from libs.platform import apikeys_cli
from libs.platform.apikeys import Role
from services.readside.settings import ReadsideSettings


def main(argv: list[str] | None = None) -> int:
    """Command line: ``add <client> --tenant <id> [--role R] [--expires-in D]``, ``rotate <key id> [--overlap D]``,
    ``revoke <key id>``, ``list [--tenant <id>]`` (`libs.platform.apikeys_cli`)."""
    return apikeys_cli.main(argv, ReadsideSettings(), example_client="web", default_role=Role.READER)


if __name__ == "__main__":
    sys.exit(main())
