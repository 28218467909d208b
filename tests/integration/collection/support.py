"""Helpers for the collection tests against the real stack: fresh meterpoints, MQTT devices, topic readers."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from libs.events.gsrn import with_check_digit
from libs.events.topics import PARTITIONS
from stack.config import StackConfig


def new_meterpoint() -> str:
    """A fresh valid GSRN-18, so a test can pick its own records out of shared topics."""
    return with_check_digit("5713131" + "".join(secrets.choice("0123456789") for _ in range(10)))


class TopicReader:
    """Reads one topic from the offsets it had when the reader started (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        self.partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        ends = await self.consumer.end_offsets(self.partitions)
        for partition, offset in ends.items():
            self.consumer.seek(partition, offset)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def read_until(
        self,
        match: Callable[[ConsumerRecord[bytes, bytes]], bool],
        done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
        *,
        timeout: float = 20.0,
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Matching records read until ``done(records)`` holds; TimeoutError after ``timeout`` seconds."""
        found: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(timeout):
            while not done(found):
                batches = await self.consumer.getmany(timeout_ms=200)
                found += [record for records in batches.values() for record in records if match(record)]
        return found

    async def read_to_end(
        self, match: Callable[[ConsumerRecord[bytes, bytes]], bool]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Matching records up to the topic's end as of now (everything acknowledged so far is there)."""
        ends = await self.consumer.end_offsets(self.partitions)
        found: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(20.0):
            while not all([await self.consumer.position(p) >= ends[p] for p in self.partitions]):
                batches = await self.consumer.getmany(timeout_ms=200)
                found += [record for records in batches.values() for record in records if match(record)]
        return found


@dataclass
class Device:
    """A meter: an MQTT 5 client logged in as its meterpoint, publishing with QoS 1."""

    meterpoint_id: str
    password: str
    host: str
    port: int
    client: paho.Client = field(init=False)
    acks: dict[int, int] = field(default_factory=dict)  # mid -> PUBACK reason code
    _acked: threading.Condition = field(default_factory=threading.Condition)

    def connect(self, timeout: float = 10.0) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"meter-{self.meterpoint_id}", protocol=paho.MQTTv5
        )
        self.client.username_pw_set(self.meterpoint_id, self.password)
        self.client.on_publish = self._on_publish
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError(f"device {self.meterpoint_id} could not log in")
            time.sleep(0.02)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._acked:
            self.acks[mid] = reason_code.value
            self._acked.notify_all()

    def publish(self, payload: bytes, *, topic: str | None = None, timeout: float = 10.0) -> int:
        """Publish with QoS 1 and return the broker's PUBACK reason code (0 = stored)."""
        topic = topic or f"gridhub/meters/{self.meterpoint_id}/readings"
        info = self.client.publish(topic, payload, qos=1)
        with self._acked:
            if not self._acked.wait_for(lambda: info.mid in self.acks, timeout):
                raise TimeoutError(f"no PUBACK for message {info.mid}")
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def can_log_in(stack: StackConfig, user: str, password: str) -> bool:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    client.username_pw_set(user, password)
    try:
        client.connect(stack.host, stack.mqtt_port, keepalive=5)
        client.loop_start()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not client.is_connected():
            time.sleep(0.02)
        return client.is_connected()
    finally:
        client.disconnect()
        client.loop_stop()


def drop_session(stack: StackConfig, client_id: str) -> None:
    """End a persistent MQTT session (clean start, expiry 0), so the broker stops queueing for it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set("collection", stack.password("collection"))
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(stack.host, stack.mqtt_port, keepalive=5, clean_start=True, properties=properties)
    client.loop_start()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not client.is_connected():
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()
