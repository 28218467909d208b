"""Over quota against the real stack: a REST client gets 429 with Retry-After and nothing is published; an MQTT
device a little over its quota is slowed (a few messages parked in its lane), never dropped: every reading arrives.
Far over it, see test_mqtt_attacks.py (the excess goes to the DLQ as quota_exceeded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from libs.flowcontrol.policy import BoundaryPolicy, BufferSettings, BulkheadSettings, QuotaSettings
from services.collection.settings import Boundaries, FtpSettings, MqttSettings
from stack.config import StackConfig
from tests.integration.collection.support import (
    Device,
    drop_session,
    new_meterpoint,
    produced_by,
    running_service,
    service_settings,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres]


def reading(meterpoint: str, quarter: int) -> dict[str, Any]:
    return {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z",
        "resolution": "PT15M",
        "value": round(0.25 * quarter, 3),
        "unit": "kWh",
        "quality": "measured",
    }


async def test_a_rest_client_over_its_quota_gets_429_with_retry_after_and_publishes_nothing(
    stack: StackConfig, pg_dsn: str, pg_schema: str, tmp_path: Path, topic_reader: Any
) -> None:
    readings = await topic_reader("meter.readings.v1")
    meterpoint = new_meterpoint()
    boundaries = Boundaries(
        rest_ingress=BoundaryPolicy(
            quota=QuotaSettings(rate=0.2, burst=2), bulkhead=BulkheadSettings(max_concurrent=4), max_body_bytes=65536
        )
    )
    settings = service_settings(
        stack,
        pg_dsn,
        pg_schema,
        tmp_path,
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
        boundaries=boundaries,
    )
    async with running_service(settings) as service:
        await service.register(meterpoint)
        statuses = [(await service.post_readings([reading(meterpoint, q)])).status_code for q in (1, 2)]
        refused = await service.post_readings([reading(meterpoint, 3)])
    assert statuses == [202, 202]
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(refused.headers["Retry-After"]) <= 5  # one token at 0.2 per second
    assert refused.headers["RateLimit"].endswith(";r=0;t=10")  # none left, full again in 2 / 0.2 s
    assert "q=2" in refused.headers["RateLimit-Policy"]
    records = await readings.read_to_end(lambda record: record.key == meterpoint.encode())
    assert sorted(orjson.loads(r.value)["data"]["interval_end"] for r in records) == [
        "2025-03-01T00:15:00Z",
        "2025-03-01T00:30:00Z",
    ]


async def test_an_mqtt_device_a_little_over_its_quota_is_slowed_not_dropped(
    stack: StackConfig,
    pg_dsn: str,
    pg_schema: str,
    tmp_path: Path,
    devices: Callable[[], Device],
    topic_reader: Any,
) -> None:
    readings = await topic_reader("meter.readings.v1")
    device = devices()
    key = device.meterpoint_id.encode()
    # 10 readings at once, then 20 per second: 40 readings in messages of 5 take at least 1.5 s. The 6 messages
    # over the burst fit the device's lane (8 by default), so none is recorded as quota_exceeded.
    boundaries = Boundaries(
        mqtt_ingress=BoundaryPolicy(quota=QuotaSettings(rate=20, burst=10), buffer=BufferSettings(capacity=1000))
    )
    settings = service_settings(stack, pg_dsn, pg_schema, tmp_path, ftp=FtpSettings(enabled=False))
    settings = settings.model_copy(
        update={"boundaries": boundaries, "mqtt": settings.mqtt.model_copy(update={"max_readings_per_message": 5})}
    )
    try:
        async with running_service(settings) as service:
            started = time.monotonic()
            for message in range(8):
                batch = [reading(device.meterpoint_id, message * 5 + q) for q in range(1, 6)]
                assert await asyncio.to_thread(device.publish, orjson.dumps(batch)) == 0  # the broker has it
            ours = produced_by(settings)
            records = await readings.read_until(
                lambda r: r.key == key and ours(r),
                lambda found: len({orjson.loads(r.value)["id"] for r in found}) >= 40,
                timeout=20.0,
            )
            elapsed = time.monotonic() - started
            parked = service.registry.get_sample_value("gridhub_collection_mqtt_messages_total", {"outcome": "parked"})
            over = service.registry.get_sample_value(
                "gridhub_collection_mqtt_messages_total", {"outcome": "quota_exceeded"}
            )
    finally:
        await asyncio.to_thread(drop_session, stack, settings.mqtt.client_id)
    assert len({orjson.loads(r.value)["id"] for r in records}) == 40  # all of them, none dropped
    assert parked == 6
    assert over is None
    assert elapsed >= 1.2  # paced by the quota, not by the broker


async def test_the_lag_probe_reads_a_consumer_groups_lag_from_kafka(kafka_bootstrap: str, new_topic: Any) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import OffsetAndMetadata

    from libs.platform.kafka import start_producer
    from services.collection.adapters.lag import ConsumerLagProbe

    topic = await new_topic("lag", partitions=2)
    producer = await start_producer(kafka_bootstrap, "lag-test")
    try:
        for n in range(10):
            await producer.send_and_wait(topic, b"x", partition=n % 2)
    finally:
        await producer.stop()
    group = f"lag-{new_meterpoint()}"
    probe = ConsumerLagProbe(kafka_bootstrap, group_id=group, topic=topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    committer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await committer.start()
    try:
        assert await probe.read_once(admin, consumer) == 0  # no commits yet: no pressure
        committer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, ""), TopicPartition(topic, 1): 5})
        assert await probe.read_once(admin, consumer) == 3  # partition 0: 5 - 2; partition 1: 5 - 5
    finally:
        await committer.stop()
        await consumer.stop()
        await admin.close()
