"""The REST API's OpenAPI document, generated from the code: ``python -m services.workorders.openapi [--check]``.

The committed file is ``contracts/openapi/workorders.json``; a contract test fails when it and the code disagree.
FastAPI's document is completed here: the ``Problem`` schema every error answers with, the description, and the
headers the routes read themselves (``Idempotency-Key``, ``If-Match``) marked required, as the routes enforce
(400 / 428 rather than FastAPI's 422, so they are optional to FastAPI).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from fastapi.openapi.utils import get_openapi

if TYPE_CHECKING:
    from fastapi import FastAPI

CONTRACT = Path(__file__).resolve().parents[2] / "contracts" / "openapi" / "workorders.json"
_REQUIRED_HEADERS = frozenset({"Idempotency-Key", "If-Match"})

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details (application/problem+json).",
    "properties": {
        "type": {"type": "string", "default": "about:blank"},
        "title": {"type": "string", "description": "The status phrase."},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What went wrong, for a human."},
        "reason": {
            "type": "string",
            "description": "A stable code: work_order_not_found, invalid_transition, version_mismatch, "
            "if_match_required, idempotency_key_required, invalid_idempotency_key, idempotency_key_reused, "
            "invalid_command, invalid_cursor, database_unavailable, breaker_open, quota, bulkhead_full, "
            "body_too_large, ...",
        },
        "current_status": {"type": "string", "description": "On 409: the order's status."},
        "correlation_id": {"type": "string", "description": "Quote it to support: it finds every log line."},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "On 422: each violation."},
    },
    "required": ["title", "status"],
}

DESCRIPTION = """\
Work orders send field crews to meterpoints: install, replace or inspect a meter, disconnect or reconnect.
Lifecycle: `created` -> `scheduled` (crew and visit window; again to reschedule) -> `in_progress` -> `completed`;
`cancelled` from created, scheduled or in_progress. An action the status does not allow answers 409.
Inspections are also opened by the service itself for meter alarms (tamper, long outage, clock error).

Concurrency: each order has a `version`, sent as a strong `ETag` ("3"). Transitions require `If-Match` with it
(428 without; 412 with the current `ETag` when another request changed the order first; `*` accepts any version).
Creating requires an `Idempotency-Key` (400 without): a retry with the same key and body returns the first
order (201 and `Idempotent-Replayed: true`); the same key with a different body answers 422. Keys are kept
24 hours per client system.

The customer at the meterpoint comes from the customers service. When it cannot answer, the order is created
anyway with `customer.status` = `pending` (perhaps with a provisional value from the local replica) and filled
in later; that change raises the version too.

Authenticate with an API key: `Authorization: Bearer ghk_...` or `X-API-Key: ghk_...`; role `read` for GET,
`write` for everything else. Flow control: a quota per client (429 with `Retry-After` and `RateLimit` headers),
a body size limit (413), a limit of requests in flight and a fast 503 with `Retry-After` while the database is
unavailable. Errors are RFC 9457 problems (`application/problem+json`) with a stable `reason`.
"""


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    for path in document.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "header" and parameter.get("name") in _REQUIRED_HEADERS:
                    parameter["required"] = True
                    schema = parameter.get("schema", {})
                    if "anyOf" in schema:  # FastAPI spells the optional header as string | null
                        required = {"type": "string", "minLength": 1, "title": schema.get("title", "")}
                        if "examples" in schema:
                            required["examples"] = schema["examples"]
                        parameter["schema"] = required
    return document


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` the completed document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=DESCRIPTION,
                routes=app.routes,
            )
            app.openapi_schema = _complete(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def render(document: dict[str, Any]) -> bytes:
    """The bytes of the committed file: two-space indent, final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def generated() -> bytes:
    """The document as the code describes it, with the default settings."""
    from prometheus_client import CollectorRegistry

    from libs.platform.apikeys import InMemoryKeyStore
    from services.workorders.app import create_app
    from services.workorders.settings import WorkordersSettings

    app = create_app(WorkordersSettings.defaults(), key_store=InMemoryKeyStore(), registry=CollectorRegistry())
    return render(app.openapi())


def main(argv: list[str] | None = None) -> int:
    """Write the document, or with ``--check`` exit 1 when the committed file differs from the code."""
    parser = argparse.ArgumentParser(prog="python -m services.workorders.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when file and code differ")
    parser.add_argument("--out", type=Path, default=CONTRACT, help="target file (default: %(default)s)")
    args = parser.parse_args(argv)
    content = generated()
    if args.check:
        if not args.out.exists() or args.out.read_bytes() != content:
            print(f"{args.out} differs from the code; run python -m services.workorders.openapi", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(content)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
