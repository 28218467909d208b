"""The VEE service's settings: the rules reach the domain, deadlines and bounds are checked at load."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from libs.events.meter import MAX_READING_VALUE, MeterReadingReceived, Quality, Register, Resolution, Unit
from libs.events.meterpoints import MeterpointType
from services.vee.handlers import kwh
from services.vee.settings import VeeSettings


def test_the_rules_section_fills_the_domains_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEE_RULES__SPIKE_FACTOR", "4.5")
    monkeypatch.setenv("VEE_RULES__MAX_KWH_PER_HOUR_PRODUCTION", "5000")
    monkeypatch.setenv("VEE_RULES__PROFILE_LEVEL_HOURS", "12")
    rules = VeeSettings().rules.to_domain()
    assert rules.spike_factor == 4.5
    assert rules.profile_level_hours == 12
    assert rules.max_kwh_per_hour[MeterpointType.PRODUCTION] == 5000
    assert rules.max_kwh_per_hour[MeterpointType.CONSUMPTION] == 1000  # the others keep their defaults
    assert rules.short_gap_hours == 3.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VEE_DEADLINE_LOCAL_TIME", "7:00"),
        ("VEE_DEADLINE_LOCAL_TIME", "24:00"),
        ("VEE_GAP_MAX_PER_SCAN", "0"),
        ("VEE_LOOKBACK_DAYS", "400"),
        ("VEE_RULES__SPIKE_FACTOR", "1"),
        ("VEE_RULES__PROFILE_LEVEL_HOURS", "25"),
        ("VEE_RULES__UNKNOWN", "1"),
        ("VEE_BOUNDARIES__VEE_POSTGRES__BREAKER", "null"),
    ],
)
def test_bad_values_stop_the_service_at_load(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        VeeSettings()


def test_production_refuses_the_dev_database_password() -> None:
    with pytest.raises(ValidationError, match="postgres_dsn"):
        VeeSettings(environment="production")


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [(1500.0, Unit.WH, 1.5), (2.25, Unit.KWH, 2.25), (0.004, Unit.MWH, 4.0), (-1.0, Unit.WH, -0.001)],
)
def test_values_are_converted_to_kwh(value: float, unit: Unit, expected: float) -> None:
    reading = MeterReadingReceived.create(
        meterpoint_id="571313130000000017",
        register=Register.ACTIVE_IMPORT,
        interval_end=datetime(2025, 3, 3, tzinfo=UTC),
        resolution=Resolution.PT1H,
        value=value,
        unit=unit,
        quality=Quality.MEASURED,
        source="hes-1",
        meter_index=1000.0,
    )
    converted, index = kwh(reading)
    assert converted == expected
    assert index == round(1000.0 * {Unit.WH: 0.001, Unit.KWH: 1.0, Unit.MWH: 1000.0}[unit], 6)
    assert abs(converted) <= MAX_READING_VALUE * 1000
