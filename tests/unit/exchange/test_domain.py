"""The exchange's decisions: what is sent, what is held and why, how series are bundled, the documents' ids."""

from __future__ import annotations

from datetime import date

import pytest

from libs.events.meter import Register
from libs.events.meterpoints import MeterpointType
from libs.events.series import MeterSeriesValidated, QuantityQuality
from services.exchange.domain import (
    Bundle,
    DocumentLimits,
    ExchangeDomains,
    HoldReason,
    Party,
    Plan,
    ReasonCode,
    document_mrid,
    hold_reason,
    plan_documents,
)
from tests.tenants import EIC_TENANT, TENANT_A, TENANT_B
from tests.unit.exchange.support import DATAHUB, day_series

RECEIVER = Party(DATAHUB)


def _plan(
    series: list[MeterSeriesValidated],
    *,
    max_series: int = 1000,
    max_bytes: int = 10_000_000,
    exchange_domains: dict[str, ExchangeDomains] | None = None,
) -> Plan:
    """Every series 100 bytes, the envelope 50."""
    return plan_documents(
        series,
        receiver=RECEIVER,
        limits=DocumentLimits(max_series=max_series, max_bytes=max_bytes),
        size_of=lambda _: 100,
        envelope_bytes=50,
        exchange_domains=exchange_domains,
    )


def test_a_measured_and_estimated_day_is_sent() -> None:
    series = day_series(qualities={3: QuantityQuality.ESTIMATED, 4: QuantityQuality.NOT_AVAILABLE})
    assert hold_reason(series, None) is None


def test_a_negative_quantity_on_an_exchange_point_is_held_not_flipped() -> None:
    series = day_series(meterpoint_type=MeterpointType.EXCHANGE, quantities={5: -1.25})
    assert hold_reason(series, ExchangeDomains("804", "803")) is HoldReason.NEGATIVE_QUANTITY


@pytest.mark.parametrize("quality", [QuantityQuality.INCOMPLETE, QuantityQuality.CALCULATED])
def test_incomplete_and_calculated_points_are_held(quality: QuantityQuality) -> None:
    assert hold_reason(day_series(qualities={7: quality}), None) is HoldReason.QUALITY_NOT_SENDABLE


@pytest.mark.parametrize(
    ("meterpoint_type", "register"),
    [
        (MeterpointType.CONSUMPTION, Register.REACTIVE_IMPORT),
        (MeterpointType.CONSUMPTION, Register.ACTIVE_EXPORT),
        (MeterpointType.PRODUCTION, Register.ACTIVE_IMPORT),
        (MeterpointType.EXCHANGE, Register.REACTIVE_EXPORT),
    ],
)
def test_registers_that_do_not_fit_the_point_are_held(meterpoint_type: MeterpointType, register: Register) -> None:
    series = day_series(meterpoint_type=meterpoint_type, register=register)
    assert hold_reason(series, ExchangeDomains("804", "803")) is HoldReason.REGISTER_NOT_SENDABLE


def test_an_exchange_point_without_its_grid_areas_is_held() -> None:
    series = day_series(meterpoint_type=MeterpointType.EXCHANGE)
    assert hold_reason(series, None) is HoldReason.MISSING_EXCHANGE_DOMAINS
    assert hold_reason(series, ExchangeDomains("804", "803")) is None


def test_the_document_mrid_is_36_characters_deterministic_and_per_sender() -> None:
    ids = [day_series(n).series_id for n in range(1, 4)]
    mrid = document_mrid(Party(TENANT_A), ids)
    assert len(mrid) == 36
    assert mrid == document_mrid(Party(TENANT_A), list(reversed(ids)))
    assert mrid != document_mrid(Party(TENANT_B), ids)
    assert mrid != document_mrid(Party(TENANT_A), ids[:2])
    with pytest.raises(ValueError, match="at least one"):
        document_mrid(Party(TENANT_A), [])


