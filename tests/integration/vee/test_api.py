"""The VEE app over its ASGI interface with the real stack behind it: health, readiness, metrics, the series."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.vee.app import create_app
from tests.integration.vee.support import DrivenClock, Topics, gsrn, hourly, meterpoint, produce, settings_for, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

MIDNIGHT = datetime(2025, 3, 2, 23, tzinfo=UTC)


async def test_health_metrics_and_a_days_versions(
    pg_dsn: str, kafka_bootstrap: str, pg_schema: str, topics: Topics
) -> None:
    registry = CollectorRegistry()
    settings = settings_for(pg_dsn, kafka_bootstrap, pg_schema, topics)
    app = create_app(settings, registry=registry, clock=DrivenClock(MIDNIGHT + timedelta(days=1, hours=2)))
    mp = gsrn(50)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vee") as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            url = f"/v1/series/{mp}/active_import/2025-03-03"
            assert (await http.get(url)).status_code == 404
            await produce(
                kafka_bootstrap, topics, [meterpoint(mp, since=date(2025, 3, 3)), *hourly(mp, MIDNIGHT, [1.0] * 24)]
            )

            async def published() -> bool:
                return (await http.get(url)).status_code == 200

            await wait_for(published, 60, "the day served")
            body = (await http.get(url)).json()
            assert [(v["version"], v["reason"], len(v["points"])) for v in body["versions"]] == [(1, "complete", 24)]
            metrics = (await http.get("/metrics")).text
    assert "gridhub_vee_reading_stored_latency_seconds_count 24.0" in metrics
    assert registry.get_sample_value("gridhub_vee_days_published_total", {"reason": "complete"}) == 1
