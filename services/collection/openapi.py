"""The REST API's OpenAPI document, generated from the code (written by ``python -m services.collection.contracts``).

The endpoints read their body as bytes (validated straight from them, PERFORMANCE.md), so FastAPI cannot see
the request schema; `install_openapi` adds it from the same pydantic models the validator uses. The committed
file is ``contracts/openapi/collection.json``; a contract test fails when it and the code disagree. It documents
the default limits (``CollectionSettings.defaults()``), whatever the environment says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi.openapi.utils import get_openapi
from pydantic import Field, TypeAdapter

from services.collection.domain import AlarmInput, ReadingInput
from services.collection.settings import CollectionSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

_REF = "#/components/schemas/{model}"
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
            "description": "A stable code where there is one: invalid_json, not_a_batch, empty_batch, "
            "too_many_items, body_too_large, quota, bulkhead_full, ...",
        },
        "correlation_id": {"type": "string", "description": "Quote it to support: it finds every log line."},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["title", "status"],
}

DESCRIPTION = """\
Client systems (head-end systems, meter data management) submit interval readings and meter events in
batches. Each item is validated on its own (GSRN check digit, timezone, alignment to the resolution, not in
the future, value range, unit against register, duplicates within the batch); the answer comes only after
Kafka acknowledged every accepted item, and lists one result per item. Refused items are also recorded in
the topic's dead-letter topic with their reason.

Authenticate with an API key of role `write`: `Authorization: Bearer ghk_...` or `X-API-Key: ghk_...`.
Flow control: a quota per client (429 with `Retry-After`, `RateLimit` and `RateLimit-Policy`), a body size
limit (413), a limit of requests in flight and a fast 503 with `Retry-After` while Kafka is unavailable.
Resending a batch is always safe: reading and alarm ids are deterministic, so a resent item is the same event.
"""


def extra_schemas(max_items: int) -> dict[str, Any]:
    """``ReadingBatch``, ``MeterEventBatch`` (and what they refer to) and ``Problem``, for ``components.schemas``."""
    schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    for name, model in (("ReadingBatch", ReadingInput), ("MeterEventBatch", AlarmInput)):
        batch: Any = Annotated[list[model], Field(min_length=1, max_length=max_items)]  # type: ignore[valid-type]
        adapter: TypeAdapter[Any] = TypeAdapter(batch)
        schema = adapter.json_schema(ref_template=_REF, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = {"description": f"1 to {max_items} items, validated one by one.", **schema}
    return schemas


def install_openapi(app: FastAPI, settings: CollectionSettings) -> None:
    """Make ``app.openapi()`` include the request body schemas (and the API description)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=DESCRIPTION,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(extra_schemas(settings.max_batch_items))
            document["components"]["schemas"] = dict(sorted(schemas.items()))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
