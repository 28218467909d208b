"""The REST API under ``/v1/work-orders``: thin routes that build commands, call handlers and map outcomes.

Concurrency: every order carries a version, sent as a strong ETag (``"3"``); transitions need ``If-Match``
(428 without, 412 when it names another version; ``*`` accepts any). Creation needs an ``Idempotency-Key``
(400 without): a retried request with the same key and content gets the first order back (201,
``Idempotent-Replayed: true``); the same key with other content is refused with 422
(draft-ietf-httpapi-idempotency-key-header). Errors are RFC 9457 problems with a stable ``reason``.

Tenancy: every route is scoped to the caller's grid company (the API key's tenant; the platform role sees all).
An order of another grid company answers exactly the 404 of an unknown id, lists hold the caller's orders only,
and an order can be opened only at a meterpoint of the caller's grid company.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from starlette.responses import Response as StarletteResponse

from libs.events import WorkOrderStatus, WorkOrderType
from libs.flowcontrol.asgi import retry_after_seconds
from libs.flowcontrol.errors import Refused
from libs.platform.apikeys import ApiKeyRecord, Role, require_role
from libs.platform.problems import PROBLEM_JSON, Problem, ProblemError, problem_response
from services.workorders import handlers
from services.workorders.domain import Command, InvalidCommand, InvalidTransition, WorkOrder
from services.workorders.handlers import (
    Context,
    IdempotencyClaim,
    IdempotencyKeyReused,
    ListQuery,
    NotFound,
    VersionMismatch,
    Versions,
)
from services.workorders.models import (
    CancelWorkOrder,
    CompleteWorkOrder,
    CreateWorkOrder,
    Moment,
    ScheduleWorkOrder,
    StartWorkOrder,
    WorkOrderOut,
    WorkOrderPage,
)

PREFIX = "/v1/work-orders"
MAX_PAGE_SIZE = 200
_IDEMPOTENCY_KEY = re.compile(r"[!#-~]{1,255}")  # printable ASCII without the double quote
_STRONG_ETAG = re.compile(r'"([0-9]{1,9})"')
_PROBLEM = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_ETAG = {"ETag": {"description": 'The order\'s version as a strong ETag, e.g. "3".', "schema": {"type": "string"}}}


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    common = (400, 401, 403, 413, 422, 429, 503)
    return {s: {"description": Problem.from_status(s).title, **_PROBLEM} for s in sorted({*statuses, *common})}


def get_context(request: Request) -> Context:
    """The handlers' context, set by the composition root while the app runs."""
    ctx: Context | None = getattr(request.app.state, "context", None)
    if ctx is None:
        problem = Problem.from_status(503, "the service is starting or stopping")
        raise ProblemError(problem, headers={"Retry-After": "1"})
    return ctx


def get_default_page_size(request: Request) -> int:
    """The page size when the caller names none."""
    size: int = request.app.state.default_page_size
    return size


ContextDep = Annotated[Context, Depends(get_context)]
Reader = Annotated[ApiKeyRecord, Depends(require_role(Role.READER))]
Writer = Annotated[ApiKeyRecord, Depends(require_role(Role.OPERATOR))]
WorkOrderId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", examples=["WO-00000001"])]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Required: the ETag of the version the change is based on ("3"), or * for any. '
        "Without it: 428; another version: 412.",
        examples=['"1"', "*"],
    ),
]

router = APIRouter(prefix=PREFIX, tags=["work orders"])


def etag(order: WorkOrder) -> str:
    """The strong ETag of an order's current representation."""
    return f'"{order.version}"'


def _respond(response: Response, order: WorkOrder) -> WorkOrderOut:
    response.headers["ETag"] = etag(order)
    response.headers["Cache-Control"] = "no-store"
    return WorkOrderOut.of(order)


def _bad_request(reason: str, detail: str) -> ProblemError:
    return ProblemError(Problem.from_status(400, detail, reason=reason))


def parse_if_match(value: str | None) -> Versions:
    """The versions an If-Match header accepts; None for ``*``. Weak or malformed tags match nothing."""
    if value is None or not value.strip():
        detail = "send If-Match with the ETag of the version you change"
        raise ProblemError(Problem.from_status(428, detail, reason="if_match_required"))
    tags = [tag.strip() for tag in value.split(",")]
    if "*" in tags:
        return None
    return frozenset(int(m.group(1)) for tag in tags if (m := _STRONG_ETAG.fullmatch(tag)))


