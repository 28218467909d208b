"""A second Mosquitto started by the test, laid out as deploy/mosquitto in production: TLS on both listeners.

Its certificate authority is made here with openssl (a CA, a server certificate for 127.0.0.1). The broker runs on
free ports with a tiny queue limit and a short $SYS interval, so MQTT over TLS end to end (a device and the
collection's ingress, paho with ``tls_set``), the broker's drops as metrics, and the loss window of a broker crash
(persistence is saved every ``autosave_interval``) are each shown in seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry

from libs.platform.kafka import start_producer
from services.collection.app import build_parts, create_mqtt_ingress, create_publisher
from services.collection.settings import CollectionSettings, MqttSettings
from stack.config import StackConfig
from stack.mosquitto import ACL, MAX_PACKET_SIZE, SERVICES_ACL
from tests.integration.collection.support import new_meterpoint, register_device, subscribed

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt]

QUEUE_LIMIT = 5  # max_queued_messages of the test broker


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) in ``directory``."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-keyout", key, "-out", cert)  # fmt: skip
    return cert, key


def make_server_certificate(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by ``ca``."""
    cert, key, request = directory / "server.crt", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
            "-keyout", key, "-out", request)  # fmt: skip
    openssl("x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "1",
            "-extfile", extensions, "-out", cert)  # fmt: skip
    return cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class TlsBroker:
    """A Mosquitto with TLS device and service listeners on free ports; ``start``/``kill``/``stop`` it at will."""

    home: Path
    ca: Path
    device_port: int
    service_port: int
    service_password: str
    autosave_interval: int = 1
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def store(self) -> Path:
        return self.home / "data" / "mosquitto.db"

    def config(self) -> str:
        tls = [f"cafile {self.ca}", f"certfile {self.home / 'server.crt'}", f"keyfile {self.home / 'server.key'}"]
        return "\n".join(
            [
                "per_listener_settings true",
                "persistence true",
                f"persistence_location {self.home / 'data'}/",
                f"autosave_interval {self.autosave_interval}",
                f"max_queued_messages {QUEUE_LIMIT}",
                f"max_packet_size {MAX_PACKET_SIZE}",
                "sys_interval 1",
                f"log_dest file {self.home / 'mosquitto.log'}",
                "log_type all",
                *(["user root"] if os.geteuid() == 0 else []),
                f"listener {self.device_port} 127.0.0.1",
                "allow_anonymous false",
                "use_username_as_clientid true",
                f"password_file {self.home / 'passwd'}",
                f"acl_file {self.home / 'acl'}",
                *tls,
                f"listener {self.service_port} 127.0.0.1",
                "allow_anonymous false",
                f"password_file {self.home / 'services.passwd'}",
                f"acl_file {self.home / 'acl.services'}",
                *tls,
                "",
            ]
        )

    def add_device(self, meterpoint: str, password: str) -> None:
        subprocess.run(["mosquitto_passwd", "-b", str(self.home / "passwd"), meterpoint, password], check=True)
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)

    def start(self) -> None:
        (self.home / "mosquitto.conf").write_text(self.config())
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.home / "mosquitto.conf")])
        wait_for(lambda: accepts(self.device_port) and accepts(self.service_port), 10.0, "broker not listening")

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """A clean stop: SIGTERM, the broker saves its store first."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TlsBroker]:
    tmp_path.chmod(0o755)
    (tmp_path / "data").mkdir()
    ca = make_ca(tmp_path, "gridhub-test-ca")
    make_server_certificate(tmp_path, ca)
    subject = TlsBroker(tmp_path, ca[0], free_port(), free_port(), uuid.uuid4().hex)
    (tmp_path / "acl").write_text(ACL)
    (tmp_path / "acl.services").write_text(SERVICES_ACL)
    (tmp_path / "passwd").touch(mode=0o600)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(tmp_path / "services.passwd"), "collection", subject.service_password],
        check=True,
    )
    subject.start()
    try:
        yield subject
    finally:
        subject.kill()


class TlsDevice:
    """A meter over TLS: paho with ``tls_set`` and the test's CA, logged in as its meterpoint, QoS 1."""

    def __init__(self, broker: TlsBroker, ca: Path | None = None) -> None:
        self.meterpoint_id = new_meterpoint()
        self.password = uuid.uuid4().hex
        register_device(StackConfig().kafka_bootstrap, self.meterpoint_id)  # its own data source (scope check)
        broker.add_device(self.meterpoint_id, self.password)
        self.port = broker.device_port
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.meterpoint_id, protocol=paho.MQTTv5)
        self.client.username_pw_set(self.meterpoint_id, self.password)
        self.client.tls_set(ca_certs=str(ca or broker.ca), cert_reqs=ssl.CERT_REQUIRED)

    def connect(self) -> None:
        # The broker reloads its password file on SIGHUP: retry the login until it knows the device.
        deadline = time.monotonic() + 10.0
        while True:
            with suppress(ConnectionError, OSError):
                self.client.connect("127.0.0.1", self.port, keepalive=10)
                self.client.loop_start()
                try:
                    wait_for(self.client.is_connected, 1.0, "no CONNACK")
                    return
                except TimeoutError:
                    self.client.loop_stop()
                    self.client.disconnect()
            if time.monotonic() > deadline:
                raise TimeoutError(f"device {self.meterpoint_id} could not log in over TLS")

    def publish(self, payload: bytes) -> int:
        info = self.client.publish(f"gridhub/meters/{self.meterpoint_id}/readings", payload, qos=1)
        info.wait_for_publish(timeout=10.0)
        return 0 if info.is_published() else -1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def reading(meterpoint: str, quarter: int) -> bytes:
    return orjson.dumps(
        {
            "meterpoint_id": meterpoint,
            "register": "active_import",
            "interval_end": f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z",
            "resolution": "PT15M",
            "value": 0.25 * quarter,
            "unit": "kWh",
            "quality": "measured",
        }
    )


