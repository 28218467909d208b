"""RFC 9457 problem details: the one error body format of every GridHub REST endpoint.

`install_problem_handlers(app)` makes FastAPI's own errors (404, 405, 422, HTTPException, unhandled
exceptions) answer with ``application/problem+json``; raise `ProblemError` for a specific problem.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from libs.platform.logging import CORRELATION_ID_HEADER, get_correlation_id

PROBLEM_JSON = "application/problem+json"

logger = logging.getLogger(__name__)


class Problem(BaseModel):
    """A problem details object; extension members are allowed as extra fields (e.g. ``errors``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = "about:blank"
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = None

    @classmethod
    def from_status(cls, status: int, detail: str | None = None, **extensions: Any) -> Problem:
        """Build an ``about:blank`` problem whose title is the status phrase, as RFC 9457 asks for."""
        return cls(title=status_phrase(status), status=status, detail=detail, **extensions)


def status_phrase(status: int) -> str:
    """Return the reason phrase of an HTTP status ("Not Found"), or "Error" for an unknown code."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    problem: Problem,
    *,
    headers: Mapping[str, str] | None = None,
    correlation_id: str | None = None,
) -> Response:
    """Render ``problem`` as a response; the correlation id (given or current) is added as an extension."""
    body = problem.model_dump(mode="json", exclude_none=True)
    correlation_id = correlation_id or get_correlation_id()
    if correlation_id is not None:
        # Lets a caller quote one id to support that finds every log line of the failed request.
        body.setdefault("correlation_id", correlation_id)
    return Response(
        orjson.dumps(body),
        status_code=problem.status,
        headers=dict(headers) if headers else None,
        media_type=PROBLEM_JSON,
    )


class ProblemError(HTTPException):
    """Raise from an endpoint or dependency to answer with exactly this problem (and headers)."""

    def __init__(self, problem: Problem, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(problem.status, problem.detail, dict(headers) if headers else None)
        self.problem = problem


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Answer an `HTTPException` (including Starlette's 404/405) with a problem body, keeping its headers."""
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException only
        raise exc
    if exc.status_code < 400:
        # 204/304 and friends carry no body; they are not problems.
        return Response(status_code=exc.status_code, headers=exc.headers)
    if isinstance(exc, ProblemError):
        return problem_response(exc.problem, headers=exc.headers)
    detail = exc.detail if exc.detail != status_phrase(exc.status_code) else None
    return problem_response(Problem.from_status(exc.status_code, detail), headers=exc.headers)


async def validation_exception_handler(request: Request, exc: Exception) -> Response:
    """Answer a request validation error with 422 and an ``errors`` list (location, message, type)."""
    if not isinstance(exc, RequestValidationError):  # pragma: no cover - registered for this type only
        raise exc
    # The offending input is left out on purpose: it may hold a secret or personal data.
    errors = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
        for error in exc.errors()
    ]
    problem = Problem.from_status(422, "the request is not valid", errors=errors)
    return problem_response(problem)


async def unhandled_exception_handler(request: Request, exc: Exception) -> Response:
    """Answer any other exception with a bare 500 problem; the details go to the log, never to the caller."""
    # This runs outside the middleware stack, after the correlation id contextvar was reset.
    correlation_id = getattr(request.state, "correlation_id", None)
    logger.error(
        "unhandled error in %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"correlation_id": correlation_id},
    )
    headers = {CORRELATION_ID_HEADER: correlation_id} if correlation_id else None
    return problem_response(Problem.from_status(500), headers=headers, correlation_id=correlation_id)


def install_problem_handlers(app: Starlette) -> None:
    """Register the problem+json exception handlers on a FastAPI (or Starlette) app."""
    app.add_exception_handler(HTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.add_exception_handler(Exception, unhandled_exception_handler)
