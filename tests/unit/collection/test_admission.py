"""Lag-aware admission: while the read side falls behind, the ingress quotas refill slower (a fake signal)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from libs.events.records import KafkaRecord
from libs.flowcontrol.policy import AdmissionSettings, BoundaryPolicy, BulkheadSettings, QuotaSettings
from libs.flowcontrol.testing import FakeClock
from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from services.collection.adapters.lag import total_lag
from services.collection.app import build_parts, create_admission, create_app
from services.collection.settings import Boundaries, CollectionSettings, FtpSettings, MqttSettings
from tests.tenants import TENANT_A
from tests.unit.collection.scoping import assigned_view

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
READING = {
    "meterpoint_id": "571313180400000025",
    "register": "active_import",
    "interval_end": "2025-03-01T10:15:00Z",
    "resolution": "PT15M",
    "value": 0.412,
    "unit": "kWh",
    "quality": "measured",
}


class Accepting:
    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        return None


def settings() -> CollectionSettings:
    admission = AdmissionSettings(min_scale=0.1, recovery_per_second=0.1, interval=1.0)
    return CollectionSettings(
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
        boundaries=Boundaries(
            rest_ingress=BoundaryPolicy(
                quota=QuotaSettings(rate=1, burst=1),
                bulkhead=BulkheadSettings(max_concurrent=4),
                admission=admission,
            )
        ),
    )


def test_every_ingress_quota_follows_the_signal_down_at_once_and_back_gradually() -> None:
    clock = FakeClock()
    parts = build_parts(settings(), registry=CollectorRegistry(), clock=clock)
    pressure = [0.0]
    controllers = create_admission(parts, lambda: pressure[0])
    quotas = [parts.boundaries[name].quota for name in ("rest_ingress", "mqtt_ingress", "ftp_ingress")]
    assert len(controllers) == 3
    pressure[0] = 1.0
    for controller in controllers:
        controller.update()
    assert [round(quota.scale, 3) for quota in quotas if quota is not None] == [0.1, 0.1, 0.1]
    pressure[0] = 0.0
    clock.tick(2.0)
    for controller in controllers:
        controller.update()
    assert [round(quota.scale, 3) for quota in quotas if quota is not None] == [0.3, 0.3, 0.3]


async def test_rest_clients_wait_longer_while_the_read_side_lags() -> None:
    clock = FakeClock()
    pressure = [0.0]
    writer = generate_api_key("hes-north", Role.SOURCE, tenant=TENANT_A)
    app = create_app(
        settings(),
        publisher=Accepting(),
        key_store=InMemoryKeyStore([writer.record]),
        readiness_checks=[],
        registry=CollectorRegistry(),
        clock=clock,
        wall_clock=lambda: NOW,
        admission_signal=lambda: pressure[0],
        scope_view=assigned_view(str(READING["meterpoint_id"]), source="hes-north"),
    )
    headers = {"X-API-Key": writer.plain_key}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collection") as client:
            assert (await client.post("/v1/readings", json=[READING], headers=headers)).status_code == 202
            refused = await client.post("/v1/readings", json=[READING], headers=headers)
            assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
            pressure[0] = 1.0  # the read side is far behind
            await clock.advance(1.0)  # the controllers' interval
            assert app.state.parts.boundaries["rest_ingress"].quota.scale == pytest.approx(0.1)
            refused = await client.post("/v1/readings", json=[READING], headers=headers)
            # The bucket refilled 1 s at 0.1 tokens per second: 9 s to go instead of at most 1.
            assert (refused.status_code, refused.headers["Retry-After"]) == (429, "9")


def test_lag_sums_what_the_group_has_not_consumed_and_no_group_means_no_pressure() -> None:
    partitions = [TopicPartition("meter.readings.v1", p) for p in range(3)]
    ends = dict(zip(partitions, (100, 50, 10), strict=True))
    beginnings = dict(zip(partitions, (0, 20, 0), strict=True))
    assert total_lag({partitions[0]: 90, partitions[1]: 50}, ends, beginnings) == 10 + 0 + 10
    assert total_lag({}, ends, beginnings) == 0
