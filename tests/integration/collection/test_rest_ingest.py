"""REST ingest against the real Kafka and PostgreSQL: a 202 means every accepted reading is in Kafka, keyed by its
meterpoint; refused items are in the DLQ with their reasons; API keys come from the service's database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.platform.apikeys import Role, generate_api_key
from libs.platform.kafka import start_producer
from services.collection.app import create_app
from services.collection.settings import CollectionSettings, FtpSettings, MqttSettings
from tests.integration.collection.support import HEAD_END, MeterpointRegistry, new_meterpoint, wait_caught_up
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    writer: str
    reader: str
    client_name: str
    meterpoints: MeterpointRegistry

    async def register(self, *meterpoints: str) -> None:
        """Assign ``meterpoints`` to this service's write key (grid company A) and wait until the view has them."""
        view = self.app.state.parts.scope_view
        await self.meterpoints.register(*meterpoints, source=(HEAD_END, self.client_name), view=view)


@pytest.fixture
async def service(
    kafka_bootstrap: str, pg_dsn: str, pg_schema: str, meterpoint_registry: MeterpointRegistry
) -> AsyncIterator[Service]:
    settings = CollectionSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        postgres_dsn=pg_dsn,
        postgres_schema=pg_schema,
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
    )
    app = create_app(settings, registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        await wait_caught_up(app.state.parts.meterpoints)
        client_name = f"hes-{new_meterpoint()[-6:]}"
        writer, reader = (
            generate_api_key(client_name, Role.SOURCE, tenant=TENANT_A),
            generate_api_key("dashboard", Role.READER, tenant=TENANT_A),
        )
        await app.state.api_key_store.add(writer.record)  # into the service's api_keys table
        await app.state.api_key_store.add(reader.record)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collection") as client:
            yield Service(app, client, writer.plain_key, reader.plain_key, client_name, meterpoint_registry)


def reading(meterpoint: str, quarter: int, **changes: Any) -> dict[str, Any]:
    item = {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z",
        "resolution": "PT15M",
        "value": round(0.1 * quarter, 3),
        "unit": "kWh",
        "quality": "measured",
    }
    return {**item, **changes}


async def test_mixed_batch_is_answered_after_kafka_has_exactly_the_accepted_readings(
    service: Service, topic_reader: Any
) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    dlq = await topic_reader("meter.readings.v1.dlq")
    first, second, bad = new_meterpoint(), new_meterpoint(), new_meterpoint()
    bad = bad[:17] + str((int(bad[17]) + 1) % 10)  # a wrong check digit
    await service.register(first, second)
    batch = [
        *(reading(first, q) for q in range(8)),
        *(reading(second, q, register="reactive_import", unit="kvarh") for q in range(4)),
        reading(first, 3),  # duplicate of item 3
        reading(first, 3, value=9.9),  # same reading id, other value
        reading(second, 5, interval_end="2025-03-01T01:20:00Z"),  # misaligned
        reading(second, 6, unit="kWh", register="reactive_export"),  # unit does not fit the register
        reading(bad, 1),
        reading(first, 9, interval_end="2099-01-01T00:00:00Z"),  # in the future
        reading(first, 10, value="0.5"),  # malformed
    ]
    response = await service.client.post(
        "/v1/readings",
        content=orjson.dumps(batch),
        headers={"X-API-Key": service.writer, "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (12, 1, 6)
    results = body["results"]
    accepted = {r["id"]: r["index"] for r in results if r["status"] == "accepted"}
    assert [r["reason"] for r in results if r["status"] == "rejected"] == [
        "conflicting_duplicate",
        "misaligned_interval",
        "unit_mismatch",
        "invalid_meterpoint",
        "in_future",
        "malformed",
    ]

    # The 202 came after Kafka's acks: the topic as of now holds them all, and nothing else of ours.
    ours = {first.encode(), second.encode(), bad.encode()}
    records = await readings_topic.read_to_end(lambda record: record.key in ours)
    assert sorted(orjson.loads(r.value)["id"] for r in records) == sorted(accepted)
    for record in records:
        event = orjson.loads(record.value)
        assert record.key == event["subject"].encode() == event["data"]["meterpoint_id"].encode()
        assert event["type"] == "gridhub.meter.reading.received"
        assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
        assert event["data"] | {"reading_id": None} == {
            **batch[accepted[event["id"]]],
            "source": "meter",
            "reading_id": None,
            "meter_index": None,
        }

    letters = await dlq.read_to_end(
        lambda record: dict(record.headers).get("gridhub.client") == service.client_name.encode()
    )
    reasons = sorted(dict(letter.headers)["dlq.reason"].decode() for letter in letters)
    assert reasons == sorted(r["reason"] for r in results if r["status"] == "rejected")
    misaligned = next(letter for letter in letters if dict(letter.headers)["dlq.reason"] == b"misaligned_interval")
    assert orjson.loads(misaligned.value) == batch[14]
    assert misaligned.key == second.encode()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer ghk_0123456789abcdef_" + "x" * 43}, 401),
        ({"X-API-Key": "reader"}, 403),
    ],
)
async def test_wrong_or_missing_key_gets_a_problem_and_publishes_nothing(
    service: Service, topic_reader: Any, headers: dict[str, str], status: int
) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    meterpoint = new_meterpoint()
    if headers.get("X-API-Key") == "reader":
        headers = {"X-API-Key": service.reader}
    response = await service.client.post("/v1/readings", json=[reading(meterpoint, 1)], headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["detail"]
    assert await readings_topic.read_to_end(lambda record: record.key == meterpoint.encode()) == []


async def test_ready_when_kafka_and_the_database_answer(service: Service) -> None:
    response = await service.client.get("/readyz")
    assert response.status_code == 200, response.text
    assert {check["name"] for check in response.json()["checks"]} == {"kafka", "postgres", "meterpoint_view"}


async def test_a_topic_prefix_moves_readings_and_dead_letters_to_topics_of_their_own(
    kafka_bootstrap: str, pg_dsn: str, pg_schema: str, topic_reader: Any
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}."
    names = [f"{prefix}meter.readings.v1", f"{prefix}meter.readings.v1.dlq", f"{prefix}meterpoints.v1"]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(name, num_partitions=6, replication_factor=1) for name in names])
    settings = CollectionSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=prefix,
        postgres_dsn=pg_dsn,
        postgres_schema=pg_schema,
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
    )
    app = create_app(settings, registry=CollectorRegistry())
    try:
        platform_topic = await topic_reader("meter.readings.v1")
        own, own_dlq = await topic_reader(names[0]), await topic_reader(names[1])
        async with app.router.lifespan_context(app):
            await wait_caught_up(app.state.parts.meterpoints)
            writer = generate_api_key("hes-prefixed", Role.SOURCE, tenant=TENANT_A)
            await app.state.api_key_store.add(writer.record)
            meterpoint = new_meterpoint()
            # The scope view reads the prefix's meterpoints topic too: a benchmark registers its own meterpoints.
            producer = await start_producer(kafka_bootstrap, "collection-test-registry")
            try:
                registry = MeterpointRegistry(producer, prefix)
                view = app.state.parts.scope_view
                await registry.register(meterpoint, source=(HEAD_END, "hes-prefixed"), view=view)
            finally:
                await producer.stop()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://collection") as client:
                batch = [reading(meterpoint, 1), reading(meterpoint, 2), reading(meterpoint, 3, value="x")]
                headers = {"X-API-Key": writer.plain_key, "Content-Type": "application/json"}
                response = await client.post("/v1/readings", content=orjson.dumps(batch), headers=headers)
        assert response.status_code == 202, response.text
        assert (response.json()["accepted"], response.json()["rejected"]) == (2, 1)
        ours = meterpoint.encode()
        assert len(await own.read_to_end(lambda record: record.key == ours)) == 2
        assert len(await own_dlq.read_to_end(lambda record: record.key == ours)) == 1
        assert await platform_topic.read_to_end(lambda record: record.key == ours) == []
    finally:
        await admin.delete_topics(names)
        await admin.close()


async def test_a_negative_value_and_a_meter_index_reach_kafka_unchanged(service: Service, topic_reader: Any) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    meterpoint = new_meterpoint()
    await service.register(meterpoint)
    batch = [
        reading(meterpoint, 1, value=-0.125, meter_index=10_500.25),  # a head-end's difference after an exchange
        reading(meterpoint, 2, value=-999_999_999.999),  # the bound itself
        reading(meterpoint, 3, value=-1_000_000_000),  # beyond it
    ]
    response = await service.client.post("/v1/readings", json=batch, headers={"X-API-Key": service.writer})
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted", "rejected"]
    assert results[2]["reason"] == "value_out_of_range"
    records = await readings_topic.read_to_end(lambda record: record.key == meterpoint.encode())
    data = {orjson.loads(r.value)["data"]["interval_end"]: orjson.loads(r.value)["data"] for r in records}
    assert len(records) == 2
    first, second = data["2025-03-01T00:15:00Z"], data["2025-03-01T00:30:00Z"]
    assert (first["value"], first["meter_index"]) == (-0.125, 10_500.25)
    assert (second["value"], second["meter_index"]) == (-999_999_999.999, None)
