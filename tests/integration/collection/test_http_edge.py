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
from prometheus_client import REGISTRY, CollectorRegistry

from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, PerClientSettings, QuotaSettings
from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from services.collection.app import create_app
from services.collection.settings import Boundaries, CollectionSettings, FtpSettings, MqttSettings
from tests.integration.collection.support import new_meterpoint, wait_caught_up
from tests.integration.http_support import SlowClient, free_port, served
from tests.tenants import TENANT_A

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


# The slow-body tests must never meet the quota; the anonymous callers' tests watch their bucket drain, so it must
# not refill between two requests.
AMPLE_QUOTA = QuotaSettings(rate=1000, burst=1000)
SLOW_QUOTA = QuotaSettings(rate=0.001, burst=100)


def _settings(kafka_bootstrap: str, quota: QuotaSettings = AMPLE_QUOTA, **changes: object) -> CollectionSettings:
    rest = BoundaryPolicy(
        quota=quota,
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
    attacker, partner = (
        generate_api_key("noisy-hes", Role.SOURCE, tenant=TENANT_A),
        generate_api_key("mdm", Role.SOURCE, tenant=TENANT_A),
    )
    settings = _settings(kafka_bootstrap)
    keys = InMemoryKeyStore([attacker.record, partner.record])
    app = create_app(settings, key_store=keys, readiness_checks=[], registry=CollectorRegistry())
    async with served(app, settings) as base_url:
        await wait_caught_up(app.state.parts.meterpoints)  # until then every POST is a 503
        yield Edge(base_url, settings.http_port, attacker.plain_key, partner.plain_key)


def _cut(reason: str) -> float:
    """``gridhub_http_connections_cut_total`` of ``reason`` so far (the process-wide registry)."""
    return REGISTRY.get_sample_value("gridhub_http_connections_cut_total", {"reason": reason}) or 0.0


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
    drained_before = _cut("drain_timeout")
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
    # What an operator sees: the refused ones' connections counted as cut at the drain timeout.
    assert _cut("drain_timeout") - drained_before == 46


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
    cut_before = _cut("header_timeout")
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
    assert _cut("header_timeout") - cut_before == 1


def _remaining(response: httpx.Response) -> int:
    """``r`` of the RateLimit field: the tokens left in the bucket this answer was charged to."""
    fields = dict(part.split("=", 1) for part in response.headers["ratelimit"].split(";")[1:])
    return int(fields["r"])


async def _anonymous_post(base_url: str, local_address: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-API-Key": "ghk_0000000000000000_" + "x" * 43}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    transport = httpx.AsyncHTTPTransport(local_address=local_address)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=5.0) as client:
        return await client.post("/v1/readings", content=b"[]", headers=headers)


async def test_anonymous_callers_each_see_their_own_bucket(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap, SLOW_QUOTA)
    app = create_app(settings, key_store=InMemoryKeyStore(), readiness_checks=[], registry=CollectorRegistry())
    async with served(app, settings) as base_url:
        first = [await _anonymous_post(base_url, "127.0.0.2") for _ in range(5)]
        other = await _anonymous_post(base_url, "127.0.0.3")
        again = await _anonymous_post(base_url, "127.0.0.2")
    assert {response.status_code for response in [*first, other, again]} == {401}
    burst = 100
    assert [_remaining(response) for response in first] == [burst - 1 - n for n in range(5)]
    # The other address's 401 shows its own untouched bucket, not the one the first caller spent.
    assert _remaining(other) == burst - 1
    assert _remaining(again) == burst - 6


async def test_x_forwarded_for_names_the_client_only_from_a_trusted_proxy(kafka_bootstrap: str) -> None:
    # The ingress is 127.0.0.1; clients behind it are 198.51.100.7 and .8; 127.0.0.9 connects directly and lies.
    settings = _settings(kafka_bootstrap, SLOW_QUOTA, trusted_proxies=("127.0.0.1/32",))
    app = create_app(settings, key_store=InMemoryKeyStore(), readiness_checks=[], registry=CollectorRegistry())
    async with served(app, settings) as base_url:
        spent = [await _anonymous_post(base_url, "127.0.0.1", "198.51.100.7") for _ in range(3)]
        neighbour = await _anonymous_post(base_url, "127.0.0.1", "198.51.100.8")
        # A client's own X-Forwarded-For is kept by the ingress in front; the ingress appends the address it saw.
        appended = await _anonymous_post(base_url, "127.0.0.1", "198.51.100.8, 198.51.100.7")
        liar = await _anonymous_post(base_url, "127.0.0.9", "198.51.100.7")
        liar_again = await _anonymous_post(base_url, "127.0.0.9", "198.51.100.7")
    burst = 100
    assert [_remaining(response) for response in spent] == [burst - 1, burst - 2, burst - 3]
    assert _remaining(neighbour) == burst - 1, "another client behind the same ingress has its own bucket"
    assert _remaining(appended) == burst - 4, "the rightmost address not a proxy is the client"
    # Not a trusted proxy: its header is ignored and it is charged as itself, not as 198.51.100.7.
    assert [_remaining(liar), _remaining(liar_again)] == [burst - 1, burst - 2]
