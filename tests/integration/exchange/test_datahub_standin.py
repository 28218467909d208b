"""The datahub stand-in over a real socket: documents GridHub builds are accepted, everything else answered as the
contract says (400 with the error body, 409 for a repeated mRID, 401 without a live token, 429 past the quota with
Retry-After, 503 in an outage), rejections come back as RSM-009 through peek and dequeue."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from libs.events.series import MeterSeriesValidated, QuantityQuality
from services.exchange.adapters.datahub import NOTIFY_PATH, PEEK_PATH, encode_document, parse_acknowledgement, plan
from services.exchange.domain import DocumentLimits, Party, ReasonCode
from stack.config import REPO
from stack.dev.datahub import Client, DatahubStandIn, RegisteredMeterpoint
from tests.integration.exchange.support import ManualClock, serving, token
from tests.integration.http_support import free_port
from tests.tenants import TENANT_A, TENANT_B
from tests.unit.exchange.support import DATAHUB, day_series

CLIENT = Client("nordgrid", "nordgrid-secret-1", TENANT_A)
OTHER = Client("sydnet", "sydnet-secret-1", TENANT_B)
CREATED = datetime(2025, 3, 2, 5, 30, tzinfo=UTC)
SCHEMAS = REPO / "contracts" / "datahub"


def _schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


def _body(*series: MeterSeriesValidated) -> bytes:
    bundles = plan(series, receiver=Party(DATAHUB), limits=DocumentLimits()).bundles
    assert len(bundles) == 1
    return encode_document(bundles[0], CREATED)


def _standin(clock: ManualClock, **options: Any) -> DatahubStandIn:
    options.setdefault("quota_burst", 100)
    return DatahubStandIn(
        clients=[CLIENT, OTHER],
        party=DATAHUB,
        monotonic=clock,
        wall=lambda: datetime(2025, 3, 2, 6, 0, tzinfo=UTC),
        **options,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def standin(clock: ManualClock) -> DatahubStandIn:
    return _standin(clock)


@pytest.fixture
async def http(standin: DatahubStandIn) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(standin) as base, httpx.AsyncClient(base_url=base, timeout=10.0) as client:
        client.headers["Authorization"] = "Bearer " + await token(client, CLIENT.client_id, CLIENT.secret)
        yield client


def _post(http: httpx.AsyncClient, body: bytes) -> Any:
    return http.post(NOTIFY_PATH, content=body, headers={"Content-Type": "application/json"})


async def test_a_built_document_is_accepted(http: httpx.AsyncClient, standin: DatahubStandIn) -> None:
    series = [day_series(n) for n in range(1, 4)]
    body = _body(*series)
    answer = await _post(http, body)
    assert answer.status_code == 202, answer.text
    mrid = json.loads(body)["NotifyValidatedMeasureData_MarketDocument"]["mRID"]
    assert standin.accepted_mrids == [mrid]
    assert standin.accepted_series_mrids == [s.series_id for s in series]
    assert (standin.counters.accepted_documents, standin.counters.accepted_series) == (1, 3)
    assert (await http.get(PEEK_PATH)).status_code == 204  # an accepted document queues no rejection
    counters = (await http.get("/admin/counters")).json()
    assert counters["accepted_documents"] == 1
    assert counters["duplicates"] == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "InvalidJson"),
        (json.dumps({"NotifyValidatedMeasureData_MarketDocument": {"mRID": "x"}}).encode(), "SchemaValidationError"),
        (_body(day_series()).replace(b'"E66"', b'"E65"'), "SchemaValidationError"),
    ],
)
async def test_a_malformed_document_is_400_with_the_error_body(
    http: httpx.AsyncClient, standin: DatahubStandIn, body: bytes, code: str
) -> None:
    answer = await _post(http, body)
    assert answer.status_code == 400
    assert list(_schema("error.schema.json").iter_errors(answer.json())) == []
    assert answer.json()["Error"]["Code"] == code
    if code == "SchemaValidationError":
        assert answer.json()["Error"]["Details"]["Errors"]
    assert standin.counters.schema_failures == 1
    assert standin.counters.accepted_documents == 0


async def test_an_impossible_date_is_400_not_a_crash(http: httpx.AsyncClient, standin: DatahubStandIn) -> None:
    body = _body(day_series()).replace(b'"2025-02-28T23:00Z"', b'"2025-02-30T23:00Z"')
    answer = await _post(http, body)
    assert answer.status_code == 400
    assert answer.json()["Error"]["Details"]["Errors"][0]["Message"] == "'2025-02-30T23:00Z' is no date-time"
    assert standin.counters.schema_failures == 1


async def test_a_grid_company_cannot_send_for_another(http: httpx.AsyncClient, standin: DatahubStandIn) -> None:
    answer = await _post(http, _body(day_series(grid_company=TENANT_B)))
    assert answer.status_code == 403
    assert answer.json()["Error"]["Code"] == "Forbidden"
    assert standin.counters.accepted_documents == 0
    assert standin.queued(TENANT_B) == 0


async def test_a_day_of_100_meterpoints_on_a_dst_day_is_accepted(
    http: httpx.AsyncClient, standin: DatahubStandIn
) -> None:
    day = date(2025, 10, 26)  # 25 hours in Copenhagen: 100 quarter-hours
    series = [day_series(n, day=day, qualities={n % 100 + 1: QuantityQuality.ESTIMATED}) for n in range(1, 101)]
    for item in series:
        standin.meterpoints[item.meterpoint_id] = RegisteredMeterpoint(TENANT_A, "PT15M")
    bundles = plan(series, receiver=Party(DATAHUB), limits=DocumentLimits(max_series=30)).bundles
    assert [len(bundle.series) for bundle in bundles] == [30, 30, 30, 10]
    validator = _schema("notify-validated-measure-data.rsm012.schema.json")
    for bundle in bundles:
        body = encode_document(bundle, datetime(2025, 10, 27, 5, 0, tzinfo=UTC))
        document = json.loads(body)
        assert list(validator.iter_errors(document)) == []
        for entry in document["NotifyValidatedMeasureData_MarketDocument"]["Series"]:
            assert [point["position"]["value"] for point in entry["Period"]["Point"]] == list(range(1, 101))
        assert (await _post(http, body)).status_code == 202
    assert standin.accepted_series_mrids == [item.series_id for item in series]
    assert (standin.counters.accepted_documents, standin.counters.duplicates) == (4, 0)
    assert (await http.get(PEEK_PATH)).status_code == 204


async def test_a_repeated_mrid_is_refused_and_counted(http: httpx.AsyncClient, standin: DatahubStandIn) -> None:
    body = _body(day_series(1), day_series(2))
    assert (await _post(http, body)).status_code == 202
    again = await _post(http, body)
    assert again.status_code == 409
    assert again.json()["Error"]["Code"] == "DuplicateDocument"
    assert list(_schema("error.schema.json").iter_errors(again.json())) == []
    assert (standin.counters.accepted_documents, standin.counters.duplicates) == (1, 1)
    assert standin.counters.accepted_series == 2


async def test_past_the_quota_429_with_retry_after(clock: ManualClock) -> None:
    standin = _standin(clock, quota_per_second=0.5, quota_burst=3)
    async with serving(standin) as base, httpx.AsyncClient(base_url=base) as http:
        http.headers["Authorization"] = "Bearer " + await token(http, CLIENT.client_id, CLIENT.secret)
        assert [(await http.get(PEEK_PATH)).status_code for _ in range(3)] == [204, 204, 204]
        over = await http.get(PEEK_PATH)
        assert over.status_code == 429
        assert over.headers["Retry-After"] == "2"  # one request per 2 s refills
        assert list(_schema("error.schema.json").iter_errors(over.json())) == []
        assert (await _post(http, _body(day_series()))).status_code == 429
        assert standin.counters.over_quota == 2
        assert standin.counters.accepted_documents == 0
        other = await token(http, OTHER.client_id, OTHER.secret)  # the quota is per client
        assert (await http.get(PEEK_PATH, headers={"Authorization": f"Bearer {other}"})).status_code == 204
        clock.advance(2.0)
        assert (await _post(http, _body(day_series()))).status_code == 202
        assert (await http.get(PEEK_PATH)).status_code == 429


def _rejected_body(standin: DatahubStandIn, series: MeterSeriesValidated) -> bytes:
    standin.meterpoints[day_series(99).meterpoint_id] = RegisteredMeterpoint(TENANT_A, "PT15M")  # only #99 known
    return _body(series)


async def test_peek_returns_the_same_rejection_until_it_is_dequeued(
    http: httpx.AsyncClient, standin: DatahubStandIn
) -> None:
    series = day_series(1)
    body = _rejected_body(standin, series)
    assert (await _post(http, body)).status_code == 202
    first = await http.get(PEEK_PATH)
    assert first.status_code == 200
    message_id = first.headers["MessageId"]
    again = await http.get(PEEK_PATH)
    assert (again.headers["MessageId"], again.content) == (message_id, first.content)
    assert list(_schema("acknowledgement.rsm009.schema.json").iter_errors(first.json())) == []
    ack = parse_acknowledgement(first.content)
    assert ack.received_document_mrid == json.loads(body)["NotifyValidatedMeasureData_MarketDocument"]["mRID"]
    assert [(r.series_mrid, [reason.known for reason in r.reasons]) for r in ack.rejected_series] == [
        (series.series_id, [ReasonCode.UNKNOWN_METERPOINT])
    ]
    assert (standin.counters.rejected_documents, standin.counters.rejected_series) == (1, 1)
    other = await token(http, OTHER.client_id, OTHER.secret)  # another grid company's queue is its own
    assert (await http.get(PEEK_PATH, headers={"Authorization": f"Bearer {other}"})).status_code == 204
    wrong = await http.delete("/v1.0/cim/dequeue/00000000-0000-0000-0000-000000000000")
    assert wrong.status_code == 404
    assert (await http.get(PEEK_PATH)).headers["MessageId"] == message_id
    assert (await http.delete(f"/v1.0/cim/dequeue/{message_id}")).status_code == 200
    assert (await http.get(PEEK_PATH)).status_code == 204
    assert (await http.delete(f"/v1.0/cim/dequeue/{message_id}")).status_code == 404


async def test_messages_are_peeked_in_order(http: httpx.AsyncClient, standin: DatahubStandIn) -> None:
    ids = [standin.enqueue(TENANT_A, json.dumps({"n": n}).encode()) for n in range(3)]
    seen = []
    for _ in range(3):
        answer = await http.get(PEEK_PATH)
        seen.append((answer.headers["MessageId"], answer.json()["n"]))
        assert (await http.delete(f"/v1.0/cim/dequeue/{answer.headers['MessageId']}")).status_code == 200
    assert seen == list(zip(ids, range(3), strict=True))


async def test_tokens_are_required_and_expire(clock: ManualClock) -> None:
    standin = _standin(clock, token_ttl=60.0)
    async with serving(standin) as base, httpx.AsyncClient(base_url=base) as http:
        body = _body(day_series())
        missing = await _post(http, body)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        forged = await http.get(PEEK_PATH, headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 401
        wrong = await http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": CLIENT.client_id, "client_secret": "x"},
        )
        assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid_client"})
        grant = await http.post("/oauth2/token", data={"grant_type": "password"})
        assert grant.status_code == 400
        basic = base64.b64encode(f"{CLIENT.client_id}:{CLIENT.secret}".encode()).decode()
        issued = await http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
        )
        assert issued.json()["expires_in"] == 60
        bearer = {"Authorization": "Bearer " + issued.json()["access_token"]}
        clock.advance(59.0)
        assert (await http.get(PEEK_PATH, headers=bearer)).status_code == 204
        clock.advance(1.0)
        expired = await http.get(PEEK_PATH, headers=bearer)
        assert expired.status_code == 401
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        fresh = await token(http, CLIENT.client_id, CLIENT.secret)
        answer = await http.post(
            NOTIFY_PATH, content=body, headers={"Authorization": f"Bearer {fresh}", "Content-Type": "application/json"}
        )
        assert answer.status_code == 202
        assert standin.counters.unauthorized == 3
        assert standin.counters.accepted_documents == 1


def _mutate(document: dict[str, Any], change: str) -> None:
    series = document["NotifyValidatedMeasureData_MarketDocument"]["Series"][0]
    period = series["Period"]
    if change == "unit":
        series["quantity_Measure_Unit.name"]["value"] = "MWH"
    elif change == "quality":
        period["Point"][3]["quality"]["value"] = "A05"
    elif change == "negative":
        period["Point"][3]["quantity"] = -0.5
    elif change == "too_large":
        period["Point"][3]["quantity"] = 2_000_000
    elif change == "too_precise":
        period["Point"][3]["quantity"] = 0.4125
    elif change == "positions":
        period["Point"][3]["position"]["value"] = 7
    elif change == "count":
        period["Point"].pop()
    elif change == "misaligned":
        period["timeInterval"]["start"]["value"] = "2025-02-28T23:07Z"
    elif change == "old":
        period["timeInterval"]["start"]["value"] = "2022-02-28T23:00Z"
        period["timeInterval"]["end"]["value"] = "2022-03-01T23:00Z"
    else:
        raise AssertionError(change)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("unit", "E73"),
        ("quality", "D12"),
        ("negative", "E86"),
        ("too_large", "E89"),
        ("too_precise", "E89"),
        ("positions", "E87"),
        ("count", "E87"),
        ("misaligned", "D66"),
        ("old", "E17"),
    ],
)
async def test_business_validation_rejects_asynchronously(
    http: httpx.AsyncClient, standin: DatahubStandIn, change: str, code: str
) -> None:
    good, bad = day_series(1), day_series(2)
    document = json.loads(_body(bad, good))
    _mutate(document, change)
    assert (await _post(http, json.dumps(document).encode())).status_code == 202
    answer = await http.get(PEEK_PATH)
    assert answer.status_code == 200
    ack = parse_acknowledgement(answer.content)
    assert [(r.series_mrid, [reason.code for reason in r.reasons]) for r in ack.rejected_series] == [
        (bad.series_id, [code])
    ]
    assert standin.accepted_series_mrids == [good.series_id]


async def test_master_data_rejections_d50_and_d23(http: httpx.AsyncClient, standin: DatahubStandIn) -> None:
    ours, theirs = day_series(1), day_series(2)
    standin.meterpoints[ours.meterpoint_id] = RegisteredMeterpoint(TENANT_A, "PT1H")
    standin.meterpoints[theirs.meterpoint_id] = RegisteredMeterpoint(TENANT_B, "PT15M")
    assert (await _post(http, _body(ours, theirs))).status_code == 202
    ack = parse_acknowledgement((await http.get(PEEK_PATH)).content)
    assert {r.series_mrid: [reason.code for reason in r.reasons] for r in ack.rejected_series} == {
        ours.series_id: ["D23"],
        theirs.series_id: ["D50"],
    }


async def test_forced_rejections_outage_and_slow_answers(http: httpx.AsyncClient, standin: DatahubStandIn) -> None:
    series = day_series(3, qualities={2: QuantityQuality.ESTIMATED})
    forced = await http.post("/admin/rejections", json={"meterpoint": series.meterpoint_id, "code": "E10"})
    assert forced.status_code == 200
    assert (await http.post("/admin/rejections", json={"meterpoint": "x", "code": "Z00"})).status_code == 400
    assert (await http.post("/admin/switches", content=b"[")).status_code == 400
    assert (await http.post("/admin/switches", json={"outage": True})).json()["outage"] is True
    down = await _post(http, _body(series))
    assert down.status_code == 503
    assert list(_schema("error.schema.json").iter_errors(down.json())) == []
    assert (await http.post("/oauth2/token", data={"grant_type": "client_credentials"})).status_code == 503
    await http.post("/admin/switches", json={"outage": False, "delay_seconds": 0.3})
    started = time.monotonic()
    assert (await _post(http, _body(series))).status_code == 202
    assert time.monotonic() - started >= 0.3
    await http.post("/admin/switches", json={"delay_seconds": 0})
    ack = parse_acknowledgement((await http.get(PEEK_PATH)).content)
    assert [[reason.known for reason in r.reasons] for r in ack.rejected_series] == [[ReasonCode.UNKNOWN_METERPOINT]]
    assert (await http.delete("/admin/rejections")).status_code == 204
    assert standin.counters.outage_answers == 2
    later = day_series(3, day=date(2025, 3, 2))
    assert (await _post(http, _body(later))).status_code == 202
    assert standin.accepted_series_mrids == [later.series_id]


async def test_a_body_above_the_limit_is_413(clock: ManualClock) -> None:
    body = _body(day_series())
    standin = _standin(clock, max_body_bytes=len(body) - 1)
    async with serving(standin) as base, httpx.AsyncClient(base_url=base) as http:
        http.headers["Authorization"] = "Bearer " + await token(http, CLIENT.client_id, CLIENT.secret)
        answer = await _post(http, body)
        assert answer.status_code == 413
        assert answer.json()["Error"]["Code"] == "PayloadTooLarge"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds on the stream too
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        streamed = await http.post(NOTIFY_PATH, content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert standin.counters.accepted_documents == 0


async def test_it_runs_as_a_module() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stack.dev.datahub", "--port", str(port), "--client-id", "c", "--client-secret", "s"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    answer = await http.post(
                        "/oauth2/token", data={"grant_type": "client_credentials"}, auth=("c", "s")
                    )
                    break
                except httpx.ConnectError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    await asyncio.sleep(0.05)
            assert answer.status_code == 200
            bearer = {"Authorization": "Bearer " + answer.json()["access_token"]}
            assert (await http.get(PEEK_PATH, headers=bearer)).status_code == 204
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_ack_example_is_what_the_parser_reads() -> None:
    example = copy.deepcopy(_schema("acknowledgement.rsm009.schema.json").schema["examples"][0])
    ack = parse_acknowledgement(json.dumps(example).encode())
    assert ack.rejected_series[0].reasons[0].known is ReasonCode.UNKNOWN_METERPOINT
