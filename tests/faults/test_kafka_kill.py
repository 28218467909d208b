"""Kafka killed (SIGKILL) while readings stream in over REST, MQTT and FTP, then restarted: every reading that was
acknowledged (202, the broker's PUBACK to a device, a receipt) is in Kafka. A reconciliation by id, zero missing.

The broker is the shared local stack's: this test always starts it again (``python -m stack up``, which waits
until it answers) in a ``finally``, since every other Kafka test needs it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aioftp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.events.ids import reading_id
from libs.events.topics import PARTITIONS, READINGS
from libs.flowcontrol.policy import BoundaryPolicy, BreakerSettings, BufferSettings, BulkheadSettings, QuotaSettings
from services.collection.settings import Boundaries
from stack.config import REPO, StackConfig
from stack.kafka import Kafka
from tests.integration.collection.support import (
    CSV_HEADER,
    Device,
    drop_session,
    ftp_login,
    ftp_upload,
    new_meterpoint,
    produced_by,
    running_service,
    service_settings,
    wait_for_file,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres]

logger = logging.getLogger(__name__)
START = datetime(2024, 1, 1, tzinfo=UTC)
QUARTER = timedelta(minutes=15)


class Acknowledged:
    """Reading ids per path that the service (or, for MQTT, the broker on its behalf) acknowledged."""

    def __init__(self) -> None:
        self.rest: set[str] = set()
        self.mqtt: set[str] = set()
        self.ftp: set[str] = set()
        self.lock = threading.Lock()
        self.refused = 0
        self.meterpoints: set[bytes] = set()  # every meterpoint the loads use, to pick our records out

    def all(self) -> set[str]:
        with self.lock:
            return self.rest | self.mqtt | self.ftp


def reading(meterpoint: str, n: int) -> dict[str, Any]:
    return {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": (START + n * QUARTER).isoformat().replace("+00:00", "Z"),
        "resolution": "PT15M",
        "value": round((n % 400) * 0.125, 3),
        "unit": "kWh",
        "quality": "measured",
    }


def id_of(item: dict[str, Any]) -> str:
    return reading_id(item["meterpoint_id"], item["register"], datetime.fromisoformat(item["interval_end"]), "meter")


async def rest_load(service: Any, acked: Acknowledged, stop: asyncio.Event, counter: Any) -> None:
    meterpoints = [new_meterpoint() for _ in range(10)]
    await service.register(*meterpoints)  # assigned to the service's key: the scope check accepts them
    acked.meterpoints.update(m.encode() for m in meterpoints)
    while not stop.is_set():
        batch = [reading(meterpoints[i % 10], next(counter)) for i in range(20)]
        response = await service.post_readings(batch)
        if response.status_code == 202:
            with acked.lock:
                acked.rest.update(r["id"] for r in response.json()["results"] if r["status"] == "accepted")
        else:
            assert response.status_code == 503, response.text  # Kafka unavailable: nothing was accepted
            acked.refused += 1
            await asyncio.sleep(0.05)  # pacing a client that got 503, not waiting for a condition


def mqtt_load(device: Device, acked: Acknowledged, stop: threading.Event, counter: Any) -> None:
    """Publish messages of 5 readings with QoS 1; a message counts once the broker's PUBACK (code 0) came."""
    pending: dict[int, list[str]] = {}
    early: dict[int, int] = {}  # PUBACKs that came before publish() returned their mid: mid -> reason code
    done = threading.Condition()

    def count(ids: list[str], reason: int) -> None:
        if reason == 0:
            with acked.lock:
                acked.mqtt.update(ids)

    def on_publish(client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # paho calls this holding its message lock, which publish() takes too: never publish while holding `done`.
        with done:
            ids = pending.pop(mid, None)
            if ids is None:
                early[mid] = reason_code.value
            else:
                count(ids, reason_code.value)
            done.notify_all()

    device.client.on_publish = on_publish
    while not stop.is_set():
        items = [reading(device.meterpoint_id, next(counter)) for _ in range(5)]
        info = device.client.publish(f"gridhub/meters/{device.meterpoint_id}/readings", orjson.dumps(items), qos=1)
        with done:
            ids = [id_of(item) for item in items]
            if info.mid in early:
                count(ids, early.pop(info.mid))
            else:
                pending[info.mid] = ids
            # At most 20 unacknowledged messages: the broker's PUBACKs pace us, not a sleep.
            done.wait_for(lambda: len(pending) < 20 or stop.is_set(), timeout=10.0)
        stop.wait(0.01)
    with done:
        done.wait_for(lambda: not pending, timeout=10.0)


async def ftp_load(service: Any, acked: Acknowledged, stop: asyncio.Event, counter: Any) -> list[Path]:
    """Upload small files until stopped; return the receipts to wait for (one per upload the server took)."""
    login, password = await service.add_partner()
    client = await ftp_login(service.ftp_port, login, password)
    meterpoint = new_meterpoint()
    await service.register(meterpoint, source=("ftp_partner", login))
    acked.meterpoints.add(meterpoint.encode())
    receipts: list[Path] = []
    try:
        for number in itertools.count():
            if stop.is_set():
                break
            lines = [CSV_HEADER, *(",".join(map(str, reading(meterpoint, next(counter)).values())) for _ in range(25))]
            name = f"drop-{number:04d}.csv"
            try:
                await ftp_upload(client, f"/inbox/{name}", ("\n".join(lines) + "\n").encode())
            except aioftp.StatusCodeError as refused:  # 452: too many files waiting while Kafka is down
                if "452" not in [str(code) for code in refused.received_codes]:
                    raise
                acked.refused += 1
            else:
                receipts.append(service.outbox(login) / f"{name}.receipt.json")
            await asyncio.sleep(0.1)  # pacing the partner
    finally:
        await client.quit()
    return receipts


async def ids_in_kafka(
    bootstrap: str, start: dict[TopicPartition, int], keys: set[bytes], ours: Callable[[Any], bool]
) -> set[str]:
    """Ids of the events this test's service published since ``start`` (not another instance's copies)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = list(start)
        consumer.assign(partitions)
        for partition, offset in start.items():
            consumer.seek(partition, offset)
        ends = await consumer.end_offsets(partitions)
        found: set[str] = set()
        async with asyncio.timeout(30.0):
            while not all([await consumer.position(p) >= ends[p] for p in partitions]):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found.update(orjson.loads(r.value)["id"] for r in records if r.key in keys and ours(r))
        return found
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(READINGS, p) for p in range(PARTITIONS)]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


def stack_up() -> None:
    """Start the stack again (only the dead broker starts); returns when Kafka answers."""
    subprocess.run([sys.executable, "-m", "stack", "up"], cwd=REPO, check=True, capture_output=True, timeout=180)


async def test_every_acknowledged_reading_survives_a_broker_kill(
    stack: StackConfig, pg_dsn: str, pg_schema: str, tmp_path: Path, devices: Callable[[], Device]
) -> None:
    kafka = Kafka(stack)
    assert kafka.pid() is not None, "the stack's Kafka must run"
    start = await end_offsets(stack.kafka_bootstrap)
    # Fail fast while the broker is gone: publishes time out after 3 s, the breaker opens after 2 of 4 fail.
    boundaries = Boundaries(
        rest_ingress=BoundaryPolicy(
            quota=QuotaSettings(rate=1000, burst=1000),
            bulkhead=BulkheadSettings(max_concurrent=8, max_wait=0.5, max_waiting=64),
            max_body_bytes=4 * 1024 * 1024,
        ),
        # The broker's backlog from the outage arrives at once when Kafka is back; a device quota that small would
        # send most of it to the DLQ as quota_exceeded (accounted for, but not what this test is about).
        mqtt_ingress=BoundaryPolicy(
            quota=QuotaSettings(rate=100_000, burst=100_000), buffer=BufferSettings(capacity=1000)
        ),
        kafka_producer=BoundaryPolicy(
            breaker=BreakerSettings(
                failure_rate_threshold=50,
                slow_call_duration_threshold=2.0,
                window_size=4,
                minimum_calls=2,
                wait_in_open=1.0,
                permitted_calls_in_half_open=1,
            ),
            timeout=3.0,
        ),
    )
    settings = service_settings(stack, pg_dsn, pg_schema, tmp_path / "ftp", boundaries=boundaries)
    meters = [devices() for _ in range(3)]
    acked = Acknowledged()
    acked.meterpoints.update(m.meterpoint_id.encode() for m in meters)
    counter = itertools.count()
    killed_at = restarted_at = 0.0
    stop, mqtt_stop = asyncio.Event(), threading.Event()
    try:
        async with running_service(settings) as service:
            rest = asyncio.create_task(rest_load(service, acked, stop, counter))
            ftp = asyncio.create_task(ftp_load(service, acked, stop, counter))
            mqtt = [asyncio.create_task(asyncio.to_thread(mqtt_load, m, acked, mqtt_stop, counter)) for m in meters]
            processed = service.registry.get_sample_value
            await until(
                lambda: (
                    bool(acked.rest and acked.mqtt)
                    and (processed("gridhub_collection_ftp_files_total", {"outcome": "processed"}) or 0) >= 1
                ),
                20.0,
                "all three paths flow",
            )

            pid = kafka.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            logger.warning("Kafka (pid %d) killed", pid)
            parts = service.app.state.parts
            # While it is down: REST refuses fast (503), MQTT and FTP hold what they have, nothing is acknowledged.
            await until(lambda: acked.refused >= 3, 20.0, "REST answers 503")
            await until(lambda: parts.ftp.processor.paused, 20.0, "FTP pauses")
            await until(
                lambda: service.registry.get_sample_value("gridhub_collection_mqtt_paused") == 1, 20.0, "MQTT pauses"
            )

            await asyncio.to_thread(stack_up)
            restarted_at = time.monotonic()
            logger.warning("Kafka back after %.1f s", restarted_at - killed_at)
            rest_before = len(acked.rest)
            await until(lambda: len(acked.rest) > rest_before + 100, 30.0, "REST accepts again")
            stop.set()
            mqtt_stop.set()
            receipts = await ftp
            await rest
            await asyncio.gather(*mqtt)
            for receipt in receipts:  # every file the server took gets its receipt, once Kafka has it
                for entry in orjson.loads(await wait_for_file(receipt, timeout=30.0))["lines"]:
                    if entry["status"] == "accepted":
                        acked.ftp.add(entry["id"])
            # The MQTT ingress still owes the broker's redeliveries: wait until Kafka has every acked message.
            expected = acked.all()
            found: set[str] = set()
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                found = await ids_in_kafka(stack.kafka_bootstrap, start, acked.meterpoints, produced_by(settings))
                if expected <= found:
                    break
    finally:
        stop.set()
        mqtt_stop.set()  # the load threads end, even when the test failed half way
        if kafka.pid() is None:
            await asyncio.to_thread(stack_up)
        await asyncio.to_thread(drop_session, stack, settings.mqtt.client_id)

    missing = expected - found
    logger.warning(
        "acknowledged: rest %d, mqtt %d, ftp %d; refused while down: %d; Kafka down %.1f s",
        len(acked.rest),
        len(acked.mqtt),
        len(acked.ftp),
        acked.refused,
        restarted_at - killed_at,
    )
    assert acked.rest
    assert acked.mqtt
    assert acked.ftp
    assert not missing, f"{len(missing)} acknowledged reading(s) not in Kafka, e.g. {sorted(missing)[:3]}"
