"""The read side's generated contract: ``python -m services.readside.contracts [--check]``.

Writes (or, with ``--check``, compares) contracts/openapi/readside.json, the query API's OpenAPI document.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from libs.platform.contracts import CONTRACTS, ContractDocument, contracts_main
from services.readside.entrypoints.api import create_api
from services.readside.settings import ReadsideSettings

OPENAPI_PATH = CONTRACTS / "openapi" / "readside.json"

_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["title", "status"],
}


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, as committed in contracts/openapi/readside.json (default settings)."""
    document = create_api(ReadsideSettings.defaults()).openapi()
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
    return document


def render_openapi() -> bytes:
    """The committed spelling of the document: sorted keys, two-space indent, final newline."""
    return (json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n").encode()


DOCUMENTS = [ContractDocument(OPENAPI_PATH, render_openapi)]


def main(argv: list[str] | None = None) -> int:
    """Write the documents, or with ``--check`` exit 1 when a committed one differs from the code."""
    return contracts_main(DOCUMENTS, prog="python -m services.readside.contracts", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
