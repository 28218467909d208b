"""Principals and their audit trail across the services: what ``gridhub audit list`` and ``gridhub tenant list`` read.

Each service keeps its own ``audit_events`` and its own principals (API keys in collection, work orders and the read
side; FTP partners and MQTT devices in collection; SOAP clients in the customers service's settings). These
functions ask each service's database (the same settings the services read) and merge the answers; a service whose
database cannot be reached is named in the result rather than failing the whole listing.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

from libs.platform.apikeys import parse_duration
from libs.platform.apikeys_cli import key_tenants
from libs.platform.audit import AuditEvent, list_audit
from libs.platform.db import create_pool
from libs.platform.settings import ServiceSettings

AUDITED_SERVICES = ("collection", "customers", "workorders", "readside")
KEY_SERVICES = ("collection", "workorders", "readside")
_SINCE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def service_settings(name: str) -> ServiceSettings:
    """The settings service ``name`` runs with (from this process's environment)."""
    if name == "collection":
        from services.collection.settings import CollectionSettings

        return CollectionSettings()
    if name == "customers":
        from services.customers.settings import CustomersSettings

        return CustomersSettings()
    if name == "workorders":
        from services.workorders.settings import WorkordersSettings

        return WorkordersSettings()
    if name == "readside":
        from services.readside.settings import ReadsideSettings

        return ReadsideSettings()
    raise KeyError(name)


def parse_since(text: str, *, now: datetime) -> datetime:
    """``--since``: a duration back from ``now`` (``24h``, ``7d``), a date (its midnight UTC) or an ISO datetime."""
    cleaned = text.strip()
    if _SINCE_DATE.fullmatch(cleaned):
        return datetime.combine(date.fromisoformat(cleaned), time(0), tzinfo=UTC)
    try:
        return now - parse_duration(cleaned)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (24h, 7d) nor a date (2026-12-01) or ISO datetime") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class AuditListing:
    """Events of every service, oldest first, and the services that did not answer (name: error)."""

    events: list[AuditEvent] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)


async def _service_audit(name: str, *, tenant: str | None, since: datetime | None, limit: int) -> list[AuditEvent]:
    settings = service_settings(name)
    if settings.postgres_dsn is None:
        return []
    pool = await create_pool(
        settings.postgres_dsn.get_secret_value(),
        schema=settings.postgres_schema,
        min_size=1,
        max_size=1,
        application_name="gridhub-ops",
    )
    try:
        async with pool.acquire() as connection:
            return await list_audit(connection, tenant=tenant, since=since, limit=limit, service=name)
    finally:
        await pool.close()


async def audit_events(
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    services: tuple[str, ...] = AUDITED_SERVICES,
    limit: int = 1_000,
) -> AuditListing:
    """The newest ``limit`` audit events of ``services`` (of ``tenant``, from ``since``), merged by time."""
    listing = AuditListing()
    for name in services:
        try:
            listing.events.extend(await _service_audit(name, tenant=tenant, since=since, limit=limit))
        except (OSError, TimeoutError, ValueError) as error:
            listing.unreachable[name] = str(error) or type(error).__name__
        except Exception as error:  # asyncpg's errors: a listing goes on with the other services
            listing.unreachable[name] = f"{type(error).__name__}: {error}"
    listing.events.sort(key=lambda event: (event.occurred_at, event.service or "", event.audit_id or 0))
    listing.events = listing.events[-limit:]
    return listing


@dataclass
class TenantPrincipals:
    """How many working principals of each kind a tenant has (``api_key:collection``, ``ftp_partner``, ...)."""

    tenant: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every principal of the tenant."""
        return sum(self.counts.values())


async def _collection_accounts() -> dict[str, dict[str, int]]:
    from services.collection.commands.devices import list_devices
    from services.collection.commands.ftpusers import list_partners
    from services.collection.settings import CollectionSettings

    settings = CollectionSettings()
    now = datetime.now(UTC)
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for partner in await list_partners(settings):
        if partner.tenant is not None and partner.valid_at(now):
            found[partner.tenant]["ftp_partner"] = found[partner.tenant].get("ftp_partner", 0) + 1
    for device in await list_devices(settings):
        if device.state(now) == "active":
            found[device.tenant]["device"] = found[device.tenant].get("device", 0) + 1
    return found


def _soap_clients() -> dict[str, dict[str, int]]:
    """Tenants of the customers service's SOAP clients (its settings; entries without a tenant are platform's)."""
    settings = service_settings("customers")
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for client in getattr(settings, "clients", {}).values():
        tenant = getattr(client, "tenant", None)
        if isinstance(tenant, str):
            found[tenant]["soap_client"] = found[tenant].get("soap_client", 0) + 1
    return found


async def tenants() -> tuple[list[TenantPrincipals], dict[str, str]]:
    """Every tenant that has a working principal somewhere, with counts per kind; and the sources that failed."""
    merged: dict[str, TenantPrincipals] = {}
    failed: dict[str, str] = {}

    def add(found: dict[str, dict[str, int]]) -> None:
        for tenant, counts in found.items():
            entry = merged.setdefault(tenant, TenantPrincipals(tenant))
            for kind, count in counts.items():
                entry.counts[kind] = entry.counts.get(kind, 0) + count

    async def keys(service: str) -> dict[str, dict[str, int]]:
        return {t: {f"api_key:{service}": n} for t, n in (await key_tenants(service_settings(service))).items()}

    sources: list[tuple[str, Callable[[], Awaitable[dict[str, dict[str, int]]]]]] = [
        *((f"api keys of {service}", functools.partial(keys, service)) for service in KEY_SERVICES),
        ("FTP partners and devices", _collection_accounts),
    ]
    for label, source in sources:
        try:
            add(await source())
        except Exception as error:  # one unreachable database leaves the others' answers
            failed[label] = f"{type(error).__name__}: {error}"
    try:
        add(_soap_clients())
    except Exception as error:
        failed["SOAP clients"] = f"{type(error).__name__}: {error}"
    return sorted(merged.values(), key=lambda entry: entry.tenant), failed
