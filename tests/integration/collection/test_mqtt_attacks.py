"""Hostile devices against the real Mosquitto (the stack's listener layout) and Kafka, issue 14's MQTT attacks.

7: a device takes the collection's (or another device's) session with its client id. 8: a 20 MiB publish.
9: one device far over its quota next to nine normal ones. Each test performs the attack over real sockets; the
ingress runs as an asyncio task in this process, so its memory and CPU are this process's.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry

from libs.flowcontrol.policy import BoundaryPolicy, BufferSettings, QuotaSettings
from libs.platform.kafka import start_producer
from services.collection.app import build_parts, create_mqtt_ingress, create_publisher
from services.collection.entrypoints.mqtt import MqttIngress
from services.collection.settings import Boundaries, CollectionSettings, MqttSettings
from stack.config import StackConfig
from tests.integration.collection.support import Device, can_log_in, drop_session, subscribed

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt]

START = datetime(2025, 3, 1, tzinfo=UTC)


def reading(meterpoint: str, quarter: int) -> dict[str, Any]:
    end = START + timedelta(minutes=15 * (quarter + 1))
    return {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resolution": "PT15M",
        "value": round(0.25 * (quarter % 1000), 3),
        "unit": "kWh",
        "quality": "measured",
    }


def quarter_of(interval_end: str) -> int:
    end = datetime.strptime(interval_end, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int((end - START) / timedelta(minutes=15)) - 1


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fetched(reader: Any) -> list[Any]:
    """Whatever records ``reader`` has next (waits up to 200 ms)."""
    batches = await reader.consumer.getmany(timeout_ms=200)
    return [record for records in batches.values() for record in records]


async def eventually(condition: Callable[[], bool], *, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def mqtt_settings(stack: StackConfig, **changes: Any) -> MqttSettings:
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "host": stack.host,
        "port": stack.mqtt_service_port,
        "password": stack.password("collection"),
        "client_id": f"collection-test-{suffix}",
        "share_group": f"collection-test-{suffix}",
        "session_expiry_seconds": 120,
        "max_readings_per_message": 50,
        **changes,
    }
    return MqttSettings(**values)


Runner = Callable[..., Any]


@pytest.fixture
async def ingress(stack: StackConfig) -> AsyncIterator[Runner]:
    """``async with ingress(settings) as (ingress, registry)``: an MQTT ingress task over real Kafka, subscribed."""
    producer = await start_producer(stack.kafka_bootstrap, "collection-attack-test")
    client_ids: set[str] = set()

    @asynccontextmanager
    async def running(settings: CollectionSettings) -> AsyncIterator[tuple[MqttIngress, CollectorRegistry]]:
        client_ids.add(settings.mqtt.client_id)
        parts = build_parts(settings, registry=CollectorRegistry())
        subject = create_mqtt_ingress(parts, create_publisher(parts, producer))
        async with subscribed(subject, parts=parts):
            yield subject, parts.registry

    try:
        yield running
    finally:
        await producer.stop()
        for client_id in client_ids:
            await asyncio.to_thread(drop_session, stack, client_id)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --- 7: client ids bound to accounts -----------------------------------------------------------------------------


class Refused(Exception):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"CONNACK reason 0x{code:02x}")
        self.code = code


def connect_as(stack: StackConfig, user: str, password: str, client_id: str, *, port: int | None = None) -> paho.Client:
    """A clean-start MQTT 5 client with ``client_id`` (what an attacker would send): connected, or Refused."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set(user, password)
    answers: list[int] = []
    client.on_connect = lambda c, u, flags, reason, props: answers.append(reason.value)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(stack.host, port or stack.mqtt_port, keepalive=10, clean_start=True, properties=properties)
    client.loop_start()
    deadline = time.monotonic() + 5.0
    while not answers:
        if time.monotonic() > deadline:
            client.loop_stop()
            raise TimeoutError(f"{user}: no CONNACK")
        time.sleep(0.02)
    if answers[0] != 0:
        client.disconnect()
        client.loop_stop()
        raise Refused(answers[0])
    return client


