"""The query API: thin handlers over `views.ViewQueries`, with ETags and freshness on every answer.

ETags are weak and cover the data only, not the freshness block: a client revalidating with ``If-None-Match``
gets 304 while the data it holds is unchanged, and the ``Readside-*`` headers (on 200 and 304 alike) still tell
it how far behind the log the views are.

Every answer is scoped to the caller's tenant (the API key's grid company; the platform role sees all): a
meterpoint, customer or work order of another grid company answers exactly what an unknown id answers.

``python -m services.readside.contracts`` writes its OpenAPI document to contracts/openapi/readside.json.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from hashlib import blake2b
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from pydantic import AwareDatetime, BaseModel, StringConstraints
from starlette.responses import Response

from libs.events import Gsrn, Register, WorkOrderStatus
from libs.events.fields import MAX_VERSION
from libs.events.meterpoints import GRID_AREA_PATTERN
from libs.platform.apikeys import ApiKeyRecord, Role, require_role
from libs.platform.problems import PROBLEM_JSON, Problem, ProblemError, install_problem_handlers
from libs.platform.tenancy import Principal, PrincipalKind
from services.readside.models import (
    Completeness,
    Consumption,
    CustomerOverview,
    Freshness,
    MeterpointOverview,
    Resolution,
    SeriesVersions,
    ValidatedSeries,
    WorkOrderPage,
)
from services.readside.settings import ReadsideSettings
from services.readside.views import NoSeries, ViewQueries

API_VERSION = "1.1.0"
HEADER_VERSION = "Readside-View-Version"
HEADER_LAG = "Readside-Lag"
HEADER_APPLIED_AT = "Readside-Applied-At"

_OPAQUE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CustomerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_PROBLEM = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_FRESHNESS_HEADERS = {
    HEADER_VERSION: {"description": "Version of the views that answered.", "schema": {"type": "integer"}},
    HEADER_LAG: {"description": "Records of the source topics not yet applied.", "schema": {"type": "integer"}},
    HEADER_APPLIED_AT: {"description": "When the newest applied batch was committed.", "schema": {"type": "string"}},
    "ETag": {"description": "Weak validator of the data (not of the freshness).", "schema": {"type": "string"}},
}


# What the flow-control middleware in front of every query answers (app.py, `boundaries.rest_api`).
_FLOW_CONTROL = {
    408: "The request's body did not arrive in time (queries take none); the connection is closed.",
    413: "The request's body is larger than the limit (queries take none).",
    429: "The client's quota, or its requests in flight, are spent; see Retry-After and RateLimit.",
    503: "The service is saturated; retry after Retry-After.",
}


def _responses(*problems: int) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        200: {"headers": _FRESHNESS_HEADERS},
        304: {"description": "Not Modified: the data matches If-None-Match.", "headers": _FRESHNESS_HEADERS},
        401: {"description": "No valid API key.", **_PROBLEM},
    }
    for status in problems:
        responses[status] = {"description": Problem.from_status(status).title, **_PROBLEM}
    for status, description in _FLOW_CONTROL.items():
        responses[status] = {"description": description, **_PROBLEM}
    return responses


def get_queries(request: Request) -> ViewQueries:
    """The app's `ViewQueries` (set by the composition root)."""
    queries: ViewQueries = request.app.state.queries
    return queries


def get_settings(request: Request) -> ReadsideSettings:
    """The app's settings."""
    settings: ReadsideSettings = request.app.state.settings
    return settings


_reader = require_role(Role.READER)
_operator = require_role(Role.OPERATOR)
# Who answers when the settings turn API keys off (dev and tests only; production refuses it): nobody is scoped.
_UNAUTHENTICATED = Principal("unauthenticated", PrincipalKind.API_KEY, Role.PLATFORM, None)


async def get_caller(record: Annotated[ApiKeyRecord, Depends(_reader)]) -> Principal:
    """The caller whose tenant scopes the answer (the API key's principal)."""
    return record.principal


async def get_operator(record: Annotated[ApiKeyRecord, Depends(_operator)]) -> Principal:
    """The caller of an operator's answer (role operator or above: admin, platform)."""
    return record.principal


async def _unauthenticated_caller() -> Principal:
    return _UNAUTHENTICATED


QueriesDep = Annotated[ViewQueries, Depends(get_queries)]
SettingsDep = Annotated[ReadsideSettings, Depends(get_settings)]
CallerDep = Annotated[Principal, Depends(get_caller)]
OperatorDep = Annotated[Principal, Depends(get_operator)]


def etag_of(body: BaseModel) -> str:
    """A weak ETag of the answer's data (everything but its freshness)."""
    payload = body.model_dump_json(exclude={"freshness"}, by_alias=True)
    return f'W/"{blake2b(payload.encode(), digest_size=16).hexdigest()}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    opaque = etag.removeprefix("W/")
    candidates = (tag.strip() for tag in if_none_match.split(","))
    return any(tag == "*" or tag.removeprefix("W/") == opaque for tag in candidates)


