"""API keys of client systems: ``python -m services.collection.commands.apikeys add <client> [--role write]``.

Keys live in the service's own database (table ``api_keys``, hashed); the plain key is printed once.
"""

from __future__ import annotations

import sys

from libs.platform import apikeys_cli
from services.collection.settings import CollectionSettings


def main(argv: list[str] | None = None) -> int:
    """Command line: ``add <client> [--role read|write|admin]`` or ``revoke <key id>``."""
    return apikeys_cli.main(argv, CollectionSettings(), example_client="hes-north")


if __name__ == "__main__":
    sys.exit(main())
