"""Helpers for the collection tests against the real stack: fresh meterpoints, MQTT devices, topic readers, and
the meterpoint registry the scope check needs (MeterpointRegistered events on meterpoints.v1)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from libs.events.envelope import make_event
from libs.events.gsrn import with_check_digit
from libs.events.meter import Resolution
from libs.events.meterpoints import (
    Connection,
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    MeterpointUpdated,
    SettlementMethod,
    SourceKind,
)
from libs.events.records import KafkaRecord, to_record
from libs.events.topics import PARTITIONS
from stack.config import StackConfig
from tests.tenants import TENANT_A


def new_meterpoint() -> str:
    """A fresh valid GSRN-18, so a test can pick its own records out of shared topics."""
    return with_check_digit("5713131" + "".join(secrets.choice("0123456789") for _ in range(10)))


# --- the meterpoint registry (what the customers service publishes) ----------------------------------------------


def meterpoint_record(
    meterpoint: str,
    *,
    tenant: str = TENANT_A,
    source: tuple[str, str] | None,
    version: int = 1,
    topic_prefix: str = "",
) -> KafkaRecord:
    """A MeterpointRegistered (version 1) or MeterpointUpdated record, as the registry publishes it."""
    event_type = MeterpointRegistered if version == 1 else MeterpointUpdated
    data = event_type(
        meterpoint_id=meterpoint,
        grid_company=tenant,
        grid_area="804",
        type=MeterpointType.CONSUMPTION,
        resolution=Resolution.PT15M,
        settlement_method=SettlementMethod.FLEX,
        connection=Connection(state=ConnectionState.CONNECTED, since=datetime.date(2025, 1, 1)),
        data_source=None if source is None else DataSource(kind=SourceKind(source[0]), id=source[1]),
        version=version,
    )
    record = to_record(make_event(data, source="/gridhub/customers-test"))
    return record._replace(topic=topic_prefix + record.topic)


class MeterpointRegistry:
    """Registers meterpoints the way the customers service does: events on ``<prefix>meterpoints.v1``."""

    def __init__(self, producer: Any, topic_prefix: str = "") -> None:
        self.producer = producer
        self.topic_prefix = topic_prefix

    async def register(
        self,
        *meterpoints: str,
        source: tuple[str, str] | None,
        tenant: str = TENANT_A,
        version: int = 1,
        view: Any = None,
    ) -> None:
        """Publish one record per meterpoint and wait for the acks; with ``view``, until the view has them too."""
        acks = [
            await self.producer.send(record.topic, record.value, key=record.key, headers=record.headers)
            for record in (
                meterpoint_record(m, tenant=tenant, source=source, version=version, topic_prefix=self.topic_prefix)
                for m in meterpoints
            )
        ]
        await asyncio.gather(*acks)
        if view is not None:
            await wait_in_view(view, meterpoints, version)


async def wait_in_view(view: Any, meterpoints: Any, version: int = 1, timeout: float = 20.0) -> None:
    """Until ``view`` (a ScopeView) holds ``version`` (or newer) of every meterpoint."""
    async with asyncio.timeout(timeout):
        while True:
            entries = [view.get(m) for m in meterpoints]
            if all(entry is not None and entry.version >= version for entry in entries):
                return
            await asyncio.sleep(0.02)


async def wait_caught_up(feed: Any, task: asyncio.Task[None] | None = None, timeout: float = 30.0) -> None:
    """Until ``feed`` (a MeterpointFeed) has caught up; what its task died of, if it did."""
    async with asyncio.timeout(timeout):
        while not feed.caught_up.is_set():
            if task is not None and task.done():
                task.result()
                raise AssertionError("the meterpoint feed ended before it caught up")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def fed_view(parts: Any, timeout: float = 30.0) -> AsyncIterator[Any]:
    """Run the scope view's feed of ``parts`` (built with ``build_parts``) until the block ends; enter caught up."""
    from services.collection.app import create_meterpoint_feed

    feed = create_meterpoint_feed(parts)
    assert feed is not None
    task = asyncio.create_task(feed.run())
    try:
        await wait_caught_up(feed, task, timeout)
        yield feed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


HEAD_END = SourceKind.HEAD_END.value
FTP_PARTNER = SourceKind.FTP_PARTNER.value
DEVICE = SourceKind.DEVICE.value


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
    client.connect(stack.host, stack.mqtt_service_port, keepalive=5, clean_start=True, properties=properties)
    client.loop_start()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not client.is_connected():
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()


