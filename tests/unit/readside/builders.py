"""Validated daily series as the validation stage publishes them (MeterSeriesValidated), for the read side's tests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from libs.events.meter import Register, Resolution
from libs.events.meterpoints import MeterpointType
from libs.events.series import (
    EstimationMethod,
    IntervalStatus,
    MeterSeriesValidated,
    PublicationReason,
    QuantityQuality,
    RuleCode,
    SeriesPoint,
)
from tests.tenants import TENANT_A

OSLO = "Europe/Oslo"


def local_midnight(day: date, time_zone: str = OSLO) -> datetime:
    """The UTC instant of ``day``'s local midnight."""
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(time_zone)).astimezone(UTC)


def measured(quantity: float, version: int = 1) -> dict[str, Any]:
    return {
        "quantity": quantity,
        "quality": QuantityQuality.AS_PROVIDED,
        "status": IntervalStatus.MEASURED,
        "version": version,
    }


def estimated(quantity: float, version: int = 1, method: EstimationMethod = EstimationMethod.LINEAR) -> dict[str, Any]:
    return {
        "quantity": quantity,
        "quality": QuantityQuality.ESTIMATED,
        "status": IntervalStatus.ESTIMATED,
        "version": version,
        "method": method,
        "rules": (RuleCode.GAP,),
    }


def missing(version: int = 1) -> dict[str, Any]:
    return {
        "quantity": 0.0,
        "quality": QuantityQuality.NOT_AVAILABLE,
        "status": IntervalStatus.MISSING,
        "version": version,
        "rules": (RuleCode.GAP,),
    }


def validated_day(
    meterpoint_id: str,
    day: date,
    *,
    version: int = 1,
    points: Mapping[int, Mapping[str, Any]] | None = None,
    quantity: float = 0.25,
    reason: PublicationReason = PublicationReason.COMPLETE,
    final: bool = False,
    resolution: Resolution = Resolution.PT15M,
    time_zone: str = OSLO,
    grid_area: str = "NO1",
    grid_company: str = TENANT_A,
    register: Register = Register.ACTIVE_IMPORT,
) -> MeterSeriesValidated:
    """A day of ``meterpoint_id``: every interval measured at ``quantity`` except the positions in ``points``."""
    start = local_midnight(day, time_zone)
    end = local_midnight(day + timedelta(days=1), time_zone)
    step = 900 if resolution is Resolution.PT15M else 3600
    count = int((end - start).total_seconds()) // step
    overrides = points or {}
    return MeterSeriesValidated(
        series_id=MeterSeriesValidated.id_of(meterpoint_id, register, day, version),
        meterpoint_id=meterpoint_id,
        grid_company=grid_company,
        grid_area=grid_area,
        meterpoint_type=MeterpointType.CONSUMPTION,
        register=register,
        resolution=resolution,
        time_zone=time_zone,
        day=day,
        start=start,
        end=end,
        version=version,
        reason=reason,
        final=final,
        points=tuple(
            SeriesPoint(position=position, **(overrides.get(position) or measured(quantity)))
            for position in range(1, count + 1)
        ),
    )
