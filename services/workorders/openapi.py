"""The REST API's OpenAPI document: FastAPI's, completed by `install_openapi` (``app.openapi()`` and ``/openapi.json``).

Completed with the ``Problem`` schema every error answers with, the description, and the headers the routes read
themselves (``Idempotency-Key``, ``If-Match``) marked required, as the routes enforce (400 / 428 rather than
FastAPI's 422, so they are optional to FastAPI). The committed file is ``contracts/openapi/workorders.json``,
written by ``python -m services.workorders.contracts`` (``--check`` compares, as the contract test does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.openapi.utils import get_openapi

if TYPE_CHECKING:
    from fastapi import FastAPI

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
