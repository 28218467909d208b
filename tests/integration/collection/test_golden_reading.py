"""The golden-file test: one reading sent over REST, MQTT and FTP is one canonical event with one id.

``golden/reading.json`` holds what a head-end sends (JSON item, MQTT payload, CSV line) and the event every
path must publish. The three records may differ only in the envelope's ``time`` (when each was received).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stack.config import StackConfig
from stack.mosquitto import Mosquitto
from stack.process import run
from tests.integration.collection.support import (
    Device,
    can_log_in,
    drop_session,
    ftp_login,
    ftp_upload,
    produced_by,
    running_service,
    service_settings,
    wait_for_file,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres]

GOLDEN = json.loads((Path(__file__).parent / "golden" / "reading.json").read_text())


@pytest.fixture
def golden_device(stack: StackConfig) -> Iterator[Device]:
    """A meter logged in as the golden file's meterpoint (the ACL lets it publish under that one only)."""
    broker = Mosquitto(stack)
    meterpoint, password = GOLDEN["meterpoint_id"], secrets.token_urlsafe(16)
    broker.add_user(meterpoint, password)
    deadline = time.monotonic() + 10.0
    while not can_log_in(stack, meterpoint, password):
        if time.monotonic() > deadline:
            raise TimeoutError("the broker did not pick up the golden device")
    device = Device(meterpoint, password, stack.host, stack.mqtt_port)
    device.connect()
    yield device
    device.close()
    run(["mosquitto_passwd", "-D", str(broker.passwd), meterpoint], timeout=30)


async def test_the_same_reading_over_rest_mqtt_and_ftp_is_the_same_event(
    stack: StackConfig, pg_dsn: str, pg_schema: str, tmp_path: Path, golden_device: Device, topic_reader: Any
) -> None:
    readings = await topic_reader("meter.readings.v1")
    key = GOLDEN["meterpoint_id"].encode()
    expected = GOLDEN["expected"]
    settings = service_settings(stack, pg_dsn, pg_schema, tmp_path / "ftp")
    try:
        async with running_service(settings) as service:
            response = await service.post_readings([GOLDEN["sent"]])
            assert response.status_code == 202, response.text
            assert response.json()["results"][0]["id"] == expected["id"]

            assert await asyncio.to_thread(golden_device.publish, orjson.dumps(GOLDEN["sent"])) == 0

            login, password = await service.add_partner()
            client = await ftp_login(service.ftp_port, login, password)
            await ftp_upload(client, "/inbox/golden.csv", GOLDEN["csv"].encode())
            receipt = orjson.loads(await wait_for_file(service.outbox(login) / "golden.csv.receipt.json"))
            await client.quit()
            assert receipt["lines"] == [{"line": 2, "status": "accepted", "id": expected["id"]}]

            ours = produced_by(settings)
            records = await readings.read_until(
                lambda r: r.key == key and ours(r),
                lambda found: len({orjson.loads(r.value)["time"] for r in found}) >= 3,
            )
    finally:
        await asyncio.to_thread(drop_session, stack, settings.mqtt.client_id)

    # One record per path (a retried publish would repeat one with the same time): received at three times.
    assert len({orjson.loads(r.value)["time"] for r in records}) == 3
    assert [dict(r.headers) for r in records] == [dict(records[0].headers)] * len(records)  # the same headers
    canonical = {name: value for name, value in expected.items() if name != "key"}
    for record in records:
        event = orjson.loads(record.value)
        assert record.key.decode() == expected["key"]
        assert {name: event[name] for name in canonical} == canonical
        assert event["source"] == settings.event_source
        assert set(event) == {*canonical, "time", "source"}