def collection_settings(stack: StackConfig, broker: TlsBroker, **mqtt: Any) -> CollectionSettings:
    suffix = uuid.uuid4().hex[:8]
    return CollectionSettings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        event_source=f"/gridhub/collection-tls-test-{suffix}",
        mqtt=MqttSettings(
            host="127.0.0.1",
            port=broker.service_port,
            password=broker.service_password,
            client_id=f"collection-tls-test-{suffix}",
            tls_ca_file=broker.ca,
            **mqtt,
        ),
    )


@pytest.fixture
async def ingress(stack: StackConfig) -> AsyncIterator[Callable[..., Any]]:
    """``async with ingress(settings) as registry``: the collection's MQTT ingress over real Kafka, subscribed."""
    producer = await start_producer(stack.kafka_bootstrap, "collection-tls-test")

    @asynccontextmanager
    async def running(settings: CollectionSettings) -> AsyncIterator[CollectorRegistry]:
        parts = build_parts(settings, registry=CollectorRegistry())
        subject = create_mqtt_ingress(parts, create_publisher(parts, producer))
        async with subscribed(subject, parts=parts):
            yield parts.registry

    try:
        yield running
    finally:
        await producer.stop()


def broker_gauge(registry: CollectorRegistry, counter: str) -> float | None:
    return registry.get_sample_value("gridhub_collection_mqtt_broker", {"counter": counter})


async def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


# --- TLS end to end ----------------------------------------------------------------------------------------------


async def test_over_tls_a_devices_reading_reaches_kafka_through_the_ingress_with_tls_set(
    stack: StackConfig, broker: TlsBroker, ingress: Callable[..., Any], topic_reader: Callable[[str], Any]
) -> None:
    readings = await topic_reader("meter.readings.v1")
    settings = collection_settings(stack, broker)
    device = TlsDevice(broker)
    await asyncio.to_thread(device.connect)
    try:
        async with ingress(settings) as registry:
            assert await asyncio.to_thread(device.publish, reading(device.meterpoint_id, 1)) == 0
            key = device.meterpoint_id.encode()
            [record] = await readings.read_until(lambda r: r.key == key, lambda found: len(found) >= 1)
            assert orjson.loads(record.value)["data"]["meterpoint_id"] == device.meterpoint_id
            assert registry.get_sample_value("gridhub_collection_mqtt_connected") == 1
    finally:
        device.close()