async def test_a_device_using_the_services_client_id_cannot_take_its_session_or_its_queued_messages(
    stack: StackConfig,
    ingress: Runner,
    devices: Callable[[], Device],
    topic_reader: Callable[[str], Awaitable[Any]],
) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    settings = CollectionSettings(kafka_bootstrap_servers=stack.kafka_bootstrap, mqtt=mqtt_settings(stack))
    meter, attacker = devices(), devices()
    key = meter.meterpoint_id.encode()
    async with ingress(settings):
        pass  # the service's persistent session now exists, with its shared subscription
    # The service is away (a restart): the broker queues the meter's readings in the service's session.
    for quarter in range(3):
        assert await asyncio.to_thread(meter.publish, orjson.dumps(reading(meter.meterpoint_id, quarter))) == 0
    # The attack: a device logs in with the service's client id, clean start, session expiry 0.
    hijack = await asyncio.to_thread(
        connect_as, stack, attacker.meterpoint_id, attacker.password, settings.mqtt.client_id
    )
    hijack.disconnect()
    hijack.loop_stop()
    async with ingress(settings):  # the service comes back to its session
        records = await readings_topic.read_until(
            lambda r: r.key == key, lambda found: len({orjson.loads(r.value)["id"] for r in found}) >= 3
        )
    assert len({orjson.loads(r.value)["id"] for r in records}) == 3  # every queued message kept


async def test_a_device_using_another_devices_client_id_does_not_disconnect_it(
    stack: StackConfig, devices: Callable[[], Device]
) -> None:
    victim, attacker = devices(), devices()
    drops: list[int] = []
    victim.client.on_disconnect = lambda *args: drops.append(1)
    # The victim's client id is whatever it sent (the broker makes it its user name): both are tried.
    for client_id in (f"meter-{victim.meterpoint_id}", victim.meterpoint_id):
        hijack = await asyncio.to_thread(connect_as, stack, attacker.meterpoint_id, attacker.password, client_id)
        hijack.disconnect()
        hijack.loop_stop()
    # A PUBACK on the first connection: success, 0x10 "no matching subscribers" (no service runs here).
    assert await asyncio.to_thread(victim.publish, orjson.dumps(reading(victim.meterpoint_id, 1))) in {0, 0x10}
    assert drops == []  # still its first connection


async def test_devices_have_no_account_on_the_service_listener_and_services_none_on_the_device_listener(
    stack: StackConfig, devices: Callable[[], Device]
) -> None:
    device = devices()
    with pytest.raises(Refused) as refused:
        await asyncio.to_thread(
            connect_as, stack, device.meterpoint_id, device.password, "collection-0", port=stack.mqtt_service_port
        )
    assert refused.value.code in {0x86, 0x87}  # bad user name or password / not authorized
    assert not await asyncio.to_thread(can_log_in, stack, "collection", stack.password("collection"))


# --- 8: packet size ----------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def oversize_publish(stack: StackConfig, device: Device, size: int) -> bytes:
    """Log in over a raw socket and stream one QoS 1 PUBLISH of ``size`` payload bytes; return what came back.

    The payload is sent from one reused 1 MiB block, so this process's memory does not grow with ``size``.
    """
    with socket.create_connection((stack.host, stack.mqtt_port), timeout=10) as sock:
        body = _string("MQTT") + bytes([5, 0xC2]) + struct.pack("!H", 30) + b"\x00"
        body += _string(f"big-{device.meterpoint_id}") + _string(device.meterpoint_id) + _string(device.password)
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        connack = sock.recv(64)
        assert connack[:1] == b"\x20", connack
        assert connack[3] == 0, connack  # accepted
        topic = _string(f"gridhub/meters/{device.meterpoint_id}/readings")
        header = topic + struct.pack("!H", 1) + b"\x00"
        sock.sendall(b"\x32" + _varint(len(header) + size) + header)
        block = b"x" * (1024 * 1024)
        sent = 0
        try:
            while sent < size:
                sock.sendall(block[: size - sent])
                sent += len(block)
        except OSError:
            pass  # the broker hung up on us
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
        return answer


