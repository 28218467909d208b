"""REST entry points of gap fill for head-end systems: the re-read requests they poll and acknowledge.

``GET /v1/reread-requests`` lists the open requests of the calling key's client in its grid company (oldest first);
``DELETE /v1/reread-requests/{request_id}`` acknowledges one after the system resent the range (404 for a request
that is not the caller's: another client's request is indistinguishable from none).
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from libs.platform.apikeys import ApiKeyRecord, Role, require_role
from libs.platform.problems import Problem, ProblemError
from services.collection.adapters.rereads import RereadStore, stored_json

REREADS_PATH = "/v1/reread-requests"


@dataclass(frozen=True)
class RereadDependencies:
    """What the endpoints need, built in ``app.py`` (``app.state.rereads``)."""

    store: RereadStore
    list_limit: int


def get_rereads(request: Request) -> RereadDependencies:
    """FastAPI dependency: the app's `RereadDependencies` (set while the app runs with gap fill on)."""
    dependencies: RereadDependencies | None = getattr(request.app.state, "rereads", None)
    if dependencies is None:
        raise ProblemError(Problem.from_status(503, "re-read requests are not available"), headers={"Retry-After": "5"})
    return dependencies


RereadsDep = Annotated[RereadDependencies, Depends(get_rereads)]
SourceDep = Annotated[ApiKeyRecord, Depends(require_role(Role.SOURCE))]


# A field named "register" shadows BaseModel.register (see libs.events.meter); Field() keeps it required.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class RereadRequest(BaseModel):
        """Send the readings of ``meterpoint_id``'s ``register`` with ``interval_end`` in (``start``, ``end``] again."""

        command: Literal["reread"]
        request_id: str = Field(description="The request's id (a UUID): acknowledge it with DELETE once resent.")
        meterpoint_id: str
        register: str = Field(description="The register whose intervals are missing.")
        resolution: str
        start: datetime = Field(description="Exclusive: the end of the last interval before the gap.")
        end: datetime = Field(description="Inclusive: the end of the gap's last interval.")
        requested_at: datetime


class RereadRequests(BaseModel):
    """The caller's open requests, oldest first (at most the service's list limit)."""

    requests: list[RereadRequest]


router = APIRouter(tags=["gap fill"])

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@router.get(
    REREADS_PATH,
    operation_id="listRereadRequests",
    summary="List the open re-read requests of the calling client system",
    response_model=RereadRequests,
    responses={
        401: {"description": "No API key, or an unknown or revoked one.", "content": _PROBLEM},
        403: {"description": "The API key's role is not a source.", "content": _PROBLEM},
    },
)
async def list_reread_requests(client: SourceDep, deps: RereadsDep) -> Response:
    """The re-read requests the validation stage addressed to this client system (the key's client name, in the
    key's grid company), oldest first. Resend each range over ``POST /v1/readings`` (resent readings keep their ids),
    then acknowledge it with ``DELETE``."""
    tenant = client.tenant or ""
    requests = await deps.store.open_requests(tenant, client.client, limit=deps.list_limit)
    return Response(stored_json(requests), media_type="application/json")


@router.delete(
    REREADS_PATH + "/{request_id}",
    status_code=204,
    operation_id="acknowledgeRereadRequest",
    summary="Acknowledge a re-read request once the range was resent",
    responses={
        401: {"description": "No API key, or an unknown or revoked one.", "content": _PROBLEM},
        403: {"description": "The API key's role is not a source.", "content": _PROBLEM},
        404: {"description": "The caller has no open request of this id.", "content": _PROBLEM},
    },
)
async def acknowledge_reread_request(
    request_id: Annotated[str, Path(description="The request's id (a UUID).")], client: SourceDep, deps: RereadsDep
) -> Response:
    """Remove the request from the caller's open requests."""
    try:
        canonical = str(uuid.UUID(request_id))
    except ValueError:
        canonical = None  # no UUID is no request of the caller's either: 404 like any other
    if canonical is None or not await deps.store.acknowledge(client.tenant or "", client.client, canonical):
        raise ProblemError(Problem.from_status(404, "no open re-read request of this id for this client system"))
    return Response(status_code=204)
