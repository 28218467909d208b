"""/readyz reflects the real database and broker: ready while both answer, 503 naming the one that does not."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from libs.platform.db import create_pool, postgres_readiness
from libs.platform.health import ReadinessRegistry, health_router
from libs.platform.kafka import kafka_readiness, start_producer
from libs.platform.problems import install_problem_handlers

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_readyz_follows_postgres_and_kafka(pg_dsn: str, kafka_bootstrap: str) -> None:
    pool = await create_pool(pg_dsn)
    producer = await start_producer(kafka_bootstrap, "test-readiness")
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(health_router(ReadinessRegistry([postgres_readiness(pool), kafka_readiness(producer)])))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://collection")
    try:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert {check["name"] for check in ready.json()["checks"]} == {"postgres", "kafka"}

        await pool.close()  # the database "goes away" for this service
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["content-type"].startswith("application/problem+json")
        assert "postgres" in not_ready.json()["detail"]
        assert "kafka" not in not_ready.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200
    finally:
        await client.aclose()
        await producer.stop()
        await pool.close()
