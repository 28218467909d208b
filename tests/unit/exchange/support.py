"""Validated series for the exchange's tests: real days of real meterpoints (DST days included)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from libs.events.gsrn import with_check_digit
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

COPENHAGEN = ZoneInfo("Europe/Copenhagen")
DATAHUB = "5790001330583"
"""Energinet's GLN: the receiver of every document."""


def meterpoint(serial: int) -> str:
    """The GSRN of test meterpoint ``serial``."""
    return with_check_digit(f"5713131804{serial:07d}")


def local_day(day: date) -> tuple[datetime, datetime]:
    """The day's local midnight and the next one, in UTC (23, 24 or 25 hours apart)."""
    start = datetime.combine(day, time(), COPENHAGEN).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), COPENHAGEN).astimezone(UTC)
    return start, end


def day_series(
    serial: int = 1,
    *,
    day: date = date(2025, 3, 1),
    grid_company: str = TENANT_A,
    meterpoint_type: MeterpointType = MeterpointType.CONSUMPTION,
    register: Register | None = None,
    resolution: Resolution = Resolution.PT15M,
    version: int = 1,
    quantities: dict[int, float] | None = None,
    qualities: dict[int, QuantityQuality] | None = None,
) -> MeterSeriesValidated:
    """A meterpoint's validated day: 0.412 kWh measured per interval unless ``quantities``/``qualities`` say else."""
    start, end = local_day(day)
    step = 900 if resolution is Resolution.PT15M else 3600
    count = int((end - start).total_seconds()) // step
    points = []
    for position in range(1, count + 1):
        quality = (qualities or {}).get(position, QuantityQuality.AS_PROVIDED)
        quantity = (quantities or {}).get(position, 0.0 if quality is QuantityQuality.NOT_AVAILABLE else 0.412)
        estimated = quality is QuantityQuality.ESTIMATED
        points.append(
            SeriesPoint(
                position=position,
                quantity=quantity,
                quality=quality,
                status=IntervalStatus.ESTIMATED if estimated else IntervalStatus.MEASURED,
                version=1,
                method=EstimationMethod.LINEAR if estimated else None,
                rules=(RuleCode.GAP,) if estimated else (),
            )
        )
    if register is None:
        register = Register.ACTIVE_EXPORT if meterpoint_type is MeterpointType.PRODUCTION else Register.ACTIVE_IMPORT
    gsrn = meterpoint(serial)
    return MeterSeriesValidated(
        series_id=MeterSeriesValidated.id_of(gsrn, register, day, version),
        meterpoint_id=gsrn,
        grid_company=grid_company,
        grid_area="804",
        meterpoint_type=meterpoint_type,
        register=register,
        resolution=resolution,
        time_zone="Europe/Copenhagen",
        day=day,
        start=start,
        end=end,
        version=version,
        reason=PublicationReason.COMPLETE,
        final=False,
        points=tuple(points),
    )
