"""The read side's settings: ``READSIDE_*`` variables (plus the shared ``GRIDHUB_*`` ones), read nowhere else."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.events import topics
from libs.flowcontrol.policy import BoundaryPolicy, BreakerSettings, DeliverySettings, ThrottleSettings
from libs.platform.settings import DEV_ONLY_MARKER, ServiceSettings

DEV_DSN = f"postgresql://readside:readside-{DEV_ONLY_MARKER}-password@127.0.0.1:5432/readside"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")

# The consumer's boundary towards PostgreSQL: one failed or slow batch opens the breaker (pause every partition),
# then one probe per `wait_in_open` decides when to resume. Poison records are never retried (they are Rejects).
POSTGRES_BOUNDARY = "readside_postgres"
REBUILD_BOUNDARY = "readside_rebuild"
DEFAULT_BOUNDARIES: dict[str, BoundaryPolicy] = {
    POSTGRES_BOUNDARY: BoundaryPolicy(
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
        timeout=15.0,
    ),
    # A rebuild replays the whole log: paced in records per second so the live consumer keeps its share of the
    # database. burst must hold one batch (max_records).
    REBUILD_BOUNDARY: BoundaryPolicy(throttle=ThrottleSettings(rate=20_000, burst=5_000, max_wait=60.0)),
}


class ReadsideSettings(ServiceSettings):
    """Everything the read side (consumer, query API, rebuild) can be told from outside."""

    model_config = SettingsConfigDict(env_prefix="READSIDE_", frozen=True, hide_input_in_errors=True)

    service_name: str = "readside"
    http_port: int = Field(default=8004, ge=1, le=65535)
    postgres_dsn: SecretStr = SecretStr(DEV_DSN)
    postgres_pool_size: int = Field(default=10, ge=1, le=100)

    db_schema: str = Field(
        default="readside",
        description="Control schema (view version pointer, API keys); the views live in <db_schema>_v<version>.",
    )
    timezone: str = Field(
        default="Europe/Copenhagen",
        description="Time zone of daily consumption; a view version keeps the one it was built with.",
    )

    readings_topic: str = topics.READINGS
    meter_events_topic: str = topics.METER_EVENTS
    customers_topic: str = topics.CUSTOMERS
    workorders_topic: str = topics.WORKORDERS

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
    require_api_key: bool = True

    boundaries: dict[str, BoundaryPolicy] = Field(default_factory=lambda: dict(DEFAULT_BOUNDARIES))

    @field_validator("db_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not _SCHEMA_NAME.fullmatch(value):
            raise ValueError("db_schema must be 1-41 lowercase letters, digits or '_', not starting with a digit")
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
    def _complete_boundaries(self) -> ReadsideSettings:
        missing = set(DEFAULT_BOUNDARIES) - set(self.boundaries)
        if missing:
            # A partial override from the environment keeps the defaults of the boundaries it leaves out.
            object.__setattr__(self, "boundaries", {**DEFAULT_BOUNDARIES, **self.boundaries})
        throttle = self.boundaries[REBUILD_BOUNDARY].throttle
        if throttle is None or throttle.burst < self.max_records:
            raise ValueError(f"the {REBUILD_BOUNDARY} boundary needs a throttle whose burst holds max_records")
        if self.boundaries[POSTGRES_BOUNDARY].breaker is None:
            raise ValueError(f"the {POSTGRES_BOUNDARY} boundary needs a breaker")
        return self

    @property
    def event_topics(self) -> tuple[str, str, str, str]:
        """The topics the views are built from: readings, meter events, customers, work orders."""
        return (self.readings_topic, self.meter_events_topic, self.customers_topic, self.workorders_topic)

    def views_schema(self, version: int) -> str:
        """The schema holding view version ``version``."""
        return f"{self.db_schema}_v{version}"
