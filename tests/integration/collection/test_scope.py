"""Scope enforcement at the edge against the real stack, two grid companies A and B (issue 15).

Each test runs its own collection service on topics of its own (``COLLECTION_KAFKA_TOPIC_PREFIX``: readings,
events, their DLQs and meterpoints.v1), registers its meterpoints the way the customers service does (events on
``<prefix>meterpoints.v1``) and reads the topics back: a source delivering for a meterpoint that is not assigned to
it gets ``not_in_scope`` per item over REST, FTP and MQTT, and nothing of it reaches the readings topic; a reading
for an unregistered meterpoint is held (``unknown_meterpoint``) and the redrive publishes it once it is registered.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from libs.events import topics
from libs.platform.kafka import start_producer
from services.collection.commands.holds import redrive
from services.collection.settings import CollectionSettings, ScopeSettings
from stack.config import StackConfig
from tests.integration.collection.support import (
    CSV_HEADER,
    DEVICE,
    FTP_PARTNER,
    HEAD_END,
    Device,
    MeterpointRegistry,
    TopicReader,
    csv_line,
    ftp_login,
    ftp_upload,
    new_meterpoint,
    running_service,
    service_settings,
    wait_for_file,
)
from tests.tenants import TENANT_A, TENANT_B

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.mqtt]

TOPICS = (topics.READINGS, topics.dlq(topics.READINGS), topics.METER_EVENTS, topics.dlq(topics.METER_EVENTS))


def reading(meterpoint: str, quarter: int) -> dict[str, Any]:
    return {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z",
        "resolution": "PT15M",
        "value": round(0.25 * quarter, 3),
        "unit": "kWh",
        "quality": "measured",
    }


class Topics:
    """This test's own topics (``<prefix><name>``), created for it and deleted after it."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = f"t-{uuid.uuid4().hex[:8]}."
        self.readers: list[TopicReader] = []

    async def reader(self, name: str) -> TopicReader:
        reader = TopicReader(self.bootstrap, self.prefix + name)
        await reader.start()
        self.readers.append(reader)
        return reader


@pytest.fixture
async def own_topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    subject = Topics(kafka_bootstrap)
    names = [subject.prefix + name for name in (*TOPICS, topics.METERPOINTS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=6, replication_factor=1) for name in names])
        yield subject
    finally:
        for reader in subject.readers:
            await reader.stop()
        await admin.delete_topics(names)
        await admin.close()


@pytest.fixture
async def registry(kafka_bootstrap: str, own_topics: Topics) -> AsyncIterator[MeterpointRegistry]:
    """The registry of this test's own meterpoints topic (what customers publishes)."""
    producer = await start_producer(kafka_bootstrap, "collection-test-registry")
    try:
        yield MeterpointRegistry(producer, own_topics.prefix)
    finally:
        await producer.stop()


@pytest.fixture
def settings_for(
    stack: StackConfig, pg_dsn: str, pg_schema: str, tmp_path: Path, own_topics: Topics
) -> Callable[..., CollectionSettings]:
    def build(**changes: Any) -> CollectionSettings:
        settings: CollectionSettings = service_settings(
            stack, pg_dsn, pg_schema, tmp_path / "ftp", kafka_topic_prefix=own_topics.prefix, **changes
        )
        return settings

    return build


def by_key(*meterpoints: str) -> Callable[[Any], bool]:
    keys = {meterpoint.encode() for meterpoint in meterpoints}
    return lambda record: record.key in keys


def header(record: Any, name: str) -> bytes | None:
    return dict(record.headers).get(name)


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_source_of_a_posting_bs_meterpoints_gets_not_in_scope_for_them_and_the_rest_is_accepted(
    settings_for: Callable[..., CollectionSettings], own_topics: Topics
) -> None:
    readings = await own_topics.reader(topics.READINGS)
    dlq = await own_topics.reader(topics.dlq(topics.READINGS))
    async with running_service(settings_for()) as service:
        mine, mine_too = new_meterpoint(), new_meterpoint()
        # B's meterpoint delivered by a head-end of B; and one of B's whose source carries the same client name as
        # A's key: the grid company must match as well as the source.
        b_own, b_same_name = new_meterpoint(), new_meterpoint()
        await service.register(mine, mine_too)
        await service.register(b_own, source=(HEAD_END, "hes-of-b"), tenant=TENANT_B)
        await service.register(b_same_name, source=(HEAD_END, service.client_name), tenant=TENANT_B)
        batch = [reading(mine, 1), reading(b_own, 1), reading(mine_too, 1), reading(b_same_name, 1), reading(mine, 2)]
        response = await service.post_readings(batch)
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"], body["held"]) == (3, 2, 0)
        assert [(r["status"], r.get("reason")) for r in body["results"]] == [
            ("accepted", None),
            ("rejected", "not_in_scope"),
            ("accepted", None),
            ("rejected", "not_in_scope"),
            ("accepted", None),
        ]
        assert (
            service.registry.get_sample_value(
                "gridhub_collection_rejections_total", {"channel": "rest", "reason": "not_in_scope"}
            )
            == 2
        )

    # The 202 came after the acks: the topic as of now holds A's three readings and nothing of B's.
    published = await readings.read_to_end(by_key(mine, mine_too, b_own, b_same_name))
    assert sorted(record.key.decode() for record in published) == sorted([mine, mine_too, mine])
    letters = await dlq.read_to_end(by_key(b_own, b_same_name))
    assert sorted(record.key.decode() for record in letters) == sorted([b_own, b_same_name])
    for letter in letters:
        assert header(letter, "dlq.reason") == b"not_in_scope"
        # What the dead letter says names nothing of B: neither its grid company nor its source.
        everything = letter.value + b"".join(value for _, value in letter.headers)
        assert TENANT_B.encode() not in everything
        assert b"hes-of-b" not in everything


