"""Gap fill against the real Kafka, PostgreSQL and Mosquitto: a GapFillRequested on the commands topic reaches the
meterpoint's source (a device's MQTT commands topic, a head-end's REST list, a partner's FTP outbox), within the
request's grid company only. The app runs in-process with every door open; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aioftp
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from libs.events import make_event, to_record
from libs.events.meter import Register, Resolution
from libs.events.meterpoints import DataSource, SourceKind
from libs.events.series import GapFillRequested
from libs.platform.apikeys import Role, generate_api_key
from libs.platform.kafka import start_producer
from services.collection.settings import GapFillSettings
from stack.config import StackConfig
from tests.integration.collection.support import (
    DEVICE,
    FTP_PARTNER,
    Device,
    RunningService,
    drop_session,
    ftp_login,
    ftp_upload,
    new_meterpoint,
    running_service,
    service_settings,
    wait_for_file,
)
from tests.tenants import TENANT_A, TENANT_B

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres]

NOT_AUTHORIZED = 0x87
START = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def gap(
    meterpoint: str, kind: SourceKind, source: str, *, tenant: str = TENANT_A, attempt: int = 1
) -> GapFillRequested:
    register = Register.ACTIVE_IMPORT
    end = START + timedelta(hours=2)
    return GapFillRequested(
        request_id=GapFillRequested.id_of(meterpoint, register, START, end, attempt),
        meterpoint_id=meterpoint,
        grid_company=tenant,
        data_source=DataSource(kind=kind, id=source),
        register=register,
        resolution=Resolution.PT15M,
        start=START,
        end=end,
        attempt=attempt,
        requested_at=datetime.now(UTC),
    )


async def eventually(condition: Callable[[], Awaitable[bool]], *, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


@pytest.fixture
async def gapfill_service(
    stack: StackConfig, pg_dsn: str, pg_schema: str, tmp_path: Path, new_topic: Any
) -> AsyncIterator[tuple[RunningService, Callable[[GapFillRequested], Awaitable[None]]]]:
    """The app with gap fill on, consuming a topic of the test's own; and a function that publishes to it."""
    topic = await new_topic("test-gapfill", partitions=2, with_dlq=True)
    settings = service_settings(
        stack,
        pg_dsn,
        pg_schema,
        tmp_path / "ftp",
        gapfill=GapFillSettings(enabled=True, topic=topic, group_id=f"test-gapfill-{uuid.uuid4().hex[:8]}"),
    )
    producer = await start_producer(stack.kafka_bootstrap, "collection-test-gapfill")

    async def publish(request: GapFillRequested) -> None:
        record = to_record(make_event(request, source="/gridhub/vee-test"))
        await producer.send_and_wait(topic, record.value, key=record.key, headers=record.headers)

    try:
        async with running_service(settings) as service:
            yield service, publish
    finally:
        await producer.stop()
        await asyncio.to_thread(drop_session, stack, settings.mqtt.client_id)


async def test_a_head_end_lists_its_own_requests_once_and_acknowledges_them(
    gapfill_service: tuple[RunningService, Callable[[GapFillRequested], Awaitable[None]]],
) -> None:
    service, publish = gapfill_service
    mine, foreign = new_meterpoint(), new_meterpoint()
    await service.register(mine)
    other_client = f"hes-{secrets.token_hex(3)}"
    await service.register(foreign, source=("head_end", other_client))
    request = gap(mine, SourceKind.HEAD_END, service.client_name)
    await publish(request)
    await publish(request)  # a duplicate: still one open request
    await publish(gap(foreign, SourceKind.HEAD_END, other_client))
    # A request naming another grid company than the meterpoint's is refused (dead-lettered), never stored.
    await publish(gap(mine, SourceKind.HEAD_END, service.client_name, tenant=TENANT_B, attempt=2))
    other_key = generate_api_key(other_client, Role.SOURCE, tenant=TENANT_A)
    await service.app.state.api_key_store.add(other_key.record)
    mine_headers = {"X-API-Key": service.api_key}

    async def listed(key: str) -> list[Any]:
        response = await service.http.get("/v1/reread-requests", headers={"X-API-Key": key})
        assert response.status_code == 200, response.text
        return list(response.json()["requests"])

    async def both_stored() -> bool:
        return len(await listed(service.api_key)) >= 1 and len(await listed(other_key.plain_key)) >= 1

    await eventually(both_stored)
    assert [r["request_id"] for r in await listed(service.api_key)] == [request.request_id]
    document = (await listed(service.api_key))[0]
    assert (document["command"], document["meterpoint_id"], document["end"]) == ("reread", mine, "2025-03-01T12:00:00Z")
    foreign_id = (await listed(other_key.plain_key))[0]["request_id"]
    # Not the caller's: 404, as for none at all; the other client's request stays.
    response = await service.http.delete(f"/v1/reread-requests/{foreign_id}", headers=mine_headers)
    assert response.status_code == 404
    assert len(await listed(other_key.plain_key)) == 1
    response = await service.http.delete(f"/v1/reread-requests/{request.request_id}", headers=mine_headers)
    assert response.status_code == 204
    assert await listed(service.api_key) == []
    refused = service.registry.get_sample_value(
        "gridhub_collection_gapfill_requests_total", {"route": "head_end", "outcome": "refused"}
    )
    assert refused == 1