# --- FTP -------------------------------------------------------------------------------------------------------

CSV_HEADER = "meterpoint_id,register,interval_end,resolution,value,unit,quality"


def csv_line(meterpoint: str, quarter: int, *, value: float | None = None, **changes: str) -> str:
    """One CSV line of a 15-minute active-import reading on 2025-03-01 (``changes`` replace cells by column)."""
    cells = {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z",
        "resolution": "PT15M",
        "value": f"{round(0.25 * quarter if value is None else value, 3)}",
        "unit": "kWh",
        "quality": "measured",
    }
    cells.update(changes)
    return ",".join(cells.values())


async def ftp_login(port: int, user: str, password: str) -> Any:
    """A logged-in aioftp client (close it with ``await client.quit()`` or ``client.close()``)."""
    import aioftp

    client = aioftp.Client(socket_timeout=10, path_timeout=10)
    await client.connect("127.0.0.1", port)
    try:
        await client.login(user, password)
    except BaseException:
        client.close()
        raise
    return client


async def ftp_upload(client: Any, path: str, data: bytes, *, block: int = 64 * 1024) -> None:
    """STOR ``data`` and wait for the server's 226 (``aioftp.StatusCodeError`` with the server's refusal).

    Like ``client.upload_stream`` but closing the data connection when the server refuses the STOR (aioftp's
    client leaves it open then).
    """
    from aioftp.client import DataConnectionThrottleStreamIO

    reader, writer = await client.get_passive_connection("I")
    try:
        await client.command(f"STOR {path}", "1xx")
    except BaseException:
        writer.close()
        raise
    stream = DataConnectionThrottleStreamIO(
        client, reader, writer, throttles={"_": client.throttle}, timeout=client.socket_timeout
    )
    async with stream:
        for start in range(0, len(data), block):
            await stream.write(data[start : start + block])


async def wait_for_file(path: Any, *, timeout: float = 20.0) -> bytes:
    """The content of ``path`` once it exists (receipts appear atomically)."""
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.02)
    return bytes(path.read_bytes())


# --- the whole service in-process: REST (httpx ASGI), MQTT ingress, FTP server ------------------------------


@dataclass
class RunningService:
    """The collection app with every door open, and what a test needs to knock on each."""

    app: Any
    http: Any  # httpx.AsyncClient over ASGITransport
    api_key: str
    ftp_port: int
    ftp_root: Path
    ftp_users: Any  # PostgresFtpUserStore
    registry: Any  # prometheus CollectorRegistry
    client_name: str  # the write key's client: the head-end source a meterpoint must be assigned to
    meterpoints: MeterpointRegistry

    @property
    def view(self) -> Any:
        """The app's scope view."""
        return self.app.state.parts.scope_view

    async def register(self, *meterpoints: str, source: tuple[str, str] | None = None, **changes: Any) -> None:
        """Register ``meterpoints`` (by default for this service's write key) and wait until the view has them."""
        source = source or (HEAD_END, self.client_name)
        await self.meterpoints.register(*meterpoints, source=source, view=self.view, **changes)

    async def add_partner(self) -> tuple[str, str]:
        from services.collection.adapters.ftpusers import new_ftp_user

        login, password = f"p{secrets.token_hex(4)}", secrets.token_urlsafe(16)
        await self.ftp_users.add(new_ftp_user(login, password, tenant=TENANT_A))
        return login, password

    async def post_readings(self, items: list[dict[str, Any]]) -> Any:
        import orjson

        return await self.http.post(
            "/v1/readings",
            content=orjson.dumps(items),
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )

    def outbox(self, login: str) -> Path:
        return self.ftp_root / "users" / login / "outbox"


def service_settings(stack: StackConfig, pg_dsn: str, pg_schema: str, ftp_root: Path, **changes: Any) -> Any:
    """Settings for a test's own service: its own event source, MQTT client id and share group, FTP on free ports."""
    from services.collection.settings import CollectionSettings, FtpSettings, MqttSettings

    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        # Another collection instance on the shared stack consumes the same MQTT topics (in its own share group)
        # and publishes what it gets too: the envelope's source tells this test's records from its.
        "event_source": f"/gridhub/collection-test-{suffix}",
        "kafka_bootstrap_servers": stack.kafka_bootstrap,
        "postgres_dsn": pg_dsn,
        "postgres_schema": pg_schema,
        "mqtt": MqttSettings(
            host=stack.host,
            port=stack.mqtt_service_port,
            password=stack.password("collection"),
            client_id=f"collection-test-{suffix}",
            share_group=f"collection-test-{suffix}",
            session_expiry_seconds=120,
            max_readings_per_message=50,
        ),
        "ftp": FtpSettings(root=ftp_root, port=0, passive_port_first=0, passive_port_last=0, batch_lines=100),
    }
    values.update(changes)
    return CollectionSettings(**values)


