"""Settings of the collection service: every limit and every boundary's flow-control policy, in one place.

Read once in ``app.py`` from ``COLLECTION_*`` variables (plus the shared ``GRIDHUB_*`` ones) and passed down.
Nested values use ``__``: ``COLLECTION_BOUNDARIES__REST_INGRESS__QUOTA__RATE=50`` changes one number and keeps
the other defaults; ``COLLECTION_MQTT__RECEIVE_MAXIMUM=500`` likewise.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from libs.flowcontrol.policy import (
    BoundaryPolicy,
    BreakerSettings,
    BufferSettings,
    BulkheadSettings,
    QuotaSettings,
)
from libs.platform.settings import ServiceSettings, is_placeholder_secret

DEV_POSTGRES_DSN = "postgresql://collection:collection-dev-only-password@127.0.0.1:5432/collection"
DEV_MQTT_PASSWORD = "collection-dev-only-password"  # noqa: S105 - marked dev default, refused in production

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Boundaries(_Section):
    """The flow-control policy of each boundary (metrics label = field name); see docs/flow-control.md."""

    rest_ingress: BoundaryPolicy = BoundaryPolicy(
        # Per client system (API key), per request: a request carries up to `max_batch_items` readings.
        quota=QuotaSettings(rate=20, burst=40),
        # Requests in flight at once; each holds its parsed batch until Kafka acks, so this bounds memory.
        bulkhead=BulkheadSettings(max_concurrent=8, max_wait=0.5, max_waiting=64, retry_after=1.0),
        # 10,000 readings of ~200 bytes fit with room for whitespace.
        max_body_bytes=4 * 1024 * 1024,
    )
    mqtt_ingress: BoundaryPolicy = BoundaryPolicy(
        # Per device (meterpoint), in readings: a meter sends 4-96 readings an hour; burst = one full message.
        quota=QuotaSettings(rate=1.0, burst=200),
        # Between paho's network thread and asyncio; readings must never be dropped, so back pressure.
        buffer=BufferSettings(capacity=1000),
    )
    kafka_producer: BoundaryPolicy = BoundaryPolicy(
        # Opens after 3 of the last 6 publishes failed or took longer than the timeout (a dead broker makes
        # every publish wait for its timeout, so without the breaker each request would too).
        breaker=BreakerSettings(
            failure_rate_threshold=50,
            slow_call_duration_threshold=5.0,
            slow_call_rate_threshold=100,
            window_size=6,
            minimum_calls=3,
            wait_in_open=5.0,
            permitted_calls_in_half_open=2,
        ),
        timeout=10.0,
    )


class MqttSettings(_Section):
    """The MQTT ingress: broker, session and delivery limits."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str = "collection"
    password: SecretStr = SecretStr(DEV_MQTT_PASSWORD)
    # Must be stable per replica (e.g. a StatefulSet pod name): the broker keeps the messages this client has
    # not acknowledged in the session of this id and hands them back only to the same id.
    client_id: str = Field(default="collection-0", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    share_group: str = Field(default="collection", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    topic_prefix: str = Field(default="gridhub/meters", pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    # How long the broker keeps our session (subscriptions and queued messages) while we are away.
    session_expiry_seconds: int = Field(default=86_400, ge=0)
    # MQTT 5 Receive Maximum: QoS 1 messages the broker sends before it waits for our PUBACKs.
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    max_readings_per_message: PositiveInt = 200
    max_payload_bytes: PositiveInt = 256 * 1024
    # Messages taken from the buffer and published to Kafka together.
    max_messages_per_batch: PositiveInt = 500
    # After the first message, wait this long for more before publishing (like the producer's linger.ms).
    batch_linger_ms: int = Field(default=5, ge=0, le=1000)
    # Waits between publish attempts while Kafka is down (messages stay unacknowledged meanwhile).
    retry_backoff_seconds: PositiveFloat = 0.5
    max_retry_backoff_seconds: PositiveFloat = 10.0


class CollectionSettings(ServiceSettings):
    """Settings of ``services.collection`` (``COLLECTION_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="COLLECTION_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    service_name: str = "collection"
    http_port: int = Field(default=8001, ge=1, le=65535)
    postgres_dsn: SecretStr = SecretStr(DEV_POSTGRES_DSN)
    # Tests isolate themselves in a schema of their own; production leaves it unset.
    postgres_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    postgres_pool_size: PositiveInt = 4

    event_source: str = Field(default="/gridhub/collection", pattern=r"^\S{1,256}$")
    # An interval may end at most this far in the future (meter and server clocks drift).
    future_tolerance_seconds: float = Field(default=300.0, ge=0)
    max_batch_items: PositiveInt = 10_000
    # Record rejected REST items in meter.readings.v1.dlq / meter.events.v1.dlq too (MQTT rejects always are).
    dead_letter_rest_rejections: bool = True
    # API keys are looked up in PostgreSQL once per this many seconds (revocation takes at most this long).
    api_key_cache_seconds: float = Field(default=30.0, ge=0)

    kafka_client_id: str = "collection"
    kafka_linger_ms: int = Field(default=5, ge=0)

    mqtt: MqttSettings = MqttSettings()
    boundaries: Boundaries = Boundaries()

    @model_validator(mode="after")
    def _limits_fit_together(self) -> Self:
        mqtt, policy = self.mqtt, self.boundaries.mqtt_ingress
        if policy.buffer is None or policy.quota is None:
            raise ValueError("boundaries.mqtt_ingress needs a buffer and a quota")
        if policy.buffer.capacity < mqtt.receive_maximum:
            # Otherwise paho's network thread blocks on a full buffer while the broker still may send.
            raise ValueError("boundaries.mqtt_ingress.buffer.capacity must be >= mqtt.receive_maximum")
        bursts = [policy.quota.burst, *(override.burst for override in policy.quota.overrides.values())]
        if min(bursts) < mqtt.max_readings_per_message:
            # A message costs one token per reading; one that costs more than the burst could never pass.
            raise ValueError("boundaries.mqtt_ingress.quota bursts must be >= mqtt.max_readings_per_message")
        if self.boundaries.kafka_producer.breaker is None:
            raise ValueError("boundaries.kafka_producer needs a breaker")
        # The base class checks top-level secrets only; this one is nested.
        if self.environment == "production" and is_placeholder_secret(self.mqtt.password.get_secret_value()):
            raise ValueError("placeholder or dev-only secret in production: mqtt.password")
        return self

    @classmethod
    def defaults(cls) -> CollectionSettings:
        """Every default and nothing from the environment: what the generated contracts document."""
        return cls.model_construct()
