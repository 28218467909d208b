"""Schemathesis against the committed read-side OpenAPI document: no 5xx, and every response as the document says.

The service runs as ``python -m services.readside`` (a real uvicorn on a free port, the consumer off) on a fresh
control schema with an API key of role read, behind the flow-control middleware and the key cache it runs with in
production; the views are empty, so lookups answer 404 and the work-order list an empty page, besides the 400 and
422 answers to what Schemathesis makes up.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis

from libs.platform.apikeys import Role, generate_api_key
from services.readside.contracts import OPENAPI_PATH
from tests.integration.http_support import free_port, service_process
from tests.integration.schemathesis_support import FUZZ, Service, call_and_check
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

schema = schemathesis.openapi.from_path(OPENAPI_PATH)


@pytest.fixture(scope="module")
async def service(
    pg_dsn: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    control = f"rs_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_dsn)
    port = free_port()
    env = {
        "GRIDHUB_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "READSIDE_POSTGRES_DSN": pg_dsn,
        "READSIDE_POSTGRES_SCHEMA": control,
        "READSIDE_HTTP_PORT": str(port),
        "READSIDE_CONSUMER_ENABLED": "false",
        "READSIDE_REQUIRE_API_KEY": "true",
        # Schemathesis is one client sending as fast as it can; the quota is not what this test is about.
        "READSIDE_BOUNDARIES__REST_API__QUOTA__RATE": "100000",
        "READSIDE_BOUNDARIES__REST_API__QUOTA__BURST": "100000",
    }
    session = requests.Session()
    log = tmp_path_factory.mktemp("readside") / "service.log"
    try:
        async with service_process("readside", env, port, log) as base_url:
            key = generate_api_key("schemathesis", Role.READER, tenant=TENANT_A)
            record = key.record
            await conn.execute(
                f"INSERT INTO {control}.api_keys (key_id, key_hash, role, client, created_at, tenant) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                record.key_id,
                record.key_hash,
                record.role.value,
                record.client,
                record.created_at,
                record.tenant,
            )
            yield Service(base_url, {"X-API-Key": key.plain_key}, session)
    finally:
        session.close()
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $1 || '\\_v%'", control
        )
        for row in schemas:
            await conn.execute(f'DROP SCHEMA "{row["nspname"]}" CASCADE')
        await conn.close()


@schema.parametrize()
@FUZZ
def test_no_server_errors_and_every_response_matches_the_document(case: Any, service: Service) -> None:
    call_and_check(case, service)
