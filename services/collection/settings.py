"""Settings of the collection service: every limit and every boundary's flow-control policy, in one place.

Read once in ``app.py`` from ``COLLECTION_*`` variables (plus the shared ``GRIDHUB_*`` ones) and passed down.
Nested values use ``__``: ``COLLECTION_BOUNDARIES__REST_INGRESS__QUOTA__RATE=50`` changes one number and keeps
the other defaults; ``COLLECTION_MQTT__RECEIVE_MAXIMUM=500`` likewise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from libs.flowcontrol.policy import (
    BoundaryPolicy,
    BreakerSettings,
    BufferSettings,
    BulkheadSettings,
    DeliverySettings,
    PerClientSettings,
    QuotaSettings,
    ThrottleSettings,
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
        # Requests in flight (or waiting for the bulkhead) per client: one client never holds every slot (429).
        per_client=PerClientSettings(max_per_client=4, retry_after=1.0),
        # 10,000 readings of ~200 bytes fit with room for whitespace.
        max_body_bytes=4 * 1024 * 1024,
        # A body gets 10 s plus 1 s per 64 KiB (a full 4 MiB batch: 74 s); a slower one is cut off with 408.
        body_timeout=10.0,
        min_body_rate=64 * 1024,
    )
    mqtt_ingress: BoundaryPolicy = BoundaryPolicy(
        # Per device (meterpoint), in readings: a meter sends 4-96 readings an hour; burst = one full message.
        quota=QuotaSettings(rate=1.0, burst=200),
        # Between paho's network thread and asyncio; readings must never be dropped, so back pressure.
        buffer=BufferSettings(capacity=1000),
    )
    ftp_ingress: BoundaryPolicy = BoundaryPolicy(
        # Per partner (FTP user), in readings: processing a file waits for tokens, it is slowed, never refused.
        quota=QuotaSettings(rate=5000, burst=20_000),
        # Uploads in progress across all partners; one more is refused at once (450, try later).
        bulkhead=BulkheadSettings(max_concurrent=16),
        # The largest file accepted; an upload passing it is cut off (552) and discarded.
        max_body_bytes=1024 * 1024 * 1024,
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
    gapfill_consumer: BoundaryPolicy = BoundaryPolicy(
        # meter.commands.v1: a request that cannot be routed now (broker away, database away) pauses its partition
        # (Refused) or is retried a few times; one that never can (not in scope, malformed) is dead-lettered.
        delivery=DeliverySettings(max_attempts=4, base_backoff=0.2, max_backoff=2.0),
        bulkhead=BulkheadSettings(max_concurrent=4, max_wait=1.0, retry_after=1.0),
    )
    device_commands: BoundaryPolicy = BoundaryPolicy(
        # Commands waiting for the sender; a full buffer slows the consumer (back pressure), never drops one.
        buffer=BufferSettings(capacity=64),
        # Re-reads to devices per second: a broker crash leaves every meter with a gap at once, and each command
        # makes its meter resend a range, so they are paced (10,000 meters: ~17 minutes at 10/s).
        throttle=ThrottleSettings(rate=10.0, burst=20.0, max_wait=5.0),
        # Opens after half of the last 10 publishes failed or timed out (broker down); the consumer then pauses.
        breaker=BreakerSettings(
            failure_rate_threshold=50,
            slow_call_duration_threshold=5.0,
            window_size=10,
            minimum_calls=4,
            wait_in_open=5.0,
            permitted_calls_in_half_open=2,
        ),
        # Seconds a command waits for its PUBACK (and for its turn in the throttle).
        timeout=5.0,
    )


class GapFillSettings(_Section):
    """Gap fill: collection routes the validation stage's GapFillRequested to the meterpoint's source."""

    # Off unless set (COLLECTION_GAPFILL__ENABLED=true, as k8s/ and docker-compose.yml do): the consumer joins one
    # group on meter.commands.v1, and an instance started for a test or a benchmark must not take its requests.
    enabled: bool = False
    topic: str = "meter.commands.v1"
    group_id: str = Field(default="collection.gapfill", pattern=r"^[A-Za-z0-9._-]{1,255}$")
    # Open re-read requests kept per head-end system (client); past it the oldest are dropped and counted: a
    # system that never acknowledges cannot grow the table without end.
    max_open_per_client: PositiveInt = 10_000
    # Requests one GET /v1/reread-requests lists (oldest first).
    list_limit: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # reread-*.json files kept in one FTP partner's outbox; past it the oldest are removed and counted.
    max_outbox_files_per_partner: PositiveInt = 1000


class MqttSettings(_Section):
    """The MQTT ingress: broker, session and delivery limits."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # The broker's service listener (devices have no account there; their listener, 1883/8883, binds client ids
    # to user names): docs/security.md, MQTT.
    port: int = Field(default=1884, ge=1, le=65535)
    username: str = "collection"
    password: SecretStr = SecretStr(DEV_MQTT_PASSWORD)
    # Must be stable per replica (e.g. a StatefulSet pod name): the broker keeps the messages this client has
    # not acknowledged in the session of this id and hands them back only to the same id. It starts with a letter,
    # so it never equals a device's client id (the device's GSRN, all digits).
    client_id: str = Field(default="collection-0", pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
    share_group: str = Field(default="collection", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    topic_prefix: str = Field(default="gridhub/meters", pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    # How long the broker keeps our session (subscriptions and queued messages) while we are away.
    session_expiry_seconds: int = Field(default=86_400, ge=0)
    # MQTT 5 Receive Maximum: QoS 1 messages the broker sends before it waits for our PUBACKs.
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    max_readings_per_message: PositiveInt = 200
    max_payload_bytes: PositiveInt = 256 * 1024
    # MQTT 5 Maximum Packet Size in CONNECT: the broker never sends us a larger packet. The broker's own
    # max_packet_size (deploy/mosquitto, the same value) disconnects a device sending one before reading it.
    max_packet_bytes: PositiveInt = 256 * 1024 + 4096
    # Per-device fairness: a device over its quota parks at most this many messages (PUBACK waiting) in its own
    # lane, and at most `quota_lanes` devices park at once; beyond that its messages go to the DLQ as
    # quota_exceeded. Together they stay far below receive_maximum, so other meters never wait for it.
    quota_lanes: PositiveInt = 16
    quota_lane_messages: PositiveInt = 8
    # TLS to the broker (required in production): the CA that signed the broker's certificate, and optionally
    # a client certificate and key (PEM files). Unset: plain MQTT (dev, tests).
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Messages taken from the buffer and published to Kafka together.
    max_messages_per_batch: PositiveInt = 500
    # After the first message, wait this long for more before publishing (like the producer's linger.ms).
    batch_linger_ms: int = Field(default=5, ge=0, le=1000)
    # Waits between publish attempts while Kafka is down (messages stay unacknowledged meanwhile).
    retry_backoff_seconds: PositiveFloat = 0.5
    max_retry_backoff_seconds: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _mqtt_limits(self) -> Self:
        if self.max_packet_bytes < self.max_payload_bytes + 1024:
            raise ValueError("mqtt.max_packet_bytes must leave room (1 KiB) above max_payload_bytes for the topic")
        if self.quota_lanes * self.quota_lane_messages * 2 > self.receive_maximum:
            # Parked messages hold PUBACKs: they must never take more than half of the shared in-flight window.
            raise ValueError("mqtt.quota_lanes x quota_lane_messages must be at most half of receive_maximum")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("mqtt TLS: set both tls_cert_file and tls_key_file, or neither")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("mqtt TLS: a client certificate needs tls_ca_file (the broker's CA)")
        return self


class FtpSettings(_Section):
    """The FTP ingress: listener, partner homes, upload and processing limits."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0: any free port (tests).
    port: int = Field(default=2121, ge=0, le=65535)
    # Passive data connections use a port in this range (open it in firewalls); 0 and 0: any free port.
    passive_port_first: int = Field(default=30_000, ge=0, le=65535)
    passive_port_last: int = Field(default=30_099, ge=0, le=65535)
    # Partner homes (users/<login>/inbox, outbox) and the spool of uploads and queued files live here.
    root: Path = Path(".stack/collection/ftp")
    max_connections: PositiveInt = 64
    max_connections_per_user: PositiveInt = 4
    # Uploads of one partner in progress at once (the boundary's bulkhead bounds all partners together).
    max_uploads_per_user: PositiveInt = 2
    # Files of one partner uploaded but not yet processed; one more upload is refused (452) until some are done.
    max_queued_files_per_user: PositiveInt = 20
    # Files processed at once (each streams its lines; memory is batch_lines x max_line_bytes per worker).
    processing_workers: PositiveInt = 2
    # Lines validated and published to Kafka together; duplicates are recognised within one batch.
    batch_lines: PositiveInt = 5000
    max_line_bytes: Annotated[int, Field(ge=128, le=65536)] = 1024
    block_size: Annotated[int, Field(ge=4096, le=4 * 1024 * 1024)] = 64 * 1024
    # A silent control connection is closed after this long; a stalled data connection after socket_timeout.
    idle_timeout_seconds: PositiveFloat = 300.0
    socket_timeout_seconds: PositiveFloat = 60.0
    # Password checks that are not cached (first login, wrong passwords) per remote address: guessing is slowed.
    login_checks_per_second: PositiveFloat = 2.0
    login_checks_burst: PositiveInt = 20
    # A connection that has not logged in this long after connecting is closed (421): idle never-logged-in
    # connections cannot hold the server's max_connections slots.
    login_timeout_seconds: PositiveFloat = 30.0
    # Connections from one address that have not logged in yet; one more is refused at once (421), so one host
    # cannot take every slot before the login timeout frees them.
    max_unauthenticated_per_address: PositiveInt = 4
    # A failed PASS is answered only after this delay, doubled per consecutive failure from the address
    # (reset by a success) up to the maximum; the connection reads nothing meanwhile.
    failed_login_backoff_seconds: Annotated[float, Field(ge=0)] = 0.5
    max_failed_login_backoff_seconds: Annotated[float, Field(ge=0)] = 10.0
    # How long an address's failures are remembered, and for how many addresses at most (least recently
    # failed forgotten first): the back-off's memory is bounded whatever the attacker sends.
    failed_login_memory_seconds: PositiveFloat = 900.0
    failed_login_max_addresses: PositiveInt = 10_000
    # Explicit FTPS (AUTH TLS, RFC 4217): the server's certificate chain and key (PEM). Unset: plain FTP only.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Refuse USER/PASS before AUTH TLS, and data connections without PROT P. Production requires both.
    tls_control_required: bool = False
    tls_data_required: bool = False
    # Waits between publish attempts while Kafka is down (the file waits in the spool meanwhile).
    retry_backoff_seconds: PositiveFloat = 0.5
    max_retry_backoff_seconds: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _passive_range(self) -> Self:
        first, last = self.passive_port_first, self.passive_port_last
        if (first == 0) != (last == 0) or first > last:
            raise ValueError("ftp passive ports: first <= last, or both 0 for any free port")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("ftp TLS: set both tls_cert_file and tls_key_file, or neither")
        if (self.tls_control_required or self.tls_data_required) and self.tls_cert_file is None:
            raise ValueError("ftp TLS: tls_control_required / tls_data_required need tls_cert_file and tls_key_file")
        if self.failed_login_backoff_seconds > self.max_failed_login_backoff_seconds:
            raise ValueError("ftp: failed_login_backoff_seconds must be <= max_failed_login_backoff_seconds")
        return self


class DeviceSettings(_Section):
    """Where the device registry (``python -m services.collection.commands.devices``) keeps MQTT device credentials.

    The broker's password file, edited with ``mosquitto_passwd``, and its PID file (``<pid> <marker>``), whose
    process gets SIGHUP to reload it. Unset: the command refuses to run. The local stack sets both
    (``COLLECTION_DEVICES__PASSWORD_FILE``, ``COLLECTION_DEVICES__BROKER_PID_FILE``).
    """

    password_file: Path | None = None
    broker_pid_file: Path | None = None


class LagSignalSettings(_Section):
    """Lag-aware admission: the read side's consumer-group lag on a topic scales the ingress quotas down."""

    group_id: str = Field(default="readside", pattern=r"^[A-Za-z0-9._-]{1,255}$")
    topic: str = "meter.readings.v1"
    # No pressure at or below `low` records of lag, full pressure (quotas at min_scale) at or above `high`.
    low: Annotated[float, Field(ge=0)] = 50_000
    high: PositiveFloat = 500_000
    # How often the lag is read from Kafka; each boundary's `admission` settings say how far and how fast its
    # quota follows (min_scale at full pressure, recovery_per_second, update interval).
    poll_interval_seconds: PositiveFloat = 5.0

    @model_validator(mode="after")
    def _range(self) -> Self:
        if not self.low < self.high:
            raise ValueError("lag_signal: need low < high")
        return self


class ScopeSettings(_Section):
    """The scope check: the local view of meterpoints.v1 (who owns and who delivers each meterpoint)."""

    # A reading is accepted only from the source assigned to its meterpoint, for that grid company. False only
    # for a migration period (no meterpoint registered yet); production refuses it.
    enforce: bool = True
    # Meterpoints the view holds (about 110 bytes each: 220 MB at the default); full, it refuses new ones (their
    # readings are held as unknown_meterpoint), says so in gridhub_collection_meterpoint_view_full and a log line.
    capacity: Annotated[int, Field(ge=1, le=50_000_000)] = 2_000_000
    # /readyz stays 503 until the view has read the topic to its end offsets at start; not caught up by then, the
    # replica stops (exit 1) instead of serving without its view. Parsing and applying take ~0.75 s per 100,000
    # records on one core (2,000,000: ~15 s plus fetching), so the default leaves a wide margin.
    catch_up_timeout_seconds: PositiveFloat = 300.0


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
    # API keys and FTP accounts only: the readings themselves go to Kafka.
    postgres_pool_max_size: int = Field(default=4, ge=1, le=100)

    event_source: str = Field(default="/gridhub/collection", pattern=r"^\S{1,256}$")
    # An interval may end at most this far in the future (meter and server clocks drift).
    future_tolerance_seconds: float = Field(default=300.0, ge=0)
    max_batch_items: PositiveInt = 10_000
    # Record rejected REST items in meter.readings.v1.dlq / meter.events.v1.dlq too (MQTT rejects always are).
    dead_letter_rest_rejections: bool = True
    # API keys are looked up in PostgreSQL once per this many seconds (revocation takes at most this long).
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    kafka_client_id: str = "collection"
    # Publish to "<prefix>meter.readings.v1" (and events, and their .dlq) instead: benchmarks and tests on a shared
    # cluster keep their load out of the platform's topics. Empty in production.
    kafka_topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{0,100}$")
    kafka_linger_ms: int = Field(default=5, ge=0)

    mqtt: MqttSettings = MqttSettings()
    ftp: FtpSettings = FtpSettings()
    devices: DeviceSettings = DeviceSettings()
    # Off unless set: which consumer group's lag lowers the REST, MQTT and FTP quotas (lag-aware admission).
    lag_signal: LagSignalSettings | None = None
    scope: ScopeSettings = ScopeSettings()
    gapfill: GapFillSettings = GapFillSettings()
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
        ftp = self.boundaries.ftp_ingress
        if ftp.quota is None or ftp.bulkhead is None or ftp.max_body_bytes is None:
            raise ValueError("boundaries.ftp_ingress needs a quota, a bulkhead and max_body_bytes (max file size)")
        if min([ftp.quota.burst, *(o.burst for o in ftp.quota.overrides.values())]) < self.ftp.batch_lines:
            # A batch costs one token per line; one that costs more than the burst could never pass.
            raise ValueError("boundaries.ftp_ingress.quota bursts must be >= ftp.batch_lines")
        if self.boundaries.kafka_producer.breaker is None:
            raise ValueError("boundaries.kafka_producer needs a breaker")
        commands = self.boundaries.device_commands
        if commands.buffer is None or commands.throttle is None or commands.breaker is None or not commands.timeout:
            raise ValueError("boundaries.device_commands needs a buffer, a throttle, a breaker and a timeout")
        # The base class checks top-level secrets only; this one is nested.
        if self.environment == "production" and is_placeholder_secret(self.mqtt.password.get_secret_value()):
            raise ValueError("placeholder or dev-only secret in production: mqtt.password")
        return self

    @model_validator(mode="after")
    def _ftps_in_production(self) -> Self:
        # Partner passwords and meter data must not cross the network in clear text: plain FTP is for dev only.
        ftp = self.ftp
        if self.environment != "production" or not ftp.enabled:
            return self
        # The certificate and key themselves are loaded when the server starts (a missing or unreadable file stops
        # it there), since they are mounted where the service runs, not where its settings are checked.
        if not (ftp.tls_control_required and ftp.tls_data_required):
            raise ValueError("production needs FTPS: ftp.tls_control_required and ftp.tls_data_required")
        return self

    @model_validator(mode="after")
    def _scope_in_production(self) -> Self:
        if self.environment == "production" and not self.scope.enforce:
            raise ValueError("production enforces the scope check: scope.enforce must stay true")
        return self

    @model_validator(mode="after")
    def _mqtt_tls_in_production(self) -> Self:
        # Device readings and the service's password must not cross the network in clear text.
        if self.environment == "production" and self.mqtt.enabled and self.mqtt.tls_ca_file is None:
            raise ValueError("production needs MQTT over TLS: set mqtt.tls_ca_file (the broker's CA)")
        return self

    @classmethod
    def defaults(cls) -> CollectionSettings:
        """Every default and nothing from the environment: what the generated contracts document."""
        return cls.model_construct()
