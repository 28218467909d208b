"""The committed datahub schemas: valid draft 2020-12, their examples valid, and documents GridHub builds valid."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from libs.events.meter import Resolution
from libs.events.meterpoints import MeterpointType
from libs.events.series import MeterSeriesValidated, QuantityQuality
from services.exchange.adapters.datahub import document_json, encode_document, plan
from services.exchange.domain import DocumentLimits, ExchangeDomains, HoldReason, Party
from stack.config import REPO
from tests.tenants import EIC_TENANT, TENANT_A, TENANT_B
from tests.unit.exchange.support import DATAHUB, day_series

SCHEMAS = REPO / "contracts" / "datahub"
DOCUMENT = SCHEMAS / "notify-validated-measure-data.rsm012.schema.json"


def _validator(path: Path) -> Draft202012Validator:
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.schema.json")), ids=lambda path: path.name)
def test_every_schema_is_valid_and_so_are_its_examples(path: Path) -> None:
    validator = _validator(path)
    examples = validator.schema["examples"]
    assert examples
    for example in examples:
        assert list(validator.iter_errors(example)) == []


def _documents() -> list[dict[str, Any]]:
    exchange = day_series(50, meterpoint_type=MeterpointType.EXCHANGE)
    series = [
        day_series(1),
        day_series(2, day=date(2025, 3, 30)),
        day_series(3, day=date(2025, 10, 26), resolution=Resolution.PT1H),
        day_series(4, meterpoint_type=MeterpointType.PRODUCTION, quantities={1: 0.0, 2: 99999.999}),
        day_series(5, qualities={1: QuantityQuality.NOT_AVAILABLE, 2: QuantityQuality.ESTIMATED}),
        day_series(6, grid_company=TENANT_B),
        day_series(7, grid_company=EIC_TENANT),
        exchange,
    ]
    domains = {exchange.meterpoint_id: ExchangeDomains(in_area="804", out_area="803")}
    built = plan(series, receiver=Party(DATAHUB), limits=DocumentLimits(max_series=3), exchange_domains=domains)
    assert built.held == ()
    created = datetime(2025, 3, 31, 5, 0, 7, 123, tzinfo=UTC)
    return [document_json(bundle, created, domains) for bundle in built.bundles]


def test_built_documents_validate_against_the_committed_schema() -> None:
    validator = _validator(DOCUMENT)
    documents = _documents()
    assert len(documents) == 4  # TENANT_A's 6 series in 2 documents, TENANT_B's and the EIC's one each
    for document in documents:
        assert [error.message for error in validator.iter_errors(document)] == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mRID",), "x" * 37),
        (("type", "value"), "E65"),
        (("sender_MarketParticipant.mRID", "codingScheme"), "A01"),
        (("receiver_MarketParticipant.marketRole.type", "value"), "MDR"),
        (("createdDateTime",), "2025-03-31T05:00:07.123Z"),
        (("Series", 0, "marketEvaluationPoint.type", "value"), "E19"),
        (("Series", 0, "Period", "resolution"), "PT30M"),
        (("Series", 0, "Period", "timeInterval", "start", "value"), "2025-02-28T23:00:00Z"),
        (("Series", 0, "Period", "Point", 0, "quality", "value"), "Z99"),
    ],
)
def test_the_schema_refuses_a_wrong_field(path: tuple[str | int, ...], value: str) -> None:
    document = _documents()[0]
    target: Any = document["NotifyValidatedMeasureData_MarketDocument"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(_validator(DOCUMENT).iter_errors(document)) != []


def test_an_exchange_series_needs_its_domains() -> None:
    document = _documents()[1]  # TENANT_A's second document ends with the exchange point
    series = document["NotifyValidatedMeasureData_MarketDocument"]["Series"][-1]
    assert series["marketEvaluationPoint.type"] == {"value": "E20"}
    assert list(_validator(DOCUMENT).iter_errors(document)) == []
    del series["in_Domain.mRID"]
    assert list(_validator(DOCUMENT).iter_errors(document)) != []


_SERIES = st.builds(
    lambda serial, day, resolution, meterpoint_type, sender, quantity, quality: day_series(
        serial,
        day=day,
        resolution=resolution,
        meterpoint_type=meterpoint_type,
        grid_company=sender,
        quantities={1: quantity},
        qualities={2: quality},
    ),
    st.integers(1, 40),
    st.sampled_from([date(2025, 3, 30), date(2025, 6, 1), date(2025, 10, 26)]),
    st.sampled_from(list(Resolution)),
    st.sampled_from(list(MeterpointType)),
    st.sampled_from([TENANT_A, TENANT_B, EIC_TENANT]),
    st.integers(0, 99_999_999).map(lambda milli: milli / 1000),
    st.sampled_from([QuantityQuality.AS_PROVIDED, QuantityQuality.ESTIMATED, QuantityQuality.NOT_AVAILABLE]),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_SERIES, min_size=1, max_size=12), st.integers(1, 5), st.integers(8_000, 40_000))
def test_any_plan_is_valid_complete_and_within_its_limits(
    series: list[MeterSeriesValidated], max_series: int, max_bytes: int
) -> None:
    validator = _validator(DOCUMENT)
    domains = {item.meterpoint_id: ExchangeDomains(in_area="804", out_area="803") for item in series}
    built = plan(
        series, receiver=Party(DATAHUB), limits=DocumentLimits(max_series, max_bytes), exchange_domains=domains
    )
    created = datetime(2025, 11, 1, 5, 0, tzinfo=UTC)
    sent: list[str] = []
    for bundle in built.bundles:
        body = encode_document(bundle, created, domains)
        assert len(body) <= max_bytes
        assert len(bundle.series) <= max_series
        assert list(validator.iter_errors(json.loads(body))) == []
        sent += [item.series_id for item in bundle.series]
    accounted = sent + [held.series_id for held in built.held] + list(built.superseded)
    assert sorted(accounted) == sorted({item.series_id for item in series})
    assert len(sent) == len(set(sent))
    assert {held.reason for held in built.held} <= {HoldReason.TOO_LARGE, HoldReason.REGISTER_NOT_SENDABLE}
