"""MQTT ingest against the real Mosquitto and Kafka, the ingress running as an asyncio task in this process.

Devices log in with their meterpoint id; the broker's ACL keeps each under its own topic. Every wait is a
condition with a deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from libs.events.records import KafkaRecord
from libs.platform.kafka import start_producer
from services.collection.adapters.kafka import Publisher, PublishFailed
from services.collection.app import build_parts, create_mqtt_ingress, create_publisher
from services.collection.entrypoints.mqtt import MqttIngress
from services.collection.settings import CollectionSettings, MqttSettings
from stack.config import StackConfig
from tests.integration.collection.support import Device, drop_session, subscribed

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt]

NOT_AUTHORIZED = 0x87


def reading(meterpoint: str, quarter: int, **changes: Any) -> dict[str, Any]:
    item = {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z",
        "resolution": "PT15M",
        "value": round(0.25 * quarter, 3),
        "unit": "kWh",
        "quality": "measured",
    }
    return {**item, **changes}


class FailingPublisher:
    """Kafka as seen from a service whose broker is gone: every publish fails; it remembers what it was offered."""

    def __init__(self) -> None:
        self.offered: list[KafkaRecord] = []

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        self.offered.extend(records)
        raise PublishFailed("Kafka unreachable (test)")


async def eventually(condition: Callable[[], bool], *, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture
def settings(stack: StackConfig) -> CollectionSettings:
    """A share group and client id of this test's own, so nothing else consumes its messages."""
    suffix = uuid.uuid4().hex[:8]
    return CollectionSettings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        mqtt=MqttSettings(
            host=stack.host,
            port=stack.mqtt_service_port,
            password=stack.password("collection"),
            client_id=f"collection-test-{suffix}",
            share_group=f"collection-test-{suffix}",
            session_expiry_seconds=120,
            max_readings_per_message=50,
        ),
    )


Runner = Callable[..., Any]


@pytest.fixture
async def ingress(settings: CollectionSettings, stack: StackConfig) -> AsyncIterator[Runner]:
    """``async with ingress(publisher=None) as (ingress, registry)``: an MQTT ingress task, subscribed."""
    producers: list[Any] = []

    @asynccontextmanager
    async def running(
        publisher: Publisher | None = None,
    ) -> AsyncIterator[tuple[MqttIngress, CollectorRegistry]]:
        parts = build_parts(settings, registry=CollectorRegistry())
        if publisher is None:
            producer = await start_producer(settings.kafka_bootstrap_servers, "collection-test")
            producers.append(producer)
            publisher = create_publisher(parts, producer)
        subject = create_mqtt_ingress(parts, publisher)
        async with subscribed(subject, parts=parts):
            yield subject, parts.registry

    yield running
    for producer in producers:
        await producer.stop()
    await asyncio.to_thread(drop_session, stack, settings.mqtt.client_id)


async def publish(device: Device, payload: bytes, topic: str | None = None) -> int:
    return await asyncio.to_thread(device.publish, payload, topic=topic)


