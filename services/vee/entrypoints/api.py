"""The small read API: a day's published versions (what went out on meter.series.v1), for operators and tests."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Request

from libs.events.meter import Register


def api_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["series"])

    @router.get("/series/{meterpoint_id}/{register}/{day}", operation_id="getSeriesVersions")
    async def series_versions(
        request: Request,
        meterpoint_id: Annotated[str, Path(pattern=r"^[0-9]{18}$")],
        register: Register,
        day: date,
    ) -> dict[str, Any]:
        """Every published version of one day of one meterpoint's register, newest first."""
        pool: asyncpg.Pool[Any] | None = request.app.state.parts.pool
        if pool is None:
            raise HTTPException(503, "not started")
        rows = await pool.fetch(
            "SELECT version, reason, final, published_at, points::text FROM day_versions "
            "WHERE meterpoint_id = $1 AND register = $2 AND day = $3 ORDER BY version DESC LIMIT 100",
            meterpoint_id,
            str(register),
            day,
        )
        if not rows:
            raise HTTPException(404, "no published version of this day")
        return {
            "meterpoint_id": meterpoint_id,
            "register": str(register),
            "day": day.isoformat(),
            "versions": [
                {
                    "version": row["version"],
                    "reason": row["reason"],
                    "final": row["final"],
                    "published_at": row["published_at"].isoformat(),
                    "points": json.loads(row["points"]),
                }
                for row in rows
            ],
        }

    return router