@asynccontextmanager
async def subscribed(ingress: Any, timeout: float = 10.0, *, parts: Any = None) -> AsyncIterator[None]:
    """Run an MQTT ingress (``ingress.run()``) until the block ends, entering once its subscription is in place.

    With ``parts`` (from ``build_parts``) the scope view's feed runs too, as the app's lifespan would run it: the
    ingress starts once the view has caught up.
    """
    async with contextlib.AsyncExitStack() as stack:
        if parts is not None and parts.scope_view is not None and not parts.scope_view.ready:
            await stack.enter_async_context(fed_view(parts))
        task = asyncio.create_task(ingress.run())
        try:
            await ingress.wait_subscribed(timeout)
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def running_service(settings: Any) -> AsyncIterator[RunningService]:
    """Run the app (lifespan) with a fresh write key; MQTT subscribed and FTP listening before it yields."""
    import httpx
    from prometheus_client import CollectorRegistry

    from libs.platform.apikeys import Role, generate_api_key
    from libs.platform.kafka import start_producer
    from services.collection.adapters.ftpusers import PostgresFtpUserStore
    from services.collection.app import create_app

    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    producer = await start_producer(settings.kafka_bootstrap_servers, "collection-test-registry")
    try:
        async with app.router.lifespan_context(app):
            parts = app.state.parts
            if parts.meterpoints is not None:
                await wait_caught_up(parts.meterpoints)
            if parts.mqtt is not None:
                await parts.mqtt.wait_subscribed(10.0)
            client_name = f"hes-{secrets.token_hex(3)}"
            writer = generate_api_key(client_name, Role.SOURCE, tenant=TENANT_A)
            await app.state.api_key_store.add(writer.record)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://collection") as http:
                yield RunningService(
                    app,
                    http,
                    writer.plain_key,
                    parts.ftp.port if parts.ftp is not None else 0,
                    settings.ftp.root,
                    PostgresFtpUserStore(parts.pool),
                    registry,
                    client_name,
                    MeterpointRegistry(producer, settings.kafka_topic_prefix),
                )
    finally:
        await producer.stop()


def register_device(bootstrap: str, meterpoint: str) -> None:
    """Register ``meterpoint`` with its device as the source, from synchronous code (a thread of its own)."""
    from libs.platform.kafka import start_producer

    async def register() -> None:
        producer = await start_producer(bootstrap, "collection-test-registry")
        try:
            await MeterpointRegistry(producer).register(meterpoint, source=(DEVICE, meterpoint))
        finally:
            await producer.stop()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, register()).result(timeout=30)


@contextmanager
def device_factory(stack: StackConfig) -> Iterator[Callable[[], Device]]:
    """Make logged-in devices with fresh meterpoints; their broker users are removed at the end.

    Each device's meterpoint is registered on meterpoints.v1 with the device as its data source (the scope check
    accepts its readings), before the device exists: a scope view that starts after it was made has it.
    """
    from stack.mosquitto import Mosquitto
    from stack.process import run

    broker = Mosquitto(stack)
    made: list[Device] = []

    def make() -> Device:
        meterpoint = new_meterpoint()
        password = secrets.token_urlsafe(16)
        register_device(stack.kafka_bootstrap, meterpoint)
        broker.add_user(meterpoint, password)  # the broker reloads its password file on SIGHUP
        deadline = time.monotonic() + 10.0
        while not can_log_in(stack, meterpoint, password):
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not pick up the new device")
        device = Device(meterpoint, password, stack.host, stack.mqtt_port)
        device.connect()
        made.append(device)
        return device

    try:
        yield make
    finally:
        for device in made:
            device.close()
            run(["mosquitto_passwd", "-D", str(broker.passwd), device.meterpoint_id], timeout=30)


def produced_by(settings: Any) -> Callable[[Any], bool]:
    """A record filter: events this test's service published (by the envelope's source)."""
    source = settings.event_source.encode()

    def match(record: Any) -> bool:
        return b'"source":"' + source + b'"' in record.value

    return match
