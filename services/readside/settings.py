"""The read side's settings: ``READSIDE_*`` variables (plus the shared ``GRIDHUB_*`` ones), read nowhere else.

Nested values use ``__``: ``READSIDE_BOUNDARIES__READSIDE_POSTGRES__TIMEOUT=30`` changes one number and keeps the
other defaults.
"""

from __future__ import annotations

import re
from typing import Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.events import topics
from libs.flowcontrol.policy import (
    BoundaryPolicy,
    BreakerSettings,
    BulkheadSettings,
    DeliverySettings,
    PerClientSettings,
    QuotaSettings,
    ThrottleSettings,
)
from libs.platform.settings import DEV_ONLY_MARKER, ServiceSettings

DEV_POSTGRES_DSN = f"postgresql://readside:readside-{DEV_ONLY_MARKER}-password@127.0.0.1:5432/readside"
# 41 characters at most: the views live in "<schema>_v<version>", which must stay within PostgreSQL's 63.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")


class Boundaries(BaseModel):
    """The flow-control policy of each boundary (the field name is the metrics label); see docs/flow-control.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The query API, per client system (API key; the address before authentication): web and mobile back ends
    # poll, so the quota is per request and generous. Every query holds a pooled connection, hence the bulkhead
    # at a little above the pool; one client never holds more than a quarter of it.
    rest_api: BoundaryPolicy = BoundaryPolicy(
        quota=QuotaSettings(rate=50, burst=100),
        per_client=PerClientSettings(max_per_client=4, retry_after=1.0),
        bulkhead=BulkheadSettings(max_concurrent=16, max_wait=0.5, max_waiting=64, retry_after=1.0),
        # Queries are GETs: a body is never needed, so any body is small and must come quickly.
        max_body_bytes=16 * 1024,
        body_timeout=5.0,
    )
    # The consumer's boundary towards PostgreSQL: one failed or slow batch opens the breaker (pause every
    # partition), then one probe per `wait_in_open` decides when to resume. Poison records are never retried
    # (they are Rejects).
    readside_postgres: BoundaryPolicy = BoundaryPolicy(
        breaker=BreakerSettings(
            failure_rate_threshold=50.0,
            slow_call_rate_threshold=100.0,
            slow_call_duration_threshold=10.0,
            # Judged on the last call alone: one failed or slow batch pauses, one good probe resumes.
            window_size=1,
            minimum_calls=1,
            wait_in_open=1.0,
            permitted_calls_in_half_open=1,
        ),
        delivery=DeliverySettings(max_attempts=1),
        # Bounds every statement of the API's pool and of the consumer's writer.
        timeout=15.0,
    )
    # A rebuild replays the whole log: paced in records per second so the live consumer keeps its share of the
    # database. burst must hold one batch (max_records).
    readside_rebuild: BoundaryPolicy = BoundaryPolicy(
        throttle=ThrottleSettings(rate=20_000, burst=5_000, max_wait=60.0)
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.readside_postgres.breaker is None:
            raise ValueError("boundaries.readside_postgres needs a breaker")
        if self.readside_rebuild.throttle is None:
            raise ValueError("boundaries.readside_rebuild needs a throttle")
        if self.rest_api.quota is None or (self.rest_api.bulkhead is None and self.rest_api.limiter is None):
            raise ValueError("boundaries.rest_api needs a quota and a bulkhead or limiter")
        return self


class ReadsideSettings(ServiceSettings):
    """Everything the read side (consumer, query API, rebuild) can be told from outside."""

    model_config = SettingsConfigDict(
        env_prefix="READSIDE_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    service_name: str = "readside"
    http_port: int = Field(default=8004, ge=1, le=65535)
    postgres_dsn: SecretStr = SecretStr(DEV_POSTGRES_DSN)
    postgres_pool_max_size: int = Field(default=10, ge=1, le=100)
    postgres_schema: str = Field(
        default="readside",
        description="Control schema (view version pointer, API keys); the views live in <postgres_schema>_v<version>.",
    )
    timezone: str = Field(
        default="Europe/Copenhagen",
        description="Time zone of daily consumption; a view version keeps the one it was built with.",
    )

    readings_topic: str = topics.READINGS
    meter_events_topic: str = topics.METER_EVENTS
    customers_topic: str = topics.CUSTOMERS
    workorders_topic: str = topics.WORKORDERS
    meterpoints_topic: str = Field(
        default=topics.METERPOINTS,
        description="Meterpoint master data (compacted): which grid company (tenant) owns each meterpoint.",
    )
    series_topic: str = Field(
        default=topics.SERIES,
        description="Validated daily series of the validation stage (every version of every day).",
    )

    consumer_enabled: bool = True
    group_id: str = "readside"
    group_instance_id: str | None = Field(
        default=None,
        description="Static group membership (KIP-345): a restarted replica gets its partitions back at once.",
    )
    max_records: int = Field(default=5_000, ge=1, le=100_000, description="Records per batch (getmany).")
    poll_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    max_poll_interval_ms: int = Field(default=120_000, ge=10_000)

    max_hourly_range_days: int = Field(default=31, ge=1, le=366, description="Longest range of hourly consumption.")
    max_daily_range_days: int = Field(default=366, ge=1, le=3660, description="Longest range of daily consumption.")
    workorders_page_size: int = Field(default=50, ge=1, le=1000)
    active_alarm_days: int = Field(default=30, ge=1, description="Alarms older than this are no longer active.")
    customer_consumption_days: int = Field(default=30, ge=1, le=366)
    # Off only in dev and tests (production refuses it): the views hold customers' names and consumption.
    require_api_key: bool = True
    # API keys are looked up in PostgreSQL once per this many seconds per key (a revoked key works this long).
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    api_key_cache_size: int = Field(default=10_000, ge=1, le=1_000_000)

    boundaries: Boundaries = Boundaries()

    @field_validator("postgres_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not _SCHEMA_NAME.fullmatch(value):
            raise ValueError("postgres_schema must be 1-41 lowercase letters, digits or '_', not starting with a digit")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _api_keys_in_production(self) -> Self:
        if self.environment == "production" and not self.require_api_key:
            raise ValueError("production refuses require_api_key=false: the views are not public")
        return self

    @model_validator(mode="after")
    def _rebuild_burst_holds_a_batch(self) -> Self:
        throttle = self.boundaries.readside_rebuild.throttle
        if throttle is None or throttle.burst < self.max_records:
            raise ValueError("boundaries.readside_rebuild needs a throttle whose burst holds max_records")
        return self

    @classmethod
    def defaults(cls) -> ReadsideSettings:
        """Every default and nothing from the environment: what the generated contracts document."""
        return cls.model_construct()

    @property
    def event_topics(self) -> tuple[str, str, str, str, str, str]:
        """The topics the views are built from: readings, meter events, customers, work orders, meterpoints,
        validated series."""
        return (
            self.readings_topic,
            self.meter_events_topic,
            self.customers_topic,
            self.workorders_topic,
            self.meterpoints_topic,
            self.series_topic,
        )

    def views_schema(self, version: int) -> str:
        """The schema holding view version ``version``."""
        return f"{self.postgres_schema}_v{version}"