async def test_a_reading_for_an_unregistered_meterpoint_is_held_and_redriven_once_it_is_registered(
    settings_for: Callable[..., CollectionSettings], own_topics: Topics, registry: MeterpointRegistry
) -> None:
    readings = await own_topics.reader(topics.READINGS)
    dlq = await own_topics.reader(topics.dlq(topics.READINGS))
    settings = settings_for()
    known, unknown, never = new_meterpoint(), new_meterpoint(), new_meterpoint()
    async with running_service(settings) as service:
        await service.register(known)
        response = await service.post_readings([reading(known, 1), reading(unknown, 1), reading(never, 1)])
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["accepted"], body["held"]) == (1, 2)
        held = [r for r in body["results"] if r["status"] == "held"]
        assert {r["reason"] for r in held} == {"unknown_meterpoint"}
        held_id = held[0]["id"]
        client_name = service.client_name
    assert await readings.read_to_end(by_key(unknown, never)) == []
    letters = await dlq.read_to_end(by_key(unknown, never))
    assert {header(letter, "dlq.reason") for letter in letters} == {b"unknown_meterpoint"}

    # The meterpoint is registered (for the key that delivered it), then an operator redrives the holds.
    await registry.register(unknown, source=(HEAD_END, client_name))
    group = f"holds-{secrets.token_hex(4)}"
    counts = await redrive(settings, group_id=group)
    assert (counts.redriven, counts.still_unknown, counts.not_in_scope) == (1, 1, 0)
    redriven = await readings.read_to_end(by_key(unknown, never))
    assert [orjson.loads(record.value)["id"] for record in redriven] == [held_id]  # the same event id
    assert orjson.loads(redriven[0].value)["data"]["meterpoint_id"] == unknown
    assert header(redriven[0], "ce_type") == b"gridhub.meter.reading.received"
    # The one still unknown is held again (attempt 2) for the next redrive; nothing is lost.
    again = await dlq.read_to_end(by_key(never))
    assert [header(letter, "dlq.attempts") for letter in again] == [b"2"]

    # A second run starts where the first committed: it sees only the re-held record, and publishes nothing new.
    counts = await redrive(settings, group_id=group)
    assert (counts.read, counts.redriven, counts.still_unknown) == (1, 0, 1)
    assert await readings.read_to_end(by_key(unknown, never)) == []


async def test_ftp_receipt_lines_say_not_in_scope_and_unknown_meterpoint(
    settings_for: Callable[..., CollectionSettings], own_topics: Topics
) -> None:
    readings = await own_topics.reader(topics.READINGS)
    async with running_service(settings_for()) as service:
        login, password = await service.add_partner()
        mine, other_partners, head_ends, unknown, bs = (new_meterpoint() for _ in range(5))
        await service.register(mine, source=(FTP_PARTNER, login))
        await service.register(other_partners, source=(FTP_PARTNER, "someone-else"), tenant=TENANT_B)
        await service.register(head_ends, source=(HEAD_END, "hes-a"), tenant=TENANT_A)
        # B's meterpoint naming this partner (of grid company A) as its source: the grid company must match too.
        await service.register(bs, source=(FTP_PARTNER, login), tenant=TENANT_B)
        meterpoints = (mine, other_partners, head_ends, unknown, bs)
        lines = [CSV_HEADER, *(csv_line(meterpoint, 1) for meterpoint in meterpoints)]
        client = await ftp_login(service.ftp_port, login, password)
        try:
            await ftp_upload(client, "/inbox/scope.csv", ("\n".join(lines) + "\n").encode())
        finally:
            await client.quit()
        receipt = orjson.loads(await wait_for_file(service.outbox(login) / "scope.csv.receipt.json"))
    assert [(line["line"], line["status"], line.get("reason")) for line in receipt["lines"]] == [
        (2, "accepted", None),
        (3, "rejected", "not_in_scope"),
        (4, "rejected", "not_in_scope"),
        (5, "held", "unknown_meterpoint"),
        (6, "rejected", "not_in_scope"),
    ]
    assert (receipt["accepted"], receipt["rejected"], receipt["held"]) == (1, 3, 1)
    published = await readings.read_to_end(by_key(*meterpoints))
    assert [record.key.decode() for record in published] == [mine]


