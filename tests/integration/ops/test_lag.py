"""`gridhub lag` on a fresh topic and group: committed offsets against end offsets, per partition."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.platform.kafka import start_producer
from ops.lag import consumer_lag
from stack.config import REPO

pytestmark = pytest.mark.kafka


async def test_lag_per_partition_of_a_fresh_group(kafka_bootstrap: str, new_topic) -> None:
    topic = await new_topic("ops-lag", partitions=2)
    producer = await start_producer(kafka_bootstrap, "test-ops-lag")
    try:
        for partition, count in ((0, 5), (1, 3)):
            for n in range(count):
                await producer.send_and_wait(topic, b"x", key=f"{n}".encode(), partition=partition)
    finally:
        await producer.stop()
    group = f"test-ops-lag-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): 2})
    finally:
        await consumer.stop()
    # The group is left to expire (aiokafka's admin cannot delete groups); its topic is deleted by the fixture.
    committed_only = await consumer_lag(kafka_bootstrap, [group])
    assert [(r.topic, r.partition, r.committed, r.end, r.lag) for r in committed_only] == [(topic, 0, 2, 5, 3)]
    whole_topic = await consumer_lag(kafka_bootstrap, [group], topics=[topic])
    # Partition 1 was never committed: a member would start at its beginning, so all 3 records are lag.
    assert [(r.partition, r.committed, r.end, r.lag) for r in whole_topic] == [(0, 2, 5, 3), (1, None, 3, 3)]
    assert await consumer_lag(kafka_bootstrap, [f"{group}-unknown"]) == []

    env = {"GRIDHUB_KAFKA_BOOTSTRAP": kafka_bootstrap, "PATH": "/usr/bin:/bin"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        "lag",
        "--group",
        group,
        "--topic",
        topic,
        "--json",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert [(r["partition"], r["committed"], r["end"], r["lag"]) for r in json.loads(out)] == [
        (0, 2, 5, 3),
        (1, None, 3, 3),
    ]
