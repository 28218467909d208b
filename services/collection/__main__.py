"""``python -m services.collection``: the REST API (uvicorn), the MQTT ingress and the FTP server in one process.

Configuration comes from ``COLLECTION_*`` variables (see settings.py and README.md). SIGTERM stops all three: the
MQTT ingress disconnects without acknowledging what Kafka does not have, and the broker redelivers it; files
uploaded over FTP and not yet processed stay in the spool and are processed at the next start.
"""

from __future__ import annotations

import sys

import uvicorn

from libs.platform.logging import configure_logging
from services.collection.app import create_app
from services.collection.settings import CollectionSettings


def main() -> int:
    """Run the service until SIGTERM/SIGINT; exit 1 if the MQTT or FTP ingress died."""
    settings = CollectionSettings()
    configure_logging(settings.service_name, settings.log_level)
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(error: BaseException) -> None:
        # A replica that no longer consumes MQTT (or serves FTP) must be restarted rather than keep answering REST.
        failures.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=stop)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=15,
    )
    server = uvicorn.Server(config)
    server.run()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
