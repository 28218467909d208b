"""The services as an operator sees them: module, settings prefix, HTTP port and the URLs worth knowing.

Ports come from the same variables the services read (``<PREFIX>HTTP_PORT``), with the defaults taken from the
services' own settings classes, so ``make run``, ``gridhub`` and the services always agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.collection.settings import CollectionSettings, FtpSettings
from services.customers.settings import CustomersSettings
from services.readside.settings import ReadsideSettings
from services.vee.settings import VeeSettings
from services.workorders.settings import WorkordersSettings

HOST = "127.0.0.1"


def _default(settings: type[object], field: str) -> int:
    value = settings.model_fields[field].default  # type: ignore[attr-defined]
    assert isinstance(value, int)
    return value


@dataclass(frozen=True)
class Service:
    """One service: ``python -m services.<name>`` listening on ``<env_prefix>HTTP_PORT``."""

    name: str
    env_prefix: str
    default_port: int

    @property
    def module(self) -> str:
        """The module to run with ``python -m``."""
        return f"services.{self.name}"

    def port(self, env: Mapping[str, str] | None = None) -> int:
        """The HTTP port the service listens on with ``env`` (default: this process's environment)."""
        env = os.environ if env is None else env
        raw = env.get(f"{self.env_prefix}HTTP_PORT", "")
        return int(raw) if raw.strip() else self.default_port

    def url(self, env: Mapping[str, str] | None = None) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port(env)}"


COLLECTION = Service("collection", "COLLECTION_", _default(CollectionSettings, "http_port"))
CUSTOMERS = Service("customers", "CUSTOMERS_", _default(CustomersSettings, "http_port"))
WORKORDERS = Service("workorders", "WORKORDERS_", _default(WorkordersSettings, "http_port"))
READSIDE = Service("readside", "READSIDE_", _default(ReadsideSettings, "http_port"))
VEE = Service("vee", "VEE_", _default(VeeSettings, "http_port"))
SERVICES: tuple[Service, ...] = (COLLECTION, CUSTOMERS, WORKORDERS, READSIDE, VEE)

SOAP_PATH = "/soap/customers"


def by_name(name: str) -> Service:
    """The service called ``name`` (KeyError for another name)."""
    for service in SERVICES:
        if service.name == name:
            return service
    raise KeyError(name)


def ftp_port(env: Mapping[str, str] | None = None) -> int:
    """The collection service's FTP port (``COLLECTION_FTP__PORT``)."""
    env = os.environ if env is None else env
    raw = env.get("COLLECTION_FTP__PORT", "")
    return int(raw) if raw.strip() else _default(FtpSettings, "port")


def ftp_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the collection service runs its FTP server (``COLLECTION_FTP__ENABLED``, on by default)."""
    env = os.environ if env is None else env
    return env.get("COLLECTION_FTP__ENABLED", "true").strip().lower() not in ("0", "false", "no", "off", "f", "n")


def soap_url(env: Mapping[str, str] | None = None) -> str:
    """The customers service's SOAP endpoint."""
    return CUSTOMERS.url(env) + SOAP_PATH


def consumer_groups(env: Mapping[str, str] | None = None) -> list[str]:
    """The Kafka consumer groups of the services (read side, work orders' two, VEE), as configured by ``env``."""
    env = os.environ if env is None else env
    readside = env.get("READSIDE_GROUP_ID") or str(ReadsideSettings.model_fields["group_id"].default)
    prefix = env.get("WORKORDERS_CONSUMER_GROUP_PREFIX") or str(
        WorkordersSettings.model_fields["consumer_group_prefix"].default
    )
    # VEE's offsets live in its PostgreSQL; the ones it commits to Kafka follow them for this report.
    vee = env.get("VEE_GROUP_ID") or str(VeeSettings.model_fields["group_id"].default)
    return [readside, f"{prefix}.meter-events", f"{prefix}.customers", vee]
