"""``python -m services.workorders``: the REST API (uvicorn), the consumers, the outbox relay and the enricher.

Configuration comes from ``WORKORDERS_*`` variables (see settings.py and README.md). SIGTERM stops everything:
consumers leave their groups without committing what they did not finish, the relay finishes its batch.
"""

from __future__ import annotations

import uvicorn

from libs.platform.logging import configure_logging
from services.workorders.app import create_app
from services.workorders.settings import WorkordersSettings


def main() -> None:
    settings = WorkordersSettings()
    configure_logging(settings.service_name, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=15,
    )


if __name__ == "__main__":
    main()
