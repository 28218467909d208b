"""Fixtures for the customers service against the real PostgreSQL (and Kafka): settings on a fresh schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from services.customers.settings import CustomersSettings


@pytest.fixture
def settings_for(pg_dsn: str, pg_schema: str) -> Callable[..., CustomersSettings]:
    """Settings on this test's schema, relay off unless the test turns it on."""

    def make(**overrides: Any) -> CustomersSettings:
        values: dict[str, Any] = {"postgres_dsn": pg_dsn, "postgres_schema": pg_schema, "relay_enabled": False}
        return CustomersSettings(**{**values, **overrides})

    return make
