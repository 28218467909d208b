"""``python -m services.vee``: the consumer, the scheduler, the outbox relay and the health API in one process.

Configuration comes from ``VEE_*`` variables (see settings.py and README.md). SIGTERM stops cleanly (the batch in
flight commits or rolls back); a part that dies stops the process with exit 1.
"""

from __future__ import annotations

import sys

from libs.platform.serve import serve
from services.vee.app import create_app
from services.vee.settings import VeeSettings


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    return serve(create_app, VeeSettings, prog="python -m services.vee", description=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