async def test_an_oversize_publish_is_refused_by_the_broker_and_the_services_memory_does_not_move(
    stack: StackConfig, ingress: Runner, devices: Callable[[], Device]
) -> None:
    settings = CollectionSettings(kafka_bootstrap_servers=stack.kafka_bootstrap, mqtt=mqtt_settings(stack))
    device = devices()
    async with ingress(settings) as (_, registry):
        before = rss_mib()
        answer = await asyncio.to_thread(oversize_publish, stack, device, 20 * 1024 * 1024)
        # No PUBACK (0x40): a DISCONNECT "Packet too large" (0x95) or the connection simply closed.
        assert not answer.startswith(b"\x40"), answer[:8]
        if answer:
            assert answer[:1] == b"\xe0", answer[:8]
            assert answer[2] == 0x95, answer[:8]
        # The service still takes a normal message, and never saw the big one.
        assert await asyncio.to_thread(device.publish, orjson.dumps(reading(device.meterpoint_id, 1))) == 0
        await eventually(lambda: metric(registry, "gridhub_collection_mqtt_messages_total", outcome="acked") >= 1)
        grown = rss_mib() - before
    assert metric(registry, "gridhub_collection_mqtt_messages_total", outcome="acked") == 1
    assert metric(registry, "gridhub_collection_mqtt_messages_total", outcome="dead_lettered") == 0
    assert grown < 8, f"RSS grew {grown:.1f} MiB"


# --- 9: one noisy device -----------------------------------------------------------------------------------------

NORMAL_DEVICES = 9
NORMAL_RATE = 2.0  # messages (of one reading) per second per normal device
QUOTA = 5.0  # readings per second per device
NOISY_RATE = 20 * QUOTA  # messages of one reading per second: 20 x its quota
PHASE = 8.0  # seconds: normal devices alone, then with the noisy one (held PUBACKs: 99 of 144 in time)
GRACE = 1.0  # seconds after a phase in which its readings still count as delivered in time

Sent = dict[str, dict[int, int]]  # meterpoint -> message id -> quarter of the reading it carried


async def paced(devices: list[Device], rate: float, seconds: float, first: int, sent: Sent) -> None:
    """Each device publishes one reading per message at ``rate`` per second for ``seconds`` (quarters from first)."""
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    started = loop.time()
    for n in range(count):
        delay = started + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for device in devices:
            info = device.client.publish(
                f"gridhub/meters/{device.meterpoint_id}/readings",
                orjson.dumps(reading(device.meterpoint_id, first + n)),
                qos=1,
            )
            sent[device.meterpoint_id][info.mid] = first + n


