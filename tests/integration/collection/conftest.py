"""Fixtures for the collection service against the real stack."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from stack.config import StackConfig
from stack.mosquitto import Mosquitto
from stack.process import run
from tests.integration.collection.support import Device, TopicReader, can_log_in, new_meterpoint


@pytest.fixture
async def topic_reader(kafka_bootstrap: str) -> AsyncIterator[Callable[[str], Any]]:
    readers: list[TopicReader] = []

    async def open_reader(topic: str) -> TopicReader:
        reader = TopicReader(kafka_bootstrap, topic)
        await reader.start()
        readers.append(reader)
        return reader

    yield open_reader
    for reader in readers:
        await reader.stop()


@pytest.fixture
def devices(stack: StackConfig) -> Iterator[Callable[[], Device]]:
    """Factory of logged-in devices with fresh meterpoints; their broker users are removed afterwards."""
    broker = Mosquitto(stack)
    made: list[Device] = []

    def make() -> Device:
        meterpoint = new_meterpoint()
        password = secrets.token_urlsafe(16)
        broker.add_user(meterpoint, password)  # the broker reloads its password file on SIGHUP
        deadline = time.monotonic() + 10.0
        while not can_log_in(stack, meterpoint, password):
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not pick up the new device")
        device = Device(meterpoint, password, stack.host, stack.mqtt_port)
        device.connect()
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()
        run(["mosquitto_passwd", "-D", str(broker.passwd), device.meterpoint_id], timeout=30)
