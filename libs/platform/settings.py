"""The settings base every service subclasses; the only place in GridHub that reads the environment.

A service declares ``class Settings(ServiceSettings)`` with ``model_config = SettingsConfigDict(
env_prefix="COLLECTION_")`` and its own fields, builds it once in ``app.py`` and passes it down. A few
variables are shared by all services (see `SHARED_ENV`); a service's own prefixed variable wins over them.

Secrets are `SecretStr`. Dev defaults must contain `DEV_ONLY_MARKER` so that nobody mistakes them for real
values; in production every secret field is checked and placeholders or dev defaults stop the service.

The HTTP edge is shared too: `trusted_proxies` (whose ``X-Forwarded-For`` names the client), the header timeout,
and `internal_http_port`, the second listener that alone serves ``/metrics`` and the API documents. It is on by
default in production (`DEFAULT_INTERNAL_HTTP_PORT`) and off in dev, where everything stays on the main port.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEV_ONLY_MARKER = "dev-only"
DEFAULT_INTERNAL_HTTP_PORT = 9090
"""The internal listener's port in production unless set: the port Prometheus scrapes (k8s annotations)."""

# Shared variable -> field. The stack and the manifests set these once for every service.
SHARED_ENV = {
    "GRIDHUB_ENVIRONMENT": "environment",
    "GRIDHUB_KAFKA_BOOTSTRAP": "kafka_bootstrap_servers",
    "GRIDHUB_LOG_LEVEL": "log_level",
    "GRIDHUB_TRUSTED_PROXIES": "trusted_proxies",
    "GRIDHUB_INTERNAL_HTTP_PORT": "internal_http_port",
}

_PLACEHOLDERS = frozenset(
    {"", "changeme", "change_me", "change-me", "replaceme", "replace_me", "todo", "secret", "password", "xxx"}
)
_HOST_PORT = re.compile(r"[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5}")
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*'?([^'\s]*)")

Environment = Literal["dev", "test", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def is_placeholder_secret(value: str) -> bool:
    """Tell whether ``value`` is empty, a well-known placeholder ("changeme", ...) or a marked dev default."""
    normalised = value.strip().lower()
    return normalised in _PLACEHOLDERS or DEV_ONLY_MARKER in normalised or "dev_only" in normalised


def _dsn_password(dsn: str) -> str | None:
    """The password inside a URL or keyword/value DSN, or None when it carries none (cert or peer auth)."""
    if "://" in dsn:
        return urlsplit(dsn).password
    match = _KEYWORD_PASSWORD.search(dsn)
    return match.group(1) if match else None


class _SharedEnvSource(PydanticBaseSettingsSource):
    """Reads the `SHARED_ENV` variables; ranked below the service's own prefixed variables."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` maps the few shared variables directly."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """Return the shared values that are set, keyed by field name."""
        fields = self.settings_cls.model_fields
        return {field: os.environ[var] for var, field in SHARED_ENV.items() if var in os.environ and field in fields}


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``env_prefix`` and a default ``service_name``."""

    model_config = SettingsConfigDict(
        env_prefix="GRIDHUB_",
        frozen=True,
        # A validation error must never print a DSN or password it was given.
        hide_input_in_errors=True,
    )

    service_name: str
    environment: Environment = "dev"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    # /metrics, /docs, /redoc and /openapi.json are served here only (and not on http_port) when set; on by
    # default in production (DEFAULT_INTERNAL_HTTP_PORT), so scrapes and API browsing stay inside the cluster.
    internal_http_port: int | None = Field(default=None, ge=1, le=65535)
    # Comma-separated CIDRs of the reverse proxies in front of us. Only a peer in this list may name the client
    # with X-Forwarded-For (its rightmost address not in the list); empty: the peer address is the client.
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = ()
    # A connection must deliver its request line and headers within this long (slowloris), idle ones included.
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # A body still arriving this long after its answer was sent (the app did not read it: a refusal, a query) is
    # cut off by closing the connection; a client sending at a normal pace finishes well within it.
    http_drain_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    log_level: LogLevel = "INFO"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Every service redeclares it with a dev default containing DEV_ONLY_MARKER (refused in production).
    postgres_dsn: SecretStr | None = None
    # The same names in every service (`libs.platform.db.open_database` reads them); services change defaults.
    postgres_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    postgres_pool_min_size: int = Field(default=1, ge=0, le=100)
    postgres_pool_max_size: int = Field(default=10, ge=1, le=100)
    # Bounds every statement: a slow database slows callers down instead of piling them up.
    postgres_command_timeout: float = Field(default=10.0, gt=0, le=300)
    metrics_enabled: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Rank the sources: arguments, service variables, shared variables, .env file, secret files."""
        return (init_settings, env_settings, _SharedEnvSource(settings_cls), dotenv_settings, file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _internal_port_in_production(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("environment") == "production" and not data.get("internal_http_port"):
            return {**data, "internal_http_port": DEFAULT_INTERNAL_HTTP_PORT}
        return data

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check_internal_port(self) -> ServiceSettings:
        if self.internal_http_port is not None and self.internal_http_port == self.http_port:
            raise ValueError("internal_http_port must differ from http_port")
        return self

    @model_validator(mode="after")
    def _check_pool_sizes(self) -> ServiceSettings:
        if self.postgres_pool_min_size > self.postgres_pool_max_size:
            raise ValueError("postgres_pool_min_size must not exceed postgres_pool_max_size")
        return self

    @field_validator("service_name")
    @classmethod
    def _check_service_name(cls, value: str) -> str:
        if not _SERVICE_NAME.fullmatch(value):
            raise ValueError("service_name must be lowercase letters, digits and '-', starting with a letter")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [server.strip() for server in value.split(",")]
        if not servers or not all(_HOST_PORT.fullmatch(server) for server in servers):
            raise ValueError("kafka_bootstrap_servers must be 'host:port[,host:port...]'")
        if not all(1 <= int(server.rsplit(":", 1)[1]) <= 65535 for server in servers):
            raise ValueError("kafka_bootstrap_servers has a port outside 1-65535")
        return ",".join(servers)

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> ServiceSettings:
        """In production, every SecretStr field (and the password inside a DSN) must be a real value."""
        if self.environment != "production":
            return self
        refused = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if not isinstance(value, SecretStr):
                continue
            secret = value.get_secret_value()
            password = _dsn_password(secret) if secret.strip() else None
            if is_placeholder_secret(secret) or (password is not None and is_placeholder_secret(password)):
                refused.append(name)
        if refused:
            # Name the fields only: the values are secrets even when they are bad ones.
            raise ValueError(f"placeholder or dev-only secret in production: {', '.join(refused)}")
        return self

    @property
    def kafka_bootstrap_list(self) -> list[str]:
        """The bootstrap servers as a list, the form aiokafka takes."""
        return self.kafka_bootstrap_servers.split(",")