def test_a_party_is_a_gln_or_an_eic() -> None:
    assert Party(TENANT_A).scheme == "A10"
    assert Party(EIC_TENANT).scheme == "A01"
    with pytest.raises(ValueError, match="GLN-13 or EIC-16"):
        Party("5790000000013")


def test_bundles_respect_the_count_limit_and_keep_the_order() -> None:
    series = [day_series(n) for n in range(1, 8)]
    plan = _plan(series, max_series=3)
    assert [len(bundle.series) for bundle in plan.bundles] == [3, 3, 1]
    assert [s.series_id for bundle in plan.bundles for s in bundle.series] == [s.series_id for s in series]
    assert len({bundle.document_mrid for bundle in plan.bundles}) == 3


def test_bundles_respect_the_size_limit() -> None:
    series = [day_series(n) for n in range(1, 6)]
    # 50 bytes of envelope + 100 per series: 2 series fit in 250 bytes, a third would make 350.
    plan = _plan(series, max_bytes=250)
    assert [len(bundle.series) for bundle in plan.bundles] == [2, 2, 1]


def test_a_series_larger_than_a_document_is_held() -> None:
    plan = _plan([day_series(1)], max_bytes=120)
    assert plan.bundles == ()
    assert [held.reason for held in plan.held] == [HoldReason.TOO_LARGE]


def test_one_document_per_sender() -> None:
    series = [
        day_series(1),
        day_series(2, grid_company=TENANT_B),
        day_series(3),
        day_series(4, grid_company=EIC_TENANT),
    ]
    plan = _plan(series)
    assert {(bundle.sender.mrid, len(bundle.series)) for bundle in plan.bundles} == {
        (TENANT_A, 2),
        (TENANT_B, 1),
        (EIC_TENANT, 1),
    }
    assert all(bundle.receiver == RECEIVER for bundle in plan.bundles)


def test_the_latest_version_of_a_day_wins_and_a_redelivery_is_one_series() -> None:
    first, second = day_series(1, version=1), day_series(1, version=2)
    other_day = day_series(1, day=date(2025, 3, 2))
    plan = _plan([first, second, first, other_day, second])
    assert [s.series_id for s in plan.bundles[0].series] == [second.series_id, other_day.series_id]
    assert plan.superseded == (first.series_id,)


def test_held_series_are_named_with_their_reason() -> None:
    sendable, negative = day_series(1), day_series(2, meterpoint_type=MeterpointType.EXCHANGE, quantities={1: -2.0})
    plan = _plan([sendable, negative], exchange_domains={negative.meterpoint_id: ExchangeDomains("804", "803")})
    assert [bundle.series for bundle in plan.bundles] == [(sendable,)]
    assert [(h.series_id, h.meterpoint_id, h.day, h.reason) for h in plan.held] == [
        (negative.series_id, negative.meterpoint_id, negative.day, HoldReason.NEGATIVE_QUANTITY)
    ]


def test_the_same_series_make_the_same_bundles() -> None:
    series = [day_series(n) for n in range(1, 10)]
    assert _plan(series, max_series=4).bundles == _plan(series, max_series=4).bundles
    assert isinstance(_plan(series).bundles[0], Bundle)


@pytest.mark.parametrize(("max_series", "max_bytes"), [(0, 1000), (100_001, 1000), (10, 0), (10, 50 * 1024 * 1024 + 1)])
def test_limits_are_checked(max_series: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="a document"):
        DocumentLimits(max_series=max_series, max_bytes=max_bytes)


def test_reason_codes_cover_the_datahub_business_validation() -> None:
    assert {code.value for code in ReasonCode} == {"E10", "D50", "E73", "D23", "D12", "E86", "E89", "E87", "D66", "E17"}
    assert {code for code in ReasonCode if code.master_data} == {
        ReasonCode.UNKNOWN_METERPOINT,
        ReasonCode.NOT_GRID_COMPANY,
    }
