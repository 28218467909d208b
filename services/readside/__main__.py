"""``python -m services.readside``: the consumer and the query API in one process (uvicorn)."""

from __future__ import annotations

import uvicorn

from libs.platform.logging import configure_logging
from services.readside.app import create_app, tune_garbage_collector
from services.readside.settings import ReadsideSettings


def main() -> None:
    """Serve until SIGTERM/SIGINT; uvicorn runs the lifespan, which stops the consumer cleanly."""
    settings = ReadsideSettings()
    configure_logging(settings.service_name, settings.log_level)
    app = create_app(settings)
    tune_garbage_collector()
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
