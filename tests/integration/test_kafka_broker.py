"""The broker of the local stack is a real Apache Kafka process that keeps what it acknowledged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError

from libs.events.topics import TOPICS
from libs.platform.kafka import start_producer
from stack.config import StackConfig
from stack.kafka import Kafka

pytestmark = pytest.mark.kafka


def test_broker_is_a_real_kafka_jvm_process(stack: StackConfig) -> None:
    pid = Kafka(stack).pid()
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"kafka.Kafka" in cmdline
    assert Path(os.readlink(f"/proc/{pid}/exe")).name == "java"
    jars = {p.name for p in (stack.root / "kafka" / "libs").glob("kafka_2.13-4.*.jar")}
    assert jars, "the broker runs the Apache Kafka 4.x jar resolved from Maven Central"


async def test_record_with_headers_round_trips_through_a_committing_group(stack: StackConfig, new_topic) -> None:
    topic = await new_topic("roundtrip")
    producer = await start_producer(stack.kafka_bootstrap, "test-roundtrip")
    try:
        metadata = await producer.send_and_wait(
            topic, b'{"kwh": "1.25"}', key=b"571313180400123456", headers=[("ce_type", b"test.reading")]
        )
    finally:
        await producer.stop()
    group = f"g-{topic}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await consumer.getone()
        await consumer.commit()
        tp = TopicPartition(topic, record.partition)
        committed = await consumer.committed(tp)
    finally:
        await consumer.stop()
    assert record.key == b"571313180400123456"
    assert record.value == b'{"kwh": "1.25"}'
    assert list(record.headers) == [("ce_type", b"test.reading")]
    assert (record.partition, record.offset) == (metadata.partition, metadata.offset)
    assert committed == record.offset + 1


async def test_stack_topics_exist_with_six_partitions_and_retention(stack: StackConfig) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([spec.name for spec in TOPICS])
    finally:
        await admin.close()
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    assert partitions == {spec.name: 6 for spec in TOPICS}
    names = set(partitions)
    assert {"meter.readings.v1", "meter.readings.v1.dlq", "customers.v1", "workorders.v1.dlq"} <= names


async def test_topics_are_never_auto_created(stack: StackConfig) -> None:
    producer = await start_producer(stack.kafka_bootstrap, "test-autocreate", request_timeout_ms=3000)
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait("no.such.topic.v1", b"x")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        assert "no.such.topic.v1" not in await admin.list_topics()
    finally:
        await admin.close()
