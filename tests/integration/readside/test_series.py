"""Validated series over real Kafka, PostgreSQL and HTTP: every version kept, the newest served, tenancy, completeness.

MeterSeriesValidated events (as services/vee publishes them) go to the test's own series topic; the read side
stores every version of a day, serves the newest by default and an older one on request, ignores an older version
that arrives after a newer one for "current", answers another grid company's meterpoint with the 404 of an unknown
id, adds the validated quality to consumption, and counts completeness per grid area exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.events import MeterReadingReceived, Quality, Register, Resolution, Unit, make_event
from libs.platform.apikeys import InMemoryKeyStore, NewApiKey, Role, generate_api_key
from services.readside.app import create_app
from tests.integration.readside.support import (
    Topics,
    applied_through,
    current_version,
    end_offsets,
    master_data,
    meterpoint,
    produce,
    records_of,
    settings_for,
    wait_for,
)
from tests.tenants import TENANT_A, TENANT_B
from tests.unit.readside.builders import estimated, local_midnight, missing, validated_day

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

DAY = date(2026, 1, 14)
PUBLISHED = datetime(2026, 1, 15, 6, tzinfo=UTC)
CORRECTED = meterpoint(400)  # version 1 with a 1-hour gap, then version 2 with estimates for it
LATE = meterpoint(401)  # version 2 produced before version 1
OTHER_AREA = meterpoint(402)  # grid area NO2
UNVALIDATED = meterpoint(403)  # readings, no validated series
B_OWNED = meterpoint(500)
NEVER_NAMED = meterpoint(999)
_PER_REQUEST = {"x-correlation-id", "date", "content-length", "ratelimit"}

# CORRECTED: version 1 misses positions 5-8 (00:00-01:00 UTC); version 2 estimates them (a correction).
V1_GAP = {position: missing() for position in range(5, 9)}
V2_FILLED = {position: estimated(0.3, version=2) for position in range(5, 9)}
# LATE: version 2 misses positions 1-10 and estimates 11-12; version 1 (arriving last) was complete.
LATE_V2 = {**{position: missing() for position in range(1, 11)}, 11: estimated(0.2), 12: estimated(0.2)}


@dataclass
class Scenario:
    clients: dict[str, httpx.AsyncClient]
    pg: asyncpg.Connection
    schema: str
    topics: Topics


def _reading(gsrn: str, end: datetime, value: float) -> MeterReadingReceived:
    return MeterReadingReceived.create(
        meterpoint_id=gsrn,
        register=Register.ACTIVE_IMPORT,
        interval_end=end,
        resolution=Resolution.PT15M,
        value=value,
        unit=Unit.KWH,
        quality=Quality.MEASURED,
        source="collection.mqtt",
    )


@pytest.fixture
async def scenario(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection
) -> AsyncIterator[Scenario]:
    start = local_midnight(DAY)
    readings = [
        # The first hour of the day (positions 1-4) was delivered; the second (the gap) was not.
        *(
            _reading(gsrn, start + timedelta(minutes=15 * n), 0.25)
            for gsrn in (CORRECTED, UNVALIDATED)
            for n in (1, 2, 3, 4)
        ),
    ]
    series = [
        validated_day(CORRECTED, DAY, version=1, points=V1_GAP),
        validated_day(LATE, DAY, version=2, points=LATE_V2),
        validated_day(OTHER_AREA, DAY, grid_area="NO2"),
        validated_day(B_OWNED, DAY, grid_company=TENANT_B),
        validated_day(CORRECTED, DAY, version=2, points=V2_FILLED),
        validated_day(LATE, DAY, version=1),
        validated_day(CORRECTED, DAY, version=2, points=V2_FILLED),  # a republication: stored once
    ]
    masters = [
        *(master_data(gsrn, TENANT_A) for gsrn in (CORRECTED, LATE, OTHER_AREA, UNVALIDATED)),
        master_data(B_OWNED, TENANT_B),
    ]
    events = [
        *(make_event(m, source="/gridhub/customers", time=PUBLISHED - timedelta(days=30)) for m in masters),
        *(make_event(r, source="/gridhub/collection", time=r.interval_end) for r in readings),
        *(make_event(s, source="/gridhub/vee", time=PUBLISHED + timedelta(minutes=i)) for i, s in enumerate(series)),
    ]
    await produce(kafka_bootstrap, records_of(events, topics))
    keys: dict[str, NewApiKey] = {
        "a": generate_api_key("web", Role.READER, tenant=TENANT_A),
        "a-operator": generate_api_key("ops", Role.OPERATOR, tenant=TENANT_A),
        "b": generate_api_key("web", Role.READER, tenant=TENANT_B),
        "platform": generate_api_key("hub-ops", Role.PLATFORM),
    }
    settings = settings_for(pg_dsn, kafka_bootstrap, control_schema, topics, require_api_key=True)
    app = create_app(
        settings, registry=CollectorRegistry(), key_store=InMemoryKeyStore([k.record for k in keys.values()])
    )
    async with app.router.lifespan_context(app):
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "the events applied")
        transport = httpx.ASGITransport(app=app)
        clients = {
            name: httpx.AsyncClient(
                transport=transport, base_url="http://readside", headers={"Authorization": f"Bearer {key.plain_key}"}
            )
            for name, key in keys.items()
        }
        try:
            yield Scenario(clients, pg, control_schema, topics)
        finally:
            for client in clients.values():
                await client.aclose()


async def test_every_version_is_stored_and_the_newest_is_current_whatever_the_order(scenario: Scenario) -> None:
    views = f'"{scenario.schema}_v{await current_version(scenario.pg, scenario.schema)}"'
    days = await scenario.pg.fetch(f"SELECT meterpoint_id, version FROM {views}.series_days ORDER BY 1, 2")
    assert [(r["meterpoint_id"], r["version"]) for r in days] == [
        (CORRECTED, 1),
        (CORRECTED, 2),
        (LATE, 1),
        (LATE, 2),
        (OTHER_AREA, 1),
        (B_OWNED, 1),
    ]
    points = await scenario.pg.fetchval(f"SELECT count(*) FROM {views}.series_points")
    assert points == 6 * 96  # the republished version 2 added nothing
    current = await scenario.pg.fetch(f"SELECT meterpoint_id, version FROM {views}.series_current ORDER BY 1")
    assert {r["meterpoint_id"]: r["version"] for r in current} == {CORRECTED: 2, LATE: 2, OTHER_AREA: 1, B_OWNED: 1}


async def test_the_api_serves_the_newest_version_by_default_and_an_older_one_on_request(scenario: Scenario) -> None:
    a = scenario.clients["a"]
    newest = await a.get(f"/v1/meterpoints/{CORRECTED}/series/{DAY}")
    assert newest.status_code == 200, newest.text
    body = newest.json()
    assert (body["version"], body["current_version"], body["reason"], body["final"]) == (2, 2, "complete", False)
    assert (body["intervals"], body["measured"], body["estimated"], body["missing"]) == (96, 92, 4, 0)
    assert (body["register"], body["grid_area"], body["time_zone"]) == ("active_import", "NO1", "Europe/Oslo")
    assert len(body["points"]) == 96
    fifth = body["points"][4]
    assert fifth == {
        "position": 5,
        "interval_start": "2026-01-14T00:00:00Z",
        "interval_end": "2026-01-14T00:15:00Z",
        "quantity": "0.300",
        "quality": "A03",
        "status": "estimated",
        "method": "linear",
        "rules": ["gap"],
        "version": 2,
        "measured": None,
    }
    assert body["points"][0]["quality"] == "A04"
    assert {p["topic"] for p in body["freshness"]["partitions"]} == {
        scenario.topics.series,
        scenario.topics.meterpoints,
    }

    older = (await a.get(f"/v1/meterpoints/{CORRECTED}/series/{DAY}", params={"version": 1})).json()
    assert (older["version"], older["current_version"]) == (1, 2)
    assert [p["quality"] for p in older["points"][4:8]] == ["A02"] * 4
    assert [p["quantity"] for p in older["points"][4:8]] == ["0.000"] * 4

    versions = (await a.get(f"/v1/meterpoints/{CORRECTED}/series/{DAY}/versions")).json()
    assert versions["current_version"] == 2
    assert [(v["version"], v["current"], v["missing"], v["estimated"]) for v in versions["versions"]] == [
        (1, False, 4, 0),
        (2, True, 0, 4),
    ]

    # The version that arrived last (1) is kept but is not the one served.
    late = (await a.get(f"/v1/meterpoints/{LATE}/series/{DAY}")).json()
    assert (late["version"], late["missing"], late["estimated"]) == (2, 10, 2)
    assert (await a.get(f"/v1/meterpoints/{LATE}/series/{DAY}", params={"version": 1})).json()["missing"] == 0

    no_day = await a.get(f"/v1/meterpoints/{CORRECTED}/series/{DAY + timedelta(days=1)}")
    no_version = await a.get(f"/v1/meterpoints/{CORRECTED}/series/{DAY}", params={"version": 3})
    for answer in (no_day, no_version):
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"] == "no validated series of the meterpoint for that day"


def _same_answer(hidden: httpx.Response, unknown: httpx.Response) -> None:
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    assert {**hidden.json(), "correlation_id": None} == {**unknown.json(), "correlation_id": None}
    strip = {k: v for k, v in hidden.headers.items() if k not in _PER_REQUEST}
    assert strip == {k: v for k, v in unknown.headers.items() if k not in _PER_REQUEST}


async def test_another_grid_companys_series_is_the_404_of_an_unknown_meterpoint(scenario: Scenario) -> None:
    a, b, platform = scenario.clients["a"], scenario.clients["b"], scenario.clients["platform"]
    for suffix in ("", "/versions"):
        hidden = await a.get(f"/v1/meterpoints/{B_OWNED}/series/{DAY}{suffix}")
        unknown = await a.get(f"/v1/meterpoints/{NEVER_NAMED}/series/{DAY}{suffix}")
        _same_answer(hidden, unknown)
        assert hidden.json()["detail"] == "no such meterpoint in the views"
        assert (await b.get(f"/v1/meterpoints/{B_OWNED}/series/{DAY}{suffix}")).status_code == 200
        assert (await platform.get(f"/v1/meterpoints/{B_OWNED}/series/{DAY}{suffix}")).status_code == 200
    assert (await b.get(f"/v1/meterpoints/{CORRECTED}/series/{DAY}")).status_code == 404


async def test_consumption_carries_the_validated_quality_where_a_series_exists(scenario: Scenario) -> None:
    a = scenario.clients["a"]
    start = local_midnight(DAY)
    params = {"from": start.isoformat(), "to": (start + timedelta(hours=3)).isoformat()}
    hourly = await a.get(f"/v1/meterpoints/{CORRECTED}/consumption", params=params)
    assert hourly.status_code == 200, hourly.text
    points = hourly.json()["points"]
    assert [(p["start"], Decimal(p["energy"]), p["readings"]) for p in points] == [
        ("2026-01-13T23:00:00Z", Decimal(1), 4),
        ("2026-01-14T00:00:00Z", Decimal(0), 0),  # the gap: no readings, estimated by the validation stage
        ("2026-01-14T01:00:00Z", Decimal(0), 0),
    ]
    assert [
        (v["quality"], v["status"], v["version"], v["quantity"], v["intervals"], v["estimated"])
        for v in (p["validated"] for p in points)
    ] == [
        ("A04", "measured", 2, "1.000", 4, 0),
        ("A03", "estimated", 2, "1.200", 4, 4),
        ("A04", "measured", 2, "1.000", 4, 0),
    ]
    assert Decimal(hourly.json()["total"]) == 1

    daily = await a.get(
        f"/v1/meterpoints/{LATE}/consumption",
        params={"from": str(DAY - timedelta(days=1)), "to": str(DAY + timedelta(days=2)), "resolution": "day"},
    )
    assert daily.status_code == 200, daily.text
    # The view's days are Copenhagen's, the series' Oslo's: the same midnight, so one bucket of 96 intervals.
    [bucket] = daily.json()["points"]
    assert bucket["start"] == str(DAY)
    assert {k: bucket["validated"][k] for k in ("quality", "status", "version", "intervals", "missing")} == {
        "quality": "A05",
        "status": "missing",
        "version": 2,
        "intervals": 96,
        "missing": 10,
    }

    # Without a validated series consumption answers as before.
    plain = (await a.get(f"/v1/meterpoints/{UNVALIDATED}/consumption", params=params)).json()
    assert [(Decimal(p["energy"]), p["validated"]) for p in plain["points"]] == [(Decimal(1), None)]


async def test_completeness_per_grid_area_is_exact_and_scoped_to_the_operators_tenant(scenario: Scenario) -> None:
    operator, reader, platform = scenario.clients["a-operator"], scenario.clients["a"], scenario.clients["platform"]
    assert (await reader.get("/v1/completeness", params={"day": str(DAY)})).status_code == 403

    one = await operator.get("/v1/completeness", params={"day": str(DAY), "grid_area": "NO1"})
    assert one.status_code == 200, one.text
    # Newest versions only: CORRECTED v2 (92 measured, 4 estimated), LATE v2 (84, 2, 10 missing); B's is not A's.
    assert one.json()["areas"] == [
        {
            "grid_area": "NO1",
            "day": str(DAY),
            "meterpoints": 2,
            "series": 2,
            "intervals": 192,
            "measured": 176,
            "estimated": 6,
            "missing": 10,
            "other": 0,
            "measured_share": "0.916667",
            "estimated_share": "0.031250",
            "missing_share": "0.052083",
        }
    ]
    every = (await operator.get("/v1/completeness", params={"day": str(DAY)})).json()["areas"]
    assert [(r["grid_area"], r["intervals"], r["measured"]) for r in every] == [("NO1", 192, 176), ("NO2", 96, 96)]
    hub = (await platform.get("/v1/completeness", params={"day": str(DAY), "grid_area": "NO1"})).json()["areas"]
    assert [(r["meterpoints"], r["intervals"], r["measured"]) for r in hub] == [(3, 288, 272)]
    empty = (await operator.get("/v1/completeness", params={"day": str(DAY + timedelta(days=1))})).json()
    assert empty["areas"] == []
    assert (await operator.get("/v1/completeness", params={"day": str(DAY), "grid_area": "no 1"})).status_code == 422


async def test_the_measured_value_is_exact(scenario: Scenario) -> None:
    views = f'"{scenario.schema}_v{await current_version(scenario.pg, scenario.schema)}"'
    total = await scenario.pg.fetchval(
        f"SELECT sum(p.quantity) FROM {views}.series_points p JOIN {views}.series_current c "
        "USING (meterpoint_id, register, day, version) WHERE p.meterpoint_id = $1",
        CORRECTED,
    )
    assert total == Decimal("0.25") * 92 + Decimal("0.3") * 4
