"""Fixtures for the collection service against the real stack."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from libs.platform.kafka import start_producer
from services.collection.adapters.ftpusers import PostgresFtpUserStore, new_ftp_user
from services.collection.app import create_app
from services.collection.settings import Boundaries, CollectionSettings, FtpSettings, MqttSettings
from stack.config import StackConfig
from tests.integration.collection.support import (
    FTP_PARTNER,
    Device,
    MeterpointRegistry,
    TopicReader,
    device_factory,
    wait_caught_up,
)
from tests.tenants import TENANT_A


@pytest.fixture
async def topic_reader(kafka_bootstrap: str) -> AsyncIterator[Callable[[str], Any]]:
    readers: list[TopicReader] = []

    async def open_reader(topic: str) -> TopicReader:
        reader = TopicReader(kafka_bootstrap, topic)
        await reader.start()
        readers.append(reader)
        return reader

    yield open_reader
    for reader in readers:
        await reader.stop()


@pytest.fixture
async def meterpoint_registry(kafka_bootstrap: str) -> AsyncIterator[MeterpointRegistry]:
    """Registers meterpoints on meterpoints.v1 (``registry.register(*ids, source=(kind, id), view=...)``)."""
    producer = await start_producer(kafka_bootstrap, "collection-test-registry")
    try:
        yield MeterpointRegistry(producer)
    finally:
        await producer.stop()


@pytest.fixture
def devices(stack: StackConfig) -> Iterator[Callable[[], Device]]:
    """Factory of logged-in devices with fresh meterpoints; their broker users are removed afterwards."""
    with device_factory(stack) as make:
        yield make


@dataclass
class FtpService:
    """The collection app with its FTP server (REST and Kafka real, MQTT off), partners in PostgreSQL."""

    app: FastAPI
    port: int
    root: Path
    registry: CollectorRegistry
    users: PostgresFtpUserStore
    meterpoints: MeterpointRegistry

    async def add_partner(self, login: str | None = None) -> tuple[str, str]:
        login = login or f"p{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        await self.users.add(new_ftp_user(login, password, tenant=TENANT_A))
        return login, password

    def outbox(self, login: str) -> Path:
        return self.root / "users" / login / "outbox"

    async def register(self, login: str, *meterpoints: str, **changes: Any) -> None:
        """Register ``meterpoints`` for partner ``login`` and wait until the app's view has them."""
        view = self.app.state.parts.scope_view
        await self.meterpoints.register(*meterpoints, source=(FTP_PARTNER, login), view=view, **changes)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


FtpFactory = Callable[..., AbstractAsyncContextManager[FtpService]]


@pytest.fixture
async def ftp_service(
    kafka_bootstrap: str, pg_dsn: str, pg_schema: str, tmp_path: Path, meterpoint_registry: MeterpointRegistry
) -> AsyncIterator[FtpFactory]:
    """``async with ftp_service(**ftp_settings) as service``: the app with an FTP server on a free port."""

    @asynccontextmanager
    async def running(boundaries: Boundaries | None = None, **ftp: Any) -> AsyncIterator[FtpService]:
        values: dict[str, Any] = {
            "root": tmp_path / "ftp",
            "port": 0,
            "passive_port_first": 0,
            "passive_port_last": 0,
            "batch_lines": 50,
            **ftp,
        }
        settings = CollectionSettings(
            kafka_bootstrap_servers=kafka_bootstrap,
            postgres_dsn=pg_dsn,
            postgres_schema=pg_schema,
            mqtt=MqttSettings(enabled=False),
            ftp=FtpSettings(**values),
            boundaries=boundaries or Boundaries(),
        )
        registry = CollectorRegistry()
        app = create_app(settings, registry=registry)
        async with app.router.lifespan_context(app):
            parts = app.state.parts
            assert parts.ftp is not None
            assert parts.pool is not None
            assert parts.meterpoints is not None
            await wait_caught_up(parts.meterpoints)
            users = PostgresFtpUserStore(parts.pool)
            yield FtpService(app, parts.ftp.port, settings.ftp.root, registry, users, meterpoint_registry)

    return running
