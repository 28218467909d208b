"""The datahub's wire format: RSM-012 documents built from validated series, RSM-009 acknowledgements parsed."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.events.meter import Resolution
from libs.events.meterpoints import MeterpointType
from libs.events.series import QuantityQuality
from services.exchange.adapters.datahub import (
    DOCUMENT_ROOT,
    InvalidAcknowledgement,
    document_json,
    encode_document,
    parse_acknowledgement,
    plan,
    series_json,
)
from services.exchange.domain import DocumentLimits, ExchangeDomains, HoldReason, Party, ReasonCode
from tests.tenants import EIC_TENANT, TENANT_A
from tests.unit.exchange.support import DATAHUB, day_series

CREATED = datetime(2025, 3, 2, 5, 30, 12, 345678, tzinfo=UTC)
RECEIVER = Party(DATAHUB)


def _document(*series_args: Any, domains: dict[str, ExchangeDomains] | None = None, **kwargs: Any) -> dict[str, Any]:
    series = day_series(*series_args, **kwargs)
    built = plan([series], receiver=RECEIVER, limits=DocumentLimits(), exchange_domains=domains)
    assert len(built.bundles) == 1, built.held
    document: dict[str, Any] = document_json(built.bundles[0], CREATED, domains)[DOCUMENT_ROOT]
    return document


def test_the_header_names_the_parties_and_the_codes() -> None:
    document = _document()
    assert document["type"] == {"value": "E66"}
    assert document["process.processType"] == {"value": "E23"}
    assert document["businessSector.type"] == {"value": "23"}
    assert document["sender_MarketParticipant.mRID"] == {"codingScheme": "A10", "value": TENANT_A}
    assert document["sender_MarketParticipant.marketRole.type"] == {"value": "MDR"}
    assert document["receiver_MarketParticipant.mRID"] == {"codingScheme": "A10", "value": DATAHUB}
    assert document["receiver_MarketParticipant.marketRole.type"] == {"value": "DGL"}
    assert document["createdDateTime"] == "2025-03-02T05:30:12Z"
    assert len(document["mRID"]) == 36


def test_an_eic_sender_is_coded_a01() -> None:
    assert _document(grid_company=EIC_TENANT)["sender_MarketParticipant.mRID"] == {
        "codingScheme": "A01",
        "value": EIC_TENANT,
    }


@pytest.mark.parametrize(
    ("meterpoint_type", "code"),
    [(MeterpointType.CONSUMPTION, "E17"), (MeterpointType.PRODUCTION, "E18"), (MeterpointType.EXCHANGE, "E20")],
)
def test_the_evaluation_point_type_follows_the_meterpoint_type(meterpoint_type: MeterpointType, code: str) -> None:
    domains = {day_series().meterpoint_id: ExchangeDomains(in_area="804", out_area="803")}
    series = _document(meterpoint_type=meterpoint_type, domains=domains)["Series"][0]
    assert series["marketEvaluationPoint.type"] == {"value": code}
    if meterpoint_type is MeterpointType.EXCHANGE:
        assert series["in_Domain.mRID"] == {"codingScheme": "NDK", "value": "804"}
        assert series["out_Domain.mRID"] == {"codingScheme": "NDK", "value": "803"}
    else:
        assert "in_Domain.mRID" not in series


def test_a_series_carries_its_id_meterpoint_unit_and_period_at_minute_precision() -> None:
    source = day_series()
    series = _document()["Series"][0]
    assert series["mRID"] == source.series_id
    assert series["marketEvaluationPoint.mRID"] == {"codingScheme": "A10", "value": source.meterpoint_id}
    assert series["quantity_Measure_Unit.name"] == {"value": "KWH"}
    assert series["registration_DateAndOrTime.dateTime"] == "2025-03-02T05:30:12Z"
    assert series["Period"]["resolution"] == "PT15M"
    assert series["Period"]["timeInterval"] == {
        "start": {"value": "2025-02-28T23:00Z"},
        "end": {"value": "2025-03-01T23:00Z"},
    }


@pytest.mark.parametrize(
    ("day", "resolution", "count", "start", "end"),
    [
        (date(2025, 3, 30), Resolution.PT15M, 92, "2025-03-29T23:00Z", "2025-03-30T22:00Z"),
        (date(2025, 10, 26), Resolution.PT15M, 100, "2025-10-25T22:00Z", "2025-10-26T23:00Z"),
        (date(2025, 3, 30), Resolution.PT1H, 23, "2025-03-29T23:00Z", "2025-03-30T22:00Z"),
        (date(2025, 10, 26), Resolution.PT1H, 25, "2025-10-25T22:00Z", "2025-10-26T23:00Z"),
    ],
)
def test_positions_and_counts_on_dst_days(day: date, resolution: Resolution, count: int, start: str, end: str) -> None:
    period = _document(day=day, resolution=resolution)["Series"][0]["Period"]
    assert [point["position"] for point in period["Point"]] == [{"value": n} for n in range(1, count + 1)]
    assert period["timeInterval"] == {"start": {"value": start}, "end": {"value": end}}
    assert period["resolution"] == resolution.value


def test_points_have_quantities_of_3_decimals_and_their_quality() -> None:
    points = _document(
        quantities={1: 1.5, 2: 0.001, 3: 12345.678},
        qualities={4: QuantityQuality.ESTIMATED, 5: QuantityQuality.NOT_AVAILABLE},
    )["Series"][0]["Period"]["Point"]
    assert points[:5] == [
        {"position": {"value": 1}, "quantity": 1.5, "quality": {"value": "A04"}},
        {"position": {"value": 2}, "quantity": 0.001, "quality": {"value": "A04"}},
        {"position": {"value": 3}, "quantity": 12345.678, "quality": {"value": "A04"}},
        {"position": {"value": 4}, "quantity": 0.412, "quality": {"value": "A03"}},
        {"position": {"value": 5}, "quantity": 0.0, "quality": {"value": "A02"}},
    ]


def test_the_encoded_document_is_the_json_of_the_document() -> None:
    series = [day_series(n) for n in range(1, 4)]
    bundle = plan(series, receiver=RECEIVER, limits=DocumentLimits()).bundles[0]
    assert orjson.loads(encode_document(bundle, CREATED)) == json.loads(json.dumps(document_json(bundle, CREATED)))


def test_the_planned_sizes_bound_the_encoded_documents() -> None:
    series = [day_series(n, grid_company=EIC_TENANT) for n in range(1, 30)]
    one = len(encode_document(plan(series[:1], receiver=RECEIVER, limits=DocumentLimits()).bundles[0], CREATED))
    limit = one * 5
    built = plan(series, receiver=RECEIVER, limits=DocumentLimits(max_bytes=limit))
    assert len(built.bundles) > 1
    assert sum(len(bundle.series) for bundle in built.bundles) == len(series)
    for bundle in built.bundles:
        assert len(encode_document(bundle, CREATED)) <= limit


def _ack(**document: Any) -> bytes:
    body = {
        "mRID": "9f3a2b1c-0d4e-5f6a-8b7c-1d2e3f4a5b6c",
        "createdDateTime": "2025-03-02T05:31:12Z",
        "sender_MarketParticipant.mRID": {"codingScheme": "A10", "value": DATAHUB},
        "sender_MarketParticipant.marketRole.type": {"value": "DGL"},
        "receiver_MarketParticipant.mRID": {"codingScheme": "A10", "value": TENANT_A},
        "receiver_MarketParticipant.marketRole.type": {"value": "MDR"},
        "received_MarketDocument.mRID": "0b6f1c55-5a3e-5a6b-9a0e-6f0c2d1e4b7a",
    }
    body.update(document)
    return json.dumps({"Acknowledgement_MarketDocument": body}).encode()


def test_a_rejection_is_parsed_per_series_with_codes_and_text() -> None:
    series_id = day_series().series_id
    ack = parse_acknowledgement(
        _ack(
            Series=[
                {
                    "mRID": series_id,
                    "Reason": [
                        {"code": {"value": "E10"}, "text": "Unknown metering point"},
                        {"code": {"value": "E87"}, "text": "Positions are not 1..96"},
                    ],
                },
                {"mRID": "other", "Reason": [{"code": {"value": "X99"}}]},
            ]
        )
    )
    assert not ack.accepted
    assert ack.received_document_mrid == "0b6f1c55-5a3e-5a6b-9a0e-6f0c2d1e4b7a"
    assert ack.created == datetime(2025, 3, 2, 5, 31, 12, tzinfo=UTC)
    assert ack.sender == Party(DATAHUB)
    first, second = ack.rejected_series
    assert first.series_mrid == series_id
    assert [(r.known, r.text) for r in first.reasons] == [
        (ReasonCode.UNKNOWN_METERPOINT, "Unknown metering point"),
        (ReasonCode.POSITIONS_WRONG, "Positions are not 1..96"),
    ]
    assert [(r.code, r.known, r.text) for r in second.reasons] == [("X99", None, "")]


@pytest.mark.parametrize("code", [code.value for code in ReasonCode])
def test_every_handled_code_is_known(code: str) -> None:
    ack = parse_acknowledgement(_ack(Reason=[{"code": {"value": code}, "text": "t"}]))
    assert ack.reasons[0].known is ReasonCode(code)
    assert not ack.accepted


def test_an_acknowledgement_without_reasons_accepts() -> None:
    assert parse_acknowledgement(_ack()).accepted


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"Other_MarketDocument": {}}',
        _ack(mRID="x" * 37),
        _ack(createdDateTime="2025-03-02 05:31"),
        _ack(**{"sender_MarketParticipant.mRID": {"codingScheme": "A10", "value": "5790001330584"}}),
        _ack(Series=[{"mRID": "s", "Reason": []}]),
        _ack(Series=[{"mRID": "s", "Reason": [{"code": {"value": "E10;DROP"}}]}]),
        _ack(Series=[{"mRID": "s", "Reason": [{"code": {"value": "E10"}, "text": 5}]}]),
        _ack(Series={"mRID": "s"}),
        _ack(Reason=[{"code": {"value": "E10"}}] * 21),
    ],
)
def test_anything_else_is_an_invalid_acknowledgement(body: bytes) -> None:
    with pytest.raises(InvalidAcknowledgement):
        parse_acknowledgement(body)


def test_a_time_with_seconds_is_held_never_sent_rounded() -> None:
    series = day_series()
    shifted = series.model_copy(update={"start": series.start.replace(second=30)})
    built = plan([shifted, day_series(2)], receiver=RECEIVER, limits=DocumentLimits())
    assert [(held.series_id, held.reason) for held in built.held] == [
        (series.series_id, HoldReason.PERIOD_NOT_AT_MINUTE)
    ]
    with pytest.raises(ValueError, match="minute precision"):
        series_json(shifted, CREATED)


def test_a_negative_zero_is_sent_as_zero() -> None:
    points = _document(quantities={1: -0.0})["Series"][0]["Period"]["Point"]
    assert b'"quantity":0.0' in orjson.dumps(points[0])


_KEYS = [
    "mRID",
    "createdDateTime",
    "sender_MarketParticipant.mRID",
    "received_MarketDocument.mRID",
    "Reason",
    "Series",
    "code",
    "value",
    "text",
    "codingScheme",
]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8), st.sampled_from(_KEYS))
def test_any_json_is_parsed_or_refused_as_invalid_never_crashes(fields: dict[str, Any], replaced: str) -> None:
    valid = json.loads(_ack(Series=[{"mRID": "s", "Reason": [{"code": {"value": "E10"}}]}]))
    document = valid["Acknowledgement_MarketDocument"]
    document.update(fields)
    document.pop(replaced, None)
    with contextlib.suppress(InvalidAcknowledgement):
        parse_acknowledgement(json.dumps(valid).encode())
