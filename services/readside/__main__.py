"""``python -m services.readside``: the consumer and the query API in one process (uvicorn).

Configuration comes from ``READSIDE_*`` variables (see settings.py and README.md). SIGTERM stops the consumer
cleanly (the batch in flight commits or rolls back); a consumer that dies stops the process with exit 1.
"""

from __future__ import annotations

import sys

from libs.platform.serve import serve
from services.readside.app import create_app
from services.readside.settings import ReadsideSettings


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, with the collector kept off the objects that live as long as the process."""
    return serve(
        create_app, ReadsideSettings, prog="python -m services.readside", description=__doc__, argv=argv, freeze_gc=True
    )


if __name__ == "__main__":
    sys.exit(main())
