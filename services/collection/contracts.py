"""The collection service's generated contracts: ``python -m services.collection.contracts [--check]``.

Writes (or, with ``--check``, compares) contracts/openapi/collection.json (the REST API) and
contracts/asyncapi/collection.yaml (the MQTT topics), both with the default limits
(``CollectionSettings.defaults()``), whatever the environment says. Nothing in the service imports this module.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from libs.platform.apikeys import InMemoryKeyStore
from libs.platform.contracts import CONTRACTS, ContractDocument, contracts_main, render_json
from services.collection import asyncapi
from services.collection.app import create_app
from services.collection.settings import CollectionSettings

OPENAPI = CONTRACTS / "openapi" / "collection.json"
ASYNCAPI = CONTRACTS / "asyncapi" / "collection.yaml"


def openapi_bytes() -> bytes:
    """The REST API's document as the code describes it, with the default settings."""
    app = create_app(
        CollectionSettings.defaults(), key_store=InMemoryKeyStore(), readiness_checks=[], registry=CollectorRegistry()
    )
    return render_json(app.openapi())


def asyncapi_bytes() -> bytes:
    """The MQTT contract as the code describes it, with the default settings."""
    return asyncapi.render(asyncapi.document(CollectionSettings.defaults().mqtt))


DOCUMENTS = [ContractDocument(OPENAPI, openapi_bytes), ContractDocument(ASYNCAPI, asyncapi_bytes)]


def main(argv: list[str] | None = None) -> int:
    """Write the documents, or with ``--check`` exit 1 when a committed one differs from the code."""
    return contracts_main(DOCUMENTS, prog="python -m services.collection.contracts", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
