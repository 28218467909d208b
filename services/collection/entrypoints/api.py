"""REST entry points: ``POST /v1/readings`` and ``POST /v1/meter-events`` for client systems (head-end, MDM).

Thin: read the body (bounded), build the command, call the handler, map the outcome. ``202`` with one result
per item comes only after Kafka acknowledged every accepted item (and the dead letters of refused ones).
A body that is not a usable batch gets a problem+json 4xx; Kafka down gets a fast ``503`` with Retry-After.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from libs.events.meterpoints import SourceKind
from libs.flowcontrol.errors import Refused
from libs.platform.apikeys import ApiKeyRecord, Role, require_role
from libs.platform.logging import get_correlation_id, new_correlation_id
from libs.platform.problems import Problem, ProblemError
from services.collection.adapters.kafka import Publisher, PublishFailed
from services.collection.domain import Accepted, Duplicate, Held, ItemOutcome, MalformedBatch
from services.collection.handlers import (
    ALARMS,
    READINGS,
    Kind,
    Origin,
    Pipeline,
    ScopeNotReady,
    SubmitBatch,
    submit_batch,
)
from services.collection.metrics import CollectionMetrics
from services.collection.scope import Deliverer

READINGS_PATH = "/v1/readings"
METER_EVENTS_PATH = "/v1/meter-events"
_MALFORMED_STATUS = {"invalid_json": 400, "not_a_batch": 422, "empty_batch": 422, "too_many_items": 413}
_JSON = "application/json"


@dataclass(frozen=True)
class RestDependencies:
    """What the endpoints need, built in ``app.py`` (``app.state.rest``)."""

    publisher: Publisher
    pipeline: Pipeline
    metrics: CollectionMetrics
    max_body_bytes: int
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def get_dependencies(request: Request) -> RestDependencies:
    """FastAPI dependency: the app's `RestDependencies` (set while the app runs)."""
    dependencies: RestDependencies | None = getattr(request.app.state, "rest", None)
    if dependencies is None:
        raise ProblemError(Problem.from_status(503, "the service is starting"), headers={"Retry-After": "1"})
    return dependencies


DependenciesDep = Annotated[RestDependencies, Depends(get_dependencies)]
WriterDep = Annotated[ApiKeyRecord, Depends(require_role(Role.SOURCE))]


# --- documented shapes (the handlers build the JSON directly; these models only describe it) --------------------


class ItemResult(BaseModel):
    """What happened to one item of the batch."""

    index: int = Field(ge=0, description="Position of the item in the request array (0-based).")
    status: Literal["accepted", "duplicate_in_batch", "rejected", "held"] = Field(
        description="accepted: in Kafka. held: valid, but its meterpoint is not registered (yet); kept in the "
        "dead-letter topic and published with the same id when an operator redrives the holds after the "
        "meterpoint is registered. rejected: refused for good (see reason)."
    )
    id: str | None = Field(
        default=None, description="reading_id / alarm_id (the event id) of an accepted, duplicate or held item."
    )
    duplicate_of: int | None = Field(default=None, description="Index of the earlier identical item.")
    reason: str | None = Field(
        default=None,
        description="Why a rejected item was refused: malformed, invalid_meterpoint, naive_timestamp, "
        "misaligned_interval, in_future, value_out_of_range, too_many_decimals, unit_mismatch, "
        "missing_with_value, conflicting_duplicate, not_in_scope (the meterpoint is not assigned to this "
        "client system, or belongs to another grid company); why a held one is held: unknown_meterpoint.",
    )
    detail: str | None = Field(default=None, description="The field and rule that failed.")


class BatchResult(BaseModel):
    """Per-item results, sent after Kafka acknowledged every accepted item."""

    accepted: int = Field(ge=0, description="Items published.")
    duplicates: int = Field(ge=0, description="Items identical to an earlier item of the batch (published once).")
    rejected: int = Field(ge=0, description="Items refused; each is also recorded in the dead-letter topic.")
    held: int = Field(
        ge=0, description="Items held for an unregistered meterpoint (in the dead-letter topic, redriven later)."
    )
    results: list[ItemResult]


def render_results(outcomes: list[ItemOutcome]) -> bytes:
    """The `BatchResult` JSON of ``outcomes`` (built directly: up to 10,000 items per response)."""
    results: list[dict[str, Any]] = []
    accepted = duplicates = held = 0
    for outcome in outcomes:
        if isinstance(outcome, Accepted):
            accepted += 1
            results.append({"index": outcome.index, "status": "accepted", "id": outcome.event_id})
        elif isinstance(outcome, Duplicate):
            duplicates += 1
            results.append(
                {
                    "index": outcome.index,
                    "status": "duplicate_in_batch",
                    "id": outcome.event_id,
                    "duplicate_of": outcome.duplicate_of,
                }
            )
        elif isinstance(outcome, Held):
            held += 1
            results.append(
                {
                    "index": outcome.index,
                    "status": "held",
                    "id": outcome.event_id,
                    "reason": outcome.reason,
                    "detail": outcome.detail,
                }
            )
        else:
            results.append(
                {"index": outcome.index, "status": "rejected", "reason": outcome.reason, "detail": outcome.detail}
            )
    rejected = len(outcomes) - accepted - duplicates - held
    return orjson.dumps(
        {"accepted": accepted, "duplicates": duplicates, "rejected": rejected, "held": held, "results": results}
    )


