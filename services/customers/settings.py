"""Settings of the customers service: ``CUSTOMERS_*`` variables (plus the shared ``GRIDHUB_*`` ones), read nowhere else.

Nested values use ``__``: ``CUSTOMERS_BOUNDARIES__SOAP_INGRESS__TIMEOUT=5`` changes one number and keeps the other
defaults. A JSON value (``CUSTOMERS_BOUNDARIES__SOAP_INGRESS='{"quota": {"rate": 20, "burst": 40}}'``) is merged
into the defaults too; ``null`` drops a part (``{"bulkhead": null}``).
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from libs.events import topics
from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, QuotaSettings
from libs.platform.settings import DEV_ONLY_MARKER, ServiceSettings
from libs.platform.tenancy import Role
from services.customers.auth import CLIENT_NAME, ClientSystem

DEV_GRID_COMPANY = "5790000000012"
"""The grid company (tenant) of the dev-only client systems billing and customer-centre."""

# Dev-only client systems: each password is "<client>-dev-only-password". Refused when environment=production.
# billing and the customer centre work for one grid company; work orders enriches alarms of every grid company,
# so its login is the platform's (it only ever calls GetMeterpointCustomer).
_DEV_HASHES = {
    "billing": "scrypt$16384$8$1$Vge1NqRlh4cHjJtLUy1_8w$yE7gY0dnSOCASd5nMF6mHGIxczetcQxxj-UgATSQGSA",
    "customer-centre": "scrypt$16384$8$1$4F790NRqom-qdjFSyshRuA$4rnD0MNHYttV2O0kLyPV6CmjWia32gzHjFP8hAG7k9M",
    "workorders": "scrypt$16384$8$1$oZM3-WoCzY5KPrm9YDbb3g$6W1i2OQQgEzp71vSjBYqzQRSFNfiK9ghoRaGy1YHE_M",
}
DEV_CLIENTS: dict[str, ClientSystem] = {
    "billing": ClientSystem(password_hash=_DEV_HASHES["billing"], role=Role.ADMIN, tenant=DEV_GRID_COMPANY),
    "customer-centre": ClientSystem(
        password_hash=_DEV_HASHES["customer-centre"], role=Role.OPERATOR, tenant=DEV_GRID_COMPANY
    ),
    "workorders": ClientSystem(password_hash=_DEV_HASHES["workorders"], role=Role.PLATFORM, tenant=None),
}
DEV_PASSWORD_HASHES = frozenset(client.password_hash for client in DEV_CLIENTS.values())
DEV_POSTGRES_DSN = f"postgresql://customers:customers-{DEV_ONLY_MARKER}-password@127.0.0.1:5432/customers"
DEFAULT_MAX_BODY_BYTES = 256 * 1024
"""The SOAP request size limit when ``boundaries.soap_ingress`` leaves ``max_body_bytes`` out (not in production)."""


class Boundaries(BaseModel):
    """The flow-control policy of each boundary (the field name is the metrics label); see docs/flow-control.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Every SOAP call, in this order: per-client quota (429), bulkhead (503), body size (413), timeout (503).
    soap_ingress: BoundaryPolicy = BoundaryPolicy(
        # Per client system: 50 calls/s sustained, bursts of 100 (a billing run is bursty, a person is not).
        quota=QuotaSettings(rate=50, burst=100),
        # About the pool size: more concurrent calls would only queue for a connection. A short wait absorbs
        # bursts; beyond it, callers get Server.Busy at once instead of piling up.
        bulkhead=BulkheadSettings(max_concurrent=10, max_wait=0.5, max_waiting=100, retry_after=1.0),
        # A call is a few short statements, each bounded by postgres_command_timeout; a call still running after
        # 10 s is cut off with Server.Unavailable instead of holding its permit.
        timeout=10.0,
        # Every text of a request is bounded by the schema (200 characters), so real calls are a few KiB; the limit
        # leaves room for any client's envelope and headers, and bounds what one call makes us buffer and parse.
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
    )


class CustomersSettings(ServiceSettings):
    """Everything the customers service reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="CUSTOMERS_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    service_name: str = "customers"
    http_port: int = Field(default=8082, ge=0, le=65535)
    postgres_dsn: SecretStr = SecretStr(DEV_POSTGRES_DSN)
    # postgres_schema (tests isolate themselves in a schema of a shared database) and the pool sizes (1, 10) keep
    # the shared defaults. Beyond the two timeouts a call answers Server.Unavailable: a slow database slows
    # callers down instead of piling them up.
    postgres_command_timeout: float = Field(default=5.0, gt=0, le=300)
    # Waiting for a free connection (the bulkhead keeps this rare).
    postgres_acquire_timeout: float = Field(default=2.0, gt=0, le=300)

    events_topic: str = topics.CUSTOMERS
    # Meterpoint master data (MeterpointRegistered/Updated) goes to its own, compacted topic.
    meterpoints_topic: str = topics.METERPOINTS
    event_source: str = "/gridhub/customers"
    relay_enabled: bool = True
    relay_poll_interval: float = Field(default=5.0, gt=0)
    relay_batch_size: int = Field(default=500, ge=1)

    soap_path: str = "/soap/customers"
    max_xml_depth: int = Field(default=32, ge=8, le=256)
    # Uncached password checks per remote address (scrypt is slow on purpose).
    auth_attempts: QuotaSettings = QuotaSettings(rate=2, burst=20)
    # Client system -> {"password_hash": "scrypt$...", "role": "reader", "tenant": "<GLN-13 or EIC-16>"}
    # (python -m services.customers.commands.auth prints an entry); the platform role has no tenant.
    clients: dict[str, ClientSystem] = Field(default_factory=lambda: dict(DEV_CLIENTS))

    boundaries: Boundaries = Boundaries()

    @field_validator("soap_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not re.fullmatch(r"(/[a-z0-9._-]+)+", value):
            raise ValueError("soap_path must be an absolute path like /soap/customers")
        return value

    @field_validator("clients")
    @classmethod
    def _check_clients(cls, value: dict[str, ClientSystem]) -> dict[str, ClientSystem]:
        for client in value:
            if not CLIENT_NAME.fullmatch(client):
                raise ValueError("client names are 1-64 letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _refuse_dev_clients(self) -> Self:
        if self.environment != "production":
            return self
        if not self.clients:
            raise ValueError("no client systems configured: set CUSTOMERS_CLIENTS")
        dev = sorted(name for name, client in self.clients.items() if client.password_hash in DEV_PASSWORD_HASHES)
        if dev:
            raise ValueError(f"dev-only client credentials in production: {', '.join(dev)}")
        if self.boundaries.soap_ingress.max_body_bytes is None:
            raise ValueError("boundaries.soap_ingress.max_body_bytes must be set")
        return self

    @classmethod
    def defaults(cls) -> CustomersSettings:
        """Every default and nothing from the environment: what the generated contracts document."""
        return cls.model_construct()

    @property
    def max_body_bytes(self) -> int:
        """The request size limit (the boundary's ``max_body_bytes``; 256 KiB when left out)."""
        return self.boundaries.soap_ingress.max_body_bytes or DEFAULT_MAX_BODY_BYTES