class CommandListener:
    """A device's MQTT session (the device listener makes the user name its client id) that subscribes to a
    commands topic and collects what arrives."""

    def __init__(self, device: Device, client_id: str) -> None:
        self.device = device
        self.messages: list[bytes] = []
        self.granted: list[int] = []
        self._changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.username_pw_set(device.meterpoint_id, device.password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._changed:
            self.messages.append(bytes(message.payload))
            self._changed.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, properties: Any) -> None:
        with self._changed:
            self.granted = [code.value for code in codes]
            self._changed.notify_all()

    def subscribe(self, topic: str, timeout: float = 10.0) -> int:
        self.client.connect(self.device.host, self.device.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError("no CONNACK")
            time.sleep(0.02)
        self.client.subscribe(topic, qos=1)
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self.granted), timeout):
                raise TimeoutError("no SUBACK")
            return self.granted[0]

    def wait_messages(self, count: int, timeout: float = 20.0) -> list[bytes]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_a_device_gets_its_reread_on_its_commands_topic_and_no_other_device_can_subscribe(
    gapfill_service: tuple[RunningService, Callable[[GapFillRequested], Awaitable[None]]],
    devices: Callable[[], Device],
) -> None:
    service, publish = gapfill_service
    device, other = devices(), devices()
    await service.register(device.meterpoint_id, source=(DEVICE, device.meterpoint_id))
    await service.register(other.meterpoint_id, source=(DEVICE, other.meterpoint_id))
    topic = f"gridhub/meters/{device.meterpoint_id}/commands"
    listener = CommandListener(device, f"cmd-{device.meterpoint_id}")
    intruder = CommandListener(other, f"cmd-{other.meterpoint_id}")
    try:
        assert await asyncio.to_thread(listener.subscribe, topic) == 1  # granted QoS 1
        # Mosquitto 2.0's ACL file answers the SUBACK with the QoS (or 0x87) but never delivers what the
        # subscriber may not read: the intruder receives nothing either way (checked below).
        assert await asyncio.to_thread(intruder.subscribe, topic) in (1, NOT_AUTHORIZED)
        request = gap(device.meterpoint_id, SourceKind.DEVICE, device.meterpoint_id)
        await publish(request)
        await publish(request)  # a duplicate: one command
        [command] = await asyncio.to_thread(listener.wait_messages, 1)
        body = orjson.loads(command)
        assert (body["command"], body["request_id"]) == ("reread", request.request_id)
        assert (body["start"], body["end"], body["register"]) == (
            "2025-03-01T10:00:00Z",
            "2025-03-01T12:00:00Z",
            "active_import",
        )

        async def routed_twice() -> bool:
            value = service.registry.get_sample_value(
                "gridhub_collection_gapfill_requests_total", {"route": "device", "outcome": "routed"}
            )
            return (value or 0) >= 2

        await eventually(routed_twice)
        # Another request after the first: once the device has it, the broker has fanned both out, and the
        # intruder got neither.
        await publish(gap(device.meterpoint_id, SourceKind.DEVICE, device.meterpoint_id, attempt=2))
        assert len(await asyncio.to_thread(listener.wait_messages, 2)) == 2
        assert intruder.messages == []
    finally:
        listener.close()
        intruder.close()


async def test_a_partner_finds_its_request_in_its_outbox_may_fetch_and_delete_it_but_not_write_there(
    gapfill_service: tuple[RunningService, Callable[[GapFillRequested], Awaitable[None]]],
) -> None:
    service, publish = gapfill_service
    login, password = await service.add_partner()
    meterpoint = new_meterpoint()
    await service.register(meterpoint, source=(FTP_PARTNER, login))
    request = gap(meterpoint, SourceKind.FTP_PARTNER, login)
    await publish(request)
    name = f"reread-{request.request_id}.json"
    content = orjson.loads(await wait_for_file(service.ftp_root / "users" / login / "outbox" / name))
    assert (content["command"], content["meterpoint_id"]) == ("reread", meterpoint)
    client = await ftp_login(service.ftp_port, login, password)
    try:
        listed = [str(path) for path, _ in await client.list("/outbox")]
        assert f"/outbox/{name}" in listed
        async with client.download_stream(f"/outbox/{name}") as stream:
            fetched = await stream.read()
        assert orjson.loads(fetched) == content
        with pytest.raises(aioftp.StatusCodeError):
            await ftp_upload(client, "/outbox/forged.json", b"{}")
        await client.remove_file(f"/outbox/{name}")
        assert f"/outbox/{name}" not in [str(path) for path, _ in await client.list("/outbox")]
    finally:
        await client.quit()


async def test_a_head_end_that_never_acknowledges_keeps_only_its_newest_requests(pg_dsn: str, pg_schema: str) -> None:
    from libs.platform.database import open_database
    from services.collection.adapters.ftpusers import FTP_USERS_COMPONENT, FTP_USERS_MIGRATIONS
    from services.collection.adapters.rereads import PostgresRereadStore
    from services.collection.settings import CollectionSettings

    settings = CollectionSettings(postgres_dsn=pg_dsn, postgres_schema=pg_schema)
    pool = await open_database(settings, [(FTP_USERS_COMPONENT, FTP_USERS_MIGRATIONS)])
    try:
        store = PostgresRereadStore(pool)
        meterpoint = new_meterpoint()
        requests = [gap(meterpoint, SourceKind.HEAD_END, "hes-bounded", attempt=n) for n in range(1, 6)]
        dropped = [await store.add(request, max_open=3) for request in requests]
        assert dropped == [0, 0, 0, 1, 1]
        assert await store.add(requests[-1], max_open=3) == 0  # a duplicate adds nothing, drops nothing
        open_ids = [r.request_id for r in await store.open_requests(TENANT_A, "hes-bounded", limit=10)]
        assert open_ids == [r.request_id for r in requests[2:]]  # the oldest went first
        assert await store.open_requests(TENANT_B, "hes-bounded", limit=10) == []  # another tenant's client
    finally:
        await pool.close()