def freshness_headers(freshness: Freshness) -> dict[str, str]:
    """The freshness of an answer as response headers."""
    headers = {HEADER_VERSION: str(freshness.view_version), HEADER_LAG: str(freshness.lag)}
    if freshness.applied_at is not None:
        headers[HEADER_APPLIED_AT] = freshness.applied_at.astimezone(UTC).isoformat()
    return headers


AnswerBody = (
    MeterpointOverview
    | Consumption
    | CustomerOverview
    | WorkOrderPage
    | ValidatedSeries
    | SeriesVersions
    | Completeness
)


def respond(request: Request, body: AnswerBody) -> Response:
    """200 with the body, or 304 when If-None-Match names its ETag; freshness headers either way."""
    etag = etag_of(body)
    # private: what a caller sees depends on its tenant, so no shared cache may hand it to another caller.
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", **freshness_headers(body.freshness)}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body.model_dump_json(by_alias=True), media_type="application/json", headers=headers)


def _bad_request(detail: str) -> ProblemError:
    return ProblemError(Problem.from_status(400, detail))


def _not_found(detail: str, freshness: Freshness) -> ProblemError:
    # Not in the views may mean "not yet": the problem carries the same freshness as any answer.
    problem = Problem.from_status(404, detail, freshness=freshness.model_dump(mode="json"))
    return ProblemError(problem, headers=freshness_headers(freshness))


