"""Run the customers service: ``python -m services.customers`` (settings from ``CUSTOMERS_*`` variables)."""

from __future__ import annotations

import uvicorn

from libs.platform.logging import configure_logging
from services.customers.app import build_app
from services.customers.settings import CustomersSettings


def main() -> None:
    settings = CustomersSettings()
    configure_logging(settings.service_name, settings.log_level)
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
