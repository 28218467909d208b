"""The collection REST edge over real sockets (uvicorn as ``serve`` runs it), against the attacks of issue 14.

12: fifty connections of one key trickle their bodies a byte per second. The per-client cap refuses all but four
at once (429, Retry-After), and the server closes those connections at the drain timeout instead of reading the
trickle on; the four admitted are cut off at the body timeout (408, connection closed) and give their bulkhead
permits back; another key's batches are accepted all along.
13: ``X-Forwarded-For`` names the client only when the peer is a trusted proxy; anonymous callers from different
addresses each see their own bucket, never another's.
Slowloris: a request whose headers trickle in is closed at the header timeout, unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, PerClientSettings, QuotaSettings
from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from services.collection.app import create_app
from services.collection.settings import Boundaries, CollectionSettings, FtpSettings, MqttSettings
from tests.integration.collection.support import new_meterpoint
from tests.integration.http_support import SlowClient, free_port, served

pytestmark = [pytest.mark.kafka]

BODY_TIMEOUT = 2.0
# The refused ones' bodies are not read; the server closes their connections this long after the 429.
DRAIN_TIMEOUT = 2.0
HEADER_TIMEOUT = 2.0


@dataclass
class Edge:
    base_url: str
    port: int
    attacker: str
    partner: str


def _settings(kafka_bootstrap: str, **changes: object) -> CollectionSettings:
    rest = BoundaryPolicy(
        quota=QuotaSettings(rate=1000, burst=1000),
        bulkhead=BulkheadSettings(max_concurrent=8, max_wait=0.5, max_waiting=64, retry_after=1.0),
        per_client=PerClientSettings(max_per_client=4, retry_after=2.0),
        max_body_bytes=4 * 1024 * 1024,
        # Small for the test: a byte per second earns 1 ms per byte, so a slow body is cut off at about 2 s.
        body_timeout=BODY_TIMEOUT,
        min_body_rate=1000,
    )
    return CollectionSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=free_port(),
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
        boundaries=Boundaries(rest_ingress=rest),
        http_drain_timeout_seconds=DRAIN_TIMEOUT,
        **changes,  # type: ignore[arg-type]
    )


@pytest.fixture
async def edge(kafka_bootstrap: str) -> AsyncIterator[Edge]:
    attacker, partner = generate_api_key("noisy-hes", Role.WRITE), generate_api_key("mdm", Role.WRITE)
    settings = _settings(kafka_bootstrap)
    keys = InMemoryKeyStore([attacker.record, partner.record])
    app = create_app(settings, key_store=keys, readiness_checks=[], registry=CollectorRegistry())
    async with served(app, settings) as base_url:
        yield Edge(base_url, settings.http_port, attacker.plain_key, partner.plain_key)


def _batch(meterpoint: str, quarter: int) -> bytes:
    return orjson.dumps(
        [
            {
                "meterpoint_id": meterpoint,
                "register": "active_import",
                "interval_end": f"2025-03-01T{quarter // 4:02d}:{quarter % 4 * 15:02d}:00Z",
                "resolution": "PT15M",
                "value": 0.5,
                "unit": "kWh",
                "quality": "measured",
            }
        ]
    )


async def test_slow_bodies_are_cut_off_and_another_key_is_served_meanwhile(edge: Edge) -> None:
    head = (
        b"POST /v1/readings HTTP/1.1\r\nHost: collection\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + edge.attacker.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    slow = [SlowClient("127.0.0.1", edge.port, head, 1000, interval=1.0) for _ in range(50)]
    started = time.monotonic()
    deadline = started + max(BODY_TIMEOUT, DRAIN_TIMEOUT) + 8.0
    attack = [asyncio.create_task(client.run(deadline)) for client in slow]

    statuses: list[int] = []
    meterpoint = new_meterpoint()
    headers = {"X-API-Key": edge.partner, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=edge.base_url, headers=headers, timeout=5.0) as partner:
        quarter = 0
        while not all(task.done() for task in attack):
            response = await partner.post("/v1/readings", content=_batch(meterpoint, quarter % 96))
            statuses.append(response.status_code)
            quarter += 1
            await asyncio.sleep(0.05)
    await asyncio.gather(*attack)
    elapsed = time.monotonic() - started

    assert statuses, "the partner sent nothing during the attack"
    assert set(statuses) == {202}, statuses
    by_status: dict[int | None, int] = {}
    for client in slow:
        by_status[client.status] = by_status.get(client.status, 0) + 1
    # Four admitted (the per-client cap) and timed out; the rest refused at once.
    assert by_status == {408: 4, 429: 46}, by_status
    assert all(client.closed_by_server for client in slow)
    for client in slow:
        # Neither group trickled on: a couple of bytes arrived, never the whole body.
        assert client.bytes_sent < 10
        if client.status == 429:
            assert b"\r\nretry-after: 2\r\n" in client.answer.lower()
        else:
            assert b"\r\nconnection: close\r\n" in client.answer.lower()
            assert orjson.loads(client.answer.split(b"\r\n\r\n", 1)[1])["reason"] == "body_timeout"
    assert elapsed < max(BODY_TIMEOUT, DRAIN_TIMEOUT) + 4.0


async def test_a_client_over_its_in_flight_cap_gets_429_while_others_pass(edge: Edge) -> None:
    head = (
        b"POST /v1/readings HTTP/1.1\r\nHost: collection\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + edge.attacker.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    holders = [SlowClient("127.0.0.1", edge.port, head, 1000, interval=0.5) for _ in range(4)]
    deadline = time.monotonic() + BODY_TIMEOUT + 5.0
    held = [asyncio.create_task(client.run(deadline)) for client in holders]
    meterpoint = new_meterpoint()
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=5.0) as client:

        async def post(key: str) -> httpx.Response:
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
            return await client.post("/v1/readings", content=_batch(meterpoint, 1), headers=headers)

        # The holders are admitted once their heads are parsed; poll until the fifth request of theirs is refused.
        async with asyncio.timeout(BODY_TIMEOUT):
            while (refused := await post(edge.attacker)).status_code != 429:
                await asyncio.sleep(0.02)
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["reason"] == "client_busy"
        assert (await post(edge.partner)).status_code == 202
    await asyncio.gather(*held)
    assert [holder.status for holder in holders] == [408] * 4


async def test_a_client_trickling_its_headers_is_closed_at_the_header_timeout(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap, http_header_timeout_seconds=HEADER_TIMEOUT)
    app = create_app(settings, key_store=InMemoryKeyStore(), readiness_checks=[], registry=CollectorRegistry())
    async with served(app, settings):
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.http_port)
        writer.write(b"POST /v1/readings HTTP/1.1\r\nHost: collection\r\n")
        await writer.drain()
        started = time.monotonic()
        answer = b""
        closed = False
        async with asyncio.timeout(HEADER_TIMEOUT + 3.0):
            while not closed:
                with contextlib.suppress(ConnectionError):
                    writer.write(b"X")
                    await writer.drain()
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), 0.25)
                except TimeoutError:
                    continue
                except ConnectionError:
                    chunk = b""
                answer += chunk
                closed = not chunk
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert answer == b"", "a half-sent request gets no answer, only a closed connection"
    assert HEADER_TIMEOUT - 0.5 <= time.monotonic() - started <= HEADER_TIMEOUT + 2.0
