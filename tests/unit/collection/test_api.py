"""The REST entry points in-process (no Kafka, no database): status codes, per-item results, problem bodies,
flow control. The publisher is a fake that records what it was given or fails as told."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.requests import Request

from libs.events.records import KafkaRecord
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, QuotaSettings
from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from libs.platform.problems import ProblemError
from services.collection.adapters.kafka import PublishFailed
from services.collection.app import create_app
from services.collection.entrypoints.api import read_body
from services.collection.settings import Boundaries, CollectionSettings, FtpSettings, MqttSettings
from tests.tenants import TENANT_A, TENANT_B
from tests.unit.collection.scoping import assigned_view

METERPOINT = "571313180400000025"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class RecordingPublisher:
    """A `Publisher` that keeps what it was given, or raises ``error``."""

    def __init__(self) -> None:
        self.published: list[KafkaRecord] = []
        self.calls = 0
        self.error: BaseException | None = None

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.published.extend(records)


@dataclass
class Service:
    client: httpx.AsyncClient
    publisher: RecordingPublisher
    writer: str
    other_writer: str
    reader: str
    registry: CollectorRegistry

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.writer}"}


def settings(**changes: Any) -> CollectionSettings:
    values: dict[str, Any] = {
        "mqtt": MqttSettings(enabled=False),
        "ftp": FtpSettings(enabled=False),
        "max_batch_items": 5,
        "boundaries": Boundaries(
            rest_ingress=BoundaryPolicy(
                quota=QuotaSettings(rate=0.001, burst=6),
                bulkhead=BulkheadSettings(max_concurrent=4),
                max_body_bytes=4096,
            )
        ),
    }
    values.update(changes)
    return CollectionSettings(**values)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    writer, other_writer, reader = (
        generate_api_key("hes-north", Role.SOURCE, tenant=TENANT_A),
        generate_api_key("mdm-south", Role.SOURCE, tenant=TENANT_A),
        generate_api_key("dashboard", Role.READER, tenant=TENANT_A),
    )
    publisher = RecordingPublisher()
    registry = CollectorRegistry()
    app = create_app(
        settings(),
        publisher=publisher,
        key_store=InMemoryKeyStore([writer.record, other_writer.record, reader.record]),
        readiness_checks=[],
        registry=registry,
        wall_clock=lambda: NOW,
        scope_view=assigned_view(METERPOINT, source="hes-north"),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collection") as client:
            yield Service(client, publisher, writer.plain_key, other_writer.plain_key, reader.plain_key, registry)


def reading(**changes: Any) -> dict[str, Any]:
    item = {
        "meterpoint_id": METERPOINT,
        "register": "active_import",
        "interval_end": "2025-03-01T10:15:00Z",
        "resolution": "PT15M",
        "value": 0.412,
        "unit": "kWh",
        "quality": "measured",
    }
    return {**item, **changes}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


async def test_mixed_batch_gets_per_item_results_and_only_accepted_readings_are_events(service: Service) -> None:
    batch = [
        reading(),
        reading(),  # duplicate of 0
        reading(interval_end="2025-03-01T10:07:00Z"),  # misaligned
        reading(meterpoint_id="571313180400000024", interval_end="2025-03-01T10:30:00Z"),  # bad check digit
        reading(interval_end="2025-03-01T10:30:00Z", value="0.5"),  # malformed
    ]
    response = await service.client.post("/v1/readings", json=batch, headers=service.auth())
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 1, 3)
    results = body["results"]
    assert [r["status"] for r in results] == ["accepted", "duplicate_in_batch", "rejected", "rejected", "rejected"]
    assert results[1]["duplicate_of"] == 0
    assert results[1]["id"] == results[0]["id"]
    assert [r.get("reason") for r in results[2:]] == ["misaligned_interval", "invalid_meterpoint", "malformed"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]

    events = [r for r in service.publisher.published if r.topic == "meter.readings.v1"]
    letters = [r for r in service.publisher.published if r.topic == "meter.readings.v1.dlq"]
    assert [orjson.loads(e.value)["id"] for e in events] == [results[0]["id"]]
    assert events[0].key == METERPOINT.encode()
    assert len(letters) == 3
    first = dict(letters[0].headers)
    assert first["dlq.reason"] == b"misaligned_interval"
    assert first["dlq.source.topic"] == b"rest:/v1/readings"
    assert first["gridhub.client"] == b"hes-north"
    assert orjson.loads(letters[0].value) == batch[2]
    assert letters[1].key == b"571313180400000024"


async def test_meter_events_endpoint(service: Service) -> None:
    alarm = {"meterpoint_id": METERPOINT, "alarm": "tamper", "raised_at": "2025-03-01T11:58:00+01:00"}
    response = await service.client.post("/v1/meter-events", json=[alarm], headers=service.auth())
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1
    [record] = service.publisher.published
    assert record.topic == "meter.events.v1"
    assert orjson.loads(record.value)["data"]["raised_at"] == "2025-03-01T10:58:00Z"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer not-a-key"}, 401),
        ({"X-API-Key": "ghk_0123456789abcdef_" + "A" * 43}, 401),
    ],
)
async def test_missing_or_wrong_api_key_is_401(service: Service, headers: dict[str, str], status: int) -> None:
    response = await service.client.post("/v1/readings", json=[reading()], headers=headers)
    assert_problem(response, status)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert service.publisher.calls == 0


async def test_a_read_key_may_not_write(service: Service) -> None:
    response = await service.client.post("/v1/readings", json=[reading()], headers=service.auth(service.reader))
    assert "source" in assert_problem(response, 403)["detail"]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"[{", 400, "invalid_json"),
        (b'{"readings": []}', 422, "not_a_batch"),
        (b"[]", 422, "empty_batch"),
        (orjson.dumps([reading()] * 6), 413, "too_many_items"),
    ],
)
async def test_unusable_bodies_get_problem_details(service: Service, body: bytes, status: int, reason: str) -> None:
    headers = {**service.auth(), "Content-Type": "application/json"}
    response = await service.client.post("/v1/readings", content=body, headers=headers)
    assert assert_problem(response, status)["reason"] == reason
    assert service.publisher.calls == 0


async def test_body_over_the_limit_is_413_before_parsing(service: Service) -> None:
    big = orjson.dumps([reading(source="x" * 100)] * 40)
    assert len(big) > 4096
    headers = {**service.auth(), "Content-Type": "application/json"}
    response = await service.client.post("/v1/readings", content=big, headers=headers)
    assert_problem(response, 413)
    assert service.publisher.calls == 0


async def test_only_json_is_accepted(service: Service) -> None:
    headers = {**service.auth(), "Content-Type": "text/csv"}
    response = await service.client.post("/v1/readings", content=b"a,b\n", headers=headers)
    assert_problem(response, 415)


async def test_kafka_unavailable_is_a_fast_503_with_retry_after(service: Service) -> None:
    service.publisher.error = CallNotPermitted("circuit breaker 'kafka_producer' is OPEN", retry_after=4.2)
    started = time.perf_counter()
    response = await service.client.post("/v1/readings", json=[reading()], headers=service.auth())
    assert time.perf_counter() - started < 1.0
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"

    service.publisher.error = PublishFailed("timed out")
    response = await service.client.post("/v1/readings", json=[reading()], headers=service.auth())
    assert "send it again" in assert_problem(response, 503)["detail"]
    assert response.headers["retry-after"] == "1"


async def test_quota_is_per_client_system(service: Service) -> None:
    for _ in range(6):
        ok = await service.client.post("/v1/readings", json=[reading()], headers=service.auth())
        assert ok.status_code == 202
        assert "ratelimit" in ok.headers
    refused = await service.client.post("/v1/readings", json=[reading()], headers=service.auth())
    assert_problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    other = await service.client.post("/v1/readings", json=[reading()], headers=service.auth(service.other_writer))
    assert other.status_code == 202


async def test_probes_and_metrics(service: Service) -> None:
    await service.client.post("/v1/readings", json=[reading(), reading(value=-1_000_000_000)], headers=service.auth())
    assert (await service.client.get("/healthz")).status_code == 200
    assert (await service.client.get("/readyz")).status_code == 200
    metrics = (await service.client.get("/metrics")).text
    assert 'gridhub_collection_items_total{channel="rest",kind="reading",outcome="accepted"} 1.0' in metrics
    assert 'gridhub_collection_rejections_total{channel="rest",reason="value_out_of_range"} 1.0' in metrics
    assert 'gridhub_flow_admitted_total{boundary="rest_ingress"' in metrics


async def test_openapi_document_describes_the_request_body(service: Service) -> None:
    document = (await service.client.get("/openapi.json")).json()
    body = document["paths"]["/v1/readings"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ReadingBatch"}
    assert document["components"]["schemas"]["ReadingBatch"]["maxItems"] == 5


async def test_a_client_that_disconnects_mid_body_gets_a_problem_not_a_server_error() -> None:
    messages = iter([{"type": "http.request", "body": b'[{"meter', "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    headers = [(b"content-type", b"application/json")]
    request = Request({"type": "http", "method": "POST", "path": "/v1/readings", "headers": headers}, receive)
    with pytest.raises(ProblemError) as raised:
        await read_body(request, 4096)
    assert raised.value.status_code == 400
    assert raised.value.problem.model_dump()["reason"] == "client_disconnected"


# --- scope -----------------------------------------------------------------------------------------------------

B_METERPOINT = "571313180400009172"
UNREGISTERED = "571313180400000032"


async def test_items_out_of_the_keys_scope_are_rejected_or_held_per_item() -> None:
    writer = generate_api_key("hes-north", Role.SOURCE, tenant=TENANT_A)
    view = assigned_view(METERPOINT, source="hes-north")
    view.apply(B_METERPOINT, grid_company=TENANT_B, source=("head_end", "hes-north"), version=1)
    publisher = RecordingPublisher()
    registry = CollectorRegistry()
    app = create_app(
        settings(),
        publisher=publisher,
        key_store=InMemoryKeyStore([writer.record]),
        readiness_checks=None,
        registry=registry,
        wall_clock=lambda: NOW,
        scope_view=view,
    )
    batch = [reading(), reading(meterpoint_id=B_METERPOINT), reading(meterpoint_id=UNREGISTERED)]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collection") as client:
            response = await client.post("/v1/readings", json=batch, headers={"X-API-Key": writer.plain_key})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"], body["held"]) == (1, 1, 1)
    assert [(r["status"], r.get("reason")) for r in body["results"]] == [
        ("accepted", None),
        ("rejected", "not_in_scope"),  # B's meterpoint, although its source has the same name
        ("held", "unknown_meterpoint"),
    ]
    topics_of = {r.key: r.topic for r in publisher.published}
    assert topics_of == {
        METERPOINT.encode(): "meter.readings.v1",
        B_METERPOINT.encode(): "meter.readings.v1.dlq",
        UNREGISTERED.encode(): "meter.readings.v1.dlq",
    }
    held = next(r for r in publisher.published if r.key == UNREGISTERED.encode())
    assert orjson.loads(held.value)["id"] == body["results"][2]["id"]  # the event itself, for the redrive
    assert dict(held.headers)["gridhub.deliverer.tenant"] == TENANT_A.encode()
    sample = registry.get_sample_value
    assert sample("gridhub_collection_rejections_total", {"channel": "rest", "reason": "not_in_scope"}) == 1
    assert sample("gridhub_collection_items_total", {"channel": "rest", "kind": "reading", "outcome": "held"}) == 1


async def test_nothing_is_taken_and_readiness_fails_until_the_view_caught_up() -> None:
    writer = generate_api_key("hes-north", Role.SOURCE, tenant=TENANT_A)
    view = assigned_view(METERPOINT, source="hes-north")
    view.ready = False
    app = create_app(
        settings(),
        publisher=RecordingPublisher(),
        key_store=InMemoryKeyStore([writer.record]),
        registry=CollectorRegistry(),
        wall_clock=lambda: NOW,
        scope_view=view,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collection") as client:
            refused = await client.post("/v1/readings", json=[reading()], headers={"X-API-Key": writer.plain_key})
            ready = await client.get("/readyz")
            view.ready = True
            taken = await client.post("/v1/readings", json=[reading()], headers={"X-API-Key": writer.plain_key})
    assert "catching up" in assert_problem(refused, 503)["detail"]
    assert refused.headers["retry-after"] == "2"
    assert ready.status_code == 503
    checks = {check["name"]: check for check in ready.json()["checks"]}
    assert not checks["meterpoint_view"]["ok"]
    assert "catching up" in checks["meterpoint_view"]["error"]
    assert taken.status_code == 202
