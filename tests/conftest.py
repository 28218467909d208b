"""Fixtures shared by every test folder: the real local stack (started once, or reused when it already runs)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stack.config import REPO, StackConfig

TEST_DATABASE = "gridhub_test"


@pytest.fixture(scope="session")
def stack() -> StackConfig:
    """The running local stack; brought up here when `make test` did not do it already."""
    config = StackConfig()
    status = subprocess.run([sys.executable, "-m", "stack", "status"], cwd=REPO, capture_output=True, check=False)
    if status.returncode != 0:
        subprocess.run([sys.executable, "-m", "stack", "up"], cwd=REPO, check=True)
    return config


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: StackConfig) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def pg_dsn(stack: StackConfig) -> str:
    """DSN of the test database (its own role, password auth over 127.0.0.1, as the services connect)."""
    return stack.postgres_dsn(TEST_DATABASE)


@pytest.fixture
async def pg_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh schema in the test database, dropped afterwards: tests never see each other's tables."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield schema
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def new_topic(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Factory for topics of the test's own (auto-creation is off on the stack's broker); deleted afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def create(prefix: str = "test", partitions: int = 6, *, with_dlq: bool = False) -> str:
        """Create `<prefix>.<random>`; with `with_dlq`, also its dead-letter topic `<name>.dlq`."""
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        names = [name, f"{name}.dlq"] if with_dlq else [name]
        await admin.create_topics(
            [NewTopic(name=topic, num_partitions=partitions, replication_factor=1) for topic in names]
        )
        created.extend(names)
        return name

    try:
        yield create
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()
