"""The VEE service's settings: ``VEE_*`` variables (plus the shared ``GRIDHUB_*`` ones), read nowhere else.

Nested values use ``__``: ``VEE_RULES__SPIKE_FACTOR=4`` or ``VEE_BOUNDARIES__VEE_POSTGRES__TIMEOUT=30`` change one
number and keep the other defaults.
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from libs.events import topics
from libs.events.meterpoints import MeterpointType
from libs.flowcontrol.policy import BoundaryPolicy, BreakerSettings, DeliverySettings
from libs.platform.settings import DEV_ONLY_MARKER, ServiceSettings
from services.vee.domain import RuleSettings

DEV_POSTGRES_DSN = f"postgresql://vee:vee-{DEV_ONLY_MARKER}-password@127.0.0.1:5432/vee"
_LOCAL_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class Boundaries(BaseModel):
    """The flow-control policy of each boundary (the field name is the metrics label); see docs/flow-control.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The consumer's and the scheduler's boundary towards PostgreSQL: one failed or slow batch opens the breaker
    # (every partition paused), one probe per `wait_in_open` decides when to resume. A batch re-assembles up to
    # three days per meterpoint it touches, so "slow" is generous. Poison records are never retried (Rejects).
    vee_postgres: BoundaryPolicy = BoundaryPolicy(
        breaker=BreakerSettings(
            failure_rate_threshold=50.0,
            slow_call_rate_threshold=100.0,
            slow_call_duration_threshold=20.0,
            window_size=1,
            minimum_calls=1,
            wait_in_open=1.0,
            permitted_calls_in_half_open=1,
        ),
        delivery=DeliverySettings(max_attempts=1),
        # Bounds every statement of the pool.
        timeout=30.0,
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.vee_postgres.breaker is None:
            raise ValueError("boundaries.vee_postgres needs a breaker")
        return self


class Rules(BaseModel):
    """The thresholds of the rules and the estimation (docs/validation.md has the reasons); domain.RuleSettings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Plausible maximum per hour by meterpoint type: a large household peaks near 20 kWh/h, a 100 MW plant at
    # 100,000 kWh/h; an exchange point between grid areas carries up to ~1 GW.
    max_kwh_per_hour_consumption: float = Field(default=1_000.0, gt=0)
    max_kwh_per_hour_production: float = Field(default=100_000.0, gt=0)
    max_kwh_per_hour_exchange: float = Field(default=1_000_000.0, gt=0)
    # A spike is above 3x the 95th percentile of the same hour-of-week, with 4 samples of history at least.
    spike_factor: float = Field(default=3.0, gt=1)
    spike_percentile: float = Field(default=0.95, gt=0, le=1)
    spike_min_samples: int = Field(default=4, ge=1)
    spike_min_kwh: float = Field(default=0.5, ge=0)
    # Half a day of zeros on a point that normally consumes: a stuck meter more likely than an empty house.
    zero_run_hours: float = Field(default=12.0, gt=0)
    # Up to 3 hours are interpolated linearly; longer gaps follow the profile.
    short_gap_hours: float = Field(default=3.0, gt=0)
    profile_min_samples: int = Field(default=1, ge=1)
    # Eight weeks of history per hour-of-week: recent enough for the season, enough for a percentile.
    profile_max_samples: int = Field(default=8, ge=1, le=52)
    # A profile estimate is scaled to the level of the measured day around its gap; at most a day, since a day is
    # assembled with the day on each side of it and no more.
    profile_level_hours: float = Field(default=24.0, gt=0, le=24)

    def to_domain(self) -> RuleSettings:
        """The domain's view of these numbers."""
        return RuleSettings(
            max_kwh_per_hour={
                MeterpointType.CONSUMPTION: self.max_kwh_per_hour_consumption,
                MeterpointType.PRODUCTION: self.max_kwh_per_hour_production,
                MeterpointType.EXCHANGE: self.max_kwh_per_hour_exchange,
            },
            spike_factor=self.spike_factor,
            spike_percentile=self.spike_percentile,
            spike_min_samples=self.spike_min_samples,
            spike_min_kwh=self.spike_min_kwh,
            zero_run_hours=self.zero_run_hours,
            short_gap_hours=self.short_gap_hours,
            profile_min_samples=self.profile_min_samples,
            profile_max_samples=self.profile_max_samples,
            profile_level_hours=self.profile_level_hours,
        )


class VeeSettings(ServiceSettings):
    """Everything the VEE service (consumer, scheduler, gap scanner) can be told from outside."""

    model_config = SettingsConfigDict(
        env_prefix="VEE_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    service_name: str = "vee"
    http_port: int = Field(default=8005, ge=1, le=65535)
    postgres_dsn: SecretStr = SecretStr(DEV_POSTGRES_DSN)
    postgres_schema: str | None = Field(default="vee", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    postgres_command_timeout: float = Field(default=30.0, gt=0, le=300)

    readings_topic: str = topics.READINGS
    meterpoints_topic: str = Field(default=topics.METERPOINTS, description="Compacted: read from the beginning.")
    series_topic: str = topics.SERIES
    commands_topic: str = topics.COMMANDS

    group_id: str = "vee"
    group_instance_id: str | None = None
    max_records: int = Field(default=2_000, ge=1, le=100_000, description="Records per batch (getmany).")
    poll_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)

    # The D+1 deadline: what is missing at 07:00 local the next day is estimated and published (Elhub's D+1).
    deadline_days_after: int = Field(default=1, ge=0, le=10)
    deadline_local_time: str = Field(default="07:00", pattern=_LOCAL_TIME.pattern)
    # The billing deadline (D+5): later versions are final corrections, each with an audit row.
    billing_days_after: int = Field(default=5, ge=1, le=60)
    # Days of a connected meterpoint that got no reading at all are published at their deadline if they are no
    # older than this (a restart after an outage catches up a week, not the whole history).
    lookback_days: int = Field(default=7, ge=1, le=62)
    scheduler_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Bounded work per tick: days published at their deadline, meterpoints swept for days without readings.
    deadline_batch: int = Field(default=500, ge=1, le=100_000)
    sweep_batch: int = Field(default=2_000, ge=1, le=1_000_000)

    # Gap fill: an interval still missing this long after its end is asked for again.
    gap_grace_seconds: float = Field(default=4 * 3600.0, ge=0)
    gap_cooldown_seconds: float = Field(default=6 * 3600.0, ge=0, description="Between two requests of one gap.")
    gap_max_attempts: int = Field(default=3, ge=1, le=100)
    gap_max_per_scan: int = Field(default=1_000, ge=1, le=100_000)
    gap_max_per_meterpoint: int = Field(default=4, ge=1, le=1_000)

    outbox_poll_interval: float = Field(default=1.0, gt=0, le=60)
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)

    rules: Rules = Rules()
    boundaries: Boundaries = Boundaries()

    @classmethod
    def defaults(cls) -> VeeSettings:
        """Every default and nothing from the environment: what the generated contracts document."""
        return cls.model_construct()