def test_the_tls_listeners_refuse_plain_mqtt_and_a_client_that_does_not_trust_the_brokers_ca(
    broker: TlsBroker, tmp_path: Path
) -> None:
    # Plain MQTT to the TLS port: the broker reads a CONNECT where a TLS ClientHello belongs and hangs up.
    with socket.create_connection(("127.0.0.1", broker.device_port), timeout=5) as sock:
        sock.sendall(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc")
        try:
            answer = sock.recv(64)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed (or reset), no CONNACK
    # A client with another CA: the handshake fails before any password is sent.
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _ = make_ca(other, "someone-else")
    context = ssl.create_default_context(cafile=str(other_ca))
    with (
        socket.create_connection(("127.0.0.1", broker.device_port), timeout=5) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(sock, server_hostname="127.0.0.1").close()
    # With the right CA the same handshake succeeds (so it was the trust that failed, not the listener).
    context = ssl.create_default_context(cafile=str(broker.ca))
    with (
        socket.create_connection(("127.0.0.1", broker.device_port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


# --- the broker's drops and queue depth as metrics ---------------------------------------------------------------


async def test_messages_the_broker_drops_at_its_queue_limit_show_in_the_broker_gauges(
    stack: StackConfig, broker: TlsBroker, ingress: Callable[..., Any]
) -> None:
    settings = collection_settings(stack, broker)
    async with ingress(settings):
        pass  # the service's persistent session exists; now it is away
    device = TlsDevice(broker)
    await asyncio.to_thread(device.connect)
    try:
        for quarter in range(QUEUE_LIMIT + 7):  # 7 more than the session may queue
            assert await asyncio.to_thread(device.publish, reading(device.meterpoint_id, quarter)) == 0
    finally:
        device.close()
    async with ingress(settings) as registry:
        # The broker acknowledged all 12 to the device and dropped 7 of them: $SYS says so, the gauge shows it.
        await eventually(lambda: (broker_gauge(registry, "dropped_messages") or 0) >= 7)
        await eventually(lambda: broker_gauge(registry, "connected_clients") is not None)
        assert broker_gauge(registry, "stored_messages") is not None
        await eventually(
            lambda: (
                registry.get_sample_value("gridhub_collection_mqtt_messages_total", {"outcome": "acked"}) == QUEUE_LIMIT
            )
        )


# --- the loss window of a broker crash ---------------------------------------------------------------------------


def queue_for_offline_session(broker: TlsBroker, count: int) -> str:
    """An offline persistent subscriber session on the service listener with ``count`` messages queued for it."""
    client_id = f"collection-crash-{uuid.uuid4().hex[:8]}"
    # Clean start off, as the collection connects: Mosquitto 2.0.11 does not restore a session begun with clean
    # start on after a restart (measured here).
    subscriber = service_client(broker, client_id, clean_start=False)
    subscribed: list[int] = []
    subscriber.on_subscribe = lambda *args: subscribed.append(1)
    subscriber.subscribe("gridhub/meters/+/readings", qos=1)
    wait_for(lambda: bool(subscribed), 5.0, "no SUBACK")
    subscriber.disconnect()
    subscriber.loop_stop()
    device = TlsDevice(broker)
    device.connect()
    for quarter in range(count):
        assert device.publish(reading(device.meterpoint_id, quarter)) == 0
    device.close()
    return client_id


def service_client(broker: TlsBroker, client_id: str, *, clean_start: bool) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set("collection", broker.service_password)
    client.tls_set(ca_certs=str(broker.ca), cert_reqs=ssl.CERT_REQUIRED)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", broker.service_port, keepalive=10, clean_start=clean_start, properties=properties)
    client.loop_start()
    wait_for(client.is_connected, 5.0, "service client not connected")
    return client


def delivered_after_restart(broker: TlsBroker, client_id: str, expected: int) -> int:
    """Reconnect the session and count the messages the broker still had for it."""
    received: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, message: received.append(message.payload)
    client.username_pw_set("collection", broker.service_password)
    client.tls_set(ca_certs=str(broker.ca), cert_reqs=ssl.CERT_REQUIRED)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", broker.service_port, keepalive=10, clean_start=False, properties=properties)
    client.loop_start()
    wait_for(client.is_connected, 5.0, "service client not connected")
    with suppress(TimeoutError):
        # What the broker kept arrives at once after CONNACK; 2 s without the rest means it is gone.
        wait_for(lambda: len(received) >= expected, 2.0, "fewer messages than queued")
    client.disconnect()
    client.loop_stop()
    return len(received)


def test_a_broker_crash_loses_what_arrived_since_its_last_autosave_and_a_clean_stop_loses_nothing(
    broker: TlsBroker,
) -> None:
    # Crash before the next autosave (interval set long for this step): the queued messages are gone.
    broker.stop()
    broker.autosave_interval = 3600
    broker.start()
    client_id = queue_for_offline_session(broker, 3)
    broker.kill()
    broker.start()
    assert delivered_after_restart(broker, client_id, 3) == 0
    # A clean stop saves the store: nothing lost.
    client_id = queue_for_offline_session(broker, 3)
    broker.stop()
    broker.start()
    assert delivered_after_restart(broker, client_id, 3) == 3
    # Crash after an autosave (interval 1 s): what was saved survives. The window is the autosave interval.
    broker.stop()
    broker.autosave_interval = 1
    broker.start()
    client_id = queue_for_offline_session(broker, 3)
    saved = broker.store.stat().st_mtime_ns
    wait_for(lambda: broker.store.stat().st_mtime_ns != saved, 5.0, "no autosave within 5 s")
    broker.kill()
    broker.start()
    assert delivered_after_restart(broker, client_id, 3) == 3