async def test_a_device_cannot_publish_for_a_meterpoint_not_assigned_to_it(
    settings_for: Callable[..., CollectionSettings], own_topics: Topics, devices: Callable[[], Device]
) -> None:
    readings = await own_topics.reader(topics.READINGS)
    dlq = await own_topics.reader(topics.dlq(topics.READINGS))
    async with running_service(settings_for()) as service:
        assigned, to_a_head_end, to_another_device = devices(), devices(), devices()
        await service.register(assigned.meterpoint_id, source=(DEVICE, assigned.meterpoint_id))
        await service.register(to_a_head_end.meterpoint_id, source=(HEAD_END, service.client_name))
        await service.register(to_another_device.meterpoint_id, source=(DEVICE, new_meterpoint()))
        for device in (assigned, to_a_head_end, to_another_device):
            # The broker stores it (PUBACK 0): the service dead-letters what it may not take, and acknowledges it.
            assert device.publish(orjson.dumps(reading(device.meterpoint_id, 1))) == 0
        refused = {to_a_head_end.meterpoint_id, to_another_device.meterpoint_id}
        letters = await dlq.read_until(by_key(*refused), lambda found: len(found) >= 2)
        published = await readings.read_until(by_key(assigned.meterpoint_id), lambda found: len(found) >= 1)
        await eventually(
            lambda: (
                service.registry.get_sample_value("gridhub_collection_mqtt_messages_total", {"outcome": "acked"}) == 1
            )
        )
    assert {record.key.decode() for record in letters} == refused
    assert {header(letter, "dlq.reason") for letter in letters} == {b"not_in_scope"}
    assert [record.key.decode() for record in published] == [assigned.meterpoint_id]
    assert await readings.read_to_end(by_key(*refused)) == []


async def test_the_view_catches_up_at_start_keeps_the_newest_version_and_skips_bad_records(
    settings_for: Callable[..., CollectionSettings], own_topics: Topics, registry: MeterpointRegistry
) -> None:
    moved, plain = new_meterpoint(), new_meterpoint()
    # Before the service starts: version 2 (moved to hes-new), then a late copy of version 1, then garbage.
    await registry.register(moved, source=(HEAD_END, "hes-new"), version=2)
    await registry.register(moved, source=(HEAD_END, "hes-old"), version=1)
    await registry.register(plain, source=(HEAD_END, "hes-new"))
    await registry.producer.send_and_wait(own_topics.prefix + topics.METERPOINTS, b"{not json", key=plain.encode())
    async with running_service(settings_for()) as service:  # enters once the view caught up
        assert (await service.http.get("/readyz")).status_code == 200
        entry = service.view.get(moved)
        assert (entry.source_id, entry.version) == ("hes-new", 2)
        assert service.view.get(plain) is not None
        sample = service.registry.get_sample_value
        assert sample("gridhub_collection_meterpoint_view_caught_up") == 1
        assert sample("gridhub_collection_meterpoint_view_records_total", {"outcome": "stale"}) == 1
        assert sample("gridhub_collection_meterpoint_view_records_total", {"outcome": "malformed"}) == 1
        await eventually(lambda: sample("gridhub_collection_meterpoint_view_lag") == 0)
        # While running it follows the topic: version 3 moves the meterpoint back to this service's key.
        await service.register(moved, version=3)
        response = await service.post_readings([reading(moved, 1)])
        assert response.json()["accepted"] == 1


async def test_a_full_view_refuses_new_meterpoints_says_so_and_their_readings_are_held(
    settings_for: Callable[..., CollectionSettings],
    registry: MeterpointRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second, third = new_meterpoint(), new_meterpoint(), new_meterpoint()
    async with running_service(settings_for(scope=ScopeSettings(capacity=2))) as service:
        await service.register(first, second)
        with caplog.at_level(logging.ERROR, logger="services.collection.adapters.meterpoints"):
            await registry.register(third, source=(HEAD_END, service.client_name))
            sample = service.registry.get_sample_value
            await eventually(
                lambda: sample("gridhub_collection_meterpoint_view_full") == 1 and service.view.refused == 1
            )
        assert sample("gridhub_collection_meterpoint_view_records_total", {"outcome": "refused"}) == 1
        assert any("meterpoint view full" in record.getMessage() for record in caplog.records)
        assert (await service.http.get("/readyz")).status_code == 200  # full is not unready
        # The meterpoints it has keep their updates; the refused one's readings are held, not lost.
        await service.register(first, version=2)
        response = await service.post_readings([reading(first, 1), reading(third, 1)])
        assert [result["status"] for result in response.json()["results"]] == ["accepted", "held"]
