"""``python -m services.collection``: the REST API (uvicorn), the MQTT ingress and the FTP server in one process.

Configuration comes from ``COLLECTION_*`` variables (see settings.py and README.md). SIGTERM stops all three: the
MQTT ingress disconnects without acknowledging what Kafka does not have, and the broker redelivers it; files
uploaded over FTP and not yet processed stay in the spool and are processed at the next start. An MQTT or FTP
ingress that dies stops the process with exit 1: a replica that no longer consumes must be restarted.
"""

from __future__ import annotations

import sys

from libs.platform.serve import serve
from services.collection.app import create_app
from services.collection.settings import CollectionSettings


def main(argv: list[str] | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; exit 1 if the MQTT or FTP ingress died."""
    return serve(create_app, CollectionSettings, prog="python -m services.collection", description=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