async def test_a_device_at_20x_its_quota_slows_only_itself_and_each_of_its_acknowledged_readings_is_accounted_for(
    stack: StackConfig,
    ingress: Runner,
    devices: Callable[[], Device],
    topic_reader: Callable[[str], Awaitable[Any]],
) -> None:
    readings_topic = await topic_reader("meter.readings.v1")
    dlq = await topic_reader("meter.readings.v1.dlq")
    boundaries = Boundaries(
        mqtt_ingress=BoundaryPolicy(quota=QuotaSettings(rate=QUOTA, burst=5), buffer=BufferSettings(capacity=1000))
    )
    mqtt = mqtt_settings(stack, max_readings_per_message=5, receive_maximum=100, quota_lanes=4, quota_lane_messages=5)
    settings = CollectionSettings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        event_source=f"/gridhub/collection-test-{uuid.uuid4().hex[:8]}",
        mqtt=mqtt,
        boundaries=boundaries,
    )
    normal = [devices() for _ in range(NORMAL_DEVICES)]
    noisy = devices()
    sent: Sent = {d.meterpoint_id: {} for d in [*normal, noisy]}
    source = settings.event_source.encode()

    def ours(record: Any) -> bool:
        return b'"source":"' + source + b'"' in record.value

    async with ingress(settings) as (_, registry):
        rss_before = rss_mib()
        await paced(normal, NORMAL_RATE, PHASE, 0, sent)
        alone_ended = time.time()
        await asyncio.gather(paced(normal, NORMAL_RATE, PHASE, 1000, sent), paced([noisy], NOISY_RATE, PHASE, 0, sent))
        noisy_ended = time.time()
        normal_keys = {d.meterpoint_id.encode() for d in normal}
        expected = NORMAL_DEVICES * int(NORMAL_RATE * PHASE) * 2
        # One pass over both topics: the noisy device's released readings arrive among the others'.
        await eventually(lambda: all(mid in noisy.acks for mid in sent[noisy.meterpoint_id]))
        acked = {quarter for mid, quarter in sent[noisy.meterpoint_id].items() if noisy.acks.get(mid) == 0}
        assert len(acked) == int(NOISY_RATE * PHASE)
        key = noisy.meterpoint_id.encode()
        delivered: list[Any] = []
        in_readings: set[int] = set()
        in_dlq: dict[int, bytes] = {}

        def done() -> bool:
            normal_ids = {orjson.loads(r.value)["id"] for r in delivered}
            return len(normal_ids) >= expected and acked <= in_readings | set(in_dlq)

        async with asyncio.timeout(20.0):
            while not done():
                for record in await fetched(readings_topic):
                    if not ours(record):
                        continue
                    if record.key in normal_keys:
                        delivered.append(record)
                    elif record.key == key:
                        in_readings.add(quarter_of(orjson.loads(record.value)["data"]["interval_end"]))
                for letter in await fetched(dlq):
                    headers = dict(letter.headers)
                    if letter.key == key and headers.get("dlq.record_id", b"").startswith(mqtt.client_id.encode()):
                        in_dlq[quarter_of(orjson.loads(letter.value)["interval_end"])] = headers["dlq.reason"]
        over_quota = metric(registry, "gridhub_collection_mqtt_messages_total", outcome="quota_exceeded")
        parked = metric(registry, "gridhub_collection_mqtt_messages_total", outcome="parked")
        # Back to idle within a minute after the burst: CPU over 2 s near zero, RSS where it started.
        idle_deadline = noisy_ended + 60
        while True:
            cpu, wall = cpu_seconds(), time.monotonic()
            await asyncio.sleep(2.0)
            load = (cpu_seconds() - cpu) / (time.monotonic() - wall)
            if load < 0.15 or time.time() > idle_deadline:
                break
        rss_after = rss_mib()

    def in_time(ended: float, quarters: range) -> int:
        return len(
            {
                orjson.loads(r.value)["id"]
                for r in delivered
                if quarter_of(orjson.loads(r.value)["data"]["interval_end"]) in quarters
                and r.timestamp / 1000 <= ended + GRACE
            }
        )

    phase_messages = int(NORMAL_RATE * PHASE)
    alone = in_time(alone_ended, range(phase_messages))
    beside_noisy = in_time(noisy_ended, range(1000, 1000 + phase_messages))
    assert alone == NORMAL_DEVICES * phase_messages
    assert beside_noisy / alone >= 0.9, f"{beside_noisy} of {alone} readings in time beside the noisy device"
    assert set(in_dlq.values()) <= {b"quota_exceeded"}
    assert in_dlq, "20x its quota: most of the noisy device's readings are over it"
    assert over_quota == len(in_dlq)
    assert parked >= 1
    assert load < 0.15, f"CPU at {load:.0%} of a core after the burst"
    assert rss_after - rss_before < 20, f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
