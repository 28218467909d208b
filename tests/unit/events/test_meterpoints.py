"""Meterpoint master data events: the rules the models hold beyond the schema's types."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from libs.events.examples import GRID_COMPANY, METERPOINT
from libs.events.fields import MAX_VERSION
from libs.events.meterpoints import MeterpointUpdated


def updated(**changes: Any) -> MeterpointUpdated:
    fields: dict[str, Any] = {
        "meterpoint_id": METERPOINT,
        "grid_company": GRID_COMPANY,
        "grid_area": "804",
        "type": "consumption",
        "resolution": "PT15M",
        "settlement_method": "flex",
        "connection": {"state": "connected", "since": date(2024, 6, 1)},
        "data_source": {"kind": "device", "id": METERPOINT},
        "version": 2,
    }
    return MeterpointUpdated.model_validate({**fields, **changes}, strict=False)


def test_a_version_beyond_32_bits_is_refused_so_no_consumer_column_overflows() -> None:
    assert updated(version=MAX_VERSION).version == MAX_VERSION
    with pytest.raises(ValidationError, match="less than or equal"):
        updated(version=MAX_VERSION + 1)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"type": "exchange", "settlement_method": None}, "names its neighbour_grid_area"),
        ({"type": "exchange", "settlement_method": None, "neighbour_grid_area": "804"}, "differs from its grid_area"),
        ({"type": "exchange", "neighbour_grid_area": "791"}, "no settlement_method"),
        ({"neighbour_grid_area": "791"}, "only an exchange meterpoint"),
        ({"grid_company": "5790000000013"}, "check digit"),
    ],
)
def test_exchange_points_and_owners_follow_the_rules(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        updated(**changes)