# --- the endpoints ---------------------------------------------------------------------------------------------


def _problem(status: int, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any) -> ProblemError:
    return ProblemError(Problem.from_status(status, detail, **extensions), headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes and 415 unless it is JSON."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != _JSON:
        raise _problem(415, f"send the batch as {_JSON}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _problem(413, f"the request body is larger than {limit} bytes", reason="body_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _problem(413, f"the request body is larger than {limit} bytes", reason="body_too_large")
    except ClientDisconnect:  # the client gave up (its timeout, a crash): an ordinary event, not a server error
        detail = "the client disconnected before the body was complete"
        raise _problem(400, detail, reason="client_disconnected") from None
    return bytes(body)


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1.0)))}


async def _submit(kind: Kind, path: str, request: Request, client: ApiKeyRecord, deps: RestDependencies) -> Response:
    body = await read_body(request, deps.max_body_bytes)
    correlation_id = get_correlation_id() or new_correlation_id()
    command = SubmitBatch(
        kind=kind,
        body=body,
        origin=Origin("rest", f"rest:{path}", correlation_id, client.client),
        # A head-end system is its key's client name (what a meterpoint's data_source names), in the key's tenant.
        deliverer=Deliverer(SourceKind.HEAD_END, client.client, client.tenant),
        received_at=deps.wall_clock(),
    )
    try:
        outcomes = await submit_batch(command, publisher=deps.publisher, pipeline=deps.pipeline, metrics=deps.metrics)
    except MalformedBatch as malformed:
        deps.metrics.rejections.labels("rest", malformed.reason).inc()
        raise _problem(_MALFORMED_STATUS[malformed.reason], malformed.detail, reason=malformed.reason) from None
    except ScopeNotReady:
        detail = "the meterpoint view is catching up; nothing was accepted"
        raise _problem(503, detail, headers=_retry_after(2.0)) from None
    except Refused as refused:  # the Kafka breaker is open
        raise _problem(
            503, "Kafka is unavailable; nothing was accepted", headers=_retry_after(refused.retry_after)
        ) from None
    except PublishFailed:
        # Some records may have been written; a retry is safe: the ids are deterministic and consumers deduplicate.
        raise _problem(503, "Kafka did not acknowledge the batch; send it again", headers=_retry_after(1.0)) from None
    return Response(render_results(outcomes), status_code=202, media_type=_JSON)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for status, description in {
        400: "The body is not valid JSON.",
        401: "No API key, or an unknown or revoked one.",
        403: "The API key's role may not write.",
        408: "The body did not arrive in time (10 s plus 1 s per 64 KiB by default); the connection is closed.",
        413: "The body is larger than the limit, or the batch has too many items.",
        415: "The body is not application/json.",
        422: "The JSON is not a non-empty array.",
        429: "The client's quota, or its requests in flight, are spent; see Retry-After and RateLimit.",
        503: "Kafka is unavailable, the service is saturated or its meterpoint view still catches up at start; "
        "retry after Retry-After (safe: ids are stable).",
    }.items()
}


def _body(schema_name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
        }
    }


router = APIRouter(tags=["ingest"])


@router.post(
    READINGS_PATH,
    status_code=202,
    operation_id="postReadings",
    summary="Submit a batch of interval readings",
    response_model=BatchResult,
    responses={202: {"description": "Every accepted reading is in Kafka."}, **_ERRORS},
    openapi_extra=_body("ReadingBatch"),
)
async def post_readings(request: Request, client: WriterDep, deps: DependenciesDep) -> Response:
    """Validate each reading; publish the accepted ones to ``meter.readings.v1`` (key = meterpoint id).

    Answers after Kafka acknowledged every accepted reading, with one result per item: ``accepted`` (with its
    deterministic reading id), ``duplicate_in_batch``, ``rejected`` (reason and detail: ``not_in_scope`` when the
    meterpoint is not assigned to this client system in its grid company) or ``held`` (``unknown_meterpoint``: no
    such meterpoint is registered yet; the reading waits in the DLQ for a redrive). Rejected and held items are
    recorded in ``meter.readings.v1.dlq``.
    """
    return await _submit(READINGS, READINGS_PATH, request, client, deps)


@router.post(
    METER_EVENTS_PATH,
    status_code=202,
    operation_id="postMeterEvents",
    summary="Submit a batch of meter events (alarms)",
    response_model=BatchResult,
    responses={202: {"description": "Every accepted event is in Kafka."}, **_ERRORS},
    openapi_extra=_body("MeterEventBatch"),
)
async def post_meter_events(request: Request, client: WriterDep, deps: DependenciesDep) -> Response:
    """Validate each alarm; publish the accepted ones to ``meter.events.v1`` (key = meterpoint id).

    Same answer as ``POST /v1/readings``; rejected items are recorded in ``meter.events.v1.dlq``.
    """
    return await _submit(ALARMS, METER_EVENTS_PATH, request, client, deps)