def mqtt_messages(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("gridhub_collection_mqtt_messages_total", {"outcome": outcome}) or 0.0


def ids_of(records: Sequence[Any]) -> set[str]:
    return {orjson.loads(record.value)["id"] for record in records}


async def test_device_readings_arrive_on_kafka_keyed_by_meterpoint(
    ingress: Runner, devices: Callable[[], Device], topic_reader: Callable[[str], Awaitable[Any]]
) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    device = devices()
    mp = device.meterpoint_id.encode()
    async with ingress():
        assert await publish(device, orjson.dumps(reading(device.meterpoint_id, 1))) == 0
        batch = [reading(device.meterpoint_id, q) for q in range(2, 6)]
        assert await publish(device, orjson.dumps(batch)) == 0
        records = await readings_topic.read_until(lambda r: r.key == mp, lambda found: len(ids_of(found)) >= 5)
    assert len(ids_of(records)) == 5
    intervals = sorted(orjson.loads(r.value)["data"]["interval_end"] for r in records)
    assert intervals[0] == "2025-03-01T00:15:00Z"
    assert intervals[-1] == "2025-03-01T01:15:00Z"
    assert all(r.key == mp for r in records)


async def test_a_device_cannot_publish_for_another_meterpoint(ingress: Runner, devices: Callable[[], Device]) -> None:
    device, other = devices(), devices()
    async with ingress():
        payload = orjson.dumps(reading(other.meterpoint_id, 1))
        code = await publish(device, payload, topic=f"gridhub/meters/{other.meterpoint_id}/readings")
        assert code == NOT_AUTHORIZED  # the broker's ACL refuses it before anyone can consume it
        assert await publish(other, payload) == 0  # the owner may


async def test_invalid_messages_are_acknowledged_and_recorded_in_the_dlq_with_their_reason(
    ingress: Runner, devices: Callable[[], Device], topic_reader: Callable[[str], Awaitable[Any]]
) -> None:
    dlq = await topic_reader("meter.readings.v1.dlq")
    device, other = devices(), devices()
    mp = device.meterpoint_id.encode()
    garbage = f"not json {uuid.uuid4()}".encode()
    foreign = orjson.dumps(reading(other.meterpoint_id, 1))  # a payload about another meterpoint
    mixed = orjson.dumps([reading(device.meterpoint_id, 1), reading(device.meterpoint_id, 2, value=-1_000_000_000)])
    async with ingress() as (_, registry):
        for payload in (garbage, foreign, mixed):
            assert await publish(device, payload) == 0
        letters = await dlq.read_until(lambda r: r.key == mp, lambda found: len(found) >= 3)
        await eventually(lambda: mqtt_messages(registry, "dead_lettered") >= 3)  # and acknowledged
    by_value = {letter.value: dict(letter.headers) for letter in letters}
    assert by_value[garbage]["dlq.reason"] == b"invalid_json"
    assert by_value[foreign]["dlq.reason"] == b"meterpoint_mismatch"
    assert by_value[mixed]["dlq.reason"] == b"value_out_of_range"
    assert by_value[mixed]["dlq.rejected_items"] == b"1"
    for headers in by_value.values():
        assert headers["dlq.source.topic"] == f"mqtt:gridhub/meters/{device.meterpoint_id}/readings".encode()
        assert headers["gridhub.ingress"] == b"mqtt"
        assert headers["dlq.detail"]


async def test_no_puback_before_kafka_acked_so_the_broker_redelivers_to_the_next_session(
    ingress: Runner, devices: Callable[[], Device], topic_reader: Callable[[str], Awaitable[Any]]
) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    device = devices()
    mp = device.meterpoint_id.encode()
    payload = orjson.dumps(reading(device.meterpoint_id, 7))

    dead_kafka = FailingPublisher()
    async with ingress(publisher=dead_kafka) as (_, first_registry):
        assert await publish(device, payload) == 0  # the broker has it
        await eventually(lambda: any(r.key == mp for r in dead_kafka.offered))  # the service has it, Kafka not
        offered = next(r for r in dead_kafka.offered if r.key == mp)
    # The first session ended without a PUBACK. If it had acknowledged, the broker would have forgotten the message.
    assert mqtt_messages(first_registry, "acked") == 0

    async with ingress() as _:  # the same client id, now with a working Kafka
        records = await readings_topic.read_until(lambda r: r.key == mp, lambda found: len(found) >= 1)
    assert ids_of(records) == {orjson.loads(offered.value)["id"]}


async def test_a_negative_value_and_a_meter_index_reach_kafka_unchanged(
    ingress: Runner, devices: Callable[[], Device], topic_reader: Callable[[str], Awaitable[Any]]
) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    device = devices()
    mp = device.meterpoint_id.encode()
    async with ingress():
        payload = orjson.dumps(reading(device.meterpoint_id, 1, value=-2.5, meter_index=987_654.321))
        assert await publish(device, payload) == 0
        records = await readings_topic.read_until(lambda r: r.key == mp, lambda found: len(found) >= 1)
    data = orjson.loads(records[0].value)["data"]
    assert (data["value"], data["meter_index"]) == (-2.5, 987_654.321)
