"""Settings of the customers service (environment variables ``CUSTOMERS_*``, plus the shared ``GRIDHUB_*``)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.events import topics
from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, QuotaSettings
from libs.platform.settings import ServiceSettings
from services.customers.auth import CLIENT_NAME, check_hash_format

# Dev-only client systems: each password is "<client>-dev-only-password". Refused when environment=production.
DEV_CLIENTS: dict[str, str] = {
    "billing": "scrypt$16384$8$1$Vge1NqRlh4cHjJtLUy1_8w$yE7gY0dnSOCASd5nMF6mHGIxczetcQxxj-UgATSQGSA",
    "customer-centre": "scrypt$16384$8$1$4F790NRqom-qdjFSyshRuA$4rnD0MNHYttV2O0kLyPV6CmjWia32gzHjFP8hAG7k9M",
    "workorders": "scrypt$16384$8$1$oZM3-WoCzY5KPrm9YDbb3g$6W1i2OQQgEzp71vSjBYqzQRSFNfiK9ghoRaGy1YHE_M",
}
DEV_DSN = "postgresql://customers:customers-dev-only-password@127.0.0.1:5432/customers"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

SOAP_INGRESS = BoundaryPolicy(
    # Per client system: 50 calls/s sustained, bursts of 100 (a billing run is bursty, a person is not).
    quota=QuotaSettings(rate=50, burst=100),
    # About the pool size: more concurrent calls would only queue for a connection. A short wait absorbs
    # bursts; beyond it, callers get Server.Busy at once instead of piling up.
    bulkhead=BulkheadSettings(max_concurrent=10, max_wait=0.5, max_waiting=100, retry_after=1.0),
    timeout=10.0,
    max_body_bytes=256 * 1024,
)


class CustomersSettings(ServiceSettings):
    """Everything the customers service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="CUSTOMERS_")

    service_name: str = "customers"
    http_port: int = Field(default=8082, ge=0, le=65535)
    postgres_dsn: SecretStr = SecretStr(DEV_DSN)
    # Tests isolate themselves in a schema of a shared database; services use their own database's default.
    postgres_schema: str | None = None
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)
    db_command_timeout: float = Field(default=5.0, gt=0)
    db_acquire_timeout: float = Field(default=2.0, gt=0)

    events_topic: str = topics.CUSTOMERS
    event_source: str = "/gridhub/customers"
    relay_enabled: bool = True
    relay_poll_interval: float = Field(default=5.0, gt=0)
    relay_batch_size: int = Field(default=500, ge=1)

    soap_path: str = "/soap/customers"
    max_xml_depth: int = Field(default=32, ge=8, le=256)
    soap_ingress: BoundaryPolicy = SOAP_INGRESS
    # Uncached password checks per remote address (scrypt is slow on purpose).
    auth_attempts: QuotaSettings = QuotaSettings(rate=2, burst=20)
    # Client system -> scrypt hash of its password (python -m services.customers.auth).
    clients: dict[str, str] = Field(default_factory=lambda: dict(DEV_CLIENTS))

    @field_validator("postgres_schema")
    @classmethod
    def _check_schema(cls, value: str | None) -> str | None:
        if value is not None and not _SCHEMA_NAME.fullmatch(value):
            raise ValueError("postgres_schema must be a lower-case SQL identifier")
        return value

    @field_validator("soap_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not re.fullmatch(r"(/[a-z0-9._-]+)+", value):
            raise ValueError("soap_path must be an absolute path like /soap/customers")
        return value

    @field_validator("clients")
    @classmethod
    def _check_clients(cls, value: dict[str, str]) -> dict[str, str]:
        for client, encoded in value.items():
            if not CLIENT_NAME.fullmatch(client):
                raise ValueError("client names are 1-64 letters, digits, '.', '_' or '-'")
            check_hash_format(encoded)
        return value

    @model_validator(mode="after")
    def _refuse_dev_clients(self) -> CustomersSettings:
        if self.environment != "production":
            return self
        if not self.clients:
            raise ValueError("no client systems configured: set CUSTOMERS_CLIENTS")
        dev = sorted(client for client, encoded in self.clients.items() if encoded in DEV_CLIENTS.values())
        if dev:
            raise ValueError(f"dev-only client credentials in production: {', '.join(dev)}")
        if self.soap_ingress.max_body_bytes is None:
            raise ValueError("soap_ingress.max_body_bytes must be set")
        return self

    @property
    def max_body_bytes(self) -> int:
        """The request size limit (the boundary's ``max_body_bytes``; 256 KiB when left out)."""
        return self.soap_ingress.max_body_bytes or SOAP_INGRESS.max_body_bytes or 262_144
