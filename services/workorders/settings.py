"""Settings of the work orders service: ``WORKORDERS_*`` variables (plus the shared ``GRIDHUB_*`` ones), read here only.

Every boundary's flow-control policy is declared in `Boundaries`; nested values use ``__``:
``WORKORDERS_BOUNDARIES__CUSTOMERS_SOAP__BREAKER__MINIMUM_CALLS=3`` changes one number and keeps the rest.
"""

from __future__ import annotations

from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.events import MeterAlarm, topics
from libs.flowcontrol.policy import (
    BoundaryPolicy,
    BreakerSettings,
    BulkheadSettings,
    DeliverySettings,
    PerClientSettings,
    QuotaSettings,
)
from libs.platform.settings import DEV_ONLY_MARKER, ServiceSettings

DEV_POSTGRES_DSN = f"postgresql://workorders:workorders-{DEV_ONLY_MARKER}-password@127.0.0.1:5432/workorders"
DEV_CUSTOMERS_PASSWORD = f"workorders-{DEV_ONLY_MARKER}-password"

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")]


class Boundaries(BaseModel):
    """The flow-control policy of each boundary (the field name is the metrics label); see docs/flow-control.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rest_ingress: BoundaryPolicy = BoundaryPolicy(
        # Per client system (API key): planning systems create orders in bursts, crews' apps trickle.
        quota=QuotaSettings(rate=20, burst=50),
        # Requests in flight; each may wait for the customers service (bounded by customers_soap.timeout).
        bulkhead=BulkheadSettings(max_concurrent=32, max_wait=0.5, max_waiting=128, retry_after=1.0),
        # Requests in flight (or waiting for the bulkhead) per client: one client never holds every slot (429).
        per_client=PerClientSettings(max_per_client=8, retry_after=1.0),
        max_body_bytes=64 * 1024,
        # A work order body is a few hundred bytes: 10 s is ample; a client trickling it is cut off with 408.
        body_timeout=10.0,
    )
    customers_soap: BoundaryPolicy = BoundaryPolicy(
        # Opens when half of the last 10 calls failed or took longer than 2 s; one probe after 10 s decides.
        breaker=BreakerSettings(
            failure_rate_threshold=50,
            slow_call_rate_threshold=100,
            slow_call_duration_threshold=2.0,
            window_size=10,
            minimum_calls=5,
            wait_in_open=10.0,
            permitted_calls_in_half_open=1,
        ),
        # The customers service's own bulkhead is 10; more from us would only queue there.
        bulkhead=BulkheadSettings(max_concurrent=5, max_wait=0.2, retry_after=1.0),
        timeout=3.0,
    )
    workorders_postgres: BoundaryPolicy = BoundaryPolicy(
        # Our own database: when it fails, REST answers 503 at once and the consumers pause (never skip). Opens
        # when half of the last 5 calls (at least 2) failed or all took over 10 s; one probe after 2 s decides.
        breaker=BreakerSettings(
            failure_rate_threshold=50,
            slow_call_rate_threshold=100,
            slow_call_duration_threshold=10.0,
            window_size=5,
            minimum_calls=2,
            wait_in_open=2.0,
            permitted_calls_in_half_open=1,
        ),
    )
    # Each consumer: a failing record is tried 4 times, the waits doubling from 0.2 s up to 2 s, then
    # dead-lettered (a refused database pauses instead, see workorders_postgres); at most 4 deliveries at once.
    workorders_meter_events_consumer: BoundaryPolicy = BoundaryPolicy(
        delivery=DeliverySettings(max_attempts=4, base_backoff=0.2, max_backoff=2.0),
        bulkhead=BulkheadSettings(max_concurrent=4, retry_after=1.0),
    )
    workorders_customers_consumer: BoundaryPolicy = BoundaryPolicy(
        delivery=DeliverySettings(max_attempts=4, base_backoff=0.2, max_backoff=2.0),
        bulkhead=BulkheadSettings(max_concurrent=4, retry_after=1.0),
    )
    workorders_meterpoints_consumer: BoundaryPolicy = BoundaryPolicy(
        delivery=DeliverySettings(max_attempts=4, base_backoff=0.2, max_backoff=2.0),
        bulkhead=BulkheadSettings(max_concurrent=4, retry_after=1.0),
    )


class WorkordersSettings(ServiceSettings):
    """Settings of ``services.workorders`` (``WORKORDERS_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="WORKORDERS_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    service_name: str = "workorders"
    http_port: int = Field(default=8083, ge=0, le=65535)
    # postgres_schema (unset in production; tests isolate themselves in one), postgres_pool_min_size (1) and
    # postgres_pool_max_size (10) keep the defaults of ServiceSettings.
    postgres_dsn: SecretStr = SecretStr(DEV_POSTGRES_DSN)
    # Bounds every statement: 5 s rather than the shared 10 s, as REST callers wait on it.
    postgres_command_timeout: float = Field(default=5.0, gt=0, le=300)
    # How long a request or a consumer waits for a free connection of the pool before it counts as an outage.
    postgres_acquire_timeout: PositiveFloat = 2.0

    event_source: str = Field(default="/gridhub/workorders", pattern=r"^\S{1,256}$")
    events_topic: TopicName = topics.WORKORDERS
    meter_events_topic: TopicName = topics.METER_EVENTS
    customers_topic: TopicName = topics.CUSTOMERS
    # Meterpoint master data (compacted): which grid company (tenant) owns each meterpoint, so its orders.
    meterpoints_topic: TopicName = topics.METERPOINTS
    consumers_enabled: bool = True
    # Three groups, <prefix>.meter-events, <prefix>.customers and <prefix>.meterpoints: one consumer per topic,
    # each with its boundary.
    consumer_group_prefix: str = Field(default="workorders", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    consumer_max_records: PositiveInt = 100
    # Alarms that send a crew to look at the meter; the others are read and acknowledged.
    inspection_alarms: frozenset[MeterAlarm] = frozenset(
        {MeterAlarm.TAMPER, MeterAlarm.LONG_OUTAGE, MeterAlarm.CLOCK_ERROR}
    )

    relay_enabled: bool = True
    relay_poll_interval: PositiveFloat = 5.0
    relay_batch_size: PositiveInt = 500

    customers_soap_url: str = Field(default="http://127.0.0.1:8082/soap/customers", pattern=r"^https?://\S+$")
    customers_client: str = "workorders"
    # Refused in production while it is the dev default (ServiceSettings checks every SecretStr).
    customers_password: SecretStr = SecretStr(DEV_CUSTOMERS_PASSWORD)
    # The background job that asks the customers service for orders created while it was unreachable.
    enrichment_enabled: bool = True
    enrichment_interval: PositiveFloat = 5.0
    enrichment_batch_size: PositiveInt = 50
    # An order the customers service refuses to answer for (not an outage) is retried ever more slowly.
    enrichment_max_backoff: PositiveFloat = 3600.0

    # Calendar dates (who holds a meterpoint on which day) are local to the grid.
    timezone: str = "Europe/Copenhagen"
    # Client clocks (crews' devices) may run this far ahead of ours.
    clock_tolerance_seconds: float = Field(default=300.0, ge=0)
    max_window_hours: PositiveFloat = 7 * 24
    # Orders per page when the caller names no limit (the API caps limits at 200).
    default_page_size: int = Field(default=50, ge=1, le=200)
    # Alarms older than this when they arrive (e.g. a new consumer group reading a month of retention) are
    # acknowledged without opening an inspection: the meter has long been read again since.
    max_alarm_age_hours: PositiveFloat = 7 * 24
    # One open inspection per meterpoint and alarm type (later alarms attach to it), and at most this many
    # orders opened from alarms per meterpoint in the window: a meter that floods alarms gets one crew, not many.
    max_alarm_orders_per_meterpoint: PositiveInt = 3
    alarm_order_window_hours: PositiveFloat = 24.0
    idempotency_retention_hours: PositiveFloat = 24.0
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    boundaries: Boundaries = Boundaries()

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        b = self.boundaries
        if b.customers_soap.breaker is None or b.customers_soap.timeout is None:
            raise ValueError("boundaries.customers_soap needs a breaker and a timeout")
        if b.workorders_postgres.breaker is None:
            raise ValueError("boundaries.workorders_postgres needs a breaker")
        consumed = {self.events_topic, self.meter_events_topic, self.customers_topic, self.meterpoints_topic}
        if len(consumed) != 4:
            raise ValueError("the events, meter events, customers and meterpoints topics must differ")
        return self

    @classmethod
    def defaults(cls) -> WorkordersSettings:
        """Every default and nothing from the environment: what the generated OpenAPI document describes."""
        return cls.model_construct()
