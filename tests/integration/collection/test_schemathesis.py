"""Schemathesis against the committed collection OpenAPI document: no 5xx, and every response as the document says.

The service runs as ``python -m services.collection`` (a real uvicorn on a free port, MQTT and FTP off) on a
fresh schema with an API key of role write, publishing to topics of this test's own (``KAFKA_TOPIC_PREFIX``), so
the generated readings and events that pass validation reach Kafka (202) without landing in the platform's topics.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from libs.events import topics
from libs.platform.apikeys import Role, generate_api_key
from services.collection.contracts import OPENAPI
from tests.integration.http_support import free_port, service_process
from tests.integration.schemathesis_support import FUZZ, Service, call_and_check
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

schema = schemathesis.openapi.from_path(OPENAPI)


@pytest.fixture(scope="module")
async def service(
    pg_dsn: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    db_schema = f"t_{uuid.uuid4().hex[:12]}"
    prefix = f"schemathesis-{uuid.uuid4().hex[:8]}."
    names = [
        f"{prefix}{name}{suffix}"
        for name in (topics.READINGS, topics.METER_EVENTS)
        for suffix in ("", topics.DLQ_SUFFIX)
    ] + [prefix + topics.METERPOINTS]  # the scope view's (empty: every valid reading is held, still a 202)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(name=name, num_partitions=1, replication_factor=1) for name in names])
    conn = await asyncpg.connect(pg_dsn)
    port = free_port()
    env = {
        "GRIDHUB_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "COLLECTION_POSTGRES_DSN": pg_dsn,
        "COLLECTION_POSTGRES_SCHEMA": db_schema,
        "COLLECTION_HTTP_PORT": str(port),
        "COLLECTION_KAFKA_TOPIC_PREFIX": prefix,
        "COLLECTION_MQTT__ENABLED": "false",
        "COLLECTION_FTP__ENABLED": "false",
        # Schemathesis is one client sending as fast as it can; the quota is not what this test is about.
        "COLLECTION_BOUNDARIES__REST_INGRESS__QUOTA__RATE": "100000",
        "COLLECTION_BOUNDARIES__REST_INGRESS__QUOTA__BURST": "100000",
    }
    session = requests.Session()
    log = tmp_path_factory.mktemp("collection") / "service.log"
    try:
        async with service_process("collection", env, port, log) as base_url:
            key = generate_api_key("schemathesis", Role.SOURCE, tenant=TENANT_A)
            record = key.record
            await conn.execute(
                f"INSERT INTO {db_schema}.api_keys (key_id, key_hash, role, client, created_at, tenant) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                record.key_id,
                record.key_hash,
                record.role.value,
                record.client,
                record.created_at,
                record.tenant,
            )
            yield Service(base_url, {"Authorization": f"Bearer {key.plain_key}"}, session)
    finally:
        session.close()
        await conn.execute(f"DROP SCHEMA IF EXISTS {db_schema} CASCADE")
        await conn.close()
        await admin.delete_topics(names)
        await admin.close()


@schema.parametrize()
@FUZZ
def test_no_server_errors_and_every_response_matches_the_document(case: Any, service: Service) -> None:
    call_and_check(case, service)
