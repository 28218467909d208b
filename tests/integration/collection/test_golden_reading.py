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
    DEVICE,
    FTP_PARTNER,
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
    readings_again = await topic_reader("meter.readings.v1")
    key = GOLDEN["meterpoint_id"].encode()
    expected = GOLDEN["expected"]
    settings = service_settings(stack, pg_dsn, pg_schema, tmp_path / "ftp")
    ours = produced_by(settings)
    try:
        async with running_service(settings) as service:
            # A meterpoint has one source at a time: the registry moves it from path to path. The golden meterpoint
            # is the same in every run, so the versions grow with the clock (a later run's are newer): seconds
            # since 2023-11-14, which fit the events' 32-bit versions until 2091.
            version = int(time.time()) - 1_700_000_000
            meterpoint = GOLDEN["meterpoint_id"]
            await service.register(meterpoint, version=version)
            response = await service.post_readings([GOLDEN["sent"]])
            assert response.status_code == 202, response.text
            assert response.json()["results"][0]["id"] == expected["id"]

            await service.register(meterpoint, source=(DEVICE, meterpoint), version=version + 1)
            assert await asyncio.to_thread(golden_device.publish, orjson.dumps(GOLDEN["sent"])) == 0
            # The device's reading is in Kafka before the meterpoint moves on to the FTP partner.
            await readings.read_until(lambda r: r.key == key and ours(r), lambda found: len(found) >= 2)

            login, password = await service.add_partner()
            await service.register(meterpoint, source=(FTP_PARTNER, login), version=version + 2)
            client = await ftp_login(service.ftp_port, login, password)
            await ftp_upload(client, "/inbox/golden.csv", GOLDEN["csv"].encode())
            receipt = orjson.loads(await wait_for_file(service.outbox(login) / "golden.csv.receipt.json"))
            await client.quit()
            assert receipt["lines"] == [{"line": 2, "status": "accepted", "id": expected["id"]}]

            records = await readings_again.read_until(
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