def encode_cursor(work_order_id: str) -> str:
    """The opaque cursor after ``work_order_id``."""
    return base64.urlsafe_b64encode(work_order_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The work order id a cursor points after (400 when it is no cursor of ours)."""
    try:
        work_order_id = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        work_order_id = ""
    if not _OPAQUE_ID.fullmatch(work_order_id):
        raise _bad_request("cursor is not a cursor this API handed out")
    return work_order_id


router = APIRouter(prefix="/v1", tags=["views"])
# One text for an unknown meterpoint and one of another grid company: the answer must not tell them apart.
_NO_METERPOINT = "no such meterpoint in the views"


@router.get(
    "/meterpoints/{meterpoint_id}",
    operation_id="getMeterpoint",
    response_model=MeterpointOverview,
    responses=_responses(404, 422),
)
async def get_meterpoint(
    request: Request,
    meterpoint_id: Annotated[Gsrn, PathParam(description="GSRN-18")],
    queries: QueriesDep,
    caller: CallerDep,
) -> Response:
    """Meterpoint overview: owner, current customer, latest reading per register, last seen, open work orders,
    alarms. 404 for a meterpoint of another grid company, or whose master data has not arrived yet."""
    overview = await queries.meterpoint(meterpoint_id, caller)
    if overview is None:
        raise _not_found(_NO_METERPOINT, await queries.freshness("meterpoint"))
    return respond(request, overview)


@router.get(
    "/meterpoints/{meterpoint_id}/consumption",
    operation_id="getConsumption",
    response_model=Consumption,
    responses=_responses(400, 404, 422),
)
async def get_consumption(
    request: Request,
    meterpoint_id: Annotated[Gsrn, PathParam(description="GSRN-18")],
    queries: QueriesDep,
    settings: SettingsDep,
    caller: CallerDep,
    start: Annotated[
        AwareDatetime | date,
        Query(alias="from", description="Start (inclusive): an RFC 3339 instant for hours, a local date for days."),
    ],
    end: Annotated[AwareDatetime | date, Query(alias="to", description="End (exclusive), like `from`.")],
    resolution: Resolution = Resolution.HOUR,
    register: Register = Register.ACTIVE_IMPORT,
) -> Response:
    """Consumption per hour (UTC hours) or per local day over a bounded range; buckets without data are left out.
    404 like the overview for a meterpoint no event named or of another grid company."""
    if resolution is Resolution.DAY:
        if isinstance(start, datetime) or isinstance(end, datetime):
            raise _bad_request("daily consumption takes local dates (YYYY-MM-DD) for from and to")
        limit = timedelta(days=settings.max_daily_range_days)
    else:
        timezone = await queries.timezone()
        start = _as_instant(start, timezone)
        end = _as_instant(end, timezone)
        limit = timedelta(days=settings.max_hourly_range_days)
    # Both dates or both instants by now.
    if end <= start:
        raise _bad_request("to must be after from")
    if end - start > limit:
        raise _bad_request(f"the range may span at most {limit.days} days at {resolution} resolution")
    consumption = await queries.consumption(meterpoint_id, register, resolution, start, end, caller)
    if consumption is None:
        raise _not_found(_NO_METERPOINT, await queries.freshness("consumption"))
    return respond(request, consumption)


_NO_SERIES = "no validated series of the meterpoint for that day"
DayParam = Annotated[date, PathParam(description="The local day of the meterpoint's grid area (YYYY-MM-DD).")]
SeriesRegister = Annotated[
    Register | None,
    Query(description="The register; by default the day's active_import series, else the one there is."),
]


@router.get(
    "/meterpoints/{meterpoint_id}/series/{day}",
    operation_id="getValidatedSeries",
    response_model=ValidatedSeries,
    responses=_responses(404, 422),
)
async def get_validated_series(
    request: Request,
    meterpoint_id: Annotated[Gsrn, PathParam(description="GSRN-18")],
    day: DayParam,
    queries: QueriesDep,
    caller: CallerDep,
    register: SeriesRegister = None,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="The day's version; default the newest.")
    ] = None,
) -> Response:
    """One version of the meterpoint's validated local day: every interval with its position, quantity, ENTSO-E
    quality, Elhub status, estimation method, rules and version. 404 like the overview for a meterpoint no event
    named or of another grid company; 404 too for a day (or version) that was not published."""
    found = await queries.series(meterpoint_id, day, register, version, caller)
    if found is None or isinstance(found, NoSeries):
        raise _not_found(_NO_METERPOINT if found is None else _NO_SERIES, await queries.freshness("series"))
    return respond(request, found)


@router.get(
    "/meterpoints/{meterpoint_id}/series/{day}/versions",
    operation_id="listSeriesVersions",
    response_model=SeriesVersions,
    responses=_responses(404, 422),
)
async def list_series_versions(
    request: Request,
    meterpoint_id: Annotated[Gsrn, PathParam(description="GSRN-18")],
    day: DayParam,
    queries: QueriesDep,
    caller: CallerDep,
    register: SeriesRegister = None,
) -> Response:
    """Every published version of the meterpoint's validated day (reason, final flag, interval counts), oldest
    first; 404 like the series."""
    found = await queries.series_versions(meterpoint_id, day, register, caller)
    if found is None or isinstance(found, NoSeries):
        raise _not_found(_NO_METERPOINT if found is None else _NO_SERIES, await queries.freshness("series"))
    return respond(request, found)


@router.get(
    "/completeness",
    operation_id="getCompleteness",
    response_model=Completeness,
    responses=_responses(403, 422),
)
async def get_completeness(
    request: Request,
    queries: QueriesDep,
    caller: OperatorDep,
    day: Annotated[date, Query(description="The local day of the grid areas (YYYY-MM-DD).")],
    grid_area: Annotated[
        str | None, Query(pattern=GRID_AREA_PATTERN, description="One grid area; by default every one with series.")
    ] = None,
) -> Response:
    """Operators (role operator or above): per grid area and day, the number and share of intervals measured,
    estimated and missing over the newest version of each of the caller's meterpoints' validated day."""
    return respond(request, await queries.completeness(day, grid_area, caller))


def _as_instant(moment: datetime | date, timezone: Any) -> datetime:
    if isinstance(moment, datetime):
        return moment
    # A date means the start of that local day.
    return datetime(moment.year, moment.month, moment.day, tzinfo=timezone)


@router.get(
    "/customers/{customer_id}/overview",
    operation_id="getCustomerOverview",
    response_model=CustomerOverview,
    responses=_responses(404, 422),
)
async def get_customer_overview(
    request: Request, customer_id: Annotated[CustomerId, PathParam()], queries: QueriesDep, caller: CallerDep
) -> Response:
    """A customer, the meterpoints they hold or held, and their consumption of the recent days (404 for a
    customer of another grid company)."""
    overview = await queries.customer(customer_id, caller)
    if overview is None:
        raise _not_found("no such customer in the views", await queries.freshness("customer"))
    return respond(request, overview)


@router.get("/workorders", operation_id="listWorkOrders", response_model=WorkOrderPage, responses=_responses(400, 422))
async def list_work_orders(
    request: Request,
    queries: QueriesDep,
    settings: SettingsDep,
    caller: CallerDep,
    status: WorkOrderStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page.")] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000, description="Page size (default from settings).")] = None,
) -> Response:
    """The caller's work orders (those at its grid company's meterpoints) by status, ordered by id, in pages."""
    after = decode_cursor(cursor) if cursor else ""
    page = await queries.work_orders(status, after, limit or settings.workorders_page_size, caller)
    if page.next_cursor is not None:
        page = page.model_copy(update={"next_cursor": encode_cursor(page.next_cursor)})
    return respond(request, page)


def create_api(
    settings: ReadsideSettings,
    *,
    queries: ViewQueries | None = None,
    lifespan: Callable[[FastAPI], Any] | None = None,
) -> FastAPI:
    """The FastAPI app with the query routes (health, metrics and the key store are wired in ``app.py``)."""
    app = FastAPI(
        title="GridHub read side",
        version=API_VERSION,
        description=(
            "Materialized views of GridHub's event log: meterpoints, consumption (with the validated quality per "
            "bucket), validated daily series and their versions, completeness per grid area, customers, work orders. "
            "Every answer tells how fresh it is (`freshness`, `Readside-*` headers); ETags are weak and cover the "
            "data only. Energy values are exact decimal strings."
        ),
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.state.settings = settings
    app.state.queries = queries
    if settings.require_api_key:
        app.include_router(router, dependencies=[Depends(_reader)])
    else:
        app.include_router(router)
        app.dependency_overrides[get_caller] = _unauthenticated_caller
        app.dependency_overrides[get_operator] = _unauthenticated_caller
    return app