def parse_idempotency_key(value: str | None) -> str:
    """The key of an Idempotency-Key header (a Structured Fields string, quotes optional)."""
    if value is None:
        raise _bad_request("idempotency_key_required", "send an Idempotency-Key header with a unique value")
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise _bad_request("invalid_idempotency_key", "Idempotency-Key is 1-255 printable ASCII characters")
    return key


def encode_cursor(after: int, query: ListQuery) -> str:
    """An opaque cursor: the position to continue after and the filters it belongs to."""
    return base64.urlsafe_b64encode(orjson.dumps({"a": after, "f": query.fingerprint()})).decode().rstrip("=")


def decode_cursor(cursor: str, query: ListQuery) -> int:
    """The position in ``cursor``; 400 when it is malformed or was made for other filters."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after, fingerprint = payload["a"], payload["f"]
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise _bad_request("invalid_cursor", "the cursor is not one this API made") from None
    valid = isinstance(after, int) and not isinstance(after, bool) and 1 <= after < 2**63
    if not valid or fingerprint != query.fingerprint():
        raise _bad_request("invalid_cursor", "the cursor belongs to other filters; start again without it")
    return int(after)


@router.post(
    "",
    operation_id="createWorkOrder",
    summary="Open a work order",
    status_code=201,
    responses={
        201: {
            "description": "Created, or the order an earlier request with the same Idempotency-Key created.",
            "headers": {
                **_ETAG,
                "Location": {"description": "The order's URL.", "schema": {"type": "string"}},
                "Idempotent-Replayed": {"description": "true on a replay.", "schema": {"type": "string"}},
            },
        },
        **_problem_responses(400, 422),
    },
)
async def create_work_order(
    body: CreateWorkOrder,
    response: Response,
    ctx: ContextDep,
    caller: Writer,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Required, unique per intended order (e.g. a UUID); a retry sends the same key and body. "
            "Kept 24 hours per client system.",
        ),
    ] = None,
) -> WorkOrderOut:
    key = parse_idempotency_key(idempotency_key)
    command = body.command()
    claim = IdempotencyClaim(handlers.idempotency_client(caller.principal), key, handlers.request_hash(command))
    created = await handlers.create_work_order(ctx, command, claim, caller.principal)
    response.headers["Location"] = f"{PREFIX}/{created.order.work_order_id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _respond(response, created.order)


@router.get(
    "",
    operation_id="listWorkOrders",
    summary="List work orders, newest first",
    responses=_problem_responses(400, 422),
)
async def list_work_orders(
    ctx: ContextDep,
    caller: Reader,
    default_limit: Annotated[int, Depends(get_default_page_size)],
    statuses: Annotated[list[WorkOrderStatus] | None, Query(alias="status", description="Any of these.")] = None,
    types: Annotated[list[WorkOrderType] | None, Query(alias="type", description="Any of these.")] = None,
    meterpoint_id: Annotated[str | None, Query(pattern=r"^[0-9]{18}$")] = None,
    created_from: Annotated[Moment | None, Query(description="Created at or after this instant.")] = None,
    created_to: Annotated[Moment | None, Query(description="Created before this instant.")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size (default 50).")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page.")] = None,
) -> WorkOrderPage:
    query = ListQuery(
        statuses=tuple(statuses or ()),
        types=tuple(types or ()),
        meterpoint_id=meterpoint_id,
        created_from=created_from,
        created_to=created_to,
        limit=limit or default_limit,
    )
    if cursor is not None:
        query = replace(query, after=decode_cursor(cursor, query))
    page = await handlers.list_work_orders(ctx, query, caller.principal)
    next_cursor = encode_cursor(page.next_after, query) if page.next_after is not None else None
    return WorkOrderPage(items=[WorkOrderOut.of(order) for order in page.orders], next_cursor=next_cursor)


@router.get(
    "/{work_order_id}",
    operation_id="getWorkOrder",
    summary="Get a work order",
    responses={200: {"headers": _ETAG}, **_problem_responses(404)},
)
async def get_work_order(
    work_order_id: WorkOrderId, response: Response, ctx: ContextDep, caller: Reader
) -> WorkOrderOut:
    return _respond(response, await handlers.get_work_order(ctx, work_order_id, caller.principal))


_TRANSITION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The changed order.", "headers": _ETAG},
    **_problem_responses(404, 409, 412, 422, 428),
}


async def _transition(
    ctx: Context, response: Response, work_order_id: str, if_match: str | None, command: Command, caller: ApiKeyRecord
) -> WorkOrderOut:
    expected = parse_if_match(if_match)
    order = await handlers.change_work_order(ctx, work_order_id, expected, command, caller.principal)
    return _respond(response, order)


@router.post(
    "/{work_order_id}/schedule",
    operation_id="scheduleWorkOrder",
    summary="Assign a crew and a visit window (created or scheduled orders)",
    responses=_TRANSITION_RESPONSES,
)
async def schedule_work_order(
    work_order_id: WorkOrderId,
    body: ScheduleWorkOrder,
    response: Response,
    ctx: ContextDep,
    caller: Writer,
    if_match: IfMatch = None,
) -> WorkOrderOut:
    return await _transition(ctx, response, work_order_id, if_match, body.command(), caller)


@router.post(
    "/{work_order_id}/start",
    operation_id="startWorkOrder",
    summary="The crew started on site (scheduled orders)",
    responses=_TRANSITION_RESPONSES,
)
async def start_work_order(
    work_order_id: WorkOrderId,
    response: Response,
    ctx: ContextDep,
    caller: Writer,
    body: Annotated[StartWorkOrder | None, Body()] = None,
    if_match: IfMatch = None,
) -> WorkOrderOut:
    return await _transition(ctx, response, work_order_id, if_match, (body or StartWorkOrder()).command(), caller)


@router.post(
    "/{work_order_id}/complete",
    operation_id="completeWorkOrder",
    summary="The crew finished the job (orders in progress)",
    responses=_TRANSITION_RESPONSES,
)
async def complete_work_order(
    work_order_id: WorkOrderId,
    body: CompleteWorkOrder,
    response: Response,
    ctx: ContextDep,
    caller: Writer,
    if_match: IfMatch = None,
) -> WorkOrderOut:
    return await _transition(ctx, response, work_order_id, if_match, body.command(), caller)


@router.post(
    "/{work_order_id}/cancel",
    operation_id="cancelWorkOrder",
    summary="Cancel a work order (created, scheduled or in progress)",
    responses=_TRANSITION_RESPONSES,
)
async def cancel_work_order(
    work_order_id: WorkOrderId,
    body: CancelWorkOrder,
    response: Response,
    ctx: ContextDep,
    caller: Writer,
    if_match: IfMatch = None,
) -> WorkOrderOut:
    return await _transition(ctx, response, work_order_id, if_match, body.command(), caller)


def _handler(status: int, reason: str) -> Any:
    async def handle(request: Request, error: Exception) -> StarletteResponse:
        return problem_response(Problem.from_status(status, str(error), reason=reason))

    return handle


async def _invalid_command(request: Request, error: Exception) -> StarletteResponse:
    assert isinstance(error, InvalidCommand)
    errors = [{"loc": ["body", *v.field.split(".")], "msg": v.message, "type": "rule"} for v in error.violations]
    problem = Problem.from_status(422, "the request breaks a rule", reason="invalid_command", errors=errors)
    return problem_response(problem)


async def _invalid_transition(request: Request, error: Exception) -> StarletteResponse:
    assert isinstance(error, InvalidTransition)
    problem = Problem.from_status(409, str(error), reason="invalid_transition", current_status=str(error.status))
    return problem_response(problem)


async def _version_mismatch(request: Request, error: Exception) -> StarletteResponse:
    assert isinstance(error, VersionMismatch)
    detail = f"the work order is at version {error.current.version}; re-read it and decide again"
    return problem_response(
        Problem.from_status(412, detail, reason="version_mismatch"), headers={"ETag": etag(error.current)}
    )


async def _refused(request: Request, error: Exception) -> StarletteResponse:
    assert isinstance(error, Refused)
    retry_after = retry_after_seconds(error.retry_after if error.retry_after is not None else 1.0)
    problem = Problem.from_status(503, "a dependency is unavailable; retry later", reason=error.reason)
    return problem_response(problem, headers={"Retry-After": str(retry_after)})


def install_error_handlers(app: FastAPI) -> None:
    """Map handler outcomes to problems: 404, 409, 412, 422 and 503 (a refused dependency)."""
    app.add_exception_handler(NotFound, _handler(404, "work_order_not_found"))
    app.add_exception_handler(IdempotencyKeyReused, _handler(422, "idempotency_key_reused"))
    app.add_exception_handler(InvalidCommand, _invalid_command)
    app.add_exception_handler(InvalidTransition, _invalid_transition)
    app.add_exception_handler(VersionMismatch, _version_mismatch)
    app.add_exception_handler(Refused, _refused)
