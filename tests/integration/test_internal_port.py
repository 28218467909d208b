"""The internal port over real sockets (issue 14, attack 15): ``/metrics`` and the API documents answer there only.

Production opens a second listener (`internal_http_port`, 9090 unless set); the public port answers 404 for the
internal paths and the internal port answers 404 for everything else but the probes. Without the setting (dev)
everything stays on the main port.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from services.collection.app import create_app
from services.collection.settings import CollectionSettings, FtpSettings, MqttSettings
from tests.integration.http_support import free_port, served
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka]

INTERNAL = ["/metrics", "/docs", "/redoc", "/openapi.json"]


def _settings(kafka_bootstrap: str, internal_port: int | None) -> CollectionSettings:
    return CollectionSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=free_port(),
        internal_http_port=internal_port,
        mqtt=MqttSettings(enabled=False),
        ftp=FtpSettings(enabled=False),
    )


async def test_metrics_and_documents_answer_on_the_internal_port_only(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap, free_port())
    key = generate_api_key("mdm", Role.SOURCE, tenant=TENANT_A)
    app = create_app(
        settings, key_store=InMemoryKeyStore([key.record]), readiness_checks=[], registry=CollectorRegistry()
    )
    internal_url = f"http://127.0.0.1:{settings.internal_http_port}"
    async with served(app, settings) as public_url, httpx.AsyncClient(timeout=5.0) as client:
        for path in INTERNAL:
            public = await client.get(public_url + path)
            assert public.status_code == 404, path
            assert public.headers["content-type"] == "application/problem+json"
            assert (await client.get(internal_url + path)).status_code == 200, path
        assert "http_request_duration_seconds" in (await client.get(internal_url + "/metrics")).text
        # The API itself is public only; the probes answer on both.
        headers = {"X-API-Key": key.plain_key, "Content-Type": "application/json"}
        assert (await client.post(public_url + "/v1/readings", content=b"[]", headers=headers)).status_code != 404
        assert (await client.post(internal_url + "/v1/readings", content=b"[]", headers=headers)).status_code == 404
        for url in (public_url, internal_url):
            assert (await client.get(url + "/healthz")).status_code == 200
            assert (await client.get(url + "/readyz")).status_code == 200


async def test_without_the_internal_port_everything_stays_on_the_main_port(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap, None)
    app = create_app(settings, key_store=InMemoryKeyStore(), readiness_checks=[], registry=CollectorRegistry())
    async with served(app, settings) as public_url, httpx.AsyncClient(timeout=5.0) as client:
        for path in INTERNAL:
            assert (await client.get(public_url + path)).status_code == 200, path
