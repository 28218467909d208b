"""``python -m services.customers``: the SOAP 1.1 endpoint and the in-process outbox relay (uvicorn).

Configuration comes from ``CUSTOMERS_*`` variables (see settings.py and README.md). SIGTERM stops the relay
cleanly (it publishes what is committed first); a relay that dies stops the process with exit 1.
"""

from __future__ import annotations

import sys

from libs.platform.serve import serve
from services.customers.app import create_app
from services.customers.settings import CustomersSettings


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    return serve(create_app, CustomersSettings, prog="python -m services.customers", description=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
