"""Mosquitto killed (SIGKILL) while meters publish, and restarted; then gap fill: every interval of every meter is in
``meter.readings.v1``, reconciled against each meter's history (what it produced), zero missing.

A private Mosquitto on free ports (the stack's broker is shared by every MQTT test), the collection service as a
subprocess (``python -m services.collection``, gap fill on, consuming a commands topic of the test's own), the
simulator's meters (``stack.dev.channels.MqttMeter``: they subscribe to their commands topic and answer re-reads from
their history). A meter whose push fails while the broker is away drops that reading (as a meter that only keeps its
load profile does), so the outage always leaves gaps; what the broker acknowledged and lost in its crash is a gap too.

The gap-fill requests come from the validation stage (``python -m services.vee`` as a subprocess: it consumes the
readings and the master data, and its gap scan asks for what is still missing), and in a second run from this test
itself, computed from what reached Kafka (one GapFillRequested per run of missing intervals), so that collection's
part is proven on its own too. Every topic is the test's own (collection's and the validation stage's topic
settings point at ``<prefix>meter.readings.v1`` and the rest).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Container, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from libs.events import make_event, to_record
from libs.events.meter import Register, Resolution
from libs.events.meterpoints import DataSource, SourceKind
from libs.events.series import GapFillRequested
from libs.events.topics import PARTITIONS
from libs.platform.kafka import start_producer
from stack.config import REPO, StackConfig
from stack.dev.channels import MqttMeter
from stack.dev.simulator import INTERVAL, history, reading
from stack.mosquitto import Mosquitto
from tests.integration.collection.support import DEVICE, MeterpointRegistry, TopicReader, can_log_in, new_meterpoint
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres]

METERS = 6
KILL_AT = 30  # the interval at which the broker dies
TICK = 0.03  # seconds between intervals: yesterday and today stream in a few seconds
LOCAL = ZoneInfo("Europe/Copenhagen")  # the test meterpoints' time zone (the master data's default)
ROLES = ("meter.readings.v1", "meter.events.v1", "meterpoints.v1", "meter.commands.v1", "meter.series.v1")


@pytest.fixture
async def prefix(kafka_bootstrap: str) -> AsyncIterator[str]:
    """``<prefix>`` + each topic collection and the validation stage use (and their dead letters), deleted after."""
    name = f"gapfault-{uuid.uuid4().hex[:8]}."
    topics = [name + role for role in ROLES] + [name + role + ".dlq" for role in ROLES]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=t, num_partitions=PARTITIONS, replication_factor=1) for t in topics])
        yield name
    finally:
        await admin.delete_topics(topics)
        await admin.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_broker(config: StackConfig) -> None:
    """Start the broker of ``config`` and wait until it answers, from a process of its own (the broker outlives it,
    as the stack's does: started in this process, its Popen would be collected while it runs)."""
    code = (
        "import sys; from pathlib import Path; from stack.config import StackConfig; from stack.mosquitto import "
        "Mosquitto; m = Mosquitto(StackConfig(root=Path(sys.argv[1]), mqtt_port=int(sys.argv[2]), "
        "mqtt_service_port=int(sys.argv[3]))); m.start(); m.wait_ready(30)"
    )
    arguments = [str(config.root), str(config.mqtt_port), str(config.mqtt_service_port)]
    subprocess.run([sys.executable, "-c", code, *arguments], cwd=REPO, check=True, timeout=60, capture_output=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own (the stack's configuration and ACL) on free ports."""
    config = StackConfig(root=tmp_path / "stack", mqtt_port=free_port(), mqtt_service_port=free_port())
    mosquitto = Mosquitto(config)
    start_broker(config)
    try:
        yield mosquitto
    finally:
        pid = mosquitto.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(mosquitto.home, ignore_errors=True)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def gaps(meterpoint: str, present: Container[datetime], ends: list[datetime], attempt: int) -> list[GapFillRequested]:
    """One request per run of missing interval ends: (end before the run, last end of the run]."""
    requests: list[GapFillRequested] = []
    run: list[datetime] = []
    for end in [*ends, None]:
        if end is not None and end not in present:
            run.append(end)
            continue
        if run:
            start, last = run[0] - INTERVAL, run[-1]
            requests.append(
                GapFillRequested(
                    request_id=GapFillRequested.id_of(meterpoint, Register.ACTIVE_IMPORT, start, last, attempt),
                    meterpoint_id=meterpoint,
                    grid_company=TENANT_A,
                    data_source=DataSource(kind=SourceKind.DEVICE, id=meterpoint),
                    register=Register.ACTIVE_IMPORT,
                    resolution=Resolution.PT15M,
                    start=start,
                    end=last,
                    attempt=attempt,
                    requested_at=datetime.now(UTC),
                )
            )
            run = []
    return requests


def start_service(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )


def stop_service(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize("requester", ["vee", "test"])
async def test_after_a_broker_crash_gap_fill_brings_every_interval_of_every_meter(
    requester: str, broker: Mosquitto, stack: StackConfig, pg_dsn: str, pg_schema: str, prefix: str, tmp_path: Path
) -> None:
    config = broker.config
    commands_topic = prefix + "meter.commands.v1"
    suffix = uuid.uuid4().hex[:8]
    event_source = f"/gridhub/collection-fault-{suffix}"
    meterpoints = [new_meterpoint() for _ in range(METERS)]
    passwords = {meterpoint: secrets.token_urlsafe(16) for meterpoint in meterpoints}
    for meterpoint, password in passwords.items():
        broker.add_user(meterpoint, password)
    for meterpoint, password in passwords.items():
        wait_until(lambda m=meterpoint, p=password: can_log_in(config, m, p), 10, "the broker has the meters")

    producer = await start_producer(stack.kafka_bootstrap, "collection-fault-test")
    registry = MeterpointRegistry(producer, prefix)
    for meterpoint in meterpoints:
        await registry.register(meterpoint, source=(DEVICE, meterpoint))

    http_port = free_port()
    env = {
        "COLLECTION_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "COLLECTION_KAFKA_TOPIC_PREFIX": prefix,
        "COLLECTION_POSTGRES_DSN": pg_dsn,
        "COLLECTION_POSTGRES_SCHEMA": pg_schema,
        "COLLECTION_HTTP_PORT": str(http_port),
        "COLLECTION_EVENT_SOURCE": event_source,
        "COLLECTION_MQTT__HOST": config.host,
        "COLLECTION_MQTT__PORT": str(config.mqtt_service_port),
        "COLLECTION_MQTT__PASSWORD": config.password("collection"),
        "COLLECTION_MQTT__CLIENT_ID": f"collection-fault-{suffix}",
        "COLLECTION_MQTT__SHARE_GROUP": f"collection-fault-{suffix}",
        "COLLECTION_FTP__ENABLED": "false",
        "COLLECTION_GAPFILL__ENABLED": "true",
        "COLLECTION_GAPFILL__TOPIC": "meter.commands.v1",  # after the prefix
        "COLLECTION_GAPFILL__GROUP_ID": f"collection-fault-{suffix}",
    }
    log = tmp_path / "collection.log"
    service = start_service("services.collection", env, log)
    vee: subprocess.Popen[bytes] | None = None
    vee_log = tmp_path / "vee.log"
    if requester == "vee":
        vee = start_service(
            "services.vee",
            {
                "VEE_POSTGRES_DSN": pg_dsn,
                "VEE_POSTGRES_SCHEMA": f"{pg_schema}_vee",
                "VEE_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
                "VEE_READINGS_TOPIC": prefix + "meter.readings.v1",
                "VEE_METERPOINTS_TOPIC": prefix + "meterpoints.v1",
                "VEE_SERIES_TOPIC": prefix + "meter.series.v1",
                "VEE_COMMANDS_TOPIC": commands_topic,
                "VEE_GROUP_ID": f"vee-fault-{suffix}",
                "VEE_HTTP_PORT": str(free_port()),
                "VEE_POLL_TIMEOUT_MS": "50",
                "VEE_OUTBOX_POLL_INTERVAL": "0.2",
                "VEE_SCHEDULER_INTERVAL_SECONDS": "2",
                "VEE_LOOKBACK_DAYS": "1",
                # Ask at once for what is missing (the test's meters have no later delivery to wait for), again
                # after a few seconds while it still is.
                "VEE_GAP_GRACE_SECONDS": "0",
                "VEE_GAP_COOLDOWN_SECONDS": "10",
                "VEE_GAP_MAX_ATTEMPTS": "20",
                "VEE_GAP_MAX_PER_METERPOINT": "20",
            },
            vee_log,
        )
    meters = [MqttMeter(m, passwords[m], config.host, config.mqtt_port, "gridhub/meters") for m in meterpoints]
    readings = TopicReader(stack.kafka_bootstrap, prefix + "meter.readings.v1")
    await readings.start()
    present: dict[str, dict[datetime, float]] = {meterpoint: {} for meterpoint in meterpoints}
    ours = {meterpoint.encode() for meterpoint in meterpoints}

    def ours_only(record: Any) -> bool:
        return record.key in ours and orjson.loads(record.value)["source"] == event_source

    async def read_new() -> None:
        for record in await readings.read_to_end(ours_only):
            data = orjson.loads(record.value)["data"]
            present[data["meterpoint_id"]][datetime.fromisoformat(data["interval_end"])] = data["value"]

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:

            async def ready() -> bool:
                if service.poll() is not None:
                    raise AssertionError(f"collection exited:\n{log.read_text()[-3000:]}")
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            async with asyncio.timeout(60):
                while not await ready():
                    await asyncio.sleep(0.1)
        for meter in meters:
            meter.start()
        async with asyncio.timeout(20):
            while not all(meter.client.is_connected() for meter in meters):
                await asyncio.sleep(0.02)

        # The meters' history: every quarter hour of yesterday and today (local days) until now, which are the days
        # the validation stage looks at.
        now = datetime.now(UTC)
        last_end = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 15)
        yesterday = datetime.combine(now.astimezone(LOCAL).date() - timedelta(days=1), datetime.min.time(), LOCAL)
        first_end = yesterday.astimezone(UTC) + INTERVAL
        ends = [first_end + n * INTERVAL for n in range(int((last_end - first_end) / INTERVAL) + 1)]
        dropped = 0
        restarted = asyncio.get_running_loop().create_future()
        for n, end in enumerate(ends):
            if n == KILL_AT:
                pid = broker.pid()
                assert pid is not None
                os.kill(pid, signal.SIGKILL)  # mid-stream: what it acknowledged but had not saved is gone
                wait_until(lambda: broker.pid() is None, 10, "the broker died")

                async def restart() -> None:
                    await asyncio.sleep(1.0)  # the meters notice; their pushes meanwhile fail
                    await asyncio.to_thread(start_broker, config)
                    restarted.set_result(None)

                restarter = asyncio.create_task(restart())
            for meter in meters:
                if meter.client.is_connected():
                    meter.send([reading(meter.meterpoint_id, end)])
                else:
                    dropped += 1  # the push failed: only a re-read brings it now
            await asyncio.sleep(TICK)
        await restarted
        await restarter
        async with asyncio.timeout(30):
            while not all(meter.client.is_connected() for meter in meters):
                await asyncio.sleep(0.05)
        assert dropped > 0, "the outage should have cost some pushes"

        # Let what the broker still had drain into Kafka: wait until nothing new arrives for a while.
        quiet_since = time.monotonic()
        count = -1
        async with asyncio.timeout(60):
            while time.monotonic() - quiet_since < 3.0:
                await read_new()
                total = sum(len(found) for found in present.values())
                if total != count:
                    count, quiet_since = total, time.monotonic()
                await asyncio.sleep(0.2)
        missing_before = {m: [e for e in ends if e not in present[m]] for m in meterpoints}
        assert sum(map(len, missing_before.values())) > 0

        # Gap fill: each meter is asked for its runs of missing intervals (by the validation stage, or here); the
        # meters answer from their history.
        attempt = 1
        requests = [r for m in meterpoints for r in gaps(m, present[m], ends, attempt)]
        if requester == "test":
            for request in requests:
                record = to_record(make_event(request, source="/gridhub/vee-fault-test"))
                await producer.send_and_wait(commands_topic, record.value, key=record.key, headers=record.headers)
        deadline = time.monotonic() + 120
        asked_again = time.monotonic()
        while True:
            if service.poll() is not None:
                raise AssertionError(f"collection exited:\n{log.read_text()[-3000:]}")
            if vee is not None and vee.poll() is not None:
                raise AssertionError(f"the validation stage exited:\n{vee_log.read_text()[-3000:]}")
            for meter in meters:
                for command in meter.take_rereads():
                    range_ = history(
                        meter.meterpoint_id, command.start, command.end, first_end=ends[0], last_end=ends[-1]
                    )
                    await asyncio.to_thread(meter.resend, range_)
            await read_new()
            if all(set(ends) <= present[m].keys() for m in meterpoints):
                break
            if time.monotonic() > deadline:
                still = {m: len([e for e in ends if e not in present[m]]) for m in meterpoints}
                logs = log.read_text()[-2000:] + (vee_log.read_text()[-2000:] if vee is not None else "")
                raise AssertionError(f"missing after gap fill: {still}\n{logs}")
            if requester == "test" and time.monotonic() - asked_again > 20:
                # As the validation stage does: a gap still open is asked for again (the next attempt).
                attempt += 1
                asked_again = time.monotonic()
                for request in [r for m in meterpoints for r in gaps(m, present[m], ends, attempt)]:
                    record = to_record(make_event(request, source="/gridhub/vee-fault-test"))
                    await producer.send_and_wait(commands_topic, record.value, key=record.key, headers=record.headers)
            await asyncio.sleep(0.1)
        # Zero missing, and every value is the meter's own for its interval.
        for meterpoint in meterpoints:
            assert present[meterpoint] == {end: reading(meterpoint, end)["value"] for end in ends}
        missing = sum(map(len, missing_before.values()))
        print(
            f"dropped pushes {dropped}, missing before gap fill {missing}, requests {len(requests)}, attempts {attempt}"
        )
    finally:
        for meter in meters:
            await asyncio.to_thread(meter.stop)
        await readings.stop()
        await producer.stop()
        stop_service(vee)
        stop_service(service)
        if vee is not None:
            connection = await asyncpg.connect(pg_dsn)
            try:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}_vee" CASCADE')
            finally:
                await connection.close()
