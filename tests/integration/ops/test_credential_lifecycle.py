"""The credential lifecycle through the real `gridhub` entry point, against the services over real sockets.

Collection, the read side and work orders run in process under uvicorn (as ``python -m services.<name>`` serves
them) with their production key caches (5 s); `gridhub` writes to the same databases (each service in a schema of
the test database of its own, named through the environment as a deployment would). A rotated key works until its
overlap ends and then gets 401; a revoked key gets 401 on every service within the stated cache time; the audit
list shows each of these actions, with who, what, which tenant, when and from where.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from libs.platform.apikeys_asgi import KEY_CACHE_SECONDS
from ops.cli import app as gridhub
from tests.integration.http_support import free_port, served
from tests.tenants import TENANT_A, TENANT_B

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

# The figure docs/security.md states: a revocation reaches every service within its key cache time.
REVOCATION_SECONDS = KEY_CACHE_SECONDS
SLACK = 1.5  # scheduling and the poll interval


@dataclass
class Service:
    """One service under uvicorn: its base URL and a request only a valid key of the right role passes."""

    name: str
    url: str
    method: str
    path: str
    body: bytes | None = None

    async def status(self, client: httpx.AsyncClient, key: str) -> int:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        answer = await client.request(self.method, self.url + self.path, headers=headers, content=self.body)
        return answer.status_code


def _invoke(argv: list[str]) -> str:
    result = CliRunner().invoke(gridhub, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def gridhub_cli(*argv: str) -> str:
    """Run ``gridhub argv`` (the real entry point, in this process's environment) in a thread; its output.

    A thread: the command runs its own event loop, and the services under test run in this one.
    """
    return await asyncio.to_thread(_invoke, list(argv))


def plain_key(output: str) -> str:
    return output.split("API key (shown once): ")[1].split()[0]


def key_id_of(key: str) -> str:
    return key.split("_")[1]


@pytest.fixture
async def schemas(pg_dsn: str) -> AsyncIterator[dict[str, str]]:
    """A schema of the test database per service (the read side's control schema and its view versions too)."""
    names = {
        service: f"t_{service[:4]}_{uuid.uuid4().hex[:8]}" for service in ("collection", "workorders", "customers")
    }
    names["readside"] = f"rs_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        for service, schema in names.items():
            if service != "readside":
                await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield names
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[]) OR nspname LIKE $2 || '\\_v%'",
            list(names.values()),
            names["readside"],
        )
        for row in rows:
            await conn.execute(f'DROP SCHEMA "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def services(pg_dsn: str, kafka_bootstrap: str, schemas: dict[str, str]) -> AsyncIterator[dict[str, Service]]:
    """The three services with API keys, and `gridhub`'s environment pointing at their databases."""
    from services.collection.app import create_app as collection_app
    from services.collection.settings import CollectionSettings, FtpSettings, MqttSettings
    from services.readside.app import create_app as readside_app
    from services.workorders.app import create_app as workorders_app
    from services.workorders.settings import WorkordersSettings
    from tests.integration.readside.support import Topics, settings_for

    for prefix, service in (("COLLECTION", "collection"), ("WORKORDERS", "workorders"), ("READSIDE", "readside")):
        os.environ[f"{prefix}_POSTGRES_DSN"] = pg_dsn
        os.environ[f"{prefix}_POSTGRES_SCHEMA"] = schemas[service]
    os.environ["CUSTOMERS_POSTGRES_DSN"] = pg_dsn
    os.environ["CUSTOMERS_POSTGRES_SCHEMA"] = schemas["customers"]

    suffix = uuid.uuid4().hex[:8]
    collection = CollectionSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        postgres_dsn=pg_dsn,
        postgres_schema=schemas["collection"],
        http_port=free_port(),
        event_source=f"/gridhub/collection-test-{suffix}",
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
    )
    workorders = WorkordersSettings(
        postgres_dsn=pg_dsn,
        postgres_schema=schemas["workorders"],
        kafka_bootstrap_servers=kafka_bootstrap,
        consumers_enabled=False,
        relay_enabled=False,
        enrichment_enabled=False,
        consumer_group_prefix=f"wo-test-{suffix}",
        http_port=free_port(),
    )
    roles = ("readings", "events", "customers", "workorders", "meterpoints")
    readside = settings_for(
        pg_dsn,
        kafka_bootstrap,
        schemas["readside"],
        Topics(*(f"readside-keys-unused-{role}" for role in roles)),
        consumer_enabled=False,
        require_api_key=True,
        http_port=free_port(),
    )
    for settings in (collection, workorders, readside):
        assert settings.api_key_cache_seconds == REVOCATION_SECONDS, "every service's cache is the stated time"
    async with AsyncExitStack() as stack:
        urls = {}
        for name, app, settings in (
            ("collection", collection_app(collection, registry=CollectorRegistry(), readiness_checks=[]), collection),
            ("workorders", workorders_app(workorders, registry=CollectorRegistry()), workorders),
            ("readside", readside_app(readside, registry=CollectorRegistry()), readside),
        ):
            urls[name] = await stack.enter_async_context(served(app, settings))
        yield {
            # An empty batch: 401 without a valid key, something else (a 2xx or a validation answer) with one.
            "collection": Service("collection", urls["collection"], "POST", "/v1/readings", b"[]"),
            "workorders": Service("workorders", urls["workorders"], "GET", "/v1/work-orders"),
            "readside": Service("readside", urls["readside"], "GET", "/v1/workorders"),
        }


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.1, what: str = "the condition"
) -> float:
    """Poll ``check`` until it holds; return when (monotonic). TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(interval)


async def audit(*argv: str) -> list[dict[str, Any]]:
    listing = json.loads(await gridhub_cli("audit", "list", "--json", *argv))
    assert listing["unreachable"] == {}, listing["unreachable"]
    events: list[dict[str, Any]] = listing["events"]
    return events


async def test_a_revoked_key_gets_401_on_every_service_within_the_cache_time(services: dict[str, Service]) -> None:
    roles = {"collection": "source", "workorders": "reader", "readside": "reader"}
    keys = {
        name: plain_key(await gridhub_cli("apikey", "add", name, f"hes-{name}", "--tenant", TENANT_A, "--role", role))
        for name, role in roles.items()
    }
    async with httpx.AsyncClient(timeout=5.0) as client:
        for name, service in services.items():
            assert await service.status(client, keys[name]) != 401, f"{name} refused a fresh key"
        revoked_at: dict[str, float] = {}
        for name in services:
            await gridhub_cli("apikey", "revoke", name, key_id_of(keys[name]))
            revoked_at[name] = time.monotonic()

        async def refused(name: str) -> float:
            service = services[name]

            async def check() -> bool:
                return await service.status(client, keys[name]) == 401

            limit = REVOCATION_SECONDS + SLACK
            return await wait_for(check, timeout=limit, what=f"{name} refusing the revoked key") - revoked_at[name]

        delays = dict(zip(services, await asyncio.gather(*(refused(name) for name in services)), strict=True))
    assert all(delay <= REVOCATION_SECONDS + SLACK for delay in delays.values()), delays

    events = await audit("--tenant", TENANT_A)
    for name in services:
        key_id = key_id_of(keys[name])
        done = [(e["service"], e["action"]) for e in events if e["subject"] == key_id]
        assert done == [(name, "apikey.add"), (name, "apikey.revoke")], done
    revocation = next(e for e in events if e["action"] == "apikey.revoke")
    assert revocation["actor_kind"] == "operator"
    assert "@" in revocation["actor"], "who: user@host"
    assert revocation["origin"], "from where"
    assert revocation["tenant"] == TENANT_A
    assert datetime.fromisoformat(revocation["occurred_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert not any(key.split("_")[2] in json.dumps(events) for key in keys.values()), "no secret in the audit"


async def test_a_rotated_key_works_until_its_overlap_ends_then_gets_401(services: dict[str, Service]) -> None:
    service = services["readside"]
    old = plain_key(
        await gridhub_cli("apikey", "add", "readside", "web-rotating", "--tenant", TENANT_B, "--role", "reader")
    )
    overlap = 8.0  # longer than the key cache: the old key's new end reaches the service before it comes
    rotated = await gridhub_cli("apikey", "rotate", "readside", key_id_of(old), "--overlap", f"{overlap:.0f}s")
    rotated_at = time.monotonic()
    new = plain_key(rotated)
    async with httpx.AsyncClient(timeout=5.0) as client:
        assert await service.status(client, new) == 200
        assert await service.status(client, old) == 200, "both keys work during the overlap"

        async def old_refused() -> bool:
            status = await service.status(client, old)
            if status != 401:
                assert status == 200
                # Up to the overlap's end the old key must keep working (no early cut-off).
            return status == 401

        refused_at = await wait_for(old_refused, timeout=overlap + REVOCATION_SECONDS + SLACK, what="the 401")
        assert refused_at - rotated_at >= overlap - 0.5, "the old key stopped working before its overlap ended"
        assert await service.status(client, new) == 200, "the successor outlives the overlap"

    listing = json.loads(await gridhub_cli("apikey", "list", "--service", "readside", "--tenant", TENANT_B, "--json"))
    states = {row["key_id"]: row for row in listing}
    assert states[key_id_of(old)]["state"] == "expired"
    assert states[key_id_of(new)]["state"] == "active"
    assert states[key_id_of(new)]["rotated_from"] == key_id_of(old)
    assert (states[key_id_of(new)]["client"], states[key_id_of(new)]["role"]) == ("web-rotating", "reader")

    events = await audit("--tenant", TENANT_B, "--since", "10m")
    rotation = next(e for e in events if e["action"] == "apikey.rotate" and e["subject"] == key_id_of(old))
    assert rotation["detail"]["successor"] == key_id_of(new)
    assert rotation["service"] == "readside"
    assert await audit("--tenant", TENANT_A, "--service", "readside") == [], "B's actions are not A's"


async def test_an_expired_key_answers_401_like_a_revoked_one(services: dict[str, Service]) -> None:
    service = services["workorders"]
    key = plain_key(
        await gridhub_cli("apikey", "add", "workorders", "planner-1", "--tenant", TENANT_A, "--expires-in", "3s")
    )
    added_at = time.monotonic()
    async with httpx.AsyncClient(timeout=5.0) as client:
        assert await service.status(client, key) == 200

        async def refused() -> bool:
            return await service.status(client, key) == 401

        # Expiry is checked on every request, cached record or not: no cache delay on top of the 3 s.
        refused_at = await wait_for(refused, timeout=3.0 + SLACK, what="the expired key's 401")
        assert refused_at - added_at <= 3.0 + SLACK
        answer = await client.get(service.url + service.path, headers={"Authorization": f"Bearer {key}"})
        assert answer.headers["www-authenticate"].startswith("Bearer")
    listed = json.loads(await gridhub_cli("apikey", "list", "--service", "workorders", "--json"))
    assert next(row for row in listed if row["key_id"] == key_id_of(key))["state"] == "expired"
