"""``python -m services.workorders``: the REST API (uvicorn), the consumers, the outbox relay and the enricher.

Configuration comes from ``WORKORDERS_*`` variables (see settings.py and README.md). SIGTERM stops everything:
consumers leave their groups without committing what they did not finish, the relay finishes its batch. A
background task that dies stops the process with exit 1.
"""

from __future__ import annotations

import sys

from libs.platform.serve import serve
from services.workorders.app import create_app
from services.workorders.settings import WorkordersSettings


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; exit 1 when a background task died."""
    return serve(create_app, WorkordersSettings, prog="python -m services.workorders", description=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
