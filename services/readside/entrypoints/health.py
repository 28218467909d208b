"""``/healthz`` and ``/readyz`` of the read side: the platform's checks plus the consumer's lag per partition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from libs.platform.health import ReadinessRegistry, readiness_response
from services.readside.metrics import LagTracker


def consumer_details(lag: LagTracker) -> dict[str, Any]:
    """The consumer's state for ``/readyz``: paused or not, view version, lag in total and per partition."""
    return {
        "paused": lag.paused,
        "view_version": lag.version,
        "lag": lag.total,
        "partitions": [
            {
                "topic": entry.topic,
                "partition": entry.partition,
                "applied_offset": entry.applied_offset,
                "high_watermark": entry.high_watermark,
                "lag": entry.lag,
            }
            for entry in lag.partitions()
        ],
    }


def health_router() -> APIRouter:
    """Liveness answers while the loop runs; readiness runs the checks and reports the consumer's lag.

    The checks and the lag tracker are read from ``app.state.readiness`` and ``app.state.lag`` (set when the
    app starts).
    """
    router = APIRouter(tags=["health"], include_in_schema=False)

    @router.get("/healthz", operation_id="healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz", operation_id="readyz")
    async def readyz(request: Request) -> Response:
        readiness: ReadinessRegistry = request.app.state.readiness
        lag: LagTracker | None = getattr(request.app.state, "lag", None)
        report = await readiness.run()
        details = {"consumer": consumer_details(lag)} if lag is not None else {}
        return readiness_response(report, **details)

    return router
