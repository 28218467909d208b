"""The work orders service's generated contract: ``python -m services.workorders.contracts [--check]``.

Writes (or, with ``--check``, compares) contracts/openapi/workorders.json, the REST API's OpenAPI document as the
app serves it (completed by `services.workorders.openapi`), with the default settings
(``WorkordersSettings.defaults()``), whatever the environment says. Nothing in the service imports this module.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from libs.platform.apikeys import InMemoryKeyStore
from libs.platform.contracts import CONTRACTS, ContractDocument, contracts_main, render_json
from services.workorders.app import create_app
from services.workorders.settings import WorkordersSettings

OPENAPI = CONTRACTS / "openapi" / "workorders.json"


def openapi_bytes() -> bytes:
    """The REST API's document as the code describes it, with the default settings (no I/O: no lifespan runs)."""
    app = create_app(WorkordersSettings.defaults(), key_store=InMemoryKeyStore(), registry=CollectorRegistry())
    return render_json(app.openapi())


DOCUMENTS = [ContractDocument(OPENAPI, openapi_bytes)]


def main(argv: list[str] | None = None) -> int:
    """Write the document, or with ``--check`` exit 1 when the committed one differs from the code."""
    return contracts_main(DOCUMENTS, prog="python -m services.workorders.contracts", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
